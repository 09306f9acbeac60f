"""Models for training: any timm classifier by name (Vim registers its own), weights to start from, EMA."""
from __future__ import annotations

import difflib
import logging
from typing import Any, Dict, Optional

import timm
import torch
from torch import nn

import vision_mamba  # noqa: F401  (registers the Vim models with timm)

from .config import ConfigError

__all__ = ["check_model_name", "create_classifier", "EmaWeights", "unwrap"]

_logger = logging.getLogger(__name__)


def check_model_name(name: str, key: str = "model") -> None:
    """A :class:`ConfigError` (naming config ``key``) with suggestions unless timm knows ``name``."""
    if not timm.is_model(name):
        close = _similar_model_names(name)
        raise ConfigError(f"config key '{key}': unknown model {name!r}" +
                          (f" (did you mean {', '.join(close)}?)" if close else "") +
                          "; any name from timm.list_models() works, e.g. vim_tiny_patch16_224, deit_tiny_patch16_224")


def _similar_model_names(name: str, n: int = 5) -> list:
    """Known names like ``name``, the closest first: compared whole, and by their beginning (so 'vim_tinyy' finds
    vim_tiny_patch16_224, which a whole-name comparison ranks below gcvit_tiny)."""
    def score(known: str) -> float:
        whole = difflib.SequenceMatcher(None, name, known).ratio()
        start = difflib.SequenceMatcher(None, name, known[:len(name)]).ratio()
        return max(whole, start)

    scored = sorted(((score(m), m) for m in timm.list_models()), key=lambda t: (-t[0], t[1]))
    return [m for r, m in scored[:n] if r >= 0.75]


def create_classifier(name: str, *, num_classes: int, img_size: Optional[int] = None, drop_path: float = 0.0,
                      drop: float = 0.0, model_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """``timm.create_model(name, num_classes=..., img_size=..., drop_path_rate=..., drop_rate=..., **kwargs)``.

    ``img_size`` is passed to models that take it (ViT / DeiT / Vim: the position embedding is made for it) and
    left out for the others (CNNs take any size). An unknown name is a :class:`ConfigError` with suggestions.
    """
    check_model_name(name)
    kwargs = dict(num_classes=num_classes, **(model_kwargs or {}))
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    if drop > 0:
        kwargs["drop_rate"] = drop
    if img_size is not None and "img_size" not in kwargs:
        try:
            model = timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise ConfigError(f"model {name!r} does not accept these arguments: {e}") from e
            _logger.info("%s takes no img_size argument; created at its own default size", name)
        except (AssertionError, ValueError) as e:
            raise ConfigError(f"model {name!r} cannot be built with {kwargs} at img_size {img_size}: "
                              f"{e or type(e).__name__}") from e
        else:
            return _check_patches(model, name, img_size)
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r} does not accept these arguments: {e}") from e
    except (AssertionError, ValueError) as e:
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {e or type(e).__name__}") from e


def _check_patches(model: nn.Module, name: str, img_size: int) -> nn.Module:
    """A patch model (Vim, ViT / DeiT) at an image size its patches do not tile would silently drop the last
    pixels of every image (or fail at the first step, below one patch): a ConfigError before any work instead."""
    embed = getattr(model, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    if embed is None or patch is None or getattr(embed, "dynamic_img_pad", False):
        return model
    def pair(value) -> tuple:
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    patch = pair(patch)
    stride = pair(getattr(embed, "stride", None) or patch)
    if img_size >= patch[0] and (img_size - patch[0]) % stride[0] == 0:
        return model
    what = f"config key 'img_size': {name}'s {patch[0]}x{patch[0]} patches at stride {stride[0]}"
    if img_size < patch[0]:
        raise ConfigError(f"{what} need images of at least {patch[0]} px, got {img_size}")
    lower = patch[0] + (img_size - patch[0]) // stride[0] * stride[0]
    raise ConfigError(f"{what} do not tile {img_size} px images; use a size such as {lower} or {lower + stride[0]} "
                      f"(the patch size plus a multiple of the stride)")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and / or torch.compile."""
    while True:
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class EmaWeights:
    """Exponential moving average of the weights through timm: ModelEmaV3 (step-aware, optional decay warm-up)
    where timm has it, else ModelEmaV2."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        try:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)
            self._takes_step = True
        except ImportError:  # older timm
            from timm.utils import ModelEmaV2

            self.ema = ModelEmaV2(model, decay=decay)
            self._takes_step = False
        for p in self.ema.module.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self._takes_step:
            self.ema.update(model, step=step)
        else:
            self.ema.update(model)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.ema.module.load_state_dict(state)
