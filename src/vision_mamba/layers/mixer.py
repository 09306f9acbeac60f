"""The bidirectional ("v2") Mamba mixer of Vim: parameters and initialisation. The computation is in
:func:`vision_mamba.ops.bimamba_inner_fn`.

Parameter names are the official ones (so official checkpoints load as they are): the forward direction owns
conv1d, x_proj, dt_proj, A_log, D; the backward direction the same names with ``_b``; in_proj and out_proj are
shared.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import DirectionParams, bimamba_inner_fn


class BiMambaMixer(nn.Module):
    """[B, L, D] -> [B, L, D]. E = expand * D channels inside, N = d_state states per channel."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
    ):
        super().__init__()
        self.dim = dim
        self.d_state = d_state
        self.d_inner = inner = expand * dim
        self.dt_rank = dt_rank = dt_rank or math.ceil(dim / 16)

        # Registration order follows the official module, so state_dict() lists keys in the official order.
        self.A_log = nn.Parameter(self._s4d_real_log(inner, d_state))
        self.D = nn.Parameter(torch.ones(inner))
        self.A_b_log = nn.Parameter(self._s4d_real_log(inner, d_state))
        self.D_b = nn.Parameter(torch.ones(inner))
        for p in (self.A_log, self.D, self.A_b_log, self.D_b):
            p._no_weight_decay = True

        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner, bias=True)
        self.conv1d_b = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(dt_rank, inner, bias=True)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        for proj in (self.dt_proj, self.dt_proj_b):
            self._init_dt_proj(proj, dt_min, dt_max, dt_init_floor)

    @staticmethod
    def _s4d_real_log(channels: int, states: int) -> Tensor:
        """A_log = log(1..N) for every channel: A = -(1..N) (S4D-real)."""
        return torch.log(torch.arange(1, states + 1, dtype=torch.float32)).repeat(channels, 1).contiguous()

    def _init_dt_proj(self, proj: nn.Linear, dt_min: float, dt_max: float, floor: float) -> None:
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():
            proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        proj.bias._no_reinit = True

    def direction_params(self, backward: bool = False) -> DirectionParams:
        if backward:
            return DirectionParams(self.conv1d_b.weight, self.conv1d_b.bias, self.x_proj_b.weight,
                                   self.dt_proj_b.weight, self.dt_proj_b.bias, self.A_b_log, self.D_b)
        return DirectionParams(self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                               self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D)

    def forward(self, hidden: Tensor, prepared=None) -> Tensor:
        """``prepared``: (in_proj's weight cast or None, x_proj's pair, out_proj's halves), made for this layer by
        the Triton backend's ``prepare_inference_weights`` (inference only), or None."""
        if prepared is not None and prepared[0] is not None:
            xz = F.linear(hidden, prepared[0])
        else:
            xz = self.in_proj(hidden)
        return bimamba_inner_fn(xz, self.direction_params(False), self.direction_params(True),
                                out_proj_weight=self.out_proj.weight, out_proj_bias=self.out_proj.bias,
                                prepared=prepared[1:] if prepared is not None else None)
