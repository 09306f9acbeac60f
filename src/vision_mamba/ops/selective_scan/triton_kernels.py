"""Triton kernels for Vim's bidirectional selective scan and its depthwise causal conv (forward and backward).

Layout is token-major throughout (what the linear layers produce), channels contiguous:
    x (conv output, both directions)  [ND, B, L, E]      z  [B, L, E] (a view of in_proj's output)
    dt / B / C                        rows of x_proj's output ([B*L, R + 2N] per direction), or given tensors
    y (gated scan output)             [B, L, ND, E]      -> out_proj on [y_fwd | y_bwd] with weight [W, W] / 2
ND is the number of directions (2 for Vim). Direction d runs reversed in time when (d + dir_base) == 1: the
reverse direction is read by index, never through flipped copies.

A program owns one (batch, block of channels, direction[, chunk]) and keeps the [BLOCK_E, N] state in fp32
registers while it walks through time; B_t and C_t are loaded once per tile and step. See README.md for the math
and for how the backward pass recovers states (saved every SAVE_EVERY steps, recomputed into a small per-program
scratch, then walked backwards).
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) without overflow: max(x, 0) + log(1 + exp(-|x|))
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _both(mask, flag):
    """mask & flag for a vector mask and a scalar flag (written with where: the interpreter mistypes '&' here)."""
    return tl.where(flag, mask, False)


@triton.jit
def _pick(d, first, second):
    """The per-direction pointer: ``first`` for direction 0, ``second`` for direction 1."""
    p = first
    if d == 1:
        p = second
    return p


@triton.jit
def _time_index(s, L, rev):
    # step s of the scan -> time index t (the reverse direction walks from L - 1 down to 0)
    return tl.where(rev, L - 1 - s, s)


@triton.jit
def _delta(dt_base, t, stride_dt_l, offs_e, emask, offs_r, rmask, w, bias, valid,
           DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta_t for a block of channels: softplus(W_dt @ dt_low_t + bias) or softplus(delta_t + bias).
    Returns (delta, raw pre-softplus value, dt_low row or None)."""
    if DT_PROJ:
        dtl = tl.load(dt_base + t * stride_dt_l + offs_r, mask=_both(rmask, valid), other=0.0).to(tl.float32)
        raw = tl.sum(w * dtl[None, :], axis=1)
    else:
        dtl = tl.zeros_like(offs_r).to(tl.float32)
        raw = tl.load(dt_base + t * stride_dt_l + offs_e, mask=_both(emask, valid), other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        delta = _softplus(raw)
    else:
        delta = raw
    return delta, raw, dtl


@triton.jit
def _direction_params(d, E, offs_e, emask, offs_n, offs_r, rmask,
                      w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b, stride_w_e,
                      N: tl.constexpr, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                      A_IS_LOG: tl.constexpr):
    a_ptr = _pick(d, a_f, a_b)
    a = tl.load(a_ptr + offs_e[:, None] * N + offs_n[None, :], mask=emask[:, None], other=0.0).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    if DT_PROJ:
        w_ptr = _pick(d, w_f, w_b)
        w = tl.load(w_ptr + offs_e[:, None] * stride_w_e + offs_r[None, :], mask=emask[:, None] & rmask[None, :],
                    other=0.0).to(tl.float32)
    else:
        w = tl.zeros([offs_e.shape[0], offs_r.shape[0]], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(_pick(d, bias_f, bias_b) + offs_e, mask=emask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros_like(offs_e).to(tl.float32)
    if HAS_D:
        dskip = tl.load(_pick(d, dd_f, dd_b) + offs_e, mask=emask, other=0.0).to(tl.float32)
    else:
        dskip = tl.zeros_like(offs_e).to(tl.float32)
    return a, w, bias, dskip


@triton.jit
def scan_fwd_kernel(
    x_ptr, z_ptr, dt_f, dt_b, b_f, b_b, c_f, c_b,
    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
    y_ptr, hinit_ptr, hend_ptr, dsum_ptr, hsave_ptr,
    L, E, R, steps_per_chunk, dir_base,
    stride_x_d, stride_x_b, stride_x_l,
    stride_z_b, stride_z_l,
    stride_dt_b, stride_dt_l,
    stride_bc_b, stride_bc_l,
    stride_y_b, stride_y_l, stride_y_d,
    stride_w_e,
    stride_h_b, stride_h_d, stride_h_c,
    stride_s_b, stride_s_d, stride_s_c,
    N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, UNROLL: tl.constexpr,
    SAVE_EVERY: tl.constexpr,
    DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr,
    HAS_INIT: tl.constexpr, WRITE_END: tl.constexpr, WRITE_Y: tl.constexpr, SAVE_STATES: tl.constexpr,
):
    pid_be = tl.program_id(0)
    chunk = tl.program_id(1)
    d = tl.program_id(2)
    n_eblocks = tl.cdiv(E, BLOCK_E)
    b = pid_be // n_eblocks
    eb = pid_be % n_eblocks
    rev = (d + dir_base) == 1
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    offs_n = tl.arange(0, N)
    offs_r = tl.arange(0, BLOCK_R)
    rmask = offs_r < R
    a, w, bias, dskip = _direction_params(d, E, offs_e, emask, offs_n, offs_r, rmask, w_f, w_b, bias_f, bias_b,
                                          a_f, a_b, dd_f, dd_b, stride_w_e, N, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG)
    a2 = a * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    x_base = x_ptr + d * stride_x_d + b * stride_x_b + offs_e
    z_base = z_ptr + b * stride_z_b + offs_e
    dt_base = _pick(d, dt_f, dt_b) + b * stride_dt_b
    bm_base = _pick(d, b_f, b_b) + b * stride_bc_b + offs_n
    cm_base = _pick(d, c_f, c_b) + b * stride_bc_b + offs_n
    y_base = y_ptr + b * stride_y_b + d * stride_y_d + offs_e
    state_off = offs_e[:, None] * N + offs_n[None, :]
    smask = emask[:, None]

    s_begin = chunk * steps_per_chunk
    s_end = tl.minimum(s_begin + steps_per_chunk, L)
    if HAS_INIT:
        h = tl.load(hinit_ptr + b * stride_h_b + d * stride_h_d + chunk * stride_h_c + state_off, mask=smask,
                    other=0.0)
    else:
        h = tl.zeros([BLOCK_E, N], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_E], dtype=tl.float32)
    for s0 in range(s_begin, s_end, UNROLL):
        if SAVE_STATES:
            tl.store(hsave_ptr + b * stride_s_b + d * stride_s_d + (s0 // SAVE_EVERY) * stride_s_c + state_off, h,
                     mask=_both(smask, (s0 % SAVE_EVERY) == 0))
        for u in tl.static_range(UNROLL):
            s = s0 + u
            valid = s < s_end
            t = _time_index(s, L, rev)
            delta, raw, dtl = _delta(dt_base, t, stride_dt_l, offs_e, emask, offs_r, rmask, w, bias, valid,
                                     DT_PROJ, HAS_BIAS, SOFTPLUS)
            xv = tl.load(x_base + t * stride_x_l, mask=_both(emask, valid), other=0.0).to(tl.float32)
            bv = tl.load(bm_base + t * stride_bc_l, mask=_both(offs_n < N, valid), other=0.0).to(tl.float32)
            decay = tl.exp2(delta[:, None] * a2)
            h = tl.where(valid, decay * h + (delta * xv)[:, None] * bv[None, :], h)
            if WRITE_END:
                dsum += tl.where(valid, delta, 0.0)
            if WRITE_Y:
                cv = tl.load(cm_base + t * stride_bc_l, mask=_both(offs_n < N, valid), other=0.0).to(tl.float32)
                yv = tl.sum(h * cv[None, :], axis=1)
                if HAS_D:
                    yv += dskip * xv
                if HAS_Z:
                    zv = tl.load(z_base + t * stride_z_l, mask=_both(emask, valid), other=0.0).to(tl.float32)
                    yv = yv * zv * _sigmoid(zv)
                tl.store(y_base + t * stride_y_l, yv.to(y_ptr.dtype.element_ty), mask=_both(emask, valid))
    if WRITE_END:
        off = b * stride_h_b + d * stride_h_d + chunk * stride_h_c
        tl.store(hend_ptr + off + state_off, h, mask=smask)
        tl.store(dsum_ptr + (off // N) + offs_e, dsum, mask=emask)


@triton.jit
def chunk_carry_kernel(
    hend_ptr, dsum_ptr, hinit_ptr, a_f, a_b, E, n_chunks,
    stride_h_b, stride_h_d, stride_h_c,
    N: tl.constexpr, BLOCK_E: tl.constexpr, A_IS_LOG: tl.constexpr,
):
    """States entering each chunk: H_c = exp(A * sum(delta over chunk c-1)) * H_{c-1} + hend_{c-1}."""
    pid_be = tl.program_id(0)
    d = tl.program_id(1)
    n_eblocks = tl.cdiv(E, BLOCK_E)
    b = pid_be // n_eblocks
    eb = pid_be % n_eblocks
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    offs_n = tl.arange(0, N)
    state_off = offs_e[:, None] * N + offs_n[None, :]
    a = tl.load(_pick(d, a_f, a_b) + state_off, mask=emask[:, None], other=0.0).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    h = tl.zeros([BLOCK_E, N], dtype=tl.float32)
    base = b * stride_h_b + d * stride_h_d
    for c in range(n_chunks):
        off = base + c * stride_h_c
        tl.store(hinit_ptr + off + state_off, h, mask=emask[:, None])
        dsum = tl.load(dsum_ptr + (off // N) + offs_e, mask=emask, other=0.0)
        hend = tl.load(hend_ptr + off + state_off, mask=emask[:, None], other=0.0)
        h = tl.exp(dsum[:, None] * a) * h + hend


@triton.jit
def scan_bwd_kernel(
    x_ptr, z_ptr, dt_f, dt_b, b_f, b_b, c_f, c_b,
    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
    gy_ptr, hsave_ptr, scratch_ptr,
    gx_ptr, gz_ptr, gdt_f, gdt_b, gb_f, gb_b, gc_f, gc_b,
    ga_ptr, gd_ptr, gw_ptr, gbias_ptr,
    L, E, R, dir_base,
    stride_x_d, stride_x_b, stride_x_l,
    stride_z_b, stride_z_l,
    stride_dt_b, stride_dt_l,
    stride_bc_b, stride_bc_l,
    stride_y_b, stride_y_l, stride_y_d,
    stride_w_e,
    stride_s_b, stride_s_d, stride_s_c,
    stride_gx_d, stride_gx_b, stride_gx_l,
    stride_gdt_b, stride_gdt_l,
    stride_gbc_b, stride_gbc_l,
    N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, SAVE_EVERY: tl.constexpr,
    DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr,
):
    pid_be = tl.program_id(0)
    d = tl.program_id(1)
    n_eblocks = tl.cdiv(E, BLOCK_E)
    b = pid_be // n_eblocks
    eb = pid_be % n_eblocks
    rev = (d + dir_base) == 1
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    offs_n = tl.arange(0, N)
    offs_r = tl.arange(0, BLOCK_R)
    rmask = offs_r < R
    a, w, bias, dskip = _direction_params(d, E, offs_e, emask, offs_n, offs_r, rmask, w_f, w_b, bias_f, bias_b,
                                          a_f, a_b, dd_f, dd_b, stride_w_e, N, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG)
    a2 = a * 1.4426950408889634
    x_base = x_ptr + d * stride_x_d + b * stride_x_b + offs_e
    z_base = z_ptr + b * stride_z_b + offs_e
    dt_base = _pick(d, dt_f, dt_b) + b * stride_dt_b
    bm_base = _pick(d, b_f, b_b) + b * stride_bc_b + offs_n
    cm_base = _pick(d, c_f, c_b) + b * stride_bc_b + offs_n
    gy_base = gy_ptr + b * stride_y_b + d * stride_y_d + offs_e
    gx_base = gx_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
    gz_base = gz_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
    gdt_base = _pick(d, gdt_f, gdt_b) + b * stride_gdt_b
    gb_base = _pick(d, gb_f, gb_b) + b * stride_gbc_b + offs_n
    gc_base = _pick(d, gc_f, gc_b) + b * stride_gbc_b + offs_n
    state_off = offs_e[:, None] * N + offs_n[None, :]
    smask = emask[:, None]
    # this program's scratch rows: the states of the chunk being differentiated
    scratch = scratch_ptr + ((b * 2 + d) * n_eblocks + eb) * (SAVE_EVERY * BLOCK_E * N) \
        + tl.arange(0, BLOCK_E)[:, None] * N + offs_n[None, :]

    mu = tl.zeros([BLOCK_E, N], dtype=tl.float32)  # decay_{t+1} * lambda_{t+1}: the adjoint carried backwards
    g_a = tl.zeros([BLOCK_E, N], dtype=tl.float32)
    g_d = tl.zeros([BLOCK_E], dtype=tl.float32)
    g_bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    g_w = tl.zeros([BLOCK_E, BLOCK_R], dtype=tl.float32)
    n_chunks = tl.cdiv(L, SAVE_EVERY)
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        s_begin = c * SAVE_EVERY
        s_end = tl.minimum(s_begin + SAVE_EVERY, L)
        # 1. recompute the chunk's states from the saved one, into the scratch
        h = tl.load(hsave_ptr + b * stride_s_b + d * stride_s_d + c * stride_s_c + state_off, mask=smask, other=0.0)
        for u in tl.static_range(SAVE_EVERY):
            s = s_begin + u
            valid = s < s_end
            t = _time_index(s, L, rev)
            delta, raw, dtl = _delta(dt_base, t, stride_dt_l, offs_e, emask, offs_r, rmask, w, bias, valid,
                                     DT_PROJ, HAS_BIAS, SOFTPLUS)
            xv = tl.load(x_base + t * stride_x_l, mask=_both(emask, valid), other=0.0).to(tl.float32)
            bv = tl.load(bm_base + t * stride_bc_l, mask=_both(offs_n < N, valid), other=0.0).to(tl.float32)
            h = tl.exp2(delta[:, None] * a2) * h + (delta * xv)[:, None] * bv[None, :]
            tl.store(scratch + u * (BLOCK_E * N), h)
        tl.debug_barrier()
        # 2. walk the chunk backwards
        for ui in tl.static_range(SAVE_EVERY):
            u = SAVE_EVERY - 1 - ui
            s = s_begin + u
            valid = s < s_end
            t = _time_index(s, L, rev)
            delta, raw, dtl = _delta(dt_base, t, stride_dt_l, offs_e, emask, offs_r, rmask, w, bias, valid,
                                     DT_PROJ, HAS_BIAS, SOFTPLUS)
            lmask = _both(emask, valid)
            xv = tl.load(x_base + t * stride_x_l, mask=lmask, other=0.0).to(tl.float32)
            bv = tl.load(bm_base + t * stride_bc_l, mask=_both(offs_n < N, valid), other=0.0).to(tl.float32)
            cv = tl.load(cm_base + t * stride_bc_l, mask=_both(offs_n < N, valid), other=0.0).to(tl.float32)
            gout = tl.load(gy_base + t * stride_y_l, mask=lmask, other=0.0).to(tl.float32)
            h = tl.load(scratch + u * (BLOCK_E * N))
            if HAS_Z:
                zv = tl.load(z_base + t * stride_z_l, mask=lmask, other=0.0).to(tl.float32)
                sig = _sigmoid(zv)
                gy = gout * zv * sig
                yv = tl.sum(h * cv[None, :], axis=1)
                if HAS_D:
                    yv += dskip * xv
                gz = gout * yv * sig * (1.0 + zv * (1.0 - sig))
                tl.store(gz_base + t * stride_gx_l, gz.to(gz_ptr.dtype.element_ty), mask=lmask)
            else:
                gy = gout
            gy = tl.where(lmask, gy, 0.0)
            lam = gy[:, None] * cv[None, :] + mu
            dx = delta * xv
            # d loss / d(delta * A) through the decay: lam * decay * h_{t-1} = lam * (h_t - delta x B)
            gdec = lam * (h - dx[:, None] * bv[None, :])
            lam_b = tl.sum(lam * bv[None, :], axis=1)
            g_delta = tl.sum(gdec * a, axis=1) + xv * lam_b
            gx = delta * lam_b
            if HAS_D:
                gx += gy * dskip
                g_d += gy * xv
            tl.store(gx_base + t * stride_gx_l, gx.to(gx_ptr.dtype.element_ty), mask=lmask)
            g_a += gdec * delta[:, None]
            tl.atomic_add(gb_base + t * stride_gbc_l, tl.sum(lam * dx[:, None], axis=0), mask=_both(offs_n < N, valid))
            tl.atomic_add(gc_base + t * stride_gbc_l, tl.sum(h * gy[:, None], axis=0), mask=_both(offs_n < N, valid))
            if SOFTPLUS:
                g_raw = g_delta * _sigmoid(raw)
            else:
                g_raw = g_delta
            g_raw = tl.where(lmask, g_raw, 0.0)
            g_bias += g_raw
            if DT_PROJ:
                tl.atomic_add(gdt_base + t * stride_gdt_l + offs_r, tl.sum(g_raw[:, None] * w, axis=0),
                              mask=_both(rmask, valid))
                g_w += g_raw[:, None] * dtl[None, :]
            else:
                tl.store(gdt_base + t * stride_gdt_l + offs_e, g_raw.to(gdt_f.dtype.element_ty), mask=lmask)
            mu = tl.where(valid, tl.exp2(delta[:, None] * a2) * lam, mu)
        tl.debug_barrier()
    if A_IS_LOG:
        g_a = g_a * a  # d A / d A_log = A
    tl.atomic_add(ga_ptr + d * E * N + state_off, g_a, mask=smask)
    if HAS_D:
        tl.atomic_add(gd_ptr + d * E + offs_e, g_d, mask=emask)
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + d * E + offs_e, g_bias, mask=emask)
    if DT_PROJ:
        tl.atomic_add(gw_ptr + d * E * R + offs_e[:, None] * R + offs_r[None, :], g_w,
                      mask=emask[:, None] & rmask[None, :])


# ---------------------------------------------------------------------------------------------------------- conv
@triton.jit
def _conv_pre(x_base, t_rows, L, stride_x_l, offs_e, emask, w0, w1, w2, w3, bias, rev):
    """bias + sum_k w_k x[t + off(k)] for a tile of rows; off(k) = k - 3 (causal) or 3 - k (anti-causal)."""
    sign = tl.where(rev, -1, 1)
    acc = tl.zeros([t_rows.shape[0], offs_e.shape[0]], dtype=tl.float32) + bias[None, :]
    for k in tl.static_range(4):
        if k == 0:
            wk = w0
        elif k == 1:
            wk = w1
        elif k == 2:
            wk = w2
        else:
            wk = w3
        rows = t_rows + sign * (k - 3)
        m = (rows >= 0) & (rows < L)
        xv = tl.load(x_base + rows[:, None] * stride_x_l, mask=m[:, None] & emask[None, :], other=0.0)
        acc += wk[None, :] * xv.to(tl.float32)
    return acc


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_f, w_b, bias_f, bias_b, out_ptr, L, E, dir_base,
    stride_x_b, stride_x_l, stride_o_d, stride_o_b, stride_o_l,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr, N_DIRS: tl.constexpr,
):
    """out[d, b, t, e] = silu(conv_d(x)[b, t, e]) for every direction in one launch."""
    pid_l = tl.program_id(0)
    pid_e = tl.program_id(1)
    pid_bd = tl.program_id(2)
    d = pid_bd % N_DIRS
    b = pid_bd // N_DIRS
    rev = (d + dir_base) == 1
    offs_t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    w_ptr = _pick(d, w_f, w_b)
    w0 = tl.load(w_ptr + offs_e * K + 0, mask=emask, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + offs_e * K + 1, mask=emask, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + offs_e * K + 2, mask=emask, other=0.0).to(tl.float32)
    w3 = tl.load(w_ptr + offs_e * K + 3, mask=emask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(_pick(d, bias_f, bias_b) + offs_e, mask=emask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    x_base = x_ptr + b * stride_x_b + offs_e[None, :]
    pre = _conv_pre(x_base, offs_t, L, stride_x_l, offs_e, emask, w0, w1, w2, w3, bias, rev)
    out = pre * _sigmoid(pre)
    omask = (offs_t < L)[:, None] & emask[None, :]
    tl.store(out_ptr + d * stride_o_d + b * stride_o_b + offs_t[:, None] * stride_o_l + offs_e[None, :],
             out.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def conv_bwd_kernel(
    x_ptr, w_f, w_b, bias_f, bias_b, gout_ptr, gx_ptr, gw_ptr, gbias_ptr, L, E, dir_base,
    stride_x_b, stride_x_l, stride_g_d, stride_g_b, stride_g_l, stride_gx_b, stride_gx_l,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr, N_DIRS: tl.constexpr,
):
    """Given d loss / d out[d] (out = silu(conv_d(x))): d loss / d x (both directions summed), and the weight and
    bias gradients (accumulated with atomics). g_pre_d at the rows the taps touch is recomputed in place."""
    pid_l = tl.program_id(0)
    pid_e = tl.program_id(1)
    b = tl.program_id(2)
    offs_t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    tmask = offs_t < L
    x_base = x_ptr + b * stride_x_b + offs_e[None, :]
    gx = tl.zeros([BLOCK_L, BLOCK_E], dtype=tl.float32)
    for d in tl.static_range(N_DIRS):
        rev = (d + dir_base) == 1
        w_ptr = _pick(d, w_f, w_b)
        w0 = tl.load(w_ptr + offs_e * K + 0, mask=emask, other=0.0).to(tl.float32)
        w1 = tl.load(w_ptr + offs_e * K + 1, mask=emask, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + offs_e * K + 2, mask=emask, other=0.0).to(tl.float32)
        w3 = tl.load(w_ptr + offs_e * K + 3, mask=emask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(_pick(d, bias_f, bias_b) + offs_e, mask=emask, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK_E], dtype=tl.float32)
        sign = tl.where(rev, -1, 1)
        g_base = gout_ptr + d * stride_g_d + b * stride_g_b + offs_e[None, :]
        # weight / bias gradients from this tile's own rows
        pre = _conv_pre(x_base, offs_t, L, stride_x_l, offs_e, emask, w0, w1, w2, w3, bias, rev)
        sig = _sigmoid(pre)
        g = tl.load(g_base + offs_t[:, None] * stride_g_l, mask=tmask[:, None] & emask[None, :], other=0.0)
        g_pre = g.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))
        g_pre = tl.where(tmask[:, None], g_pre, 0.0)
        if HAS_BIAS:
            tl.atomic_add(gbias_ptr + d * E + offs_e, tl.sum(g_pre, axis=0), mask=emask)
        for k in tl.static_range(4):
            rows = offs_t + sign * (k - 3)
            m = (rows >= 0) & (rows < L)
            xv = tl.load(x_base + rows[:, None] * stride_x_l, mask=m[:, None] & emask[None, :], other=0.0)
            tl.atomic_add(gw_ptr + d * E * K + offs_e * K + k, tl.sum(g_pre * xv.to(tl.float32), axis=0),
                          mask=emask)
        # input gradient: x[t] feeds out[t - off(k)] through tap k
        for k in tl.static_range(4):
            if k == 0:
                wk = w0
            elif k == 1:
                wk = w1
            elif k == 2:
                wk = w2
            else:
                wk = w3
            rows = offs_t - sign * (k - 3)
            m = (rows >= 0) & (rows < L)
            pre_k = _conv_pre(x_base, rows, L, stride_x_l, offs_e, emask, w0, w1, w2, w3, bias, rev)
            sig_k = _sigmoid(pre_k)
            g_k = tl.load(g_base + rows[:, None] * stride_g_l, mask=m[:, None] & emask[None, :], other=0.0)
            g_pre_k = g_k.to(tl.float32) * sig_k * (1.0 + pre_k * (1.0 - sig_k))
            gx += wk[None, :] * tl.where(m[:, None], g_pre_k, 0.0)
    tl.store(gx_ptr + b * stride_gx_b + offs_t[:, None] * stride_gx_l + offs_e[None, :],
             gx.to(gx_ptr.dtype.element_ty), mask=tmask[:, None] & emask[None, :])
