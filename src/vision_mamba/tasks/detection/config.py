"""Detection configuration: typed defaults, a YAML file merged over them, then ``key=value`` overrides.

Unknown keys and values of the wrong type are errors (with a suggestion), raised before any work starts. The
resolved configuration is what gets saved in the run directory and inside every checkpoint, so a checkpoint
alone is enough to rebuild its model.

    cfg = load_config("configs/detection/coco128_vim_tiny.yaml", ["train.iters=200", "model.img_size=512"])
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ...engine.config import ConfigError, config_text, find_config

__all__ = [
    "ConfigError", "ModelConfig", "DataConfig", "TrainConfig", "EvalConfig", "DetectionConfig", "load_config",
    "parse_overrides",
]


@dataclass
class ModelConfig:
    """The ViTDet-style Mask R-CNN: a plain backbone from timm, a simple feature pyramid, torchvision's heads."""

    backbone: str = "vim_tiny_patch16_224"  # any timm model with forward_intermediates (Vim, ViT / DeiT)
    backbone_args: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (e.g. depth)
    img_size: int = 1024  # the fixed square input of the backbone (the LSJ crop size); a multiple of 64
    drop_path_rate: float = 0.1
    init: Optional[str] = None  # classification checkpoint for the backbone (head and class token dropped)
    pyramid_channels: int = 256
    anchor_sizes: Optional[List[int]] = None  # one per level P2..P6; None: 32..512 scaled by img_size / 1024
    aspect_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_conv_depth: int = 2
    rpn_pre_nms_top_n_train: int = 2000  # per level
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_head_convs: int = 4  # ViTDet's "4conv1fc" box head, with LayerNorm
    box_head_fc: int = 1024
    mask_head_convs: int = 4
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    """COCO-format data; the four paths are relative to ``root`` (unless absolute)."""

    root: Optional[str] = None
    train_images: str = "images/train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "images/val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    scale_range: List[float] = field(default_factory=lambda: [0.1, 2.0])  # large-scale jitter of img_size
    hflip_prob: float = 0.5
    min_box_size: float = 1.0  # instances smaller than this (pixels, after augmentation) are dropped
    keep_empty: bool = True  # keep training images without any (non-crowd) object
    on_bad_annotation: str = "error"  # 'error' | 'skip' (drop malformed annotations, counted and reported)
    workers: int = 4


@dataclass
class TrainConfig:
    """Iteration-based AdamW with layer-wise lr decay, warm-up, then step or cosine decay."""

    iters: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.1
    layer_decay: float = 0.75  # lr of backbone block i: lr * layer_decay ** (depth - i); 1.0 disables
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_iters: int = 250
    warmup_factor: float = 0.001
    schedule: str = "step"  # 'step' | 'cosine'
    milestones: List[float] = field(default_factory=lambda: [0.889, 0.963])  # fractions of iters (step)
    gamma: float = 0.1
    clip_grad: Optional[float] = None  # max gradient norm; None: no clipping
    precision: str = "auto"  # 'auto' (bf16 on CUDA, fp32 on CPU) | 'bf16' | 'fp16' | 'fp32'
    device: str = "auto"
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    time_limit_minutes: Optional[float] = None  # stop training cleanly after this long (then still evaluate)


@dataclass
class EvalConfig:
    batch_size: int = 8
    mask_threshold: float = 0.5
    train_set: bool = False  # after training, also evaluate on the training images (a learning sanity check)
    max_images: Optional[int] = None  # evaluate on the first n images only


