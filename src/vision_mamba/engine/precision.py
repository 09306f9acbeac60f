"""Mixed precision (bf16 autocast by default on GPU) and the guard that skips non-finite losses."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .distributed import DistributedContext

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": None, "float32": None, "none": None}


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """'auto' -> bf16 on CUDA, fp32 (no autocast) on CPU; else 'bf16' | 'fp16' | 'fp32'."""
    precision = precision.lower()
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in _DTYPES:
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32; got {precision!r}")
    return _DTYPES[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype], cache_enabled: bool = True):
    """An autocast context for ``dtype`` on ``device`` (a no-op for fp32). ``cache_enabled=False`` while capturing
    a CUDA graph: cached weight casts would be freed when the context exits."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Decides whether a step's loss may be applied. A NaN / Inf loss skips the step (counted); more than
    ``max_consecutive`` in a row, or more than ``max_total`` in all, stops the run with a message. Under DDP the
    decision is shared, so every rank skips the same steps."""

    def __init__(self, max_consecutive: int = 20, max_total: Optional[int] = None,
                 ctx: Optional[DistributedContext] = None):
        self.max_consecutive = max_consecutive
        self.max_total = max_total
        self.ctx = ctx
        self.skipped = 0
        self.consecutive = 0

    def ok(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all().float().reshape(1)
        if self.ctx is not None and self.ctx.is_distributed:
            finite = self.ctx.all_reduce_sum(finite) / self.ctx.world_size
        if bool(finite.item() == 1.0):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive or (self.max_total is not None and self.skipped > self.max_total):
            raise NonFiniteLossError(
                f"stopping: {self.skipped} steps had a non-finite loss ({self.consecutive} in a row). "
                "Lower the learning rate, enable gradient clipping, or try precision=fp32.")
        return False

    def state_dict(self):
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))
