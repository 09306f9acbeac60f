"""The bidirectional ("v2") Mamba mixer between in_proj and out_proj, as one op with swappable backends.

Both directions are computed in the original token order: the backward direction is an anti-causal conv and a
reverse-time scan, which equals flipping x and z, running the forward mixer and flipping the result back.

    x, z = split(xz)                                                         [B, L, E] each
    per direction d (forward: causal / reverse=False; backward: anti-causal / reverse=True):
        x_d = silu(conv1d_d(x));  dt, B, C = split(x_proj_d(x_d), [R, N, N]);  delta = dt_proj_d.weight @ dt
        y_d = selective_scan(x_d, delta, -exp(A_log_d), B, C, D_d, z, dt_proj_d.bias, softplus, reverse=d)
    y = (y_forward + y_backward) / 2                                         -> out_proj
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import resolve_backend
from .conv1d import causal_conv1d_ref
from .selective_scan import selective_scan_chunked, selective_scan_ref


class DirectionParams(NamedTuple):
    """The parameters one direction of the mixer owns."""

    conv_weight: Tensor      # [E, 1, K]
    conv_bias: Optional[Tensor]  # [E]
    x_proj_weight: Tensor    # [R + 2N, E]
    dt_proj_weight: Tensor   # [E, R]
    dt_proj_bias: Tensor     # [E]
    A_log: Tensor            # [E, N]
    D: Tensor                # [E]


def _direction(x: Tensor, z: Tensor, p: DirectionParams, reverse: bool, scan) -> Tensor:
    state = p.A_log.shape[1]
    rank = p.dt_proj_weight.shape[1]
    xc = F.silu(causal_conv1d_ref(x, p.conv_weight, p.conv_bias, reverse=reverse))
    dt, B, C = F.linear(xc, p.x_proj_weight).split([rank, state, state], dim=-1)
    delta = F.linear(dt, p.dt_proj_weight)
    A = -torch.exp(p.A_log.float())
    return scan(xc, delta, A, B, C, p.D.float(), z, p.dt_proj_bias.float(), True, reverse)


def bimamba_inner_composed(xz: Tensor, forward: DirectionParams, backward: DirectionParams, scan) -> Tensor:
    """The mixer from separate ops (conv, linear layers, a scan function): the reference and torch backends."""
    x, z = xz.chunk(2, dim=-1)
    y_f = _direction(x, z, forward, False, scan)
    y_b = _direction(x, z, backward, True, scan)
    return (y_f + y_b) / 2


def bimamba_inner_fn(xz: Tensor, forward: DirectionParams, backward: DirectionParams, *,
                     out_proj_weight: Optional[Tensor] = None, out_proj_bias: Optional[Tensor] = None,
                     backend: Optional[str] = None, prepared=None) -> Tensor:
    """xz: [B, L, 2E] (in_proj output) -> out_proj(y): [B, L, D], or y: [B, L, E] when no out_proj weight is
    given; on the configured backend. Passing out_proj lets a backend fold the (forward + backward) / 2 combine
    into it. ``prepared``: weights the Triton backend's inference made for this layer ahead of time
    (``prepare_inference_weights``); other backends ignore it."""
    name = resolve_backend(xz.device, backend)
    if name == "triton":
        from .selective_scan.triton_scan import bimamba_inner_triton

        return bimamba_inner_triton(xz, forward, backward, out_proj_weight, out_proj_bias, prepared)
    if name == "reference":
        scan = selective_scan_ref
    else:
        scan = functools.partial(selective_scan_chunked, compiled=name == "compiled")
    y = bimamba_inner_composed(xz, forward, backward, scan)
    return y if out_proj_weight is None else F.linear(y, out_proj_weight, out_proj_bias)
