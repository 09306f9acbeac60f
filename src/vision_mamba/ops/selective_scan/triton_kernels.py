"""Triton kernels for Vim's bidirectional selective scan and its depthwise causal conv (forward and backward).

Layout is token-major throughout (what the linear layers produce), channels contiguous:
    x (conv output, both directions)  [ND, B, L, E]      z  [B, L, E] (a view of in_proj's output)
    dt / B / C                        rows of x_proj's output ([B*L, R + 2N] per direction), or given tensors
    y (gated scan output)             [B, L, ND, E]      -> out_proj on [y_fwd | y_bwd] with weight [W, W] / 2
ND is the number of directions (2 for Vim). Direction d runs reversed in time when (d + dir_base) == 1: the
reverse direction is read by index, never through flipped copies.

A program owns one (batch, block of channels, direction[, chunk]) and keeps the [N, BLOCK_E] state in fp32
registers while it walks through time; B_t and C_t are loaded once per tile and step. The state tile is laid out
states-major with BLOCK_E = 32 * num_warps (* k), so that each thread owns whole channels: the reductions over
the states (the output) and over the dt rank (dt_proj) stay inside a thread, with no shuffles, no shared memory
and no layout conversion in the time loop. See README.md for the math
and for how the backward pass recovers states (saved every SAVE_EVERY steps by the forward pass, recomputed in
registers, then walked backwards).
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
def _load_step(s, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l, bm_base, cm_base,
               stride_bc_l, offs_e, emask, offs_r, rmask, nmask,
               DT_PROJ: tl.constexpr, HAS_Z: tl.constexpr, LOAD_C: tl.constexpr):
    """The inputs of scan step s (time index t(s)), masked past s_end, in their storage dtype:
    x [BE], z [BE] (x when there is no gate), dt_low [BR] or delta [BE], B [N], C [N] (B when not asked for)."""
    valid = s < s_end
    t = _time_index(s, L, rev)
    em = _both(emask, valid)
    xv = tl.load(x_base + t * stride_x_l, mask=em, other=0.0)
    if HAS_Z:
        zv = tl.load(z_base + t * stride_z_l, mask=em, other=0.0)
    else:
        zv = xv
    if DT_PROJ:
        dv = tl.load(dt_base + t * stride_dt_l + offs_r, mask=_both(rmask, valid), other=0.0)
    else:
        dv = tl.load(dt_base + t * stride_dt_l + offs_e, mask=em, other=0.0)
    nm = _both(nmask, valid)
    bv = tl.load(bm_base + t * stride_bc_l, mask=nm, other=0.0)
    if LOAD_C:
        cv = tl.load(cm_base + t * stride_bc_l, mask=nm, other=0.0)
    else:
        cv = bv
    return xv, zv, dv, bv, cv


@triton.jit
def _delta_of(dv, w, bias, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta = softplus(W_dt @ dt_low + bias) (dt_proj folded in) or softplus(delta + bias); also the raw value."""
    if DT_PROJ:
        raw = tl.sum(w * dv.to(tl.float32)[:, None], axis=0)
    else:
        raw = dv.to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias
    if SOFTPLUS:
        delta = _softplus(raw)
    else:
        delta = raw
    return delta, raw


