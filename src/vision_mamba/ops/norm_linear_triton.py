"""Inference: a block's out_proj and the next block's Add -> RMSNorm, as one Triton kernel.

Unfused, out_proj (cuBLAS) writes the block's output ``hidden`` [M, D] in the autocast dtype and the norm kernel
reads it back with the fp32 residual, then writes the new residual and the normalised rows. Here a program computes
out_proj's product for BLOCK_M rows and all D output columns (a K loop over the 2E inputs that Triton pipelines),
rounds it to the activations' dtype as out_proj's output is rounded, adds the residual, writes the new residual,
and normalises the rows in registers: ``hidden`` never goes through memory (~19 MB a block not written and read
back at Vim-Ti's 224 px / batch 128). Same results as the two kernels up to the order of the sums (the product's
dot products, the norm's sum of squares).

Inference only (the backward of the norm would need rstd, which this does not keep), on the interleaved [M, 2E]
output of the scan with out_proj's [W, W] / 2 weight (``triton_scan.prepare_inference_weights``). :func:
`linear_add_rms_norm_triton` returns None where it does not apply."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .backend import triton_interpret
from .fast_launch import fast
from .selective_scan.triton_scan import _cdiv, _config, _new

__all__ = ["linear_add_rms_norm_kernel", "linear_add_rms_norm_triton", "norm_linear_plan"]


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr):
    if DOT_FP32:  # (Triton's interpreter multiplies bf16 operands wrongly: their fp32 values, exactly)
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def linear_add_rms_norm_kernel(
    a_ptr, w_ptr, r_ptr, nw_ptr, rout_ptr, y_ptr, M, K, stride_w, eps,
    D: tl.constexpr, HAS_RES: tl.constexpr, HALVES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    CHUNK: tl.constexpr, DOT_FP32: tl.constexpr = False,
):
    """Program pid: rows pid * BLOCK_M ... of a [M, K] @ w[D, K]^T (in a's dtype) + r [M, D] -> rout [M, D]
    (fp32), then y = RMSNorm(rout) * nw in y's dtype. The D output columns in D / CHUNK accumulators of CHUNK
    columns each (a tuple: no padding of D to a power of two). HALVES: w is [w', w'] and only w' [D, K / 2] is
    read (rows stride_w apart): each tile of w' multiplies a's tile in both halves of K, so half of w's bytes
    stream through the program."""
    NC: tl.constexpr = D // CHUNK
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    rows = rows.to(tl.int64)
    cs = tl.arange(0, CHUNK)
    ks = tl.arange(0, BLOCK_K)
    accs = ()
    for c in tl.static_range(NC):
        accs = accs + (tl.zeros([BLOCK_M, CHUNK], dtype=tl.float32),)
    KW: tl.constexpr = 2 if HALVES else 1
    a_ptrs = a_ptr + rows[:, None] * K + ks[None, :]
    b_ptrs = w_ptr + cs[None, :] * stride_w + ks[:, None]  # (w^T's tile of the first chunk of columns)
    for _ in range(0, K // KW, BLOCK_K):
        a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
        if HALVES:
            a2 = tl.load(a_ptrs + K // 2, mask=rmask[:, None], other=0.0)
        new = ()
        for c in tl.static_range(NC):
            b = tl.load(b_ptrs + c * CHUNK * stride_w)
            acc = _dot(a, b, accs[c], DOT_FP32)
            if HALVES:
                acc = _dot(a2, b, acc, DOT_FP32)
            new = new + (acc,)
        accs = new
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    # out_proj's output, as rounded unfused, plus the residual: stored, and its sum of squares
    ss = tl.zeros([BLOCK_M], dtype=tl.float32)
    xs = ()
    for c in tl.static_range(NC):
        off = rows[:, None] * D + (c * CHUNK + cs)[None, :]
        x = accs[c].to(a_ptr.dtype.element_ty).to(tl.float32)
        if HAS_RES:
            x += tl.load(r_ptr + off, mask=rmask[:, None], other=0.0).to(tl.float32)
        tl.store(rout_ptr + off, x, mask=rmask[:, None])
        ss += tl.sum(x * x, axis=1)
        xs = xs + (x,)
    rstd = 1.0 / tl.sqrt(ss / D + eps)
    for c in tl.static_range(NC):
        off = rows[:, None] * D + (c * CHUNK + cs)[None, :]
        nw = tl.load(nw_ptr + c * CHUNK + cs).to(tl.float32)
        tl.store(y_ptr + off, (xs[c] * rstd[:, None] * nw[None, :]).to(y_ptr.dtype.element_ty), mask=rmask[:, None])


def _chunk(D: int) -> int:
    for c in (64, 32, 16):
        if D % c == 0:
            return c
    return 0


def norm_linear_plan(cfg, K: int, D: int) -> Optional[Tuple[int, int, int, int, int]]:
    """(BLOCK_M, BLOCK_K, CHUNK, warps, stages) for K inputs and D output columns, or None where the fused kernel
    does not apply (off, a width over the limit or not a multiple of 16, K not a multiple of BLOCK_K, tiles that
    are not powers of two of at least 16)."""
    if not cfg.get("norm_linear", 0) or D > cfg.get("norm_linear_max_width", 384):
        return None
    block_m, block_k, chunk = cfg.get("norm_linear_block_m", 64), cfg.get("norm_linear_block_k", 64), _chunk(D)
    if not chunk or K % block_k or any(b < 16 or b & (b - 1) for b in (block_m, block_k)):
        return None
    return block_m, block_k, chunk, cfg.get("norm_linear_warps", 8), max(1, cfg.get("norm_linear_stages", 3))


def linear_add_rms_norm_triton(a: Tensor, weight: Tensor, residual: Optional[Tensor], norm_weight: Tensor,
                               eps: float, out_dtype: torch.dtype, halves: bool = False,
                               config=None) -> Optional[Tuple[Tensor, Tensor]]:
    """(y in out_dtype, residual' in fp32) with residual' = residual + (a @ weight^T rounded to a's dtype) (or that
    product alone without a residual) and y = RMSNorm(residual') * norm_weight; or None where the fused kernel
    does not apply (then run the product and :func:`~vision_mamba.ops.rms_norm.add_rms_norm`). ``halves``: the
    caller guarantees weight = [w', w'] (two equal halves along K, as out_proj's [W, W] / 2), and only w' is
    read."""
    cfg = config or _config()
    K = a.shape[-1]
    if (weight.dim() != 2 or weight.shape[1] != K or weight.dtype != a.dtype
            or a.dtype not in (torch.bfloat16, torch.float16) or not weight.is_contiguous()
            or a.device != weight.device):
        return None
    D = weight.shape[0]
    shape = (*a.shape[:-1], D)
    if norm_weight.shape != (D,) or (residual is not None and tuple(residual.shape) != shape):
        return None
    plan = norm_linear_plan(cfg, K, D)
    if plan is None:
        return None
    block_m, block_k, chunk, warps, stages = plan
    # (halves whose K is not a whole number of steps: the whole weight, which is as good)
    halves = halves and bool(cfg.get("norm_linear_halves", 0)) and K % (2 * block_k) == 0
    a2 = a.reshape(-1, K).contiguous()
    r = residual.reshape(-1, D).contiguous() if residual is not None else None
    M = a2.shape[0]
    rout = _new(M, D, device=a.device, dtype=torch.float32)
    y = _new(M, D, device=a.device, dtype=out_dtype)
    if M:
        fast(linear_add_rms_norm_kernel)[(_cdiv(M, block_m),)](
            a2, weight, r if r is not None else rout, norm_weight, rout, y, M, K, weight.stride(0), eps, D=D,
            HAS_RES=r is not None, HALVES=halves, BLOCK_M=block_m, BLOCK_K=block_k, CHUNK=chunk,
            DOT_FP32=triton_interpret(), num_warps=warps, num_stages=stages)
    return y.view(shape), rout.view(shape)
