"""Per-image transforms of the streaming (PIL) path: timm's training and evaluation pipelines, and the fixed
resize + centre crop used when images are decoded once into memory."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from timm.data import create_transform
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["train_transform", "eval_transform", "resize_crop_uint8", "eval_resize_size"]

_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}


def train_transform(img_size: int, *, scale: Sequence[float] = (0.08, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5, color_jitter: float = 0.0,
                    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1", interpolation: str = "bicubic",
                    mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                    re_prob: float = 0.25, re_mode: str = "pixel", re_count: int = 1, no_aug: bool = False):
    """timm's ImageNet training pipeline: RandomResizedCrop + flip, RandAugment (or colour jitter), ToTensor,
    Normalize, RandomErasing. PIL image -> float [3, img_size, img_size]."""
    transform = create_transform(
        img_size, is_training=True, no_aug=no_aug, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
        color_jitter=color_jitter, auto_augment=auto_augment, interpolation=interpolation, mean=tuple(mean),
        std=tuple(std), re_prob=re_prob, re_mode=re_mode, re_count=re_count)
    _keep_posterize_bits_valid(transform)
    return transform


def _keep_posterize_bits_valid(transform) -> None:
    """timm's increasing-severity Posterize keeps ``4 - int(magnitude / 10 * 4)`` bits: 0 bits at magnitude 10,
    which 'mstd' noise reaches (clipped to 10) in ~2% of draws. Pillow >= 12 raises ValueError for 0 bits, a
    crash in the middle of an epoch; keep at least 1 bit (0 bits would be a black image anyway)."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "name", "") == "PosterizeIncreasing" and not getattr(op, "_bits_clamped", False):
                level_fn = op.level_fn
                op.level_fn = lambda level, hparams, _fn=level_fn: tuple(max(1, int(b)) for b in _fn(level, hparams))
                op._bits_clamped = True


def eval_transform(img_size: int, *, crop_pct: float = 0.875, interpolation: str = "bicubic",
                   mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)):
    """timm's evaluation pipeline: resize the shorter side to img_size / crop_pct, centre crop, normalise."""
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                            mean=tuple(mean), std=tuple(std))


def eval_resize_size(img_size: int, crop_pct: float) -> int:
    """The shorter side before the centre crop, as timm's eval transform computes it."""
    return math.floor(img_size / crop_pct)


def resize_crop_uint8(resize: int, crop: int, interpolation: str = "bicubic"):
    """PIL image -> uint8 [3, crop, crop]: shorter side to ``resize``, centre crop (decode-once storage)."""
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {', '.join(_INTERPOLATION)}, got {interpolation!r}")
    return T.Compose([T.Resize(resize, interpolation=_INTERPOLATION[interpolation]), T.CenterCrop(crop),
                      T.PILToTensor()])
