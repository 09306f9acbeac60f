"""RMSNorm computed in fp32 (the residual stream is fp32), returned in the weight's dtype."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.rms_norm import add_rms_norm_ref


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dim. x: [..., D]."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return add_rms_norm_ref(x, None, self.weight, self.eps, residual_in_fp32=False)[0]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
