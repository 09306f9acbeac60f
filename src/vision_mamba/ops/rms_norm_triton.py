"""Triton kernels for the fused Add -> RMSNorm of :mod:`vision_mamba.ops.rms_norm` (forward and backward).

Rows of width D (the model width: 192, 384, 768) are independent: a program owns BLOCK_M rows and the whole width
(padded to a power of two), so every reduction stays inside the program. The forward writes the new residual (fp32)
and y, and keeps 1 / rms per row for the backward; the backward writes one gradient for the new residual (passed to
both the hidden and the residual input, in each one's dtype); d weight is summed in registers by programs that
each walk many tiles, then added atomically."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fast_launch import fast
from .selective_scan.triton_scan import FP_FUSION, _cdiv, _next_pow2, _sm_count


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
    rout_ptr, w_ptr, rstd_ptr, dy_ptr, dres_ptr, dx_ptr, dx2_ptr, dw_ptr, M, D, n_tiles,
    HAS_DRES: tl.constexpr, HAS_DX2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Programs walk tiles pid, pid + programs, ...: each keeps its sum of d weight over its tiles in registers
    and adds it atomically into ``dw_ptr`` ([D] fp32, zeroed by the host; the order of the adds varies from run
    to run). d x is written in dx's dtype and, with HAS_DX2, also in dx2's (the two inputs' dtypes: no cast
    launched afterwards).

    (Until session 21 every 16-row tile wrote a partial row of d weight and the host summed them: a column sum
    of 14.8 us at 224 px / batch 128 on an H100, 25 a training step, even with only 528 partial rows.)"""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        rows, cols, rmask, cmask, mask, off = _tile(tile, M, D, BLOCK_M, BLOCK_D)
        x = tl.load(rout_ptr + off, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        xhat = x * rstd[:, None]
        wdy = dy * w[None, :]
        c = tl.sum(xhat * wdy, axis=1) / D
        dx = (wdy - xhat * c[:, None]) * rstd[:, None]
        if HAS_DRES:
            dx += tl.load(dres_ptr + off, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_DX2:
            tl.store(dx2_ptr + off, dx.to(dx2_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * xhat, axis=0)
    tl.atomic_add(dw_ptr + cols, dw, mask=cmask, sem="relaxed")


def _launch(D: int) -> Tuple[int, int, int]:
    block_d = max(16, _next_pow2(D))
    block_m = max(1, min(16, 4096 // block_d))
    warps = 4 if block_d * block_m >= 2048 else 2
    return block_m, block_d, warps


BWD_PROGRAMS_PER_SM = 4  # the backward's programs: enough to keep the GPU busy, few atomic adds of d weight


def _bwd_programs(n_tiles: int, device: torch.device) -> int:
    """How many programs walk the backward's tiles: a few per SM on CUDA; on other devices (Triton's
    interpreter) at most 3, so that the tests walk several tiles a program."""
    if device.type == "cuda":
        return max(1, min(n_tiles, BWD_PROGRAMS_PER_SM * _sm_count(device)))
    return max(1, min(n_tiles, 3))


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
        n_tiles = _cdiv(M, block_m)
        n_prog = _bwd_programs(n_tiles, rout.device)
        # d x goes to both inputs: written once in the residual's dtype (the fp32 stream) and, where the hidden
        # input's dtype differs (bf16 under autocast), once more in that
        first = r_dtype if r_dtype is not None else h_dtype
        dx = torch.empty(M, D, device=rout.device, dtype=first)
        dx2 = torch.empty(M, D, device=rout.device, dtype=h_dtype) if h_dtype != first else None
        dw = torch.zeros(D, device=rout.device, dtype=torch.float32)
        fast(add_rms_norm_bwd_kernel)[(n_prog,)](
            rout, weight, rstd, dy, dres if dres is not None else dy, dx, dx2 if dx2 is not None else dx, dw, M, D,
            n_tiles, HAS_DRES=dres is not None, HAS_DX2=dx2 is not None, BLOCK_M=block_m, BLOCK_D=block_d,
            num_warps=warps, **FP_FUSION)
        dh = (dx2 if dx2 is not None else dx).view(shape)
        d_res = dx.view(shape) if r_dtype is not None else None
        return dh, d_res, dw.to(weight.dtype), None, None, None


def add_rms_norm_triton(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float,
                        residual_in_fp32: bool, out_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Fused Add -> RMSNorm on the Triton kernels: ``(y in out_dtype, residual')``."""
    return _AddRMSNorm.apply(hidden, residual, weight, eps, residual_in_fp32, out_dtype)
