"""Segmentation run configuration: typed defaults, YAML files merged over them, ``--set key=value`` overrides.

Every key is a field of :class:`SegConfig`; an unknown key (in a file or on the command line) is an error that
names the key and suggests the nearest known ones. A YAML file may start from another with ``base: other.yaml``
(resolved relative to the file). The resolved configuration is saved in the run directory.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...engine.config import ConfigError, TypedConfig
from ...engine.config import check_keys as _check_keys
from ...engine.config import load_yaml as _load_yaml
from ...engine.config import parse_overrides as _parse_overrides

__all__ = ["SegConfig", "ConfigError", "load_config", "parse_overrides", "build_config"]


@dataclass
class SegConfig(TypedConfig):
    # ---------------------------------------------------------------- model
    backbone: str = "vim_tiny_patch16_224"  # any timm model with forward_intermediates (Vim, ViT / DeiT)
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    init_checkpoint: Optional[str] = None  # classifier checkpoint for the backbone (head dropped, pos_embed resized)
    out_indices: Optional[List[int]] = None  # blocks feeding the pyramid; None: evenly spaced (5, 11, 17, 23)
    feature_norm: bool = False  # pass the block outputs through the backbone's final norm
    drop_path_rate: float = 0.1
    norm: str = "bn"  # norm of the adapter and heads: 'bn' (SyncBN under DDP) or 'gn'
    head_channels: int = 192  # UperNet width
    pool_scales: List[int] = field(default_factory=lambda: [1, 2, 3, 6])
    head_dropout: float = 0.1
    aux_channels: int = 256  # auxiliary FCN head width (on the stride-16 level)
    aux_weight: float = 0.4  # 0 disables the auxiliary head
    grad_checkpointing: bool = False
    # ---------------------------------------------------------------- data
    dataset: str = "folders"  # 'folders' (images + class-index masks + class list) or 'ade20k'
    data_root: Optional[str] = None
    train_images: str = "images/train"  # folders: relative to data_root
    train_masks: str = "masks/train"
    val_images: str = "images/val"
    val_masks: str = "masks/val"
    classes_file: Optional[str] = None  # json / yaml / txt mapping raw mask values to names (relative to data_root)
    ignore_values: List[int] = field(default_factory=list)  # raw mask values that mean 'unlabelled'
    ignore_index: int = 255
    cache_images: bool = True  # decode every image once and keep it in memory (small datasets)
    num_workers: int = 4
    # ---------------------------------------------------------------- augmentation
    crop_size: List[int] = field(default_factory=lambda: [512, 512])  # [h, w] (an int means square)
    resize_scale: List[int] = field(default_factory=lambda: [2048, 512])  # [long, short] bound at ratio 1
    ratio_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75  # re-draw crops where one class covers more than this (1.0: off)
    flip_prob: float = 0.5
    color_jitter: Optional[List[float]] = field(default_factory=lambda: [0.125, 0.5, 0.5, 0.05])  # b, c, s, h
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_DEFAULT_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_DEFAULT_STD))
    # ---------------------------------------------------------------- evaluation
    test_scale: Optional[List[int]] = None  # [long, short]; None: resize_scale
    test_mode: str = "whole"  # 'whole' or 'slide'
    slide_stride: Optional[List[int]] = None  # None: two thirds of the crop
    eval_every: int = 0  # iterations between validations during training (0: only at the end)
    eval_train: bool = False  # also measure mIoU on the training images (no augmentation) at the end
    # ---------------------------------------------------------------- optimisation
    iters: int = 160000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6  # warm-up starts at lr * warmup_ratio
    poly_power: float = 1.0
    min_lr: float = 0.0
    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay: float = 0.92  # layer-wise lr decay of the backbone (1.0: off)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    batch_size: int = 16  # per process
    grad_clip: Optional[float] = None
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32
    time_budget_s: Optional[float] = None  # wall-clock budget of the training loop: the schedule is fitted to it
    stop_iter: Optional[int] = None  # end after this iteration though the schedule runs to iters (replays a cut run)
    # ---------------------------------------------------------------- run
    output: str = "runs/segmentation"
    checkpoint_every: int = 2000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"

    # ---------------------------------------------------------------- helpers (keys, to_dict, from_dict: TypedConfig)
    @classmethod
    def normalise(cls, value: Any, hint: Any) -> Any:
        return _as_list(value, hint)

    @property
    def crop_hw(self) -> Tuple[int, int]:
        return _pair(self.crop_size)

    @property
    def test_scale_lh(self) -> Optional[Tuple[int, int]]:
        scale = self.test_scale if self.test_scale is not None else self.resize_scale
        return None if scale is None else _pair(scale)

    @property
    def slide_stride_hw(self) -> Tuple[int, int]:
        if self.slide_stride is not None:
            return _pair(self.slide_stride)
        h, w = self.crop_hw
        return max(1, (2 * h) // 3), max(1, (2 * w) // 3)

    def validate(self) -> None:
        """Check ranges and choices; raise :class:`ConfigError` naming the key."""
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config key '{key}': {why} (got {getattr(self, key)!r})")

        self.crop_size = list(_pair(self.crop_size))
        for key in ("crop_size", "resize_scale"):
            value = getattr(self, key)
            if len(_pair(value)) != 2 or min(_pair(value)) <= 0:
                raise bad(key, "must be a positive int or a pair of positive ints")
        for key in ("test_scale", "slide_stride"):
            value = getattr(self, key)
            if value is not None and (len(_pair(value)) != 2 or min(_pair(value)) <= 0):
                raise bad(key, "must be null, a positive int or a pair of positive ints")
        if len(self.ratio_range) != 2 or not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise bad("ratio_range", "must be [low, high] with 0 < low <= high")
        choices = dict(dataset=("folders", "ade20k"), norm=("bn", "gn"), test_mode=("whole", "slide"),
                       precision=("auto", "bf16", "fp16", "fp32"))
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"must be one of {', '.join(allowed)}")
        positive = ("iters", "batch_size", "head_channels", "aux_channels", "checkpoint_every", "log_every")
        for key in positive:
            if getattr(self, key) <= 0:
                raise bad(key, "must be > 0")
        for key in ("warmup_iters", "eval_every", "num_workers"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.warmup_iters >= self.iters:
            raise bad("warmup_iters", f"must be smaller than iters ({self.iters}); for a run this short add "
                                      f"--set warmup_iters={max(self.iters - 1, 0)}")
        if not 0 < self.layer_decay <= 1:
            raise bad("layer_decay", "must be in (0, 1]")
        if not 0 <= self.flip_prob <= 1:
            raise bad("flip_prob", "must be in [0, 1]")
        if not 0 < self.cat_max_ratio <= 1:
            raise bad("cat_max_ratio", "must be in (0, 1]")
        if self.color_jitter is not None and len(self.color_jitter) != 4:
            raise bad("color_jitter", "must be null or [brightness, contrast, saturation, hue]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise bad("std" if len(self.mean) == 3 else "mean", "mean and std must each have 3 values, std > 0")
        if self.lr <= 0 or self.weight_decay < 0 or self.aux_weight < 0:
            raise bad("lr" if self.lr <= 0 else ("weight_decay" if self.weight_decay < 0 else "aux_weight"),
                      "lr must be > 0, weight_decay and aux_weight >= 0")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise bad("time_budget_s", "must be null or > 0")
        if self.stop_iter is not None and not 0 < self.stop_iter <= self.iters:
            raise bad("stop_iter", f"must be null or in 1..iters ({self.iters})")
        if not 0 <= self.ignore_index:
            raise bad("ignore_index", "must be >= 0")
        if not self.pool_scales or min(self.pool_scales) <= 0:
            raise bad("pool_scales", "must be a non-empty list of positive ints")


def _pair(value) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = list(value)
    if len(value) == 1:
        return int(value[0]), int(value[0])
    if len(value) != 2:
        return tuple(value)  # caught by validate()
    return int(value[0]), int(value[1])


def check_keys(values: Dict[str, Any], source: str) -> None:
    _check_keys(values, SegConfig.keys(), source)


def load_config(path: "str | Path") -> Dict[str, Any]:
    """Read a YAML config, following ``base:`` (a path relative to the file) first. Returns the raw mapping."""
    return _load_yaml(path, SegConfig.keys())


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """``['lr=2e-4', 'crop_size=[256, 256]']`` -> {'lr': '2e-4', 'crop_size': [256, 256]} (values read as YAML)."""
    out = _parse_overrides(items)
    check_keys(out, "--set")
    return out


def _as_list(value: Any, hint: Any) -> Any:
    """A bare number for a list-of-numbers field (``crop_size: 512``) is a one-element list; validate() makes
    the pairs."""
    args = typing.get_args(hint)
    is_list = typing.get_origin(hint) in (list, List) or any(typing.get_origin(a) in (list, List) for a in args)
    if is_list and isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


def build_config(path: "str | Path | None" = None, *overrides: Dict[str, Any],
                 base: Optional[Dict[str, Any]] = None) -> SegConfig:
    """Defaults <- ``base`` (a resumed run's saved config) <- YAML file (with its bases) <- each override mapping in
    turn, checked and validated."""
    values: Dict[str, Any] = SegConfig().to_dict()
    if base is not None:
        values.update({key: value for key, value in base.items() if key in values})
    if path is not None:
        values.update(load_config(path))
    for override in overrides:
        check_keys(override, "override")
        values.update(override)
    return SegConfig.from_dict(values, source=str(path) if path else "config")
