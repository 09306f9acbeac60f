"""Triton kernels for Vim's bidirectional selective scan and its depthwise causal conv (forward and backward).

Layout is token-major throughout (what the linear layers produce), channels contiguous:
    x (conv output, both directions)  [ND, B, L, E]      z  [B, L, E] (a view of in_proj's output)
    dt / B / C                        rows of x_proj's output ([B*L, R + 2N] per direction), or given tensors
    y (gated scan output)             [B, L, ND, E]      -> out_proj on [y_fwd | y_bwd] with weight [W, W] / 2
ND is the number of directions (2 for Vim). Direction d runs reversed in time when (d + dir_base) == 1: the
reverse direction is read by index, never through flipped copies.

A program owns one (batch, block of channels, direction[, chunk]) and keeps the [BLOCK_E, N] state in fp32
registers while it walks through time; B_t and C_t are loaded once per tile and step. The tile's register layout
is anchored by its first load (state buffers are [N, E], channels contiguous) and depends on what the compiler can
prove about E (see _NO_SPEC_E below). See README.md for the math and for how the backward pass recovers states
(saved every SAVE_EVERY steps by the forward pass, recomputed, then walked backwards).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton specialises integer arguments divisible by 16, and a tile's register layout follows from what the compiler
# can prove about its addresses. With the channel count E known to be a multiple of 16 (384 for Vim-Ti), it
# vectorises the [N, E] state loads over 4 channels and lays the [channels, states] tiles out as 4 channels x 4
# states per thread (8 x 4 threads); the per-channel vectors (x, delta, z, y) then cross between layouts at each
# step, and the sum over states takes two shuffles. Left unspecialised, E gives one channel per thread with all its
# states in registers, the layout these loops were first written for. Measured on the H200 (docs/kernels.md,
# "Session 4"), the specialised form is as fast or faster everywhere (default launch, 224 px / batch 128: forward
# 0.216 vs 0.432 ms, backward 1.17 vs 1.41 ms), so it is the default; VISION_MAMBA_TRITON_SPECIALIZE_E=0 gives
# the other, for measurements.
_NO_SPEC_E = ["E"] if os.environ.get("VISION_MAMBA_TRITON_SPECIALIZE_E") == "0" else []


# The hardware's approximate log2 and reciprocal (one MUFU instruction each, ~2^-22 relative error) where the kernels
# are compiled; Triton's tl.log / division expand to ~25 / ~8 instructions (a polynomial, a full-range divide),
# which made softplus and sigmoid a fifth of the forward scan's time loop. The interpreter has no inline assembly:
# it computes the same formulas with tl.log2 and a division.
_FAST_MATH = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))


@triton.jit
def _ptx_f32(x, INSTRUCTION: tl.constexpr):
    """One fp32 PTX instruction ``INSTRUCTION $0, $1;`` applied elementwise."""
    return tl.inline_asm_elementwise(INSTRUCTION + " $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _log2(x):
    if _FAST_MATH:
        return _ptx_f32(x, "lg2.approx.ftz.f32")
    else:
        return tl.log2(x)


@triton.jit
def _reciprocal(x):
    if _FAST_MATH:
        return _ptx_f32(x, "rcp.approx.ftz.f32")
    else:
        return 1.0 / x


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) without overflow: max(x, 0) + log(1 + exp(-|x|)), through exp2 / log2 (1 + exp(-|x|) is in
    # [1, 2], where the approximate log2 is accurate to ~2^-22 absolute)
    return tl.maximum(x, 0.0) + 0.6931471805599453 * _log2(1.0 + tl.exp2(tl.abs(x) * -1.4426950408889634))


@triton.jit
def _sigmoid(x):
    # 1 / (1 + exp(-x)): exp2 overflows to inf for very negative x, whose reciprocal is the correct 0
    return _reciprocal(1.0 + tl.exp2(x * -1.4426950408889634))


@triton.jit
def _silu(x):
    return x * _sigmoid(x)


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
def _clamp(s, s_lo, s_end):
    """s moved into [s_lo, s_end) (a non-empty range)."""
    return tl.minimum(tl.maximum(s, s_lo), s_end - 1)


@triton.jit
def _time_index(s, L, rev):
    # step s of the scan -> time index t (the reverse direction walks from L - 1 down to 0)
    return tl.where(rev, L - 1 - s, s)


@triton.jit
def _load_step(s, s_lo, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base, stride_dt_l, bm_base,
               cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
               DT_PROJ: tl.constexpr, HAS_Z: tl.constexpr, LOAD_C: tl.constexpr):
    """The inputs of scan step s (time index t(s)) in their storage dtype: x [BE], z [BE] (x when there is no
    gate), dt_low [BR] or delta [BE], B [N], C [N] (B when not asked for). A step outside [s_lo, s_end) (a
    prefetch past either end of the range, never used) reads the nearest step inside it instead: clamping the
    index costs two instructions where masking the loads cost a predicate and a zero fill per register."""
    t = _time_index(_clamp(s, s_lo, s_end), L, rev)
    xv = tl.load(x_base + t * stride_x_l, mask=emask, other=0.0)
    if HAS_Z:
        zv = tl.load(z_base + t * stride_z_l, mask=emask, other=0.0)
    else:
        zv = xv
    if DT_PROJ:
        dv = tl.load(dt_base + t * stride_dt_l + offs_r, mask=rmask, other=0.0)
    else:
        dv = tl.load(dt_base + t * stride_dt_l + offs_e, mask=emask, other=0.0)
    bv = tl.load(bm_base + t * stride_bc_l)
    if LOAD_C:
        cv = tl.load(cm_base + t * stride_bc_l)
    else:
        cv = bv
    return xv, zv, dv, bv, cv


@triton.jit
def _delta_of(dv, w, bias, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta = softplus(W_dt @ dt_low + bias) (dt_proj folded in) or softplus(delta + bias); also the raw value."""
    if DT_PROJ:
        raw = tl.sum(w * dv.to(tl.float32)[None, :], axis=1)
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
                      A_IS_LOG: tl.constexpr, PARAMS_T: tl.constexpr):
    """A (or A_log) as a [BE, N] tile, W_dt as [BE, BR], bias and D as [BE], loaded once, outside the time loop.

    Their layout matters: every product of a parameter tile with the state tile must happen in the state tile's
    layout (a thread per channel, its states in registers), or the compiler converts through shared memory inside
    the loop. Which way of loading gets there depends on the compiler's layout heuristics, so both are kept:
    PARAMS_T=False loads [BE, N] / [BE, BR] tiles directly, PARAMS_T=True loads the transposed [N, BE] / [BR, BE]
    tiles (whose default layout, transposed, is the state tile's) and transposes them in registers. The launch
    code picks per kernel and Triton version what the generated code showed to be conversion-free."""
    a_ptr = _pick(d, a_f, a_b)
    if PARAMS_T:
        a = tl.trans(tl.load(a_ptr + offs_n[:, None] * stride_a_n + offs_e[None, :] * stride_a_e,
                             mask=emask[None, :], other=0.0).to(tl.float32))
    else:
        a = tl.load(a_ptr + offs_e[:, None] * stride_a_e + offs_n[None, :] * stride_a_n, mask=emask[:, None],
                    other=0.0).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    if DT_PROJ:
        w_ptr = _pick(d, w_f, w_b)
        if PARAMS_T:
            w = tl.trans(tl.load(w_ptr + offs_r[:, None] * stride_w_r + offs_e[None, :] * stride_w_e,
                                 mask=rmask[:, None] & emask[None, :], other=0.0).to(tl.float32))
        else:
            w = tl.load(w_ptr + offs_e[:, None] * stride_w_e + offs_r[None, :] * stride_w_r,
                        mask=emask[:, None] & rmask[None, :], other=0.0).to(tl.float32)
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
def _program(pid_be, d, dir_base, E, R: tl.constexpr, x_ptr, z_ptr, dt_ptr, bm_ptr, cm_ptr, dir_off, bc_dir_off,
             w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
             stride_x_d, stride_x_b, stride_z_b, stride_dt_b, stride_bc_b,
             stride_a_e, stride_a_n, stride_w_e, stride_w_r,
             N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, B_COL: tl.constexpr,
             C_COL: tl.constexpr, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
             A_IS_LOG: tl.constexpr, PARAMS_T: tl.constexpr, EVEN_E: tl.constexpr):
    """What a scan program (forward or backward) works with: its batch row and block of channels, the direction's
    parameters, and the base pointers of its inputs. With EVEN_E (BLOCK_E divides E) the channel mask is a
    constant, which the compiler folds out of every load and store."""
    n_eblocks = (E + BLOCK_E - 1) // BLOCK_E
    b = pid_be // n_eblocks
    eb = pid_be % n_eblocks
    rev = (d + dir_base) == 1
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    if EVEN_E:
        emask = tl.full([BLOCK_E], 1, tl.int1)
    else:
        emask = offs_e < E
    offs_n = tl.arange(0, N)
    offs_r = tl.arange(0, BLOCK_R)
    rmask = offs_r < R
    a, w, bias, dskip = _direction_params(d, E, offs_e, emask, offs_n, offs_r, rmask, w_f, w_b, bias_f, bias_b,
                                          a_f, a_b, dd_f, dd_b, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                          N, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG, PARAMS_T)
    x_base = x_ptr + d * stride_x_d + b * stride_x_b + offs_e
    z_base = z_ptr + b * stride_z_b + offs_e
    # direction 1's dt lives dir_off elements after direction 0's, its B and C bc_dir_off elements after; B and C
    # sit at constant columns of their rows: plain pointer arithmetic keeps the alignment the compiler needs for
    # vector loads.
    dt_base = dt_ptr + d * dir_off + b * stride_dt_b
    bm_base = bm_ptr + d * bc_dir_off + B_COL + b * stride_bc_b + offs_n
    cm_base = cm_ptr + d * bc_dir_off + C_COL + b * stride_bc_b + offs_n
    return (b, eb, n_eblocks, rev, offs_e, emask, offs_n, offs_r, rmask, a, w, bias, dskip,
            x_base, z_base, dt_base, bm_base, cm_base)