@dataclass
class DetectionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: str = "runs/detection"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = "config") -> "DetectionConfig":
        return _build(cls, values, source, prefix="")

    def validate(self) -> "DetectionConfig":
        """Check the values that have a restricted range; raise ConfigError naming the key."""
        m, d, t = self.model, self.data, self.train
        if m.img_size <= 0 or m.img_size % 64:
            raise ConfigError(f"model.img_size must be a positive multiple of 64 (P6 is img_size / 64); "
                              f"got {m.img_size}")
        if m.anchor_sizes is not None and len(m.anchor_sizes) != 5:
            raise ConfigError(f"model.anchor_sizes needs one size per level P2..P6 (5); got {m.anchor_sizes}")
        # sizes and counts that would fail deep inside torch (or at the evaluation after training), or make a model
        # that silently detects nothing
        e = self.eval
        least = {"model.pyramid_channels": (m.pyramid_channels, 1), "model.box_head_fc": (m.box_head_fc, 1),
                 "model.box_batch_size_per_image": (m.box_batch_size_per_image, 1),
                 "model.box_detections_per_img": (m.box_detections_per_img, 1),
                 "model.rpn_pre_nms_top_n_train": (m.rpn_pre_nms_top_n_train, 1),
                 "model.rpn_post_nms_top_n_train": (m.rpn_post_nms_top_n_train, 1),
                 "model.rpn_pre_nms_top_n_test": (m.rpn_pre_nms_top_n_test, 1),
                 "model.rpn_post_nms_top_n_test": (m.rpn_post_nms_top_n_test, 1),
                 "model.rpn_conv_depth": (m.rpn_conv_depth, 0), "model.box_head_convs": (m.box_head_convs, 0),
                 "model.mask_head_convs": (m.mask_head_convs, 0), "data.workers": (d.workers, 0),
                 "data.min_box_size": (d.min_box_size, 0),
                 "train.warmup_iters": (t.warmup_iters, 0), "eval.batch_size": (e.batch_size, 1),
                 "eval.max_images": (1 if e.max_images is None else e.max_images, 1)}
        for key, (value, lowest) in least.items():
            if value < lowest:
                raise ConfigError(f"{key} must be at least {lowest}; got {value}")
        for key, values in (("model.aspect_ratios", m.aspect_ratios), ("model.anchor_sizes", m.anchor_sizes or [1])):
            if not values or min(values) <= 0:
                raise ConfigError(f"{key} must be positive numbers; got {values}")
        for key, value in (("data.hflip_prob", d.hflip_prob), ("eval.mask_threshold", e.mask_threshold),
                           ("model.drop_path_rate", m.drop_path_rate)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{key} must be in [0, 1]; got {value}")
        if t.lr <= 0 or t.weight_decay < 0:
            raise ConfigError(f"train.lr must be positive and train.weight_decay >= 0; got {t.lr}, {t.weight_decay}")
        if t.gamma <= 0:  # (0 would zero the lr from the first milestone on)
            raise ConfigError(f"train.gamma must be positive; got {t.gamma}")
        # fractions of train.iters: at 0 the decay would apply from the start, at 1 or more never
        if not all(0 < f < 1 for f in t.milestones) or t.milestones != sorted(t.milestones):
            raise ConfigError(f"train.milestones must be ascending fractions of train.iters in (0, 1); got "
                              f"{t.milestones}")
        if not 0 < t.warmup_factor <= 1:  # the lr factor the warm-up starts from
            raise ConfigError(f"train.warmup_factor must be in (0, 1]; got {t.warmup_factor}")
        if t.clip_grad is not None and t.clip_grad <= 0:  # (0 would silently not clip, < 0 flip the gradients)
            raise ConfigError(f"train.clip_grad must be positive (or null: no clipping); got {t.clip_grad}")
        if t.time_limit_minutes is not None and t.time_limit_minutes < 0:  # (0: stop after the first iteration)
            raise ConfigError(f"train.time_limit_minutes must be at least 0 (or null: no limit); got "
                              f"{t.time_limit_minutes}")
        if len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]:
            raise ConfigError(f"data.scale_range must be [min, max] with 0 < min <= max; got {d.scale_range}")
        if d.on_bad_annotation not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_annotation must be 'error' or 'skip'; got {d.on_bad_annotation!r}")
        if t.schedule not in ("step", "cosine"):
            raise ConfigError(f"train.schedule must be 'step' or 'cosine'; got {t.schedule!r}")
        if t.iters <= 0 or t.batch_size <= 0:
            raise ConfigError(f"train.iters and train.batch_size must be positive; got {t.iters}, {t.batch_size}")
        if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1); got {t.betas}")
        if not 0 < t.layer_decay <= 1:
            raise ConfigError(f"train.layer_decay must be in (0, 1]; got {t.layer_decay}")
        if t.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"train.precision must be auto, bf16, fp16 or fp32; got {t.precision!r}")
        if t.log_every <= 0 or t.checkpoint_every < 0:
            raise ConfigError(f"train.log_every must be positive and train.checkpoint_every >= 0; got "
                              f"{t.log_every}, {t.checkpoint_every}")
        if t.device != "auto":
            import torch

            try:
                torch.device(t.device)
            except (RuntimeError, ValueError):
                raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {t.device!r}") from None
        import timm

        if not timm.is_model(m.backbone):
            close = difflib.get_close_matches(m.backbone, timm.list_models(), n=3)
            raise ConfigError(f"model.backbone: unknown timm model {m.backbone!r}" +
                              (f" (did you mean {', '.join(close)}?)" if close else ""))
        return self


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` converted to type ``tp`` (int -> float allowed), or ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], key, source)
    if tp is Any:
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_check_value(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _unknown(key: str, known: Sequence[str], source: str) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{key[: len(key) - len(name)]}{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'{hint} (known here: {', '.join(known)})")


def _build(cls, values: Any, source: str, prefix: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'the file'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise _unknown(prefix + str(key), names, source)
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, values[name], source, prefix + name + ".")
        else:
            kwargs[name] = _check_value(values[name], tp, prefix + name, source)
    return cls(**kwargs)


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "backbone_args":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())[:200]


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["train.iters=200", "data.scale_range=[0.5, 1.5]"]`` -> nested dict (values parsed as YAML)."""
    nested: Dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_first_line(e)})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return nested


def load_config(path: "Optional[str | Path]" = None, overrides: Sequence[str] = (),
                base: Optional[Dict[str, Any]] = None) -> DetectionConfig:
    """Defaults (or ``base``, e.g. the config stored in a checkpoint), then the YAML file, then overrides."""
    values = DetectionConfig().to_dict() if base is None else _merge(DetectionConfig().to_dict(), base)
    DetectionConfig.from_dict(values, "base config")  # unknown keys in a stored config are errors too
    if path is not None:
        path = find_config(path)  # (a path, or a shipped config's name)
        text = config_text(path)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path}: not valid YAML ({_first_line(e)})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: expected a mapping of sections, got a {type(loaded).__name__}")
        DetectionConfig.from_dict(loaded or {}, str(path))  # check keys and types against the file's own names
        values = _merge(values, loaded or {})
    if overrides:
        parsed = parse_overrides(overrides)
        DetectionConfig.from_dict(_merge(values, parsed), "command line")
        values = _merge(values, parsed)
    return DetectionConfig.from_dict(values).validate()
