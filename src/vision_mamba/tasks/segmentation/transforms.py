"""Joint image + mask augmentation for training (torchvision.transforms.v2 with tv_tensors.Mask, so masks are
always resized with nearest interpolation) and the test-time resize.

Training pipeline (the paper's ADE20K recipe): random rescale (ratio 0.5-2.0 of a base scale, aspect kept) ->
random crop (re-drawn while one class covers more than ``cat_max_ratio`` of it) -> horizontal flip -> photometric
distortion (colour jitter) -> normalise -> pad to the crop size (image with 0 = the mean, mask with the ignore index).
All randomness comes from torch's global generator, which DataLoader seeds per worker.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = ["rescaled_size", "TrainTransform"]


def rescaled_size(size: Tuple[int, int], scale: Sequence[int], ratio: float = 1.0) -> Tuple[int, int]:
    """The (h, w) of an image of ``size`` resized, aspect kept, to fit ``ratio * scale`` where scale is
    (long side bound, short side bound): e.g. 480x640 in (2048, 512) -> 512x683."""
    h, w = size
    long_bound, short_bound = scale[0] * ratio, scale[1] * ratio
    factor = min(long_bound / max(h, w), short_bound / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _randint(high: int) -> int:
    """Uniform in [0, high]."""
    return int(torch.randint(0, high + 1, ()))


class TrainTransform:
    """(image uint8 [3, H, W], mask [H, W]) -> (image float [3, ch, cw] normalised, mask int64 [ch, cw]).

    Args:
        crop_size: (h, w) of the output.
        scale: (long, short) bounds at ratio 1 (see :func:`rescaled_size`).
        ratio_range: the rescale ratio is drawn uniformly from it.
        cat_max_ratio: up to 10 crops are drawn until no class covers more than this share of the labelled pixels
            (1.0: the first crop).
        flip_prob: horizontal flip probability.
        color_jitter: (brightness, contrast, saturation, hue) for torchvision's ColorJitter, or None.
        mean / std: normalisation, in [0, 1] units.
        ignore_index: the mask value of padding.
    """

    def __init__(self, crop_size: Tuple[int, int], scale: Sequence[int], ratio_range: Sequence[float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, flip_prob: float = 0.5,
                 color_jitter: Optional[Sequence[float]] = (0.125, 0.5, 0.5, 0.05),
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 ignore_index: int = 255):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.jitter = v2.ColorJitter(*color_jitter) if color_jitter is not None else None
        self.mean, self.std = list(mean), list(std)
        self.ignore_index = int(ignore_index)

    def crop_box(self, mask: Tensor) -> Tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop of ``mask`` [H, W] (smaller than the crop size if the
        image is; padding comes later)."""
        height, width = mask.shape[-2:]
        ch, cw = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top = left = 0
        for _ in range(10):
            top, left = _randint(height - ch), _randint(width - cw)
            if self.cat_max_ratio >= 1.0:
                break
            region = mask[..., top:top + ch, left:left + cw]
            labels = region[region != self.ignore_index].long()
            counts = torch.bincount(labels.flatten()) if labels.numel() else labels
            counts = counts[counts > 0]
            if counts.numel() > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio:
                break
        return top, left, ch, cw

    def __call__(self, image: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        if image.ndim != 3 or mask.ndim != 2 or tuple(image.shape[-2:]) != tuple(mask.shape):
            raise ValueError(f"expected image [3, H, W] and mask [H, W] of the same size, got "
                             f"{tuple(image.shape)} and {tuple(mask.shape)}")
        img, msk = tv_tensors.Image(image), tv_tensors.Mask(mask)
        size = rescaled_size(tuple(msk.shape[-2:]), self.scale, _uniform(*self.ratio_range))
        img = TF.resize(img, list(size), antialias=True)
        msk = TF.resize(msk, list(size))  # a Mask is resized with nearest interpolation
        top, left, ch, cw = self.crop_box(msk)
        img, msk = TF.crop(img, top, left, ch, cw), TF.crop(msk, top, left, ch, cw)
        if float(torch.rand(())) < self.flip_prob:
            img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
        if self.jitter is not None:
            img = self.jitter(img)
        img = TF.normalize(TF.to_dtype(img, torch.float32, scale=True), self.mean, self.std)
        pad_h, pad_w = self.crop_size[0] - ch, self.crop_size[1] - cw
        if pad_h or pad_w:  # [left, top, right, bottom]
            img = TF.pad(img, [0, 0, pad_w, pad_h], fill=0.0)
            msk = TF.pad(msk, [0, 0, pad_w, pad_h], fill=self.ignore_index)
        return img.as_subclass(Tensor), msk.as_subclass(Tensor).long()

    @classmethod
    def from_config(cls, config) -> "TrainTransform":
        return cls(config.crop_hw, config.resize_scale, config.ratio_range, config.cat_max_ratio, config.flip_prob,
                   config.color_jitter, config.mean, config.std, config.ignore_index)
