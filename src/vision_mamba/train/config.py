"""Training configuration: typed defaults, YAML files merged over them, command-line overrides.

Precedence: the defaults below <- a YAML file (``--config``; it may start from another with ``base: other.yaml``,
resolved relative to the file) <- ``--set key=value`` and the shortcut flags (``--epochs 50`` is ``--set
epochs=50``). Every key is a field of :class:`TrainConfig`; an unknown key, in a file or on the command line, is an
error naming the key and the nearest known ones, raised before anything is built. Keys holding a mapping
(``model_kwargs``) accept ``--set model_kwargs.depth=6``. The resolved configuration is saved as
``config.yaml`` in the run directory and inside every checkpoint.

The defaults are the paper's ImageNet recipe for Vim-Ti. ``vision-mamba train`` without ``--config`` starts from
the built-in quick-start preset instead (``configs/synthetic/vim.yaml``: a small Vim on the synthetic shapes, a few
minutes on a laptop CPU). ``configs/`` (shipped in the package) holds the recipes per model and dataset.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..engine.config import BUILTIN_CONFIGS, ConfigError, TypedConfig, coerce, parse_overrides
from ..engine.config import check_keys as _check_keys
from ..engine.config import load_yaml as _load_yaml

__all__ = ["TrainConfig", "ConfigError", "load_yaml", "parse_overrides", "apply_overrides", "resolve_config", "QUICKSTART"]

QUICKSTART = BUILTIN_CONFIGS / "synthetic" / "vim.yaml"


@dataclass
class TrainConfig(TypedConfig):
    """Every setting of a training run. The defaults are the paper's ImageNet-1k recipe for Vim-Ti (DeiT's
    recipe; see docs/training.md); a YAML file and the command line override them."""
    # ---------------------------------------------------------------- model
    model: str = "vim_tiny_patch16_224"  # any timm model name (vim_*, deit_tiny_patch16_224, resnet18, ...)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    drop_path: float = 0.0  # stochastic depth (drop_path_rate)
    drop: float = 0.0  # dropout before the classifier (drop_rate)
    finetune: Optional[str] = None  # start from these weights (classifier of another size dropped, pos_embed resized)
    finetune_ema: bool = False  # take the EMA weights of a training checkpoint given to finetune
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # model and images in channels-last memory format (convnets run faster on CUDA)
    cuda_graph: bool = True  # replay each training step from one CUDA graph where possible (CUDA, one process,
    #   adamw / adam / sgd, bf16 or fp32, no compile; see train/graphed.py); elsewhere, or false: eager steps
    # ---------------------------------------------------------------- distillation (train/distill.py)
    teacher: Optional[str] = None  # a trained timm classifier (e.g. resnet26d) to distill from; null: none
    teacher_checkpoint: Optional[str] = None  # its weights (same classes), e.g. another run's final.safetensors
    teacher_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments of the teacher
    #   (default: those stored in the metadata of weights exported by this command)
    teacher_img_size: Optional[int] = None  # the teacher sees the images resized to this side (e.g. the size it
    #   was trained at, where the student fine-tunes at a larger img_size); null: as the student sees them
    distill: str = "hard"  # hard: cross-entropy with the teacher's argmax (DeiT); soft: KL at distill_tau
    distill_alpha: float = 0.5  # weight of the teacher term (1 - alpha: the usual loss on the labels)
    distill_tau: float = 1.0  # temperature of soft distillation
    # ---------------------------------------------------------------- data
    data: Optional[str] = None  # 'synthetic' (built in) or an ImageFolder root with <train_split>/ and <val_split>/
    train_split: str = "train"
    val_split: str = "val"
    img_size: int = 224  # training and evaluation resolution (passed to the model as img_size)
    crop_pct: float = 0.875  # evaluation: resize to img_size / crop_pct, then centre crop img_size
    interpolation: str = "bicubic"
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    gpu_resident: Union[bool, str] = "auto"  # decode once into device memory, augment there (true | false | auto)
    resident_size: Optional[int] = None  # side of the stored training images (default 1.25 x img_size)
    resident_max_gb: float = 8.0  # 'auto' uses the resident path up to this size
    workers: int = 8  # DataLoader worker processes (streaming path, decoding)
    synthetic_train: int = 6000  # built-in dataset: images per split and their size
    synthetic_val: int = 1000
    synthetic_size: int = 32
    # ---------------------------------------------------------------- augmentation (via timm)
    no_aug: bool = False  # no random crop / flip / RandAugment / erasing / mixup (centre crops)
    scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # random resized crop: area fraction
    ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333333])  # random resized crop: aspect ratio
    hflip: float = 0.5
    color_jitter: float = 0.3  # streaming path, used only when auto_augment is off
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # RandAugment policy (timm syntax); null: off
    ra_group: int = 8  # device path: images that share one RandAugment draw
    reprob: float = 0.25  # random erasing probability
    remode: str = "pixel"
    recount: int = 1
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1  # label smoothing
    repeated_aug: int = 3  # repeated augmentation: repeats per image (1 = off)
    # ---------------------------------------------------------------- optimisation
    epochs: int = 300  # with time_limit_min: the most epochs
    batch_size: int = 1024  # global batch (all processes together)
    eval_batch_size: Optional[int] = None  # per process (default: 2 x the per-process training batch)
    opt: str = "adamw"
    lr: float = 1e-3  # absolute (the paper: 5e-4 x global batch / 512)
    weight_decay: float = 0.1  # not applied to 1-D parameters, pos_embed, cls_token, A_log, D (no_weight_decay)
    opt_eps: float = 1e-8
    opt_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # SGD-type optimizers
    clip_grad: Optional[float] = None  # max gradient norm (null: no clipping)
    sched: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    ema: bool = True  # exponential moving average of the weights (evaluated and exported next to the model)
    ema_decay: float = 0.99996
    ema_warmup: bool = False  # ramp the EMA decay up over the first steps (timm ModelEmaV3)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp16, fp32
    max_nonfinite: int = 20  # stop after this many non-finite losses in a row
    max_nonfinite_total: Optional[int] = 200  # ... or this many in all (null: no limit)
    time_limit_min: Optional[float] = None  # fit the number of epochs into this wall-clock budget (docs/training.md)
    # ---------------------------------------------------------------- run
    output: Optional[str] = None  # run directory (default runs/<model>-<data>-<time>)
    resume: Optional[str] = None  # a checkpoint (last.pth), a run directory, or 'auto' (see docs/training.md)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    cpu_threads: Optional[int] = None  # torch intra-op threads while training on the CPU (null: torch's default)
    eval_interval: int = 1  # evaluate every n epochs (and always after the last)
    log_interval: int = 20  # steps between progress-bar updates (each costs one GPU sync)
    save_interval: int = 1  # write last.pth every n epochs (and on interruption and at the end)
    export_dtype: str = "float32"  # dtype of the exported safetensors weights: float32, float16, bfloat16
    progress: bool = True  # tqdm progress bars

    # ---------------------------------------------------------------- helpers (keys, to_dict, from_dict: TypedConfig)

    @property
    def mixup_active(self) -> bool:
        return not self.no_aug and (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def validate(self) -> None:
        """Check ranges and choices; raise :class:`ConfigError` naming the key."""
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config key '{key}': {why} (got {getattr(self, key)!r})")

        choices = dict(precision=("auto", "bf16", "fp16", "fp32"), remode=("const", "rand", "pixel"),
                       distill=("hard", "soft"),
                       mixup_mode=("batch", "pair", "elem"), interpolation=("bicubic", "bilinear", "nearest"),
                       export_dtype=("float32", "float16", "bfloat16"))
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"must be one of {', '.join(allowed)}")
        if not (isinstance(self.gpu_resident, bool) or self.gpu_resident == "auto"):
            raise bad("gpu_resident", "must be true, false or auto")
        for key in ("img_size", "epochs", "batch_size", "eval_interval", "log_interval", "save_interval",
                    "synthetic_train", "synthetic_val", "synthetic_size", "ra_group", "recount", "max_nonfinite",
                    "repeated_aug"):
            if getattr(self, key) <= 0:
                raise bad(key, "must be > 0")
        for key in ("workers", "warmup_epochs", "drop_path", "drop", "weight_decay", "reprob", "mixup", "cutmix",
                    "smoothing", "color_jitter", "min_lr", "warmup_lr"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        for key in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob", "drop_path", "drop"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, "must be in [0, 1]")
        if not 0 < self.crop_pct <= 1:
            raise bad("crop_pct", "must be in (0, 1]")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if self.smoothing >= 1:
            raise bad("smoothing", "must be < 1")
        if not 0 < self.ema_decay < 1:
            raise bad("ema_decay", "must be in (0, 1)")
        if self.cpu_threads is not None and self.cpu_threads <= 0:
            raise bad("cpu_threads", "must be null or > 0")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise bad("eval_batch_size", "must be null or > 0")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise bad("clip_grad", "must be null or > 0")
        if self.time_limit_min is not None and self.time_limit_min <= 0:
            raise bad("time_limit_min", "must be null or > 0")
        if self.time_limit_min is not None and self.warmup_epochs < 1:
            raise bad("warmup_epochs", "must be >= 1 with time_limit_min (the epoch count is fixed during warm-up)")
        if self.warmup_epochs >= self.epochs and self.time_limit_min is None:
            raise bad("warmup_epochs", f"must be smaller than epochs ({self.epochs}); for a run this short add "
                                       f"--set warmup_epochs={max(self.epochs - 1, 0)}")
        if self.batch_size % 2 and self.mixup_active:
            raise bad("batch_size", "must be even with mixup / cutmix")
        for key in ("scale", "ratio", "opt_betas"):
            value = getattr(self, key)
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise bad(key, "must be [low, high] with 0 < low <= high")
        if self.scale[1] > 1:
            raise bad("scale", "the area fraction cannot exceed 1")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise bad("std" if len(self.mean) == 3 else "mean", "mean and std need 3 values each, std > 0")
        if self.auto_augment is not None and not self.auto_augment.strip():
            self.auto_augment = None
        if not self.data:
            raise bad("data", "is required: an ImageFolder root, or 'synthetic' for the built-in dataset")
        if self.teacher and not self.teacher_checkpoint:
            raise bad("teacher_checkpoint", f"is required with a teacher ({self.teacher}): distilling from "
                                            f"untrained weights teaches nothing")
        if self.teacher_checkpoint and not self.teacher:
            raise bad("teacher", "is required with teacher_checkpoint: the timm model name of those weights")
        if self.teacher_img_size is not None and self.teacher_img_size < 1:
            raise bad("teacher_img_size", "must be a positive side in pixels, or null")
        if not 0 <= self.distill_alpha <= 1:
            raise bad("distill_alpha", "must be in [0, 1]")
        if self.distill_tau <= 0:
            raise bad("distill_tau", "must be > 0")
        if self.resident_size is not None and self.resident_size < self.img_size:
            raise bad("resident_size", f"must be at least img_size ({self.img_size})")
        sizes = [("model_kwargs", "img_size", self.img_size)]
        if self.teacher:
            sizes.append(("teacher_kwargs", "teacher_img_size", self.teacher_img_size or self.img_size))
        for key, size_key, size in sizes:
            # the model would be built for another size than the images it is given (an error at its first batch)
            if (getattr(self, key) or {}).get("img_size", size) not in (size, [size, size], (size, size)):
                raise bad(key, f"its img_size is not the {size} px the images are resized to; set {size_key} "
                               f"instead")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise bad("device", "must be auto, cpu, cuda or cuda:N") from None
        self._check_timm_choices(bad)

    def _check_timm_choices(self, bad) -> None:
        """The optimizer, the schedule and the augmentation policy are timm's: each is built once on a dummy
        parameter / image here, so a typo is reported before the run starts rather than after the model is built."""
        import difflib

        import torch
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        dummy = torch.nn.Linear(1, 1)
        try:
            optimizer = create_optimizer_v2(dummy, opt=self.opt, lr=self.lr)
        except (ValueError, AssertionError, KeyError, ImportError) as e:
            names = []
            try:
                from timm.optim import list_optimizers

                names = list_optimizers()
            except ImportError:
                pass
            close = difflib.get_close_matches(str(self.opt).lower(), names, n=3)
            raise bad("opt", f"not an optimizer timm can make ({e})" +
                      (f"; did you mean {', '.join(close)}?" if close else "")) from None
        try:
            create_scheduler_v2(optimizer, sched=self.sched, num_epochs=max(self.epochs, 2),
                                warmup_epochs=0, updates_per_epoch=1)
        except (ValueError, AssertionError, KeyError):
            known = ["cosine", "tanh", "step", "multistep", "plateau", "poly", "constant"]
            close = difflib.get_close_matches(str(self.sched).lower(), known, n=2)
            raise bad("sched", "not a schedule timm can make" +
                      (f"; did you mean {', '.join(close)}?" if close else f" (e.g. {', '.join(known)})")) from None
        if self.auto_augment and not self.no_aug:
            from timm.data import create_transform

            # timm skips a section without a number ('rand-xyz' is its default RandAugment): refused here
            policy, *sections = self.auto_augment.split("-")
            for section in sections:
                if not re.search(r"\d", section) and not (policy == "rand" and section.startswith("t")):
                    raise bad("auto_augment", f"section {section!r} of {self.auto_augment!r} has no number, so timm "
                                              "would ignore it; sections are a key and a value, e.g. "
                                              "rand-m9-mstd0.5-inc1 or augmix-m5-w4-d2")
            try:
                create_transform(32, is_training=True, auto_augment=self.auto_augment)
            except (ValueError, AssertionError, KeyError, IndexError) as e:
                raise bad("auto_augment", f"not an augmentation policy timm knows ({e or type(e).__name__}); "
                                          f"e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original") from None


def check_keys(values: Dict[str, Any], source: str) -> None:
    _check_keys(values, TrainConfig.keys(), source)


def load_yaml(path: "str | Path") -> Dict[str, Any]:
    """Read a YAML config file, its ``base:`` chain first. Returns the raw mapping (keys checked)."""
    return _load_yaml(path, TrainConfig.keys())


def apply_overrides(values: Dict[str, Any], overrides: Dict[str, Any], source: str) -> None:
    dict_keys = {f.name for f in dataclasses.fields(TrainConfig) if typing.get_origin(
        typing.get_type_hints(TrainConfig)[f.name]) in (dict, Dict)}
    plain = {}
    for key, value in overrides.items():
        if "." in key:
            head, sub = key.split(".", 1)
            if head not in dict_keys:
                check_keys({head: None}, source)
                raise ConfigError(f"{source}: '{key}': only mapping keys ({', '.join(sorted(dict_keys))}) take "
                                  f"a dotted sub-key")
            values[head] = dict(values.get(head) or {})
            values[head][sub] = value
        else:
            plain[key] = value
    check_keys(plain, source)
    hints = typing.get_type_hints(TrainConfig)
    for key, value in plain.items():  # each value checked where it comes from, so an error names its source
        plain[key] = coerce(key, TrainConfig.normalise(value, hints[key]), hints[key], source)
    values.update(plain)


def resolve_config(path: "str | Path | None" = None, *overrides: Dict[str, Any],
                   sources: Optional[List[str]] = None) -> TrainConfig:
    """Defaults <- YAML file (with its bases) <- each override mapping in turn; checked and validated."""
    values: Dict[str, Any] = TrainConfig().to_dict()
    if path is not None:
        apply_overrides(values, load_yaml(path), f"config {path}")
    for i, override in enumerate(overrides):
        apply_overrides(values, override, (sources[i] if sources and i < len(sources) else "command line"))
    return TrainConfig.from_dict(values, source=str(path) if path else "config")
