"""The Mamba-1 selective scan: a plain fp32 reference, a chunked PyTorch path, Triton kernels (see README.md)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..backend import resolve_backend
from .chunked import selective_scan_chunked
from .reference import selective_scan_ref

__all__ = ["selective_scan_fn", "selective_scan_ref", "selective_scan_chunked"]


def selective_scan_fn(
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
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """The selective scan on the configured backend (see :mod:`vision_mamba.ops.backend`).

    u, delta, z: [B, L, E]; A: [E, N]; B, C: [B, L, N]; D, delta_bias: [E]. Returns [B, L, E] in u's dtype.
    """
    name = resolve_backend(u.device, backend)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    if name == "reference":
        return selective_scan_ref(*args)
    if name in ("torch", "compiled"):
        return selective_scan_chunked(*args, compiled=name == "compiled")
    from .triton_scan import selective_scan_triton

    return selective_scan_triton(*args)