@triton.jit
def _direction_params(d, E, offs_e, emask, offs_n, offs_r, rmask, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
                      stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                      N: tl.constexpr, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                      A_IS_LOG: tl.constexpr):
    """A (or A_log) as an [N, BE] tile, W_dt as [BR, BE], bias and D as [BE]. The strides are run-time values the
    compiler does not specialise on, so it cannot see that these tiles are contiguous along the states: that would
    make it lay the states across threads, which the time loop must avoid."""
    a_ptr = _pick(d, a_f, a_b)
    a = tl.load(a_ptr + offs_e[None, :] * stride_a_e + offs_n[:, None] * stride_a_n, mask=emask[None, :],
                other=0.0).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    if DT_PROJ:
        w_ptr = _pick(d, w_f, w_b)
        w = tl.load(w_ptr + offs_e[None, :] * stride_w_e + offs_r[:, None] * stride_w_r,
                    mask=emask[None, :] & rmask[:, None], other=0.0).to(tl.float32)
    else:
        w = tl.zeros([offs_r.shape[0], offs_e.shape[0]], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(_pick(d, bias_f, bias_b) + offs_e, mask=emask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros_like(offs_e).to(tl.float32)
    if HAS_D:
        dskip = tl.load(_pick(d, dd_f, dd_b) + offs_e, mask=emask, other=0.0).to(tl.float32)
    else:
        dskip = tl.zeros_like(offs_e).to(tl.float32)
    return a, w, bias, dskip


@triton.jit(do_not_specialize=["L", "steps_per_chunk", "dir_base", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
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
    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
    stride_h_b, stride_h_d, stride_h_c,
    stride_s_b, stride_s_d, stride_s_c,
    N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, SAVE_EVERY: tl.constexpr,
    DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr,
    HAS_INIT: tl.constexpr, WRITE_END: tl.constexpr, WRITE_Y: tl.constexpr, SAVE_STATES: tl.constexpr,
):
    pid_be = tl.program_id(0)
    chunk = tl.program_id(1)
    d = tl.program_id(2)
    n_eblocks = (E + BLOCK_E - 1) // BLOCK_E
    b = pid_be // n_eblocks
    eb = pid_be % n_eblocks
    rev = (d + dir_base) == 1
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    offs_n = tl.arange(0, N)
    offs_r = tl.arange(0, BLOCK_R)
    rmask = offs_r < R
    a, w, bias, dskip = _direction_params(d, E, offs_e, emask, offs_n, offs_r, rmask, w_f, w_b, bias_f, bias_b,
                                          a_f, a_b, dd_f, dd_b, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                          N, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG)
    a2 = a * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    x_base = x_ptr + d * stride_x_d + b * stride_x_b + offs_e
    z_base = z_ptr + b * stride_z_b + offs_e
    dt_base = _pick(d, dt_f, dt_b) + b * stride_dt_b
    bm_base = _pick(d, b_f, b_b) + b * stride_bc_b + offs_n
    cm_base = _pick(d, c_f, c_b) + b * stride_bc_b + offs_n
    y_base = y_ptr + b * stride_y_b + d * stride_y_d + offs_e
    state_off = offs_n[:, None] * E + offs_e[None, :]
    smask = emask[None, :]

    s_begin = chunk * steps_per_chunk
    s_end = tl.minimum(s_begin + steps_per_chunk, L)
    if HAS_INIT:
        h = tl.load(hinit_ptr + b * stride_h_b + d * stride_h_d + chunk * stride_h_c + state_off, mask=smask,
                    other=0.0)
    else:
        h = tl.zeros([N, BLOCK_E], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_E], dtype=tl.float32)
    nmask = offs_n < N
    hsave_base = hsave_ptr + b * stride_s_b + d * stride_s_d + state_off
    # A rotating prefetch pipeline: the inputs of step s + 4 are requested before step s stores its output
    # (a load cannot be moved above an earlier store that may alias it, so without this every step would wait
    # a full memory latency).
    xa, za, da, ba, ca = _load_step(s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                    stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
                                    nmask, DT_PROJ, HAS_Z, WRITE_Y)
    xb, zb, db, bb, cb = _load_step(s_begin + 1, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                    stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
                                    nmask, DT_PROJ, HAS_Z, WRITE_Y)
    xc, zc, dc, bc, cc = _load_step(s_begin + 2, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                    stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
                                    nmask, DT_PROJ, HAS_Z, WRITE_Y)
    xd, zd, dd, bd, cd = _load_step(s_begin + 3, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                    stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
                                    nmask, DT_PROJ, HAS_Z, WRITE_Y)
    for s in range(s_begin, s_end):
        xe, ze, de, be, ce = _load_step(s + 4, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                        stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
                                        nmask, DT_PROJ, HAS_Z, WRITE_Y)
        if SAVE_STATES:
            tl.store(hsave_base + (s // SAVE_EVERY) * stride_s_c, h, mask=_both(smask, (s % SAVE_EVERY) == 0))
        delta, raw = _delta_of(da, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
        xv = xa.to(tl.float32)
        h = tl.exp2(a2 * delta[None, :]) * h + ba.to(tl.float32)[:, None] * (delta * xv)[None, :]
        if WRITE_END:
            dsum += delta
        if WRITE_Y:
            yv = tl.sum(h * ca.to(tl.float32)[:, None], axis=0)
            if HAS_D:
                yv += dskip * xv
            if HAS_Z:
                zv = za.to(tl.float32)
                yv = yv * zv * _sigmoid(zv)
            t = _time_index(s, L, rev)
            tl.store(y_base + t * stride_y_l, yv.to(y_ptr.dtype.element_ty), mask=emask)
        xa, za, da, ba, ca = xb, zb, db, bb, cb
        xb, zb, db, bb, cb = xc, zc, dc, bc, cc
        xc, zc, dc, bc, cc = xd, zd, dd, bd, cd
        xd, zd, dd, bd, cd = xe, ze, de, be, ce
    if WRITE_END:
        off = b * stride_h_b + d * stride_h_d + chunk * stride_h_c
        tl.store(hend_ptr + off + state_off, h, mask=smask)
        tl.store(dsum_ptr + (off // N) + offs_e, dsum, mask=emask)


@triton.jit(do_not_specialize=["n_chunks", "stride_a_e", "stride_a_n"])
def chunk_carry_kernel(
    hend_ptr, dsum_ptr, hinit_ptr, a_f, a_b, E, n_chunks,
    stride_h_b, stride_h_d, stride_h_c, stride_a_e, stride_a_n,
    N: tl.constexpr, BLOCK_E: tl.constexpr, A_IS_LOG: tl.constexpr,
):
    """States entering each chunk: H_c = exp(A * sum(delta over chunk c-1)) * H_{c-1} + hend_{c-1}."""
    pid_be = tl.program_id(0)
    d = tl.program_id(1)
    n_eblocks = (E + BLOCK_E - 1) // BLOCK_E
    b = pid_be // n_eblocks
    eb = pid_be % n_eblocks
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    offs_n = tl.arange(0, N)
    state_off = offs_n[:, None] * E + offs_e[None, :]
    a = tl.load(_pick(d, a_f, a_b) + offs_e[None, :] * stride_a_e + offs_n[:, None] * stride_a_n,
                mask=emask[None, :], other=0.0).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    h = tl.zeros([N, BLOCK_E], dtype=tl.float32)
    base = b * stride_h_b + d * stride_h_d
    for c in range(n_chunks):
        off = base + c * stride_h_c
        tl.store(hinit_ptr + off + state_off, h, mask=emask[None, :])
        dsum = tl.load(dsum_ptr + (off // N) + offs_e, mask=emask, other=0.0)
        hend = tl.load(hend_ptr + off + state_off, mask=emask[None, :], other=0.0)
        h = tl.exp(a * dsum[None, :]) * h + hend


@triton.jit
def _bwd_recompute(s, s_end, L, rev, h, a2, w, bias, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l,
                   bm_base, cm_base, stride_bc_l, gy_base, stride_y_l, offs_e, emask, offs_r, rmask, nmask,
                   DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr):
    """Step s forward again from state h, returning the new state and everything its backward step needs."""
    xv, zv, dv, bv, cv = _load_step(s, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l,
                                    bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask, nmask,
                                    DT_PROJ, HAS_Z, True)
    t = _time_index(s, L, rev)
    gout = tl.load(gy_base + t * stride_y_l, mask=_both(emask, s < s_end), other=0.0)
    delta, raw = _delta_of(dv, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
    decay = tl.exp2(a2 * delta[None, :])
    xf = xv.to(tl.float32)
    bf = bv.to(tl.float32)
    h = decay * h + bf[:, None] * (delta * xf)[None, :]
    return h, decay, delta, raw, xf, zv, gout, dv, bf, cv


@triton.jit
def _bwd_step(mu, g_a, g_d, g_bias, g_w, h, decay, delta, raw, xf, zv, gout, dv, bf, cv, s, s_end, L, rev, a, w,
              dskip, gx_base, gz_base, gdt_base, gb_base, gc_base, stride_gx_l, stride_gdt_l, stride_gbc_l,
              offs_e, emask, offs_r, rmask, nmask,
              DT_PROJ: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    """The backward step of scan step s: writes d x, d z, d delta (or d dt_low), accumulates d B, d C with
    relaxed atomics, and the parameter gradients in registers; returns the adjoint carried to step s - 1."""
    valid = s < s_end
    t = _time_index(s, L, rev)
    em = _both(emask, valid)
    gout = gout.to(tl.float32)
    cf = cv.to(tl.float32)
    if HAS_Z:
        zf = zv.to(tl.float32)
        sig = _sigmoid(zf)
        gy = gout * zf * sig
        yv = tl.sum(h * cf[:, None], axis=0)
        if HAS_D:
            yv += dskip * xf
        gz = gout * yv * sig * (1.0 + zf * (1.0 - sig))
        tl.store(gz_base + t * stride_gx_l, gz.to(gz_base.dtype.element_ty), mask=em)
    else:
        gy = gout
    gy = tl.where(em, gy, 0.0)
    lam = cf[:, None] * gy[None, :] + mu
    dx = delta * xf
    # d loss / d(delta * A) through the decay: lam * decay * h_{t-1} = lam * (h_t - delta x B)
    gdec = lam * (h - bf[:, None] * dx[None, :])
    lam_b = tl.sum(lam * bf[:, None], axis=0)
    g_delta = tl.sum(gdec * a, axis=0) + xf * lam_b
    gx = delta * lam_b
    if HAS_D:
        gx += gy * dskip
        g_d += gy * xf
    tl.store(gx_base + t * stride_gx_l, gx.to(gx_base.dtype.element_ty), mask=em)
    g_a += gdec * delta[None, :]
    nm = _both(nmask, valid)
    tl.atomic_add(gb_base + t * stride_gbc_l, tl.sum(lam * dx[None, :], axis=1), mask=nm, sem="relaxed")
    tl.atomic_add(gc_base + t * stride_gbc_l, tl.sum(h * gy[None, :], axis=1), mask=nm, sem="relaxed")
    if SOFTPLUS:
        g_raw = g_delta * _sigmoid(raw)
    else:
        g_raw = g_delta
    g_raw = tl.where(em, g_raw, 0.0)
    g_bias += g_raw
    if DT_PROJ:
        tl.atomic_add(gdt_base + t * stride_gdt_l + offs_r, tl.sum(w * g_raw[None, :], axis=1),
                      mask=_both(rmask, valid), sem="relaxed")
        g_w += dv.to(tl.float32)[:, None] * g_raw[None, :]
    else:
        tl.store(gdt_base + t * stride_gdt_l + offs_e, g_raw.to(gdt_base.dtype.element_ty), mask=em)
    mu = tl.where(valid, decay * lam, mu)
    return mu, g_a, g_d, g_bias, g_w


@triton.jit(do_not_specialize=["L", "dir_base", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
def scan_bwd_kernel(
    x_ptr, z_ptr, dt_f, dt_b, b_f, b_b, c_f, c_b,
    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
    gy_ptr, hsave_ptr,
    gx_ptr, gz_ptr, gdt_f, gdt_b, gb_f, gb_b, gc_f, gc_b,
    ga_ptr, gd_ptr, gw_ptr, gbias_ptr,
    L, E, R, dir_base,
    stride_x_d, stride_x_b, stride_x_l,
    stride_z_b, stride_z_l,
    stride_dt_b, stride_dt_l,
    stride_bc_b, stride_bc_l,
    stride_y_b, stride_y_l, stride_y_d,
    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
    stride_s_b, stride_s_d, stride_s_c,
    stride_gx_d, stride_gx_b, stride_gx_l,
    stride_gdt_b, stride_gdt_l,
    stride_gbc_b, stride_gbc_l,
    N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, SAVE_EVERY: tl.constexpr,
    DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr,
):
    """One program per (batch, block of channels, direction) walks its sequence backwards, SAVE_EVERY (= 16)
    steps at a time: (A) from the state saved by the forward pass, 12 steps are recomputed to get the states
    entering its four 4-step sub-chunks (no memory traffic but the inputs); (B) per sub-chunk, last first, the 4
    steps are recomputed into registers (states, decays and inputs all kept), then differentiated in reverse."""
    pid_be = tl.program_id(0)
    d = tl.program_id(1)
    n_eblocks = (E + BLOCK_E - 1) // BLOCK_E
    b = pid_be // n_eblocks
    eb = pid_be % n_eblocks
    rev = (d + dir_base) == 1
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    offs_n = tl.arange(0, N)
    nmask = offs_n < N
    offs_r = tl.arange(0, BLOCK_R)
    rmask = offs_r < R
    a, w, bias, dskip = _direction_params(d, E, offs_e, emask, offs_n, offs_r, rmask, w_f, w_b, bias_f, bias_b,
                                          a_f, a_b, dd_f, dd_b, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                          N, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG)
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
    state_off = offs_n[:, None] * E + offs_e[None, :]
    smask = emask[None, :]

    mu = tl.zeros([N, BLOCK_E], dtype=tl.float32)  # decay_{t+1} * lambda_{t+1}: the adjoint carried backwards
    g_a = tl.zeros([N, BLOCK_E], dtype=tl.float32)
    g_d = tl.zeros([BLOCK_E], dtype=tl.float32)
    g_bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    g_w = tl.zeros([BLOCK_R, BLOCK_E], dtype=tl.float32)
    n_chunks = (L + SAVE_EVERY - 1) // SAVE_EVERY
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        s_begin = c * SAVE_EVERY
        s_end = tl.minimum(s_begin + SAVE_EVERY, L)
        h = tl.load(hsave_ptr + b * stride_s_b + d * stride_s_d + c * stride_s_c + state_off, mask=smask, other=0.0)
        # (A) the states entering steps s_begin + 4, + 8, + 12
        st0 = h
        for u in tl.static_range(12):
            if u == 4:
                st1 = h
            if u == 8:
                st2 = h
            xv, zv, dv, bv, cv = _load_step(s_begin + u, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                            dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask,
                                            offs_r, rmask, nmask, DT_PROJ, False, False)
            delta, raw = _delta_of(dv, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
            h = tl.exp2(a2 * delta[None, :]) * h + bv.to(tl.float32)[:, None] * (delta * xv.to(tl.float32))[None, :]
        st3 = h
        # (B) the four sub-chunks, last first
        for jj in tl.static_range(4):
            j = 3 - jj
            if j == 3:
                h0 = st3
            elif j == 2:
                h0 = st2
            elif j == 1:
                h0 = st1
            else:
                h0 = st0
            s0 = s_begin + 4 * j
            h1, dc1, dl1, rw1, x1, z1, g1, v1, b1, c1 = _bwd_recompute(
                s0, s_end, L, rev, h0, a2, w, bias, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l,
                bm_base, cm_base, stride_bc_l, gy_base, stride_y_l, offs_e, emask, offs_r, rmask, nmask,
                DT_PROJ, HAS_BIAS, SOFTPLUS, HAS_Z)
            h2, dc2, dl2, rw2, x2, z2, g2, v2, b2, c2 = _bwd_recompute(
                s0 + 1, s_end, L, rev, h1, a2, w, bias, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l,
                bm_base, cm_base, stride_bc_l, gy_base, stride_y_l, offs_e, emask, offs_r, rmask, nmask,
                DT_PROJ, HAS_BIAS, SOFTPLUS, HAS_Z)
            h3, dc3, dl3, rw3, x3, z3, g3, v3, b3, c3 = _bwd_recompute(
                s0 + 2, s_end, L, rev, h2, a2, w, bias, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l,
                bm_base, cm_base, stride_bc_l, gy_base, stride_y_l, offs_e, emask, offs_r, rmask, nmask,
                DT_PROJ, HAS_BIAS, SOFTPLUS, HAS_Z)
            h4, dc4, dl4, rw4, x4, z4, g4, v4, b4, c4 = _bwd_recompute(
                s0 + 3, s_end, L, rev, h3, a2, w, bias, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l,
                bm_base, cm_base, stride_bc_l, gy_base, stride_y_l, offs_e, emask, offs_r, rmask, nmask,
                DT_PROJ, HAS_BIAS, SOFTPLUS, HAS_Z)
            mu, g_a, g_d, g_bias, g_w = _bwd_step(
                mu, g_a, g_d, g_bias, g_w, h4, dc4, dl4, rw4, x4, z4, g4, v4, b4, c4, s0 + 3, s_end, L, rev, a, w,
                dskip, gx_base, gz_base, gdt_base, gb_base, gc_base, stride_gx_l, stride_gdt_l, stride_gbc_l,
                offs_e, emask, offs_r, rmask, nmask, DT_PROJ, SOFTPLUS, HAS_D, HAS_Z)
            mu, g_a, g_d, g_bias, g_w = _bwd_step(
                mu, g_a, g_d, g_bias, g_w, h3, dc3, dl3, rw3, x3, z3, g3, v3, b3, c3, s0 + 2, s_end, L, rev, a, w,
                dskip, gx_base, gz_base, gdt_base, gb_base, gc_base, stride_gx_l, stride_gdt_l, stride_gbc_l,
                offs_e, emask, offs_r, rmask, nmask, DT_PROJ, SOFTPLUS, HAS_D, HAS_Z)
            mu, g_a, g_d, g_bias, g_w = _bwd_step(
                mu, g_a, g_d, g_bias, g_w, h2, dc2, dl2, rw2, x2, z2, g2, v2, b2, c2, s0 + 1, s_end, L, rev, a, w,
                dskip, gx_base, gz_base, gdt_base, gb_base, gc_base, stride_gx_l, stride_gdt_l, stride_gbc_l,
                offs_e, emask, offs_r, rmask, nmask, DT_PROJ, SOFTPLUS, HAS_D, HAS_Z)
            mu, g_a, g_d, g_bias, g_w = _bwd_step(
                mu, g_a, g_d, g_bias, g_w, h1, dc1, dl1, rw1, x1, z1, g1, v1, b1, c1, s0, s_end, L, rev, a, w,
                dskip, gx_base, gz_base, gdt_base, gb_base, gc_base, stride_gx_l, stride_gdt_l, stride_gbc_l,
                offs_e, emask, offs_r, rmask, nmask, DT_PROJ, SOFTPLUS, HAS_D, HAS_Z)
    if A_IS_LOG:
        g_a = g_a * a  # d A / d A_log = A
    tl.atomic_add(ga_ptr + d * E * N + offs_e[None, :] * N + offs_n[:, None], g_a, mask=smask, sem="relaxed")
    if HAS_D:
        tl.atomic_add(gd_ptr + d * E + offs_e, g_d, mask=emask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + d * E + offs_e, g_bias, mask=emask, sem="relaxed")
    if DT_PROJ:
        tl.atomic_add(gw_ptr + d * E * R + offs_e[None, :] * R + offs_r[:, None], g_w,
                      mask=emask[None, :] & rmask[:, None], sem="relaxed")


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
            tl.atomic_add(gbias_ptr + d * E + offs_e, tl.sum(g_pre, axis=0), mask=emask, sem="relaxed")
        for k in tl.static_range(4):
            rows = offs_t + sign * (k - 3)
            m = (rows >= 0) & (rows < L)
            xv = tl.load(x_base + rows[:, None] * stride_x_l, mask=m[:, None] & emask[None, :], other=0.0)
            tl.atomic_add(gw_ptr + d * E * K + offs_e * K + k, tl.sum(g_pre * xv.to(tl.float32), axis=0),
                          mask=emask, sem="relaxed")
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
