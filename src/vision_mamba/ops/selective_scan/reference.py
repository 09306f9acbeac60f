"""The selective scan, written as plainly as possible: an fp32 loop over time. The yardstick of every fast path.

Layout is token-major, as the tensors come out of the linear layers (no transposes):
    u, delta, z: [B, L, E]    A: [E, N]    B, C: [B, L, N]    D, delta_bias: [E]
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = True,
    reverse: bool = False,
) -> Tensor:
    """y = selective_scan(u, delta, A, B, C, D, z), in u's dtype; all arithmetic in fp32.

        delta_t = softplus(delta_t + delta_bias)
        h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (h: [B, E, N], h_{-1} = 0)
        y_t = <h_t, C_t> + D * u_t ;  y_t = y_t * silu(z_t)

    ``reverse=True`` runs the recurrence from t = L-1 down to 0 (the scan of the time-reversed sequence,
    read back in the original order).
    """
    dtype = u.dtype
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, length, channels = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = [None] * length
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        decay = torch.exp(delta[:, t, :, None] * A)                              # [B, E, N]
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys[t] = (h * C[:, t, None, :]).sum(-1)                                   # [B, E]
    y = torch.stack(ys, dim=1) if length else u.new_zeros(batch, 0, channels)
    if D is not None:
        y = y + u * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)
