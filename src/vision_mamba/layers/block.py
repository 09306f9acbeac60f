"""Vim's block: Add -> RMSNorm -> bidirectional mixer, with an fp32 residual stream (no MLP)."""
from __future__ import annotations

from typing import Optional, Tuple

from timm.layers import DropPath
from torch import Tensor, nn

from ..ops.rms_norm import add_rms_norm
from .mixer import BiMambaMixer
from .norm import RMSNorm


class VimBlock(nn.Module):
    """(hidden, residual) -> (hidden', residual'), all [B, L, D].

    residual' = hidden (first block, residual None) or residual + drop_path(hidden), kept in fp32;
    hidden' = mixer(norm(residual')).
    """

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5, residual_in_fp32: bool = True,
                 **mixer_kwargs):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = BiMambaMixer(dim, **mixer_kwargs)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden: Tensor, residual: Optional[Tensor] = None, prepared=None) -> Tuple[Tensor, Tensor]:
        if residual is not None:
            hidden = self.drop_path(hidden)
        # Add -> RMSNorm, fused into one kernel each way on the Triton backend
        normed, residual = add_rms_norm(hidden, residual, self.norm.weight, self.norm.eps, self.residual_in_fp32)
        return self.mixer(normed, prepared=prepared), residual
