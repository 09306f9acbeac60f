"""The block's Add -> RMSNorm, with an fp32 residual stream: a plain PyTorch reference and a fused Triton path.

    residual' = hidden                        (first block: no residual yet)
              = residual + hidden             (otherwise)
    (residual' in fp32 when residual_in_fp32)
    y = residual' / sqrt(mean(residual'^2) + eps) * weight

:func:`add_rms_norm` returns ``(y, residual')``. The reference computes in fp32 and returns ``y`` in the weight's
dtype (autocast casts it for the next linear layer); the Triton path (one kernel forward, one backward, instead of
about eight elementwise passes and launches each way) writes ``y`` directly in the autocast dtype when autocast is
on, which is the same rounding the next layer would apply. The Triton path runs where the scan backend resolves to
``triton`` (``VISION_MAMBA_SCAN``, see :mod:`vision_mamba.ops.backend`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .backend import resolve_backend

__all__ = ["add_rms_norm", "add_rms_norm_ref"]


def add_rms_norm_ref(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                     residual_in_fp32: bool = True) -> Tuple[Tensor, Tensor]:
    """Plain PyTorch: ``(y, residual')`` (see the module docstring)."""
    residual = hidden if residual is None else residual + hidden
    if residual_in_fp32:
        residual = residual.float()
    xf = residual.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(weight.dtype), residual


def _out_dtype(device: torch.device, weight: Tensor) -> torch.dtype:
    if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    if device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return weight.dtype


def add_rms_norm(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                 residual_in_fp32: bool = True, backend: Optional[str] = None,
                 out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Add -> RMSNorm: ``(y, residual')``, fused into one Triton kernel (each way) where the backend is
    ``triton`` (``backend`` overrides the configured one). ``out_dtype`` fixes the Triton path's output dtype
    (default: the autocast dtype when autocast is on, else the weight's)."""
    if resolve_backend(hidden.device, backend) == "triton" and hidden.shape[-1] <= 8192:
        from .rms_norm_triton import add_rms_norm_triton

        return add_rms_norm_triton(hidden, residual, weight, eps, residual_in_fp32,
                                   out_dtype or _out_dtype(hidden.device, weight))
    return add_rms_norm_ref(hidden, residual, weight, eps, residual_in_fp32)
