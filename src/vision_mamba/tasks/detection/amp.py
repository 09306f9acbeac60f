"""Mixed precision for the parts of Mask R-CNN that tolerate it.

Autocast runs the backbone, the feature pyramid, the RPN conv head and the box / mask conv heads in bf16; their
outputs are cast back to fp32. Anchors, box decoding (absolute pixel coordinates would be rounded to 2-4 px in
bf16 at 512-1024 px), RoIAlign, the predictors, NMS and the losses stay in fp32. So the training loop does not
wrap the whole model in autocast: it calls :func:`set_autocast` once.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["AutocastMixin", "set_autocast"]


def _device_type(value: Any) -> Optional[str]:
    if isinstance(value, Tensor):
        return value.device.type
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _device_type(v)
            if found:
                return found
    if isinstance(value, dict):
        return _device_type(list(value.values()))
    return None


def _to_fp32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, tuple):
        items = [_to_fp32(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # namedtuples too
    if isinstance(value, list):
        return [_to_fp32(v) for v in value]
    if isinstance(value, dict):
        out = type(value)()
        for k, v in value.items():
            out[k] = _to_fp32(v)
        return out
    return value


class AutocastMixin:
    """Put before an nn.Module base: ``forward`` runs under autocast(``autocast_dtype``) when it is set, and
    returns fp32 tensors. Parameter names are those of the base class (checkpoints are unaffected)."""

    autocast_dtype: Optional[torch.dtype] = None

    def forward(self, *args, **kwargs):
        dtype = self.autocast_dtype
        if dtype is None:
            return super().forward(*args, **kwargs)
        device_type = _device_type(args) or _device_type(kwargs) or "cpu"
        with torch.autocast(device_type=device_type, dtype=dtype):
            out = super().forward(*args, **kwargs)
        return _to_fp32(out)


def set_autocast(model: nn.Module, dtype: Optional[torch.dtype]) -> int:
    """Set the autocast dtype (None: fp32) of every AutocastMixin module in ``model``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, AutocastMixin):
            module.autocast_dtype = dtype
            count += 1
    return count
