"""Triton kernels for the fused Add -> RMSNorm of :mod:`vision_mamba.ops.rms_norm` (forward and backward).

Rows of width D (the model width: 192, 384, 768) are independent: a program owns BLOCK_M rows and the whole width
(padded to a power of two), so every reduction stays inside the program. The forward writes the new residual (fp32)
and y, and keeps 1 / rms per row for the backward; the backward writes one gradient for the new residual (passed to
both the hidden and the residual input) and per-program partial sums of d weight (summed afterwards:
deterministic, no atomics)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fast_launch import fast
from .selective_scan.triton_scan import FP_FUSION, _cdiv, _next_pow2


@triton.jit
def _tile(pid, M, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program pid's rows and columns of a contiguous [M, D] tensor: indices, masks and element offsets."""
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < M
    cmask = cols < D
    return rows, cols, rmask, cmask, rmask[:, None] & cmask[None, :], rows[:, None] * D + cols[None, :]


@triton.jit
def add_rms_norm_fwd_kernel(
    h_ptr, r_ptr, w_ptr, y_ptr, rout_ptr, rstd_ptr, M, D, eps,
    HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, cols, rmask, cmask, mask, off = _tile(tl.program_id(0), M, D, BLOCK_M, BLOCK_D)
    x = tl.load(h_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(r_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(rout_ptr + off, x.to(rout_ptr.dtype.element_ty), mask=mask)
    # the statistics of the stored residual (what the reference normalises when the residual is not fp32)
    x = x.to(rout_ptr.dtype.element_ty).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / D + eps)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    y = x * rstd[:, None] * w[None, :]
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)


@triton.jit
def add_rms_norm_bwd_kernel(
    rout_ptr, w_ptr, rstd_ptr, dy_ptr, dres_ptr, dx_ptr, dw_ptr, M, D,
    HAS_DRES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows, cols, rmask, cmask, mask, off = _tile(pid, M, D, BLOCK_M, BLOCK_D)
    x = tl.load(rout_ptr + off, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    xhat = x * rstd[:, None]
    wdy = dy * w[None, :]
    c = tl.sum(xhat * wdy, axis=1) / D
    dx = (wdy - xhat * c[:, None]) * rstd[:, None]
    if HAS_DRES:
        dx += tl.load(dres_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + off, dx, mask=mask)
    tl.store(dw_ptr + pid * D + cols, tl.sum(dy * xhat, axis=0), mask=cmask)


def _launch(D: int) -> Tuple[int, int, int]:
    block_d = max(16, _next_pow2(D))
    block_m = max(1, min(16, 4096 // block_d))
    warps = 4 if block_d * block_m >= 2048 else 2
    return block_m, block_d, warps


class _AddRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, residual, weight, eps, residual_in_fp32, out_dtype):
        shape = hidden.shape
        D = shape[-1]
        h = hidden.reshape(-1, D).contiguous()
        r = residual.reshape(-1, D).contiguous() if residual is not None else None
        M = h.shape[0]
        res_dtype = torch.float32 if residual_in_fp32 else (residual.dtype if residual is not None else hidden.dtype)
        rout = torch.empty(M, D, device=h.device, dtype=res_dtype)
        y = torch.empty(M, D, device=h.device, dtype=out_dtype)
        rstd = torch.empty(M, device=h.device, dtype=torch.float32)
        block_m, block_d, warps = _launch(D)
        fast(add_rms_norm_fwd_kernel)[(_cdiv(M, block_m),)](
            h, r if r is not None else h, weight, y, rout, rstd, M, D, eps,
            HAS_RES=r is not None, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, **FP_FUSION)
        ctx.save_for_backward(rout, weight, rstd)
        ctx.meta = (shape, hidden.dtype, residual.dtype if residual is not None else None)
        return y.view(shape), rout.view(shape)

    @staticmethod
    def backward(ctx, dy, dres):
        rout, weight, rstd = ctx.saved_tensors
        shape, h_dtype, r_dtype = ctx.meta
        D = shape[-1]
        M = rout.shape[0]
        if dy is None:
            dy = torch.zeros(M, D, device=rout.device, dtype=torch.float32)
        dy = dy.reshape(M, D).contiguous()
        dres = dres.reshape(M, D).contiguous() if dres is not None else None
        block_m, block_d, warps = _launch(D)
        n_prog = _cdiv(M, block_m)
        dx = torch.empty(M, D, device=rout.device, dtype=torch.float32)
        dw = torch.empty(n_prog, D, device=rout.device, dtype=torch.float32)
        fast(add_rms_norm_bwd_kernel)[(n_prog,)](
            rout, weight, rstd, dy, dres if dres is not None else dy, dx, dw, M, D,
            HAS_DRES=dres is not None, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps, **FP_FUSION)
        dx = dx.view(shape)
        d_res = dx.to(r_dtype) if r_dtype is not None else None
        return dx.to(h_dtype), d_res, dw.sum(0).to(weight.dtype), None, None, None


def add_rms_norm_triton(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                        residual_in_fp32: bool, out_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Fused Add -> RMSNorm on the Triton kernels: ``(y in out_dtype, residual')``."""
    return _AddRMSNorm.apply(hidden, residual, weight, eps, residual_in_fp32, out_dtype)