@triton.jit(do_not_specialize=["L", "steps_per_chunk", "dir_base", "stride_a_e", "stride_a_n", "stride_w_e",
                              "stride_w_r"] + _NO_SPEC_E)
def scan_fwd_kernel(
    x_ptr, z_ptr, dt_ptr, bm_ptr, cm_ptr, dir_off, bc_dir_off,
    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
    y_ptr, hinit_ptr, hend_ptr, dsum_ptr, hsave_ptr,
    L, E, R: tl.constexpr, steps_per_chunk, dir_base,
    stride_x_d, stride_x_b, stride_x_l,
    stride_z_b, stride_z_l,
    stride_dt_b, stride_dt_l: tl.constexpr,
    stride_bc_b, stride_bc_l: tl.constexpr,
    stride_y_b, stride_y_l, stride_y_d,
    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
    stride_h_b, stride_h_d, stride_h_c,
    stride_s_b, stride_s_d, stride_s_c,
    N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, SAVE_EVERY: tl.constexpr,
    B_COL: tl.constexpr, C_COL: tl.constexpr, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr, PARAMS_T: tl.constexpr, EVEN_E: tl.constexpr,
    HAS_INIT: tl.constexpr, WRITE_END: tl.constexpr, WRITE_Y: tl.constexpr, SAVE_STATES: tl.constexpr,
    PREFETCH: tl.constexpr, AHEAD: tl.constexpr,
):
    pid_be = tl.program_id(0)
    chunk = tl.program_id(1)
    d = tl.program_id(2)
    b, eb, n_eblocks, rev, offs_e, emask, offs_n, offs_r, rmask, a, w, bias, dskip, x_base, z_base, dt_base, \
        bm_base, cm_base = _program(pid_be, d, dir_base, E, R, x_ptr, z_ptr, dt_ptr, bm_ptr, cm_ptr, dir_off, bc_dir_off,
                                    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
                                    stride_x_d, stride_x_b, stride_z_b, stride_dt_b, stride_bc_b,
                                    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                    N, BLOCK_E, BLOCK_R, B_COL, C_COL, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG,
                                    PARAMS_T, EVEN_E)
    a2 = a * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    y_base = y_ptr + b * stride_y_b + d * stride_y_d + offs_e
    state_off = offs_n[None, :] * E + offs_e[:, None]
    smask = emask[:, None]

    s_begin = chunk * steps_per_chunk
    s_end = tl.minimum(s_begin + steps_per_chunk, L)
    # The state starts from a load even when it is zero (hinit_ptr is then a zero buffer): that load, contiguous
    # along the channels, anchors the tile's layout (which one: see _NO_SPEC_E).
    if HAS_INIT:
        h = tl.load(hinit_ptr + b * stride_h_b + d * stride_h_d + chunk * stride_h_c + state_off, mask=smask,
                    other=0.0)
    else:
        h = tl.load(hinit_ptr + state_off, mask=smask, other=0.0)
    dsum = tl.zeros([BLOCK_E], dtype=tl.float32)
    hsave_base = hsave_ptr + b * stride_s_b + d * stride_s_d + state_off
    if SAVE_STATES:  # the state entering the chunk's first block (s_begin is a multiple of SAVE_EVERY)
        tl.store(hsave_base + (s_begin // SAVE_EVERY) * stride_s_c, h, mask=smask)
    # A rotating prefetch pipeline: the inputs of step s + PREFETCH are requested before step s stores its output
    # (a load cannot be moved above an earlier store that may alias it, so otherwise every step would wait a full
    # memory latency).
    xa, za, da, ba, ca = _load_step(s_begin, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                    stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
                                    DT_PROJ, HAS_Z, WRITE_Y)
    if PREFETCH > 1:
        xb, zb, db, bb, cb = _load_step(s_begin + 1, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                        dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                        rmask, DT_PROJ, HAS_Z, WRITE_Y)
    # AHEAD (with PREFETCH 1): delta and the gate silu(z) of step s + 1 are computed during step s, from its
    # prefetched inputs, so that step s's decays start from values at hand instead of waiting on the chain
    # dt_proj -> softplus (two MUFU round trips) at the top of every step
    gate = tl.zeros([BLOCK_E], dtype=tl.float32)
    delta_next = gate
    if AHEAD:
        delta_next, _ = _delta_of(da, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
        if HAS_Z and WRITE_Y:
            gate = _silu(za.to(tl.float32))
    if PREFETCH == 4:
        xc, zc, dc, bc, cc = _load_step(s_begin + 2, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                        dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                        rmask, DT_PROJ, HAS_Z, WRITE_Y)
        xd, zd, dd, bd, cd = _load_step(s_begin + 3, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                        dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                        rmask, DT_PROJ, HAS_Z, WRITE_Y)
    for s in range(s_begin, s_end):
        xn, zn, dn, bn, cn = _load_step(s + PREFETCH, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                        dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                        rmask, DT_PROJ, HAS_Z, WRITE_Y)
        if AHEAD:
            delta = delta_next
        else:
            delta, raw = _delta_of(da, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
        xv = xa.to(tl.float32)
        h = tl.exp2(delta[:, None] * a2) * h + (delta * xv)[:, None] * ba.to(tl.float32)[None, :]
        if SAVE_STATES:
            # the state entering the next block, saved as it leaves this step (the state itself is needed for
            # y anyway; saving it before the update kept two copies of the tile in registers: 217 against 168
            # for the forward without saving, on Triton 3.6). A chunk's last step leaves it to the next chunk.
            s1 = s + 1
            tl.store(hsave_base + (s1 // SAVE_EVERY) * stride_s_c, h,
                     mask=_both(smask, ((s1 % SAVE_EVERY) == 0) & (s1 < s_end)))
        if WRITE_END:
            dsum += delta
        if WRITE_Y:
            yv = tl.sum(h * ca.to(tl.float32)[None, :], axis=1)
            if HAS_D:
                yv += dskip * xv
            if HAS_Z:
                if AHEAD:
                    yv = yv * gate
                else:
                    zv = za.to(tl.float32)
                    yv = yv * zv * _sigmoid(zv)
            t = _time_index(s, L, rev)
            tl.store(y_base + t * stride_y_l, yv.to(y_ptr.dtype.element_ty), mask=emask)
        if AHEAD:
            delta_next, _ = _delta_of(dn, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
            if HAS_Z and WRITE_Y:
                gate = _silu(zn.to(tl.float32))
        if PREFETCH == 1:
            xa, za, da, ba, ca = xn, zn, dn, bn, cn
        else:
            xa, za, da, ba, ca = xb, zb, db, bb, cb
        if PREFETCH == 4:
            xb, zb, db, bb, cb = xc, zc, dc, bc, cc
            xc, zc, dc, bc, cc = xd, zd, dd, bd, cd
            xd, zd, dd, bd, cd = xn, zn, dn, bn, cn
        elif PREFETCH == 2:
            xb, zb, db, bb, cb = xn, zn, dn, bn, cn
    if WRITE_END:
        off = b * stride_h_b + d * stride_h_d + chunk * stride_h_c
        tl.store(hend_ptr + off + state_off, h, mask=smask)
        tl.store(dsum_ptr + (off // N) + offs_e, dsum, mask=emask)


@triton.jit
def _carry_combine(a1, b1, a2, b2):
    """Two stretches of the state recurrence h -> a h + b, the first then the second, as one."""
    return a1 * a2, a2 * b1 + b2


@triton.jit(do_not_specialize=["n_chunks", "stride_a_e", "stride_a_n"] + _NO_SPEC_E)
def chunk_carry_kernel(
    hend_ptr, dsum_ptr, hinit_ptr, a_f, a_b, E, n_chunks,
    stride_h_b, stride_h_d, stride_h_c, stride_a_e, stride_a_n,
    N: tl.constexpr, BLOCK_E: tl.constexpr, NC: tl.constexpr, A_IS_LOG: tl.constexpr, REVERSE: tl.constexpr,
):
    """States entering each chunk: H_c = exp(A * sum(delta over chunk c-1)) * H_{c-1} + hend_{c-1}, H_0 = 0; with
    REVERSE the same recurrence from the last chunk to the first (the backward pass's adjoint entering each chunk
    from its end: M_c = exp(A * sum(delta over chunk c+1)) * M_{c+1} + mu_local_{c+1}).

    A program owns one state of BLOCK_E channels of one (batch, direction) and all n_chunks (<= NC) chunks at once:
    its loads all go out together, and the recurrence over chunks is a parallel prefix (tl.associative_scan, log2(NC)
    rounds) instead of a walk whose every step waits on a load (64 chunks: 39 us a launch at Vim-Ti's batch 1 at
    1248 px, docs/kernels.md, "Session 27"). Grid: (B * cdiv(E, BLOCK_E) * N, ND)."""
    pid = tl.program_id(0)
    d = tl.program_id(1)
    n = pid % N
    rest = pid // N
    n_eblocks = (E + BLOCK_E - 1) // BLOCK_E
    b = rest // n_eblocks
    eb = rest % n_eblocks
    offs_e = eb * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    i = tl.arange(0, NC)
    if REVERSE:
        c = n_chunks - 1 - i
    else:
        c = i
    a = tl.load(_pick(d, a_f, a_b) + offs_e * stride_a_e + n * stride_a_n, mask=emask, other=0.0).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    base = b * stride_h_b + d * stride_h_d
    off = base + c[:, None] * stride_h_c  # [NC, 1]: chunk c's [N, E] block
    mask = (i[:, None] < n_chunks) & emask[None, :]
    dsum = tl.load(dsum_ptr + (off // N) + offs_e[None, :], mask=mask, other=0.0)
    hend = tl.load(hend_ptr + off + n * E + offs_e[None, :], mask=mask, other=0.0)
    # (chunks past the last: decay 1, nothing added; they come after every real chunk in the scan's order)
    _, h = tl.associative_scan((tl.exp(dsum * a[None, :]), hend), 0, _carry_combine)
    # h[i]: the state after the i + 1 first chunks (in the scan's order), which enters chunk i + 1
    if REVERSE:
        c_next = c - 1
    else:
        c_next = c + 1
    tl.store(hinit_ptr + base + c_next[:, None] * stride_h_c + n * E + offs_e[None, :], h,
             mask=(i[:, None] + 1 < n_chunks) & emask[None, :])
    if REVERSE:
        first = n_chunks - 1
    else:
        first = 0
    tl.store(hinit_ptr + base + first * stride_h_c + n * E + offs_e, tl.zeros([BLOCK_E], tl.float32), mask=emask)


@triton.jit(do_not_specialize=["L", "steps_per_chunk", "dir_base", "stride_a_e", "stride_a_n", "stride_w_e",
                              "stride_w_r"] + _NO_SPEC_E)
def adjoint_chunk_kernel(
    x_ptr, z_ptr, dt_ptr, bm_ptr, cm_ptr, dir_off, bc_dir_off,
    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
    gy_ptr, zero_ptr, muend_ptr, dsum_ptr,
    L, E, R: tl.constexpr, steps_per_chunk, dir_base,
    stride_x_d, stride_x_b, stride_x_l,
    stride_z_b, stride_z_l,
    stride_dt_b, stride_dt_l: tl.constexpr,
    stride_bc_b, stride_bc_l: tl.constexpr,
    stride_y_b, stride_y_l, stride_y_d,
    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
    stride_h_b, stride_h_d, stride_h_c,
    N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr,
    B_COL: tl.constexpr, C_COL: tl.constexpr, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr, PARAMS_T: tl.constexpr, EVEN_E: tl.constexpr,
):
    """The chunk-parallel backward's first pass: each program walks its chunk of steps backwards from a zero
    adjoint (mu <- exp(delta A) * (gy C + mu)) and writes where that leaves the adjoint at the chunk's start, and
    the chunk's sum of delta. The adjoint needs no states, so this pass is as cheap as a forward one; a reverse
    carry then gives each chunk the adjoint entering it from its end."""
    pid_be = tl.program_id(0)
    chunk = tl.program_id(1)
    d = tl.program_id(2)
    b, eb, n_eblocks, rev, offs_e, emask, offs_n, offs_r, rmask, a, w, bias, dskip, x_base, z_base, dt_base, \
        bm_base, cm_base = _program(pid_be, d, dir_base, E, R, x_ptr, z_ptr, dt_ptr, bm_ptr, cm_ptr, dir_off, bc_dir_off,
                                    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
                                    stride_x_d, stride_x_b, stride_z_b, stride_dt_b, stride_bc_b,
                                    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                    N, BLOCK_E, BLOCK_R, B_COL, C_COL, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG,
                                    PARAMS_T, EVEN_E)
    a2 = a * 1.4426950408889634
    gy_base = gy_ptr + b * stride_y_b + d * stride_y_d + offs_e
    state_off = offs_n[None, :] * E + offs_e[:, None]
    s_begin = chunk * steps_per_chunk
    s_end = tl.minimum(s_begin + steps_per_chunk, L)
    off = b * stride_h_b + d * stride_h_d + chunk * stride_h_c
    # (loaded from a zero [N, E] buffer: the load anchors the adjoint tile's layout like the forward's state)
    mu = tl.load(zero_ptr + state_off, mask=emask[:, None], other=0.0)
    dsum = tl.zeros([BLOCK_E], dtype=tl.float32)
    # (x and B do not enter the adjoint's carry)
    _, za, da, _, ca = _load_step(s_end - 1, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                  dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                  rmask, DT_PROJ, HAS_Z, True)
    ga = tl.load(gy_base + _time_index(s_end - 1, L, rev) * stride_y_l, mask=emask, other=0.0)
    for si in range(s_end - s_begin):
        s = s_end - 1 - si
        _, zn, dn, _, cn = _load_step(s - 1, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                      dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                      rmask, DT_PROJ, HAS_Z, True)
        gn = tl.load(gy_base + _time_index(_clamp(s - 1, s_begin, s_end), L, rev) * stride_y_l, mask=emask,
                     other=0.0)
        delta, raw = _delta_of(da, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
        gy = ga.to(tl.float32)
        if HAS_Z:
            zf = za.to(tl.float32)
            gy = gy * zf * _sigmoid(zf)
        mu = tl.exp2(delta[:, None] * a2) * (gy[:, None] * ca.to(tl.float32)[None, :] + mu)
        dsum += tl.where(emask, delta, 0.0)
        za, da, ca, ga = zn, dn, cn, gn
    tl.store(muend_ptr + off + state_off, mu, mask=emask[:, None])
    tl.store(dsum_ptr + (off // N) + offs_e, dsum, mask=emask)


@triton.jit
def _gate_grads(gout, z, HAS_Z: tl.constexpr):
    """For y = y_pre * silu(z): (d loss / d y_pre, d y / d z / y_pre times d loss / d y), from d loss / d y."""
    g = gout.to(tl.float32)
    if HAS_Z:
        zf = z.to(tl.float32)
        sig = _sigmoid(zf)
        return g * zf * sig, g * sig * (1.0 + zf * (1.0 - sig))
    else:
        return g, g


@triton.jit
def _load_bwd(s, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, bm_base, cm_base, stride_bc_l,
              gy_base, stride_y_l, scratch, scratch_vec, stride_scratch_n, stride_scratch_s, emask, smask,
              HAS_Z: tl.constexpr):
    """Everything backward step s reads: x, z, B, C and the output gradient from memory; its recomputed state,
    delta and softplus'(raw delta) from the scratch. (A step outside [s_begin, s_end) reads the nearest one
    inside, as in _load_step.)"""
    s = _clamp(s, s_begin, s_end)
    t = _time_index(s, L, rev)
    xv = tl.load(x_base + t * stride_x_l, mask=emask, other=0.0)
    if HAS_Z:
        zv = tl.load(z_base + t * stride_z_l, mask=emask, other=0.0)
    else:
        zv = xv
    bv = tl.load(bm_base + t * stride_bc_l)
    cv = tl.load(cm_base + t * stride_bc_l)
    gout = tl.load(gy_base + t * stride_y_l, mask=emask, other=0.0)
    row = (s - s_begin) * stride_scratch_s
    h = tl.load(scratch + row, mask=smask, other=0.0)
    delta = tl.load(scratch_vec + row, mask=emask, other=0.0)
    dsp = tl.load(scratch_vec + row + stride_scratch_n, mask=emask, other=0.0)
    return xv, zv, bv, cv, gout, h, delta, dsp


@triton.jit(do_not_specialize=["L", "steps_per_chunk", "dir_base", "stride_a_e", "stride_a_n", "stride_w_e",
                              "stride_w_r"] + _NO_SPEC_E)
def scan_bwd_kernel(
    x_ptr, z_ptr, dt_ptr, bm_ptr, cm_ptr, dir_off, bc_dir_off,
    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
    gy_ptr, hsave_ptr, scratch_ptr, muinit_ptr,
    gx_ptr, gz_ptr, gdt_ptr, gbc_ptr,
    ga_ptr, gd_ptr, gbias_ptr,
    L, E, R: tl.constexpr, steps_per_chunk, dir_base,
    stride_x_d, stride_x_b, stride_x_l,
    stride_z_b, stride_z_l,
    stride_dt_b, stride_dt_l: tl.constexpr,
    stride_bc_b, stride_bc_l: tl.constexpr,
    stride_y_b, stride_y_l, stride_y_d,
    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
    stride_s_b, stride_s_d, stride_s_c,
    stride_gx_d, stride_gx_b, stride_gx_l,
    stride_gdt_d, stride_gdt_b, stride_gdt_l,
    stride_gbc_d, stride_gbc_eb, stride_gbc_b, stride_gbc_l, stride_scratch_n, stride_scratch_s,
    stride_m_b, stride_m_d, stride_m_c,
    N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr, SAVE_EVERY: tl.constexpr,
    B_COL: tl.constexpr, C_COL: tl.constexpr, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr, PARAMS_T: tl.constexpr, EVEN_E: tl.constexpr, HAS_MU_INIT: tl.constexpr,
    AHEAD: tl.constexpr,
):
    """One program per (batch, block of channels, direction) walks its sequence backwards, SAVE_EVERY steps at a
    time: the chunk's states (and deltas) are recomputed from the state the forward pass saved, into this
    program's scratch rows (written and read back by the same threads), then the chunk is differentiated from its
    last step to its first.

    Outputs: d x and d z per direction; d raw delta (gdt: the gradient before softplus, i.e. of dt_proj's output
    when dt_proj is folded in: the caller turns it into d dt_low and d W_dt with two matmuls); this block's partial
    sums of d B and d C (gbc: [ND, n_eblocks, B, L, 2N]: B | C columns; the caller sums over the blocks); the
    gradients of A, D and the delta bias accumulated in registers, added atomically at the end.

    The scratch rows are [N + 2, BLOCK_E], channels contiguous, like the saved states, and are read back by the
    threads that wrote them. The backward walk reads delta from the scratch instead of recomputing it, so it holds
    neither W_dt's products nor dt_low rows in registers. (The tiles' register layout: see _NO_SPEC_E.)"""
    pid_be = tl.program_id(0)
    d = tl.program_id(1)
    chunk = tl.program_id(2)
    b, eb, n_eblocks, rev, offs_e, emask, offs_n, offs_r, rmask, a, w, bias, dskip, x_base, z_base, dt_base, \
        bm_base, cm_base = _program(pid_be, d, dir_base, E, R, x_ptr, z_ptr, dt_ptr, bm_ptr, cm_ptr, dir_off, bc_dir_off,
                                    w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
                                    stride_x_d, stride_x_b, stride_z_b, stride_dt_b, stride_bc_b,
                                    stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                    N, BLOCK_E, BLOCK_R, B_COL, C_COL, DT_PROJ, HAS_BIAS, HAS_D, A_IS_LOG,
                                    PARAMS_T, EVEN_E)
    n_prog_chunks = tl.num_programs(2)
    a2 = a * 1.4426950408889634  # exp(x) = exp2(x * log2(e)); a itself is not kept (a = a2 * ln 2)
    gy_base = gy_ptr + b * stride_y_b + d * stride_y_d + offs_e
    gx_base = gx_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
    gz_base = gz_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
    gdt_base = gdt_ptr + d * stride_gdt_d + b * stride_gdt_b + offs_e
    gbc_base = gbc_ptr + d * stride_gbc_d + eb * stride_gbc_eb + b * stride_gbc_b + offs_n
    state_off = offs_n[None, :] * E + offs_e[:, None]
    smask = emask[:, None]
    # Scratch rows per step: N states, then delta, then softplus'(raw delta), each BLOCK_E channels. Its strides
    # are specialised like E (multiples of 16), so the scratch is accessed in the state tile's own layout, 4
    # channels per thread; left unspecialised (as before session 5, when the tiles were one channel per thread),
    # every step's states went through shared memory on their way into the scratch.
    local_e = tl.arange(0, BLOCK_E)
    prog_scratch = scratch_ptr + (((b * 2 + d) * n_eblocks + eb) * n_prog_chunks + chunk) \
        * (SAVE_EVERY * stride_scratch_s)
    scratch = prog_scratch + offs_n[None, :] * stride_scratch_n + local_e[:, None]
    scratch_vec = prog_scratch + N * stride_scratch_n + local_e

    # this program's steps: [p_begin, p_end), a whole number of SAVE_EVERY blocks (all of them unless the
    # sequence is split for parallelism; then the adjoint entering the range from its end comes from the carry)
    p_begin = chunk * steps_per_chunk
    p_end = tl.minimum(p_begin + steps_per_chunk, L)
    if HAS_MU_INIT:
        # decay_{t+1} * lambda_{t+1}: the adjoint carried backwards
        mu = tl.load(muinit_ptr + b * stride_m_b + d * stride_m_d + chunk * stride_m_c + state_off, mask=smask,
                     other=0.0)
    else:
        mu = tl.zeros([BLOCK_E, N], dtype=tl.float32)
    g_a = tl.zeros([BLOCK_E, N], dtype=tl.float32)
    g_d = tl.zeros([BLOCK_E], dtype=tl.float32)
    g_bias = tl.zeros([BLOCK_E], dtype=tl.float32)
    n_blocks = (p_end - p_begin + SAVE_EVERY - 1) // SAVE_EVERY
    for ci in range(n_blocks):
        c = p_begin // SAVE_EVERY + n_blocks - 1 - ci
        s_begin = c * SAVE_EVERY
        s_end = tl.minimum(s_begin + SAVE_EVERY, L)
        # 1. recompute the chunk's states and deltas into the scratch (inputs prefetched two steps ahead)
        h = tl.load(hsave_ptr + b * stride_s_b + d * stride_s_d + c * stride_s_c + state_off, mask=smask, other=0.0)
        xa, za, da, ba, ca = _load_step(s_begin, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                        stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r, rmask,
                                        DT_PROJ, False, False)
        xb, zb, db, bb, cb = _load_step(s_begin + 1, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l,
                                        dt_base, stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                        rmask, DT_PROJ, False, False)
        # AHEAD: step s + 1's delta computed during step s (from inputs that arrived a step earlier), as in the
        # forward, and in the walk below the gate's factors of step s - 1 during step s
        delta_next, raw_next = _delta_of(da, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
        for s in range(s_begin, s_end):
            xn, zn, dn, bn, cn = _load_step(s + 2, s_begin, s_end, L, rev, x_base, stride_x_l, z_base, stride_z_l, dt_base,
                                            stride_dt_l, bm_base, cm_base, stride_bc_l, offs_e, emask, offs_r,
                                            rmask, DT_PROJ, False, False)
            if AHEAD:
                delta, raw = delta_next, raw_next
            else:
                delta, raw = _delta_of(da, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
            h = tl.exp2(delta[:, None] * a2) * h + (delta * xa.to(tl.float32))[:, None] * ba.to(tl.float32)[None, :]
            row = (s - s_begin) * stride_scratch_s
            if SOFTPLUS:
                dsp = _sigmoid(raw)  # d softplus(raw) / d raw
            else:
                dsp = tl.full([BLOCK_E], 1.0, tl.float32)
            tl.store(scratch + row, h)
            tl.store(scratch_vec + row, delta)
            tl.store(scratch_vec + row + stride_scratch_n, dsp)
            if AHEAD:
                delta_next, raw_next = _delta_of(db, w, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
            xa, za, da, ba, ca = xb, zb, db, bb, cb
            xb, zb, db, bb, cb = xn, zn, dn, bn, cn
        # 2. walk the chunk backwards (the same threads read back what they wrote), inputs prefetched a step ahead
        s_last = s_end - 1
        xa, za, ba, ca, ga, ha, dla, spa = _load_bwd(s_last, s_begin, s_end, L, rev, x_base, stride_x_l, z_base,
                                                     stride_z_l, bm_base, cm_base, stride_bc_l, gy_base, stride_y_l,
                                                     scratch, scratch_vec, stride_scratch_n, stride_scratch_s, emask,
                                                     smask, HAS_Z)
        gy_next, gzf_next = _gate_grads(ga, za, HAS_Z)
        for si in range(s_end - s_begin):
            s = s_last - si
            xn, zn, bn, cn, gn, hn, dln, spn = _load_bwd(s - 1, s_begin, s_end, L, rev, x_base, stride_x_l, z_base,
                                                         stride_z_l, bm_base, cm_base, stride_bc_l, gy_base,
                                                         stride_y_l, scratch, scratch_vec, stride_scratch_n,
                                                         stride_scratch_s, emask, smask, HAS_Z)
            t = _time_index(s, L, rev)
            delta = dla
            xf = xa.to(tl.float32)
            bf = ba.to(tl.float32)
            cf = ca.to(tl.float32)
            if AHEAD:
                gy, gzf = gy_next, gzf_next
            else:
                gy, gzf = _gate_grads(ga, za, HAS_Z)
            if HAS_Z:
                yv = tl.sum(ha * cf[None, :], axis=1)
                if HAS_D:
                    yv += dskip * xf
                gz = gzf * yv
                tl.store(gz_base + t * stride_gx_l, gz.to(gz_ptr.dtype.element_ty), mask=emask)
            lam = gy[:, None] * cf[None, :] + mu
            dx = delta * xf
            # d loss / d(delta * A) through the decay: lam * decay * h_{t-1} = lam * (h_t - delta x B)
            gdec = lam * (ha - dx[:, None] * bf[None, :])
            lam_b = tl.sum(lam * bf[None, :], axis=1)
            g_delta = tl.sum(gdec * a2, axis=1) * 0.6931471805599453 + xf * lam_b
            gx = delta * lam_b
            if HAS_D:
                gx += gy * dskip
                g_d += gy * xf
            tl.store(gx_base + t * stride_gx_l, gx.to(gx_ptr.dtype.element_ty), mask=emask)
            g_a += gdec * delta[:, None]
            row = gbc_base + t * stride_gbc_l
            tl.store(row, tl.sum(lam * dx[:, None], axis=0))
            tl.store(row + N, tl.sum(ha * gy[:, None], axis=0))
            g_raw = tl.where(emask, g_delta * spa, 0.0)
            g_bias += g_raw
            tl.store(gdt_base + t * stride_gdt_l, g_raw.to(gdt_ptr.dtype.element_ty), mask=emask)
            mu = tl.exp2(delta[:, None] * a2) * lam
            if AHEAD:
                gy_next, gzf_next = _gate_grads(gn, zn, HAS_Z)
            xa, za, ba, ca, ga, ha, dla, spa = xn, zn, bn, cn, gn, hn, dln, spn
    if A_IS_LOG:
        g_a = g_a * (a2 * 0.6931471805599453)  # d A / d A_log = A
    # (ga is [ND, N, E], channels contiguous like the state tile: an [E, N] order here made the compiler keep g_a
    # in a second layout and convert every step's product into it through shared memory)
    tl.atomic_add(ga_ptr + d * E * N + state_off, g_a, mask=smask, sem="relaxed")
    if HAS_D:
        tl.atomic_add(gd_ptr + d * E + offs_e, g_d, mask=emask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(gbias_ptr + d * E + offs_e, g_bias, mask=emask, sem="relaxed")


# ---------------------------------------------------------------------------------------------------------- conv
@triton.jit
def conv_fwd_kernel(
    x_ptr, w_f, w_b, bias_f, bias_b, out_ptr, L, E,
    stride_x_b, stride_x_l, stride_o_d, stride_o_b, stride_o_l,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, TILES: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """out[0, b, t, e] = silu(causal conv(x)), out[1, b, t, e] = silu(anti-causal conv(x)) (the backward direction:
    taps x[t + 3 - k]): both directions from one set of loaded rows x[t - 3 .. t + 3], for TILES consecutive tiles
    of BLOCK_L rows (the weights loaded once per program)."""
    pid_l = tl.program_id(0)
    pid_e = tl.program_id(1)
    b = tl.program_id(2)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    f0 = tl.load(w_f + offs_e * K + 0, mask=emask, other=0.0).to(tl.float32)
    f1 = tl.load(w_f + offs_e * K + 1, mask=emask, other=0.0).to(tl.float32)
    f2 = tl.load(w_f + offs_e * K + 2, mask=emask, other=0.0).to(tl.float32)
    f3 = tl.load(w_f + offs_e * K + 3, mask=emask, other=0.0).to(tl.float32)
    b0 = tl.load(w_b + offs_e * K + 0, mask=emask, other=0.0).to(tl.float32)
    b1 = tl.load(w_b + offs_e * K + 1, mask=emask, other=0.0).to(tl.float32)
    b2 = tl.load(w_b + offs_e * K + 2, mask=emask, other=0.0).to(tl.float32)
    b3 = tl.load(w_b + offs_e * K + 3, mask=emask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias_fv = tl.load(bias_f + offs_e, mask=emask, other=0.0).to(tl.float32)
        bias_bv = tl.load(bias_b + offs_e, mask=emask, other=0.0).to(tl.float32)
    else:
        bias_fv = tl.zeros([BLOCK_E], dtype=tl.float32)
        bias_bv = tl.zeros([BLOCK_E], dtype=tl.float32)
    x_base = x_ptr + b * stride_x_b + offs_e[None, :]
    o_base = out_ptr + b * stride_o_b + offs_e[None, :]
    for i in range(TILES):
        offs_t = (pid_l * TILES + i) * BLOCK_L + tl.arange(0, BLOCK_L)
        xs_f, xs_b = _conv_both(x_base, offs_t, L, stride_x_l, emask, f0, f1, f2, f3, bias_fv, b0, b1, b2, b3,
                                bias_bv)
        omask = (offs_t < L)[:, None] & emask[None, :]
        rows = o_base + offs_t[:, None] * stride_o_l
        tl.store(rows, xs_f.to(out_ptr.dtype.element_ty), mask=omask)
        tl.store(rows + stride_o_d, xs_b.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def conv_fwd_walk_kernel(
    x_ptr, w_f, w_b, bias_f, bias_b, out_ptr, L, E, ROWS,
    stride_x_b, stride_x_l, stride_o_d, stride_o_b, stride_o_l,
    K: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """:func:`conv_fwd_kernel`'s output (both directions' silu(conv)), computed by walking ROWS consecutive rows
    (a multiple of 8) of BLOCK_E channels: each row of x is loaded once, into a window of seven rows kept in
    registers (x[t - 3 .. t + 3]), where the tile kernel loads each row seven times, once per tap and direction. The
    walk runs eight rows an iteration while the next eight rows' loads are in flight."""
    (b, offs_e, emask, t0, t_end, x_base, f0, f1, f2, f3, bf, g0, g1, g2, g3,
     bb) = _walk_place(x_ptr, w_f, w_b, bias_f, bias_b, L, E, ROWS, stride_x_b, K, BLOCK_E, HAS_BIAS)
    o_base = out_ptr + b * stride_o_b + offs_e
    # the window: x[t - 3 .. t + 2] in fp32; x[t + 3 .. t + 10] as loaded
    w0, w1, w2, w3, w4, w5 = _walk_window(x_base, t0, L, stride_x_l, emask)
    p = _walk_rows8(x_base, t0 + 3, L, stride_x_l, emask)
    for t in range(t0, t_end, 8):
        q = _walk_rows8(x_base, t + 11, L, stride_x_l, emask)
        for h in tl.static_range(2):
            w0, w1, w2, w3, w4, w5 = _walk_out4(o_base, t + 4 * h, t_end, stride_o_l, stride_o_d, emask, w0, w1, w2,
                                                w3, w4, w5, p[4 * h], p[4 * h + 1], p[4 * h + 2], p[4 * h + 3],
                                                f0, f1, f2, f3, bf, g0, g1, g2, g3, bb)
        p = q


@triton.jit
def _walk_place(x_ptr, w_f, w_b, bias_f, bias_b, L, E, ROWS, stride_x_b, K: tl.constexpr, BLOCK_E: tl.constexpr,
                HAS_BIAS: tl.constexpr):
    """A conv walk program's share (grid: rows / ROWS, E blocks, B): its batch, channels and their mask, its rows
    [t0, t_end), x's row base for it, and both directions' four taps and bias (fp32)."""
    b = tl.program_id(2)
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    f0, f1, f2, f3, bf = _conv_params(w_f, bias_f, offs_e, emask, K, HAS_BIAS)
    g0, g1, g2, g3, bb = _conv_params(w_b, bias_b, offs_e, emask, K, HAS_BIAS)
    t0 = tl.program_id(0) * ROWS
    return (b, offs_e, emask, t0, tl.minimum(t0 + ROWS, L), x_ptr + b * stride_x_b + offs_e, f0, f1, f2, f3, bf,
            g0, g1, g2, g3, bb)


@triton.jit
def _mask_if(emask, cond):
    """``emask & cond`` for a scalar ``cond``, written as a select: Triton 3.9's interpreter refuses a block mask
    and'ed with a scalar condition ("mask has unsupported dtype"); compiled, both are the same predicate (the
    walk kernels' SASS is unchanged under Triton 3.6)."""
    return tl.where(cond, emask, False)


@triton.jit
def _walk_row(x_base, row, L, stride_x_l, emask):
    """Row ``row`` of x (one channel vector, as stored), zero outside [0, L)."""
    return tl.load(x_base + row * stride_x_l, mask=_mask_if(emask, (row >= 0) & (row < L)), other=0.0)


@triton.jit
def _walk_rows4(base, row, L, stride_l, emask):
    """Rows ``row .. row + 3`` of a [L, channels] operand, as stored, zero outside [0, L) (loads issued together;
    converted when used)."""
    return (_walk_row(base, row, L, stride_l, emask), _walk_row(base, row + 1, L, stride_l, emask),
            _walk_row(base, row + 2, L, stride_l, emask), _walk_row(base, row + 3, L, stride_l, emask))


@triton.jit
def _walk_rows8(base, row, L, stride_l, emask):
    """Rows ``row .. row + 7``, as :func:`_walk_rows4`."""
    a0, a1, a2, a3 = _walk_rows4(base, row, L, stride_l, emask)
    a4, a5, a6, a7 = _walk_rows4(base, row + 4, L, stride_l, emask)
    return a0, a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _walk_window(x_base, r, L, stride_x_l, emask):
    """A walk's window at its first row r: x[r - 3 .. r + 2] in fp32."""
    return (_walk_row(x_base, r - 3, L, stride_x_l, emask).to(tl.float32),
            _walk_row(x_base, r - 2, L, stride_x_l, emask).to(tl.float32),
            _walk_row(x_base, r - 1, L, stride_x_l, emask).to(tl.float32),
            _walk_row(x_base, r, L, stride_x_l, emask).to(tl.float32),
            _walk_row(x_base, r + 1, L, stride_x_l, emask).to(tl.float32),
            _walk_row(x_base, r + 2, L, stride_x_l, emask).to(tl.float32))


@triton.jit
def _walk_pre(w0, w1, w2, w3, w4, w5, xn, f0, f1, f2, f3, bf, g0, g1, g2, g3, bb):
    """Both directions' pre-activations (conv + bias, fp32) at row r from the window w = x[r - 3 .. r + 2] and
    xn = x[r + 3]: causal taps x[r - 3 .. r], anti-causal x[r + 3 .. r]."""
    return bf + f0 * w0 + f1 * w1 + f2 * w2 + f3 * w3, bb + g0 * xn + g1 * w5 + g2 * w4 + g3 * w3


@triton.jit
def _walk_out4(o_base, t, t_end, stride_o_l, stride_o_d, emask, w0, w1, w2, w3, w4, w5, n0, n1, n2, n3,
               f0, f1, f2, f3, bf, g0, g1, g2, g3, bb):
    """Rows t .. t + 3 of both directions (those before ``t_end``) from the window w = x[t - 3 .. t + 2] (fp32) and
    the next rows n = x[t + 3 .. t + 6] (as loaded); returns the window for row t + 4 (x[t + 1 .. t + 6])."""
    n = (n0.to(tl.float32), n1.to(tl.float32), n2.to(tl.float32), n3.to(tl.float32))
    for i in tl.static_range(4):
        w0, w1, w2, w3, w4, w5 = _walk_out1(o_base, t + i, t_end, stride_o_l, stride_o_d, emask, w0, w1, w2, w3, w4,
                                            w5, n[i], f0, f1, f2, f3, bf, g0, g1, g2, g3, bb)
    return w0, w1, w2, w3, w4, w5


@triton.jit
def _walk_out1(o_base, t, t_end, stride_o_l, stride_o_d, emask, w0, w1, w2, w3, w4, w5, xn,
               f0, f1, f2, f3, bf, g0, g1, g2, g3, bb):
    """Row t of both directions' silu(conv) stored (if before ``t_end``), from the window w = x[t - 3 .. t + 2]
    and xn = x[t + 3] (fp32); returns the window for row t + 1."""
    pre_f, pre_b = _walk_pre(w0, w1, w2, w3, w4, w5, xn, f0, f1, f2, f3, bf, g0, g1, g2, g3, bb)
    m = _mask_if(emask, t < t_end)
    row = o_base + t * stride_o_l
    tl.store(row, (pre_f * _sigmoid(pre_f)).to(o_base.dtype.element_ty), mask=m)
    tl.store(row + stride_o_d, (pre_b * _sigmoid(pre_b)).to(o_base.dtype.element_ty), mask=m)
    return w1, w2, w3, w4, w5, xn


@triton.jit
def _conv_both(x_base, offs_t, L, stride_x_l, emask, f0, f1, f2, f3, bias_f, b0, b1, b2, b3, bias_b):
    """silu(causal conv(x)) and silu(anti-causal conv(x)) at rows ``offs_t`` (fp32 [rows, channels]), from the
    rows x[t - 3 .. t + 3] loaded once for both, the taps and biases given per channel (fp32)."""
    xm3 = _conv_row(x_base, offs_t - 3, L, stride_x_l, emask)
    xm2 = _conv_row(x_base, offs_t - 2, L, stride_x_l, emask)
    xm1 = _conv_row(x_base, offs_t - 1, L, stride_x_l, emask)
    x0 = _conv_row(x_base, offs_t, L, stride_x_l, emask)
    xp1 = _conv_row(x_base, offs_t + 1, L, stride_x_l, emask)
    xp2 = _conv_row(x_base, offs_t + 2, L, stride_x_l, emask)
    xp3 = _conv_row(x_base, offs_t + 3, L, stride_x_l, emask)
    pre_f = bias_f[None, :] + f0[None, :] * xm3 + f1[None, :] * xm2 + f2[None, :] * xm1 + f3[None, :] * x0
    pre_b = bias_b[None, :] + b0[None, :] * xp3 + b1[None, :] * xp2 + b2[None, :] * xp1 + b3[None, :] * x0
    return pre_f * _sigmoid(pre_f), pre_b * _sigmoid(pre_b)


@triton.jit
def _conv_direction(w_f, w_b, bias_f, bias_b, E, K: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A one-direction conv program's share (grid dim 1: 2 x E blocks): its direction d = program_id(1) % 2, the
    sign of its taps' offsets (1 causal, -1 anti-causal), its channels and their mask, and the direction's four
    tap weights and bias (fp32)."""
    pid_e = tl.program_id(1)
    d = pid_e % 2
    offs_e = (pid_e // 2) * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    w0, w1, w2, w3, bias = _conv_params(_pick(d, w_f, w_b), _pick(d, bias_f, bias_b), offs_e, emask, K, HAS_BIAS)
    return d, 1 - 2 * d, offs_e, emask, w0, w1, w2, w3, bias


@triton.jit
def _conv_row(x_base, rows, L, stride_x_l, emask):
    """x[rows] as fp32, zero outside [0, L)."""
    m = (rows >= 0) & (rows < L)
    return tl.load(x_base + rows[:, None] * stride_x_l, mask=m[:, None] & emask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _conv_params(w_ptr, bias_ptr, offs_e, emask, K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """One direction's four tap weights and bias for a block of channels, fp32."""
    w0 = tl.load(w_ptr + offs_e * K + 0, mask=emask, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + offs_e * K + 1, mask=emask, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + offs_e * K + 2, mask=emask, other=0.0).to(tl.float32)
    w3 = tl.load(w_ptr + offs_e * K + 3, mask=emask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_e, mask=emask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([offs_e.shape[0]], dtype=tl.float32)
    return w0, w1, w2, w3, bias


@triton.jit
def _conv_grad_dir(x_base, g_base, gp_base, offs_t, tmask, L, stride_x_l, stride_g_l, stride_gp_l, emask,
                   w0, w1, w2, w3, bias, sign):
    """One direction of one tile (sign 1: causal, -1: anti-causal): g_pre = d loss / d (conv + bias) from
    d loss / d silu(...), stored for the input-gradient pass; returns this tile's terms of the four tap weights'
    and the bias's gradients (summed over rows by the caller, once, after its last tile). The weights come from
    the caller, loaded once before its loop over tiles: loaded here, inside the loop, each of the ten [BLOCK_E]
    vectors went through shared memory (and two barriers) into the tile's layout at every tile."""
    # the four shifted input rows, loaded once: they make the pre-activation and the weight gradients
    r0 = offs_t + sign * -3
    r1 = offs_t + sign * -2
    r2 = offs_t + sign * -1
    x0 = tl.load(x_base + r0[:, None] * stride_x_l, mask=((r0 >= 0) & (r0 < L))[:, None] & emask[None, :],
                 other=0.0).to(tl.float32)
    x1 = tl.load(x_base + r1[:, None] * stride_x_l, mask=((r1 >= 0) & (r1 < L))[:, None] & emask[None, :],
                 other=0.0).to(tl.float32)
    x2 = tl.load(x_base + r2[:, None] * stride_x_l, mask=((r2 >= 0) & (r2 < L))[:, None] & emask[None, :],
                 other=0.0).to(tl.float32)
    x3 = tl.load(x_base + offs_t[:, None] * stride_x_l, mask=tmask[:, None] & emask[None, :],
                 other=0.0).to(tl.float32)
    pre = bias[None, :] + w0[None, :] * x0 + w1[None, :] * x1 + w2[None, :] * x2 + w3[None, :] * x3
    sig = _sigmoid(pre)
    g = tl.load(g_base + offs_t[:, None] * stride_g_l, mask=tmask[:, None] & emask[None, :], other=0.0)
    g_pre = g.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))
    g_pre = tl.where(tmask[:, None], g_pre, 0.0)
    tl.store(gp_base + offs_t[:, None] * stride_gp_l, g_pre.to(gp_base.dtype.element_ty),
             mask=tmask[:, None] & emask[None, :])
    return g_pre * x0, g_pre * x1, g_pre * x2, g_pre * x3, g_pre


@triton.jit
def conv_bwd_dir_kernel(
    x_ptr, w_f, w_b, bias_f, bias_b, gout_ptr, gpre_ptr, part_ptr, L, E, ROWS,
    stride_x_b, stride_x_l, stride_g_d, stride_g_b, stride_g_l, stride_gp_d, stride_gp_b, stride_gp_l,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Backward of out[d] = silu(conv_d(x)) (d = 0 causal, d = 1 anti-causal), first pass, one direction a
    program (d = program_id(1) % 2): g_pre[d] = d loss / d (conv_d(x) + bias_d) into ``gpre_ptr`` ([2, B, L, E],
    the activations' dtype), and the weight / bias gradients of the ``ROWS`` rows this program covers, summed in
    registers over its tiles and added atomically into ``part_ptr`` ([2, 5, E] fp32, zeroed by the host: taps 0-3
    then the bias; the order of the adds varies from run to run). Grid: (n_chunks, 2 x E blocks, B).

    (Until session 21 each program wrote a partial, [B * n_chunks, 2, 5, E], and the host summed them: a column sum
    of ~8 us at 224 px / batch 128 on an H100, 24 a training step.)

    (Until session 20 one program did both directions: 254 registers, 8 warps an SM, 56% of its stall samples on
    global loads; 88.7 us at Vim-Ti's 224 px / batch 128 on an H100 under Nsight Compute. A direction a program:
    158 registers, 12 warps, 57.6 us; docs/kernels.md, "Session 20".)"""
    pid_c = tl.program_id(0)
    b = tl.program_id(2)
    d, sign, offs_e, emask, w0, w1, w2, w3, wb = _conv_direction(w_f, w_b, bias_f, bias_b, E, K, BLOCK_E, HAS_BIAS)
    x_base = x_ptr + b * stride_x_b + offs_e[None, :]
    g_base = gout_ptr + d * stride_g_d + b * stride_g_b + offs_e[None, :]
    p_base = gpre_ptr + d * stride_gp_d + b * stride_gp_b + offs_e[None, :]
    zero = tl.zeros([BLOCK_L, BLOCK_E], dtype=tl.float32)
    a0, a1, a2, a3, ab = zero, zero, zero, zero, zero
    start = pid_c * ROWS
    end = tl.minimum(start + ROWS, L)
    for t0 in range(start, end, BLOCK_L):
        offs_t = t0 + tl.arange(0, BLOCK_L)
        tmask = offs_t < end
        s0, s1, s2, s3, sb = _conv_grad_dir(x_base, g_base, p_base, offs_t, tmask, L, stride_x_l, stride_g_l,
                                            stride_gp_l, emask, w0, w1, w2, w3, wb, sign)
        a0, a1, a2, a3, ab = a0 + s0, a1 + s1, a2 + s2, a3 + s3, ab + sb
    part = part_ptr + d * 5 * E + offs_e
    tl.atomic_add(part + 0 * E, tl.sum(a0, axis=0), mask=emask, sem="relaxed")
    tl.atomic_add(part + 1 * E, tl.sum(a1, axis=0), mask=emask, sem="relaxed")
    tl.atomic_add(part + 2 * E, tl.sum(a2, axis=0), mask=emask, sem="relaxed")
    tl.atomic_add(part + 3 * E, tl.sum(a3, axis=0), mask=emask, sem="relaxed")
    tl.atomic_add(part + 4 * E, tl.sum(ab, axis=0), mask=emask, sem="relaxed")


@triton.jit
def conv_bwd_walk_kernel(
    x_ptr, w_f, w_b, bias_f, bias_b, gout_ptr, gx_ptr, part_ptr, L, E, ROWS,
    stride_x_b, stride_x_l, stride_g_d, stride_g_b, stride_g_l, stride_gx_b, stride_gx_l,
    K: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Both passes of the conv backward (:func:`conv_bwd_dir_kernel`, :func:`conv_bwd_input_kernel`) in one walk
    down ROWS rows of BLOCK_E channels: at row r it recomputes both directions' pre-activations from a window of x
    (x[r - 3 .. r + 3], each row loaded once), makes g_pre[d, r] = gout[d, r] silu'(pre) in registers (never
    stored), adds it into the weight and bias sums (rows of this program only) and into the pending d x of rows
    r - 3 .. r + 3; d x[r - 3] is then complete and stored. The walk starts 3 rows before the program's first row and
    ends 3 after its last (d x[t] takes g_pre of rows t - 3 .. t + 3). The sums are added atomically into
    ``part_ptr`` ([2, 5, E] fp32: taps 0-3, then the bias) at the end. Four rows an iteration, the next four
    rows' loads in flight meanwhile."""
    (b, offs_e, emask, t0, t_end, x_base, f0, f1, f2, f3, bf, g0, g1, g2, g3,
     bb) = _walk_place(x_ptr, w_f, w_b, bias_f, bias_b, L, E, ROWS, stride_x_b, K, BLOCK_E, HAS_BIAS)
    gf_base = gout_ptr + b * stride_g_b + offs_e
    gb_base = gf_base + stride_g_d
    gx_base = gx_ptr + b * stride_gx_b + offs_e
    r0 = t0 - 3
    # at the walk's row r: the window x[r - 3 .. r + 2] (fp32), the pending d x of rows r - 3 .. r + 2, the sums
    w0, w1, w2, w3, w4, w5 = _walk_window(x_base, r0, L, stride_x_l, emask)
    zero = tl.zeros([BLOCK_E], dtype=tl.float32)
    a0, a1, a2, a3, a4, a5 = zero, zero, zero, zero, zero, zero
    sf0, sf1, sf2, sf3, sfb = zero, zero, zero, zero, zero
    sb0, sb1, sb2, sb3, sbb = zero, zero, zero, zero, zero
    # loaded ahead: x[r + 3 .. r + 6], gout[0 / 1, r .. r + 3]
    px = _walk_rows4(x_base, r0 + 3, L, stride_x_l, emask)
    pf = _walk_rows4(gf_base, r0, L, stride_g_l, emask)
    pb = _walk_rows4(gb_base, r0, L, stride_g_l, emask)
    for r in range(r0, t_end + 3, 4):
        qx = _walk_rows4(x_base, r + 7, L, stride_x_l, emask)
        qf = _walk_rows4(gf_base, r + 4, L, stride_g_l, emask)
        qb = _walk_rows4(gb_base, r + 4, L, stride_g_l, emask)
        for i in tl.static_range(4):
            (w0, w1, w2, w3, w4, w5, a0, a1, a2, a3, a4, a5, sf0, sf1, sf2, sf3, sfb, sb0, sb1, sb2, sb3,
             sbb) = _bwalk_row(gx_base, stride_gx_l, emask, r + i, t0, t_end, px[i], pf[i], pb[i], w0, w1, w2, w3,
                               w4, w5, a0, a1, a2, a3, a4, a5, sf0, sf1, sf2, sf3, sfb, sb0, sb1, sb2, sb3, sbb,
                               f0, f1, f2, f3, bf, g0, g1, g2, g3, bb)
        px, pf, pb = qx, qf, qb
    part = part_ptr + offs_e
    tl.atomic_add(part + 0 * E, sf0, mask=emask, sem="relaxed")
    tl.atomic_add(part + 1 * E, sf1, mask=emask, sem="relaxed")
    tl.atomic_add(part + 2 * E, sf2, mask=emask, sem="relaxed")
    tl.atomic_add(part + 3 * E, sf3, mask=emask, sem="relaxed")
    tl.atomic_add(part + 4 * E, sfb, mask=emask, sem="relaxed")
    tl.atomic_add(part + 5 * E, sb0, mask=emask, sem="relaxed")
    tl.atomic_add(part + 6 * E, sb1, mask=emask, sem="relaxed")
    tl.atomic_add(part + 7 * E, sb2, mask=emask, sem="relaxed")
    tl.atomic_add(part + 8 * E, sb3, mask=emask, sem="relaxed")
    tl.atomic_add(part + 9 * E, sbb, mask=emask, sem="relaxed")


@triton.jit
def _bwalk_row(gx_base, stride_gx_l, emask, r, t0, t_end, xn, gfn, gbn, w0, w1, w2, w3, w4, w5,
               a0, a1, a2, a3, a4, a5, sf0, sf1, sf2, sf3, sfb, sb0, sb1, sb2, sb3, sbb,
               f0, f1, f2, f3, bf, g0, g1, g2, g3, bb):
    """Row r of :func:`conv_bwd_walk_kernel`'s walk: w = x[r - 3 .. r + 2], xn = x[r + 3], gfn / gbn = gout[0 / 1, r];
    a = pending d x of rows r - 3 .. r + 2. Stores d x[r - 3] (if one of this program's rows); returns the window,
    the pending d x and the sums for row r + 1."""
    xn = xn.to(tl.float32)
    pre_f, pre_b = _walk_pre(w0, w1, w2, w3, w4, w5, xn, f0, f1, f2, f3, bf, g0, g1, g2, g3, bb)
    s_f = _sigmoid(pre_f)
    s_b = _sigmoid(pre_b)
    gp_f = gfn.to(tl.float32) * s_f * (1.0 + pre_f * (1.0 - s_f))
    gp_b = gbn.to(tl.float32) * s_b * (1.0 + pre_b * (1.0 - s_b))
    own = (r >= t0) & (r < t_end)
    of = tl.where(own, gp_f, 0.0)
    ob = tl.where(own, gp_b, 0.0)
    s = r - 3
    tl.store(gx_base + s * stride_gx_l, (a0 + f0 * gp_f).to(gx_base.dtype.element_ty),
             mask=_mask_if(emask, (s >= t0) & (s < t_end)))
    return (w1, w2, w3, w4, w5, xn,
            a1 + f1 * gp_f, a2 + f2 * gp_f, a3 + f3 * gp_f + g3 * gp_b, a4 + g2 * gp_b, a5 + g1 * gp_b, g0 * gp_b,
            sf0 + of * w0, sf1 + of * w1, sf2 + of * w2, sf3 + of * w3, sfb + of,
            sb0 + ob * xn, sb1 + ob * w5, sb2 + ob * w4, sb3 + ob * w3, sbb + ob)


@triton.jit
def conv_bwd_input_kernel(
    gpre_ptr, w_f, w_b, gx_ptr, L, E,
    stride_gp_d, stride_gp_b, stride_gp_l, stride_gx_b, stride_gx_l,
    K: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, TILES: tl.constexpr,
):
    """Second pass: d loss / d x[t] = sum_k w_f[k] g_pre[0, t + 3 - k] + w_b[k] g_pre[1, t - 3 + k] (x[t] feeds
    out[t - off(k)] through tap k), for TILES consecutive tiles of BLOCK_L rows (the eight weight vectors loaded,
    and moved into the tiles' layout, once per program). Grid: (L blocks of TILES x BLOCK_L rows, E blocks, B)."""
    pid_l = tl.program_id(0)
    pid_e = tl.program_id(1)
    b = tl.program_id(2)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = offs_e < E
    f0, f1, f2, f3, _ = _conv_params(w_f, w_f, offs_e, emask, K, False)
    b0, b1, b2, b3, _ = _conv_params(w_b, w_b, offs_e, emask, K, False)
    base_f = gpre_ptr + b * stride_gp_b + offs_e[None, :]
    base_b = base_f + stride_gp_d
    for i in range(TILES):
        offs_t = (pid_l * TILES + i) * BLOCK_L + tl.arange(0, BLOCK_L)
        # causal taps: g_pre[0, t + 3 - k]; anti-causal: g_pre[1, t - 3 + k]
        gx = f0[None, :] * _conv_row(base_f, offs_t + 3, L, stride_gp_l, emask)
        gx += f1[None, :] * _conv_row(base_f, offs_t + 2, L, stride_gp_l, emask)
        gx += f2[None, :] * _conv_row(base_f, offs_t + 1, L, stride_gp_l, emask)
        gx += f3[None, :] * _conv_row(base_f, offs_t, L, stride_gp_l, emask)
        gx += b0[None, :] * _conv_row(base_b, offs_t - 3, L, stride_gp_l, emask)
        gx += b1[None, :] * _conv_row(base_b, offs_t - 2, L, stride_gp_l, emask)
        gx += b2[None, :] * _conv_row(base_b, offs_t - 1, L, stride_gp_l, emask)
        gx += b3[None, :] * _conv_row(base_b, offs_t, L, stride_gp_l, emask)
        tl.store(gx_ptr + b * stride_gx_b + offs_t[:, None] * stride_gx_l + offs_e[None, :],
                 gx.to(gx_ptr.dtype.element_ty), mask=(offs_t < L)[:, None] & emask[None, :])


# ------------------------------------------------------------------------------------------------ small glue ops
@triton.jit
def pair_sum_kernel(
    a_ptr, b_ptr, out_ptr, M, E, stride_a, stride_b, stride_o,
    HALF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """out[m, :] = a[m, :] + b[m, :] (or their mean with HALF), computed in fp32 and rounded once into out's dtype;
    rows of any stride, columns contiguous. For the mixer's two directions, which live at strided places: the sum
    of their z gradients written straight into in_proj's output gradient, the mean of their outputs kept for
    out_proj's weight gradient. (PyTorch's elementwise ops fall back to a non-vectorised kernel for such rows.)
    Grid: (M blocks, E blocks)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask = (rows < M)[:, None] & (cols < E)[None, :]
    rows = rows.to(tl.int64)[:, None]
    a = tl.load(a_ptr + rows * stride_a + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rows * stride_b + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = (a + b).to(out_ptr.dtype.element_ty)
    if HALF:  # round(a + b) / 2, exactly as a sum in out's dtype halved afterwards
        s = (s.to(tl.float32) * 0.5).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows * stride_o + cols[None, :], s, mask=mask)


@triton.jit
def mixer_weights_kernel(
    xf_ptr, xb_ptr, ow_ptr, pair_ptr, half_ptr, E, D, stride_x, stride_o,
    R: tl.constexpr, RANK_COLS: tl.constexpr, ROWS: tl.constexpr, HAS_OUT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr, COPIES: tl.constexpr = 1,
):
    """The weights an inference call of the mixer uses, in one launch instead of four: both directions' x_proj
    weights [ROWS, E] (ROWS = R + 2N) laid out as the scan reads x_proj's rows, pair[d] = dt_low's R rows | zero
    rows up to RANK_COLS | B's and C's 2N rows, in pair's dtype ([2, W, E], W = RANK_COLS + 2N); and with HAS_OUT
    out_proj's weight [D, E] halved, half = weight * 0.5 rounded once into half's dtype ([D, E]; with COPIES = 2
    [D, 2E], the halved row twice side by side). Grid: (blocks of BLOCK_R rows over the 2W + D output rows, E
    blocks)."""
    W: tl.constexpr = RANK_COLS + ROWS - R
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    cmask = (c < E)[None, :]
    d = r // W
    j = r - d * W
    src = tl.where(j < R, j, j - (RANK_COLS - R))
    in_pair = r < 2 * W
    real = in_pair & ((j < R) | (j >= RANK_COLS))  # padding rows stay zero
    off = src.to(tl.int64)[:, None] * stride_x + c[None, :]
    vf = tl.load(xf_ptr + off, mask=(real & (d == 0))[:, None] & cmask, other=0.0)
    vb = tl.load(xb_ptr + off, mask=(real & (d == 1))[:, None] & cmask, other=0.0)
    v = tl.where((d == 0)[:, None], vf, vb)
    tl.store(pair_ptr + r.to(tl.int64)[:, None] * E + c[None, :], v.to(pair_ptr.dtype.element_ty),
             mask=in_pair[:, None] & cmask)
    if HAS_OUT:
        h = r - 2 * W
        hmask = ((h >= 0) & (h < D))[:, None] & cmask
        h = h.to(tl.int64)[:, None]
        o = tl.load(ow_ptr + h * stride_o + c[None, :], mask=hmask, other=0.0).to(tl.float32)
        hv = (o * 0.5).to(half_ptr.dtype.element_ty)
        for k in tl.static_range(COPIES):
            tl.store(half_ptr + h * (COPIES * E) + k * E + c[None, :], hv, mask=hmask)


@triton.jit
def prep_weights_kernel(
    table_ptr, out_ptr, n_layer,
    D: tl.constexpr, E: tl.constexpr, R: tl.constexpr, RANK_COLS: tl.constexpr, ROWS: tl.constexpr,
    HAS_IN: tl.constexpr, BLOCK: tl.constexpr,
):
    """Every layer's inference weights of the mixer in one launch (what ``mixer_weights_kernel`` makes a layer,
    and in_proj's weight cast), for a whole model's layers. ``table_ptr`` [layers, 4] int64: the addresses of each
    layer's fp32 in_proj weight [2E, D], x_proj weights of both directions [ROWS, E] and out_proj weight [D, E]
    (all contiguous). A layer's output is ``n_layer`` consecutive elements in out's dtype: with HAS_IN in_proj's
    weight cast [2E, D]; then x_proj's pair [2, W, E] (W = RANK_COLS + ROWS - R: dt_low's R rows, zero rows up to
    RANK_COLS, B's and C's rows); then out_proj's [D, 2E] = [W_out, W_out] / 2, rounded once from the fp32 product.
    Grid: (blocks of BLOCK elements of a layer, layers)."""
    W: tl.constexpr = RANK_COLS + ROWS - R
    N_IN: tl.constexpr = 2 * E * D if HAS_IN else 0
    N_PAIR: tl.constexpr = 2 * W * E
    N_HALF: tl.constexpr = D * 2 * E
    layer = tl.program_id(1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row = table_ptr + layer * 4
    in_w = tl.load(row + 0).to(tl.pointer_type(tl.float32))
    x_f = tl.load(row + 1).to(tl.pointer_type(tl.float32))
    x_b = tl.load(row + 2).to(tl.pointer_type(tl.float32))
    o_w = tl.load(row + 3).to(tl.pointer_type(tl.float32))
    # in_proj: a plain cast
    in_seg = i < N_IN
    v_in = tl.load(in_w + i, mask=in_seg, other=0.0)
    # x_proj's pair: [2, W, E], dt_low's rows, zero rows, then B and C
    j = i - N_IN
    pair_seg = (j >= 0) & (j < N_PAIR)
    d = j // (W * E)
    r = (j // E) % W
    c = j % E
    src = tl.where(r < R, r, r - (RANK_COLS - R))
    real = pair_seg & ((r < R) | (r >= RANK_COLS))
    off = src * E + c
    v_pair = tl.where(d == 0, tl.load(x_f + off, mask=real & (d == 0), other=0.0),
                      tl.load(x_b + off, mask=real & (d == 1), other=0.0))
    # out_proj's weight halved, twice side by side: [D, 2E]
    k = j - N_PAIR
    half_seg = (k >= 0) & (k < N_HALF)
    v_half = tl.load(o_w + (k // (2 * E)) * E + k % E, mask=half_seg, other=0.0) * 0.5
    v = tl.where(in_seg, v_in, tl.where(pair_seg, v_pair, v_half))
    tl.store(out_ptr + layer.to(tl.int64) * n_layer + i, v.to(out_ptr.dtype.element_ty),
             mask=i < N_IN + N_PAIR + N_HALF)
