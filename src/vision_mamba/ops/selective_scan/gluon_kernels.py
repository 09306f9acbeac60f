"""The scan of Vim's mixer in Gluon (Triton's explicit-layout dialect): forward (one pass or chunk-parallel, saving
states for training or not) and backward, the same computations as ``scan_fwd_kernel`` and ``scan_bwd_kernel`` in
``triton_kernels.py`` for their most used form (dt_proj folded in, both directions, softplus, A_log, D, silu(z)),
with the register layouts written down instead of left to the compiler.

Why: in plain Triton the compiler lays the [channels, states] tile out as 4 channels x 4 - 8 states per thread
(what the [N, E] state loads suggest to it), so each step's B_t, C_t and dt_low rows arrive as scalar 2-byte loads
and the sums over states take shuffles; in the backward, the per-channel vectors (x, z, the output gradient, delta)
cross between layouts through shared memory 12 times a step (docs/kernels.md, "Session 4" and "Session 7"). Here a
thread owns whole channels with all N states: the sums over states stay in the thread, B_t, C_t and dt_low are
vector loads (the same addresses in every thread: broadcasts), and the per-channel vectors need no conversion.

The backward's two sums over channels (d B_t and d C_t) cross the threads once a step through shared memory:
each thread writes its channel's [2, N] row, and each reads back one of the 2N columns and sums it (32 loads and
adds instead of ~160 shuffles). The staged backward takes them out of its walk: it sums a part of a block's steps
at a time from the buffer that holds their states (``scan_bwd_staged_gluon_kernel``). The states the backward
recomputes for each block of SAVE_EVERY steps also stay in shared memory (or, for long save intervals, in a global
scratch that only the writing thread reads back).

Gluon has no interpreter: these kernels run only on a GPU, where ``tests/test_triton.py`` compares them with the
Triton kernels and the reference; on the CPU a test compiles them for sm_90 (``gluon_compile_check.py``).
``triton_scan`` falls back to the Triton kernels wherever these do not apply.
"""
from __future__ import annotations

import os

try:  # Gluon is experimental: absent from older Triton releases, and it cannot run under the interpreter
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    try:  # (only the staged kernels need it)
        from triton.experimental.gluon.language.nvidia.ampere import async_copy
        # the asynchronous copy into shared memory: async_load from Triton 3.8 (3.9 removed the old name),
        # async_copy_global_to_shared in 3.6
        _async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
    except ImportError:  # pragma: no cover - depends on the installed Triton
        async_copy = _async_load = None
    AVAILABLE = os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
except ImportError:  # pragma: no cover - depends on the installed Triton
    gluon = gl = async_copy = _async_load = None
    AVAILABLE = False

if gluon is not None:
    # the CTA barrier is gl.thread_barrier in Triton 3.6 and gl.barrier from 3.8
    _barrier = getattr(gl, "barrier", None) or getattr(gl, "thread_barrier")
    # a shared buffer seen with another shape: shared_memory_descriptor.reinterpret from Triton 3.9, _reinterpret
    # before (a constexpr, so that each release compiles only its own branch of _rows_view)
    _PUBLIC_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))

    @gluon.jit
    def _rows_view(buf, dtype: gl.constexpr, ROWS: gl.constexpr, WIDTH: gl.constexpr, layout: gl.constexpr):
        """The same bytes as ``buf`` (a [2, S, WIDTH] shared buffer) seen as ROWS = 2 S rows in ``layout``."""
        if _PUBLIC_REINTERPRET:
            view = buf.reinterpret(dtype, [ROWS, WIDTH], layout)
        else:
            view = buf._reinterpret(dtype, [ROWS, WIDTH], layout)
        return view

    @gluon.jit
    def _ptx_f32(x, INSTRUCTION: gl.constexpr):
        return gl.inline_asm_elementwise(INSTRUCTION + " $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                         pack=1)

    @gluon.jit
    def _softplus(x):
        # as triton_kernels._softplus: max(x, 0) + ln2 * lg2(1 + 2^(-|x| log2 e)), the approximate lg2 on [1, 2]
        return gl.maximum(x, 0.0) + 0.6931471805599453 * _ptx_f32(
            1.0 + gl.exp2(gl.abs(x) * -1.4426950408889634), "lg2.approx.ftz.f32")

    @gluon.jit
    def _sigmoid(x):
        return _ptx_f32(1.0 + gl.exp2(x * -1.4426950408889634), "rcp.approx.ftz.f32")

    @gluon.jit
    def _sigmoid_fast(x, TANH: gl.constexpr):
        """sigmoid(x); with TANH as 1/2 + tanh(x / 2) / 2 by tanh.approx: one special function instead of two, and
        an approximation meant for outputs in 16-bit floats only (tests/test_triton.py::test_gluon_gate_tanh_matches
        holds bf16 outputs within 4e-3 of the exact form's)."""
        if TANH:
            sg = 0.5 + 0.5 * _ptx_f32(x * 0.5, "tanh.approx.f32")
        else:
            sg = _sigmoid(x)
        return sg

    @gluon.jit
    def _pick(d, first, second):
        p = first
        if d == 1:
            p = second
        return p

    @gluon.jit
    def _raw_delta(w, dt_low, bias, ch: gl.constexpr, CHAIN: gl.constexpr = False):
        """W_dt @ dt_low + bias for the program's channels ([BLOCK_E] in layout ``ch``); with CHAIN (for a dt rank
        padded to 16) the sum as _chain_sum16's chain."""
        p = w * gl.expand_dims(dt_low.to(gl.float32), 0)
        if CHAIN and w.shape[1] == 16:
            r = _chain_sum16(p, bias, ch)
        else:
            r = gl.convert_layout(gl.sum(p, axis=1), ch) + bias
        return r

    @gluon.jit
    def _program_place(E, BLOCK_E: gl.constexpr, N: gl.constexpr, BLOCK_R: gl.constexpr, R: gl.constexpr,
                       ch: gl.constexpr, st: gl.constexpr, wr: gl.constexpr, D_AXIS: gl.constexpr):
        """Where a scan program works: its direction d (grid axis D_AXIS), its batch b and channel block eb (axis
        0: b * (E // BLOCK_E) + eb), whether it walks reversed, its channels, its states and dt_low's columns
        (in the layouts ch, st and wr) with their mask."""
        pid_be = gl.program_id(0)
        d = gl.program_id(D_AXIS)
        n_eb = E // BLOCK_E
        b = pid_be // n_eb
        eb = pid_be % n_eb
        offs_e = eb * BLOCK_E + gl.arange(0, BLOCK_E, layout=ch)
        offs_n = gl.arange(0, N, layout=st)
        offs_r = gl.arange(0, BLOCK_R, layout=wr)
        return d, b, eb, d == 1, offs_e, offs_n, offs_r, offs_r < R

    @gluon.jit
    def _direction_params(d, a_f, a_b, w_f, w_b, bias_f, bias_b, dd_f, dd_b, eb, offs_e, offs_n, offs_r, rmask,
                          stride_a_e, stride_a_n, stride_w_e, stride_w_r, BLOCK_E: gl.constexpr, wtile: gl.constexpr):
        """The direction's parameters for the program's channels, loaded once: A log2(e) [BLOCK_E, N] (so that
        exp(delta A) = exp2(delta a2)), W_dt [BLOCK_E, BLOCK_R] in layout ``wtile`` (zero from column R on), the
        delta bias and D [BLOCK_E]."""
        offs_we = eb * BLOCK_E + gl.arange(0, BLOCK_E, layout=gl.SliceLayout(1, wtile))
        a_log = gl.load(_pick(d, a_f, a_b) + gl.expand_dims(offs_e, 1) * stride_a_e
                        + gl.expand_dims(offs_n, 0) * stride_a_n).to(gl.float32)
        a2 = -gl.exp(a_log) * 1.4426950408889634
        w = gl.load(_pick(d, w_f, w_b) + gl.expand_dims(offs_we, 1) * stride_w_e
                    + gl.expand_dims(offs_r, 0) * stride_w_r, mask=gl.expand_dims(rmask, 0), other=0.0).to(gl.float32)
        bias = gl.load(_pick(d, bias_f, bias_b) + offs_e).to(gl.float32)
        dskip = gl.load(_pick(d, dd_f, dd_b) + offs_e).to(gl.float32)
        return a2, w, bias, dskip

    @gluon.jit(do_not_specialize=["L", "steps_per_chunk", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
    def scan_fwd_gluon_kernel(
        x_ptr, z_ptr, rows_f, rows_b, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
        y_ptr, hinit_ptr, hend_ptr, dsum_ptr, hsave_ptr,
        L, E, steps_per_chunk,
        stride_x_d, stride_x_b, stride_x_l, stride_z_b, stride_z_l,
        stride_y_b, stride_y_l, stride_y_d, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
        stride_h_b, stride_h_d, stride_h_c, stride_s_b, stride_s_d, stride_s_c,
        stride_row: gl.constexpr, R: gl.constexpr, N: gl.constexpr, BLOCK_E: gl.constexpr, BLOCK_R: gl.constexpr,
        B_COL: gl.constexpr, C_COL: gl.constexpr, SAVE_EVERY: gl.constexpr,
        HAS_INIT: gl.constexpr, WRITE_END: gl.constexpr, WRITE_Y: gl.constexpr, SAVE_STATES: gl.constexpr,
        AHEAD: gl.constexpr, STATES_EN: gl.constexpr,
    ):
        """y[b, t, d, e] = silu(z) * (C_t . h_t + D x_t) with h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t and
        delta_t = softplus(W_dt dt_low_t + bias), for direction d (1: reversed in time), channels e of this
        program, steps [chunk * steps_per_chunk, ...) of the scan. x [2, B, L, E]; z [B, L, E] (any row stride);
        x_proj's rows per direction [B * L, stride_row] (dt_low | B | C; bf16 or fp32; one stride for both); A_log
        [E, N], W_dt [E, R], bias and D [E] per direction. BLOCK_E must divide E (a program: one warp, BLOCK_E / 32
        channels a thread). As ``scan_fwd_kernel``: HAS_INIT starts from hinit [B, 2, chunks, N, E] instead of zero;
        WRITE_END writes the chunk's end state (hend, same layout) and its sum of delta (dsum [B, 2, chunks, E]);
        WRITE_Y writes y; SAVE_STATES saves the state entering every block of SAVE_EVERY steps (hsave [B, 2, blocks,
        E, N] with STATES_EN: a thread's states contiguous, for the Gluon backward; else [..., N, E], for the Triton
        one); AHEAD computes delta and the gate of the next step during the current one."""
        NW: gl.constexpr = gl.num_warps()
        CPT: gl.constexpr = BLOCK_E // (32 * NW)
        tile: gl.constexpr = gl.BlockedLayout([CPT, N], [32, 1], [NW, 1], [1, 0])
        wtile: gl.constexpr = gl.BlockedLayout([CPT, BLOCK_R], [32, 1], [NW, 1], [1, 0])
        ch: gl.constexpr = gl.SliceLayout(1, tile)
        st: gl.constexpr = gl.SliceLayout(0, tile)
        chunk = gl.program_id(1)
        d, b, eb, rev, offs_e, offs_n, offs_r, rmask = _program_place(
            E, BLOCK_E, N, BLOCK_R, R, ch, st, gl.SliceLayout(0, wtile), 2)
        a2, w, bias, dskip = _direction_params(d, a_f, a_b, w_f, w_b, bias_f, bias_b, dd_f, dd_b, eb, offs_e, offs_n,
                                               offs_r, rmask, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                               BLOCK_E, wtile)
        x_base = x_ptr + d * stride_x_d + b * stride_x_b + offs_e
        z_base = z_ptr + b * stride_z_b + offs_e
        y_base = y_ptr + b * stride_y_b + d * stride_y_d + offs_e
        # rows are indexed (b * L + t) * stride_row: a multiple of the (constant) row stride, so that the compiler
        # can prove the alignment of B_t, C_t and dt_low and load them as vectors
        row_base = _pick(d, rows_f, rows_b)
        dt_base = row_base + offs_r
        bm_base = row_base + B_COL + offs_n
        cm_base = row_base + C_COL + offs_n
        state_off = gl.expand_dims(offs_n, 0) * E + gl.expand_dims(offs_e, 1)  # [N, E] buffers, channels contiguous
        if STATES_EN:  # (a thread's states contiguous: 16-byte stores from one address)
            save_off = gl.expand_dims(offs_e, 1) * N + gl.expand_dims(offs_n, 0)
        else:
            save_off = state_off
        s_begin = chunk * steps_per_chunk
        s_end = gl.minimum(s_begin + steps_per_chunk, L)
        if HAS_INIT:
            h = gl.load(hinit_ptr + b * stride_h_b + d * stride_h_d + chunk * stride_h_c + state_off)
        else:
            h = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        hsave_base = hsave_ptr + b * stride_s_b + d * stride_s_d + save_off
        if SAVE_STATES:  # the state entering the chunk's first block (s_begin is a multiple of SAVE_EVERY)
            gl.store(hsave_base + (s_begin // SAVE_EVERY) * stride_s_c, h)
        dsum = gl.zeros([BLOCK_E], gl.float32, layout=ch)
        t = gl.where(rev, L - 1 - s_begin, s_begin)
        row = (b * L + t) * stride_row
        xa = gl.load(x_base + t * stride_x_l)
        da = gl.load(dt_base + row, mask=rmask, other=0.0)
        ba = gl.load(bm_base + row)
        if WRITE_Y:
            za = gl.load(z_base + t * stride_z_l)
            ca = gl.load(cm_base + row)
        else:
            za = xa
            ca = ba
        gate = dsum
        delta_next = dsum
        if AHEAD:
            delta_next = _softplus(_raw_delta(w, da, bias, ch))
            if WRITE_Y:
                zf = za.to(gl.float32)
                gate = zf * _sigmoid(zf)
        for s in range(s_begin, s_end):
            # step s + 1's inputs requested before step s stores its output (the last step re-reads itself)
            sn = gl.minimum(s + 1, s_end - 1)
            tn = gl.where(rev, L - 1 - sn, sn)
            rown = (b * L + tn) * stride_row
            xn = gl.load(x_base + tn * stride_x_l)
            dn = gl.load(dt_base + rown, mask=rmask, other=0.0)
            bn = gl.load(bm_base + rown)
            if WRITE_Y:
                zn = gl.load(z_base + tn * stride_z_l)
                cn = gl.load(cm_base + rown)
            else:
                zn = xn
                cn = bn
            if AHEAD:
                delta = delta_next
            else:
                delta = _softplus(_raw_delta(w, da, bias, ch))
            xv = xa.to(gl.float32)
            h = gl.exp2(gl.expand_dims(delta, 1) * a2) * h \
                + gl.expand_dims(delta * xv, 1) * gl.expand_dims(ba.to(gl.float32), 0)
            if SAVE_STATES:
                # the state entering the next block, saved as it leaves this step (a chunk's last step leaves it
                # to the next chunk)
                s1 = s + 1
                gl.store(hsave_base + (s1 // SAVE_EVERY) * stride_s_c, h,
                         mask=(save_off >= 0) & ((s1 % SAVE_EVERY == 0) & (s1 < s_end)))
            if WRITE_END:
                dsum += delta
            if WRITE_Y:
                yv = gl.sum(h * gl.expand_dims(ca.to(gl.float32), 0), axis=1) + dskip * xv
                if AHEAD:
                    yv = yv * gate
                else:
                    zv = za.to(gl.float32)
                    yv = yv * zv * _sigmoid(zv)
                t = gl.where(rev, L - 1 - s, s)
                gl.store(y_base + t * stride_y_l, yv.to(y_ptr.dtype.element_ty))
            if AHEAD:
                delta_next = _softplus(_raw_delta(w, dn, bias, ch))
                if WRITE_Y:
                    zf = zn.to(gl.float32)
                    gate = zf * _sigmoid(zf)
            xa = xn
            za = zn
            da = dn
            ba = bn
            ca = cn
        if WRITE_END:
            off = b * stride_h_b + d * stride_h_d + chunk * stride_h_c
            gl.store(hend_ptr + off + state_off, h)
            gl.store(dsum_ptr + off // N + offs_e, dsum)

    @gluon.jit(do_not_specialize=["L", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
    def scan_fwd_onepass_gluon_kernel(
        x_ptr, z_ptr, rows_ptr, dir_off, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b, y_ptr,
        L, E, stride_x_d, stride_x_b, stride_x_l, stride_z_b, stride_z_l,
        stride_y_b, stride_y_l, stride_y_d, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
        stride_row: gl.constexpr, R: gl.constexpr, N: gl.constexpr, BLOCK_E: gl.constexpr, BLOCK_R: gl.constexpr,
        B_COL: gl.constexpr, C_COL: gl.constexpr, TPC: gl.constexpr = 1,
    ):
        """The inference forward in one pass over the sequence (no chunks, no states saved): what
        ``scan_fwd_gluon_kernel`` computes with HAS_INIT, WRITE_END, SAVE_STATES and AHEAD off, written as in
        session 7. Measured side by side on the H200 (session 8), this kernel takes 0.167 ms at 224 px / batch
        128 and the general one 0.193 - 0.204 ms for the same output, bit for bit, and the same main loop in the
        SASS compiled offline (the cause was not found): so one-pass inference launches get this one.

        y[b, t, d, e] = silu(z) * (C_t . h_t + D x_t) with h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t and
        delta_t = softplus(W_dt dt_low_t + bias), for direction d (1: reversed in time), channels e of this
        program. x [2, B, L, E]; z [B, L, E] (any row stride); x_proj's rows [2 directions, B * L, stride_row]
        (dt_low | B | C, direction 1 ``dir_off`` elements after direction 0; bf16 or fp32); A_log [E, N], W_dt
        [E, R], bias and D [E] per direction. BLOCK_E must divide E (a program: BLOCK_E / 32 channels a thread
        per warp).

        TPC > 1 (threads a channel; a power of two up to N and BLOCK_R) splits each channel's N states over TPC
        neighbouring lanes, N / TPC each, and its BLOCK_R dt_low columns likewise (then BLOCK_E * TPC / 32
        channels a thread per warp): TPC times the threads for the same channels, for sequences too long and
        batches too small to fill the GPU with a thread a channel, without the chunked launches' second pass over
        the sequence. The sums over states and over dt_low's columns end in shuffles between the TPC lanes, and
        every lane of a channel computes its softplus and gate (the work a channel does once a step, TPC times);
        the lanes that hold a copy of y store it once."""
        NW: gl.constexpr = gl.num_warps()
        CPT: gl.constexpr = BLOCK_E * TPC // (32 * NW)
        tile: gl.constexpr = gl.BlockedLayout([CPT, N // TPC], [32 // TPC, TPC], [NW, 1], [1, 0])
        wtile: gl.constexpr = gl.BlockedLayout([CPT, BLOCK_R // TPC], [32 // TPC, TPC], [NW, 1], [1, 0])
        ch: gl.constexpr = gl.SliceLayout(1, tile)
        st: gl.constexpr = gl.SliceLayout(0, tile)
        d, b, eb, rev, offs_e, offs_n, offs_r, rmask = _program_place(
            E, BLOCK_E, N, BLOCK_R, R, ch, st, gl.SliceLayout(0, wtile), 2)
        a2, w, bias, dskip = _direction_params(d, a_f, a_b, w_f, w_b, bias_f, bias_b, dd_f, dd_b, eb, offs_e, offs_n,
                                               offs_r, rmask, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                               BLOCK_E, wtile)
        x_base = x_ptr + d * stride_x_d + b * stride_x_b + offs_e
        z_base = z_ptr + b * stride_z_b + offs_e
        y_base = y_ptr + b * stride_y_b + d * stride_y_d + offs_e
        # rows are indexed (b * L + t) * stride_row: a multiple of the (constant) row stride, so that the compiler
        # can prove the alignment of B_t, C_t and dt_low and load them as vectors
        row_base = rows_ptr + d * dir_off
        dt_base = row_base + offs_r
        bm_base = row_base + B_COL + offs_n
        cm_base = row_base + C_COL + offs_n
        h = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        t = gl.where(rev, L - 1, 0)
        row = (b * L + t) * stride_row
        xa = gl.load(x_base + t * stride_x_l)
        za = gl.load(z_base + t * stride_z_l)
        da = gl.load(dt_base + row, mask=rmask, other=0.0)
        ba = gl.load(bm_base + row)
        ca = gl.load(cm_base + row)
        for s in range(0, L):
            # step s + 1's inputs requested before step s stores its output (the last step re-reads itself)
            tn = gl.where(rev, L - 1 - gl.minimum(s + 1, L - 1), gl.minimum(s + 1, L - 1))
            rown = (b * L + tn) * stride_row
            xn = gl.load(x_base + tn * stride_x_l)
            zn = gl.load(z_base + tn * stride_z_l)
            dn = gl.load(dt_base + rown, mask=rmask, other=0.0)
            bn = gl.load(bm_base + rown)
            cn = gl.load(cm_base + rown)
            raw = gl.convert_layout(gl.sum(w * gl.expand_dims(da.to(gl.float32), 0), axis=1), ch) + bias
            delta = _softplus(raw)
            xv = xa.to(gl.float32)
            h = gl.exp2(gl.expand_dims(delta, 1) * a2) * h \
                + gl.expand_dims(delta * xv, 1) * gl.expand_dims(ba.to(gl.float32), 0)
            yv = gl.sum(h * gl.expand_dims(ca.to(gl.float32), 0), axis=1) + dskip * xv
            zv = za.to(gl.float32)
            yv = yv * zv * _sigmoid(zv)
            t = gl.where(rev, L - 1 - s, s)
            gl.store(y_base + t * stride_y_l, yv.to(y_ptr.dtype.element_ty))
            xa = xn
            za = zn
            da = dn
            ba = bn
            ca = cn

    @gluon.jit
    def _stage_steps(x_buf, z_buf, r_buf, x_base, z_base, row_base, b, L, s0, rev, stride_x_l, stride_z_l,
                     stride_row: gl.constexpr, ROW_END: gl.constexpr, x_ld: gl.constexpr, r_ld: gl.constexpr):
        """Asynchronous copies (cp.async) of steps s0 .. s0 + STAGE - 1 of x, z and x_proj's rows into the
        shared-memory buffers x_buf, z_buf [STAGE, BLOCK_E] and r_buf [STAGE, RW] (steps from L on: zeros).
        x_base / z_base point at the program's first channel, row_base at the direction's rows."""
        STAGE: gl.constexpr = x_buf.shape[0]
        BLOCK_E: gl.constexpr = x_buf.shape[1]
        RW: gl.constexpr = r_buf.shape[1]
        s = s0 + gl.arange(0, STAGE, layout=gl.SliceLayout(1, x_ld))
        t = gl.where(rev, L - 1 - s, s)
        ok = gl.expand_dims(s < L, 1)
        cols = gl.expand_dims(gl.arange(0, BLOCK_E, layout=gl.SliceLayout(0, x_ld)), 0)
        _async_load(x_buf, x_base + gl.expand_dims(t * stride_x_l, 1) + cols, mask=ok)
        _async_load(z_buf, z_base + gl.expand_dims(t * stride_z_l, 1) + cols, mask=ok)
        sr = s0 + gl.arange(0, STAGE, layout=gl.SliceLayout(1, r_ld))
        tr = gl.where(rev, L - 1 - sr, sr)
        rcols = gl.arange(0, RW, layout=gl.SliceLayout(0, r_ld))
        rmask = gl.expand_dims(sr < L, 1) & gl.expand_dims(rcols < ROW_END, 0)
        _async_load(
            r_buf, row_base + gl.expand_dims((b * L + tr) * stride_row, 1) + gl.expand_dims(rcols, 0), mask=rmask)

    @gluon.jit
    def _stage_chunk(x_buf, z_buf, r_buf, c, x_base, z_base, row_base, b, L, rev, stride_x_l, stride_z_l,
                     stride_row: gl.constexpr, ROW_END: gl.constexpr, x_ld: gl.constexpr, r_ld: gl.constexpr):
        """Chunk c of the sequence (steps c STAGE .. c STAGE + STAGE - 1) copied into buffer c % 2 of the [2,
        STAGE, width] buffers by _stage_steps, as one commit group."""
        STAGE: gl.constexpr = x_buf.shape[1]
        k = c % 2
        _stage_steps(x_buf.index(k), z_buf.index(k), r_buf.index(k), x_base, z_base, row_base, b, L, c * STAGE, rev,
                     stride_x_l, stride_z_l, stride_row, ROW_END, x_ld, r_ld)
        async_copy.commit_group()

    @gluon.jit
    def _stage_buffers(x_ptr, z_ptr, rows_ptr, STAGE: gl.constexpr, BLOCK_E: gl.constexpr, RW: gl.constexpr,
                       buf_l: gl.constexpr, row_l: gl.constexpr):
        """The staged kernels' shared buffers, two of STAGE steps each ([2, STAGE, width]) for x, z and x_proj's
        rows, and x's and the rows' [2 STAGE, width] views of the same bytes (a step's row at a time)."""
        x_buf = gl.allocate_shared_memory(x_ptr.dtype.element_ty, [2, STAGE, BLOCK_E], buf_l)
        z_buf = gl.allocate_shared_memory(z_ptr.dtype.element_ty, [2, STAGE, BLOCK_E], buf_l)
        r_buf = gl.allocate_shared_memory(rows_ptr.dtype.element_ty, [2, STAGE, RW], buf_l)
        x_rows = _rows_view(x_buf, x_ptr.dtype.element_ty, 2 * STAGE, BLOCK_E, row_l)
        r_rows = _rows_view(r_buf, rows_ptr.dtype.element_ty, 2 * STAGE, RW, row_l)
        return x_buf, z_buf, r_buf, x_rows, r_rows

    @gluon.jit(do_not_specialize=["L", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
    def scan_fwd_staged_gluon_kernel(
        x_ptr, z_ptr, rows_ptr, dir_off, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b, y_ptr,
        L, E, stride_x_d, stride_x_b, stride_x_l, stride_z_b, stride_z_l,
        stride_y_b, stride_y_l, stride_y_d, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
        hsave_ptr, stride_s_b, stride_s_d, stride_s_c,
        stride_row: gl.constexpr, R: gl.constexpr, N: gl.constexpr, BLOCK_E: gl.constexpr, BLOCK_R: gl.constexpr,
        B_COL: gl.constexpr, C_COL: gl.constexpr, STAGE: gl.constexpr, RW: gl.constexpr, VX: gl.constexpr,
        VR: gl.constexpr, SAVE_STATES: gl.constexpr, SAVE_EVERY: gl.constexpr, TPC: gl.constexpr = 1,
        UNROLL: gl.constexpr = 1, GATE_TANH: gl.constexpr = False, CHAIN: gl.constexpr = False,
    ):
        """The one-pass inference forward of ``scan_fwd_onepass_gluon_kernel`` with its inputs staged through
        shared memory: x, z and x_proj's rows for STAGE steps at a time arrive by asynchronous copies (cp.async)
        issued a whole chunk of STAGE steps before they are used, into one of two buffers, and each step reads
        them back from shared memory. Nsight Compute on that kernel (docs/kernels.md, "Session 16") showed 40%
        of its stall samples waiting on global loads at the two register moves of its one-step prefetch: ptxas
        issues the prefetch late in the loop, so a step's loads are not hidden. Here nothing of a step's inputs
        is held in registers across steps. Same arguments as that kernel, plus STAGE (steps a chunk), RW (the
        staged row width: a power of two >= C_COL + N), VX / VR (elements of x / of a row in 16 bytes).

        SAVE_STATES makes it the training forward of a sequence in one pass: as ``scan_fwd_gluon_kernel`` with
        SAVE_STATES and STATES_EN, it saves the state entering every block of SAVE_EVERY steps (hsave [B, 2,
        blocks, E, N], a thread's states contiguous, for the Gluon backward).

        TPC > 1: each channel's states over TPC lanes, as in ``scan_fwd_onepass_gluon_kernel`` (the copies'
        layouts do not change: a warp's copies must not cover more than STAGE rows, _staged_fits).

        GATE_TANH (inference): the gate's sigmoid by tanh.approx (_sigmoid_fast; 16-bit outputs only), a special
        function fewer a step.

        UNROLL (inference; a divisor of STAGE): that many steps a pass of the loop, in one block of straight code,
        so that the compiler can schedule a step's loads, delta and decays while the step before waits on its
        own: only h carries from step to step. Where a launch has few warps an SM (long sequences in one pass at
        small batches) a step's chain of dependent instructions, not the issue rate, sets its time."""
        NW: gl.constexpr = gl.num_warps()
        CPT: gl.constexpr = BLOCK_E * TPC // (32 * NW)
        tile: gl.constexpr = gl.BlockedLayout([CPT, N // TPC], [32 // TPC, TPC], [NW, 1], [1, 0])
        wtile: gl.constexpr = gl.BlockedLayout([CPT, BLOCK_R // TPC], [32 // TPC, TPC], [NW, 1], [1, 0])
        ch: gl.constexpr = gl.SliceLayout(1, tile)
        st: gl.constexpr = gl.SliceLayout(0, tile)
        wr: gl.constexpr = gl.SliceLayout(0, wtile)
        TX: gl.constexpr = BLOCK_E // VX  # threads along the channels of a staged x row (16 bytes each)
        x_ld: gl.constexpr = gl.BlockedLayout([1, VX], [32 // TX, TX], [NW, 1], [1, 0])
        TR: gl.constexpr = RW // VR
        r_ld: gl.constexpr = gl.BlockedLayout([1, VR], [32 // TR, TR], [NW, 1], [1, 0])
        buf_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        row_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
        d, b, eb, rev, offs_e, offs_n, offs_r, rmask = _program_place(
            E, BLOCK_E, N, BLOCK_R, R, ch, st, wr, 2)
        # (a staged row's first BLOCK_R columns are read as dt_low: those from R on, the rows' padding or B's first
        # columns, meet W_dt's zero columns)
        a2, w, bias, dskip = _direction_params(d, a_f, a_b, w_f, w_b, bias_f, bias_b, dd_f, dd_b, eb, offs_e, offs_n,
                                               offs_r, rmask, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                               BLOCK_E, wtile)
        x_base = x_ptr + d * stride_x_d + b * stride_x_b + eb * BLOCK_E
        z_base = z_ptr + b * stride_z_b + eb * BLOCK_E
        y_base = y_ptr + b * stride_y_b + d * stride_y_d + offs_e
        row_base = rows_ptr + d * dir_off
        # two buffers of STAGE steps each ([2, STAGE, width]), used in turn: chunk c of the sequence in buffer c % 2.
        # The copies write [STAGE, width] views (buffer c); each step reads its row through a [2 STAGE, width] view
        # of the same bytes (a layout of one rank less: row i at i * width)
        x_buf, z_buf, r_buf, x_rows, r_rows = _stage_buffers(x_ptr, z_ptr, rows_ptr, STAGE, BLOCK_E, RW, buf_l, row_l)
        z_rows = _rows_view(z_buf, z_ptr.dtype.element_ty, 2 * STAGE, BLOCK_E, row_l)
        h = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        hsave_base = hsave_ptr + b * stride_s_b + d * stride_s_d \
            + gl.expand_dims(offs_e, 1) * N + gl.expand_dims(offs_n, 0)
        if SAVE_STATES:  # (the state entering the first block: zero)
            gl.store(hsave_base, h)
        _stage_chunk(x_buf, z_buf, r_buf, 0, x_base, z_base, row_base, b, L, rev, stride_x_l, stride_z_l, stride_row,
                     C_COL + N, x_ld, r_ld)
        for s0 in range(0, L, UNROLL):
            if s0 % STAGE == 0:  # this chunk's copies are done; the next chunk's start (into the other buffer)
                async_copy.wait_group(0)
                _barrier()  # (and every thread is done reading that buffer's previous chunk)
                _stage_chunk(x_buf, z_buf, r_buf, s0 // STAGE + 1, x_base, z_base, row_base, b, L, rev, stride_x_l,
                             stride_z_l, stride_row, C_COL + N, x_ld, r_ld)
            for u in gl.static_range(UNROLL):
                s = s0 + u
                i = s % (2 * STAGE)
                row = r_rows.index(i)
                da = row.slice(0, BLOCK_R).load(wr).to(gl.float32)
                ba = row.slice(B_COL, N).load(st).to(gl.float32)
                ca = row.slice(C_COL, N).load(st).to(gl.float32)
                xv = x_rows.index(i).load(ch).to(gl.float32)
                zv = z_rows.index(i).load(ch).to(gl.float32)
                # (W_dt dt_low in a chain too, _raw_delta's CHAIN: 130 -> 147 registers here)
                raw = gl.convert_layout(gl.sum(w * gl.expand_dims(da, 0), axis=1), ch) + bias
                delta = _softplus(raw)
                h = gl.exp2(gl.expand_dims(delta, 1) * a2) * h \
                    + gl.expand_dims(delta * xv, 1) * gl.expand_dims(ba, 0)
                if SAVE_STATES:  # the state entering the next block, as it leaves this step
                    s1 = s + 1
                    if (s1 % SAVE_EVERY == 0) & (s1 < L):
                        gl.store(hsave_base + (s1 // SAVE_EVERY) * stride_s_c, h)
                yv = _state_sum(h * gl.expand_dims(ca, 0), dskip * xv, CHAIN and TPC == 1 and N == 16, ch)
                yv = yv * zv * _sigmoid_fast(zv, GATE_TANH)
                t = gl.where(rev, L - 1 - s, s)
                if UNROLL == 1:
                    gl.store(y_base + t * stride_y_l, yv.to(y_ptr.dtype.element_ty))
                else:  # (the steps after the last: zeros staged, nothing stored)
                    gl.store(y_base + t * stride_y_l, yv.to(y_ptr.dtype.element_ty), mask=(offs_e >= 0) & (s < L))
        async_copy.wait_group(0)  # (the copies of the chunk after the last, all masked)

    @gluon.jit
    def _stage_offsets(b, L, rev, stride_x_l, stride_z_l, stride_row: gl.constexpr, STAGE: gl.constexpr,
                       BLOCK_E: gl.constexpr, RW: gl.constexpr, ROW_END: gl.constexpr, x_ld: gl.constexpr,
                       r_ld: gl.constexpr):
        """What _stage_chunk_at needs, computed once a program: the offsets of chunk 0's x and z elements
        ([STAGE, BLOCK_E]) and x_proj's row elements ([STAGE, RW], batch b's rows) from their bases, step j of the
        chunk at token j (or L - 1 - j, reversed); the steps j of each copy's rows; the row columns to copy."""
        jx = gl.expand_dims(gl.arange(0, STAGE, layout=gl.SliceLayout(1, x_ld)), 1)
        tx = gl.where(rev, L - 1 - jx, jx)
        cols = gl.expand_dims(gl.arange(0, BLOCK_E, layout=gl.SliceLayout(0, x_ld)), 0)
        jr = gl.expand_dims(gl.arange(0, STAGE, layout=gl.SliceLayout(1, r_ld)), 1)
        tr = gl.where(rev, L - 1 - jr, jr)
        rcols = gl.expand_dims(gl.arange(0, RW, layout=gl.SliceLayout(0, r_ld)), 0)
        return (tx * stride_x_l + cols, tx * stride_z_l + cols, (b * L + tr) * stride_row + rcols, rcols < ROW_END,
                jx, jr)

    @gluon.jit
    def _stage_chunk_at(x_buf, z_buf, r_buf, c, x_base, z_base, row_base, L, rev, stride_x_l, stride_z_l,
                        stride_row: gl.constexpr, offs):
        """_stage_chunk from _stage_offsets' offsets: chunk c's copies start a whole chunk of tokens further on (back,
        reversed) from chunk 0's, and only a chunk that reaches past the sequence's end masks its steps."""
        STAGE: gl.constexpr = x_buf.shape[1]
        xo, zo, ro, rok, jx, jr = offs
        k = c % 2
        s0 = c * STAGE
        shift = gl.where(rev, -s0, s0)
        xp = x_base + shift * stride_x_l + xo
        zp = z_base + shift * stride_z_l + zo
        rp = row_base + shift * stride_row + ro
        if s0 + STAGE <= L:
            _async_load(x_buf.index(k), xp)
            _async_load(z_buf.index(k), zp)
            _async_load(r_buf.index(k), rp, mask=rok)
        else:  # (the steps from L on: zeros)
            _async_load(x_buf.index(k), xp, mask=jx < L - s0)
            _async_load(z_buf.index(k), zp, mask=jx < L - s0)
            _async_load(r_buf.index(k), rp, mask=(jr < L - s0) & rok)
        async_copy.commit_group()

    @gluon.jit
    def _first(a, b):
        return a

    @gluon.jit
    def _register(t, k: gl.constexpr):
        """t[..., k] of a [A, B, W] tensor whose last axis a thread holds whole (W a power of two): halves split off
        by the bits of k, no instructions."""
        A: gl.constexpr = t.shape[0]
        B: gl.constexpr = t.shape[1]
        W: gl.constexpr = t.shape[2]
        for i in gl.static_range(W.bit_length() - 1):
            lo, hi = gl.split(gl.reshape(t, [A, B, W >> (i + 1), 2]))
            t = hi if (k >> i) & 1 else lo
        return gl.reshape(t, [A, B])

    @gluon.jit
    def _lane_of(x, lane: gl.constexpr, TPC: gl.constexpr, HI: gl.constexpr = False):
        """x ([channels, TPC], a value a lane) as lane ``lane`` of each channel's TPC lanes holds it, in all of them:
        one shfl.idx within segments of TPC lanes (c = (32 - TPC) << 8 | 31). HI: a channel's lanes are instead
        32 / TPC apart (its lane within the channel in the high bits of the lane index, _lanes_order): the source
        keeps the low bits (the segment mask 32 / TPC - 1) and takes ``lane`` in the high ones."""
        if HI:
            src = gl.full(x.shape, lane * (32 // TPC), gl.int32, layout=x.type.layout)
            seg = gl.full(x.shape, (32 // TPC - 1) * 256 + 31, gl.int32, layout=x.type.layout)
        else:
            src = gl.full(x.shape, lane, gl.int32, layout=x.type.layout)
            seg = gl.full(x.shape, (32 - TPC) * 256 + 31, gl.int32, layout=x.type.layout)
        return gl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, $2, $3, -1;", "=r,r,r,r", [x, src, seg],
                                         dtype=gl.float32, is_pure=True, pack=1)

    @gluon.constexpr_function
    def _lanes_order(RANK, HI):
        """The order of the lanes kernel's layouts ([channels, lanes or states] or [channels, steps, columns]):
        without HI a channel's TPC lanes are neighbours (the lane index's low bits); with HI its channels are, and
        its lanes 32 / TPC apart. A quarter of a warp (8 lanes: the threads of one phase of a 16-byte shared load)
        then holds the same lane of 8 channels: every lane of the quarter reads the same step's row of dt_low (a
        broadcast) instead of TPC rows whose same columns share banks (Nsight Compute, docs/kernels.md, "Session
        32": 8 wavefronts a load with 2 lanes, 16 with 4; "Session 33": none with HI)."""
        if RANK == 2:
            return [0, 1] if HI else [1, 0]
        return [2, 0, 1] if HI else [2, 1, 0]

    @gluon.constexpr_function
    def _lanes_d3(BLOCK_E, U, TPC, WIDTH, NW, HI=False):
        """[channels, U steps, WIDTH] over NW warps: a lane holds U / TPC steps of its channel, each with WIDTH
        columns (the kernel's d3 at another width)."""
        return gl.BlockedLayout([1, U // TPC, WIDTH], [32 // TPC, TPC, 1], [NW, 1, 1], _lanes_order(3, HI))

    @gluon.jit
    def _w_part(w_ptr, eb, COL: gl.constexpr, WIDTH: gl.constexpr, BLOCK_E: gl.constexpr, U: gl.constexpr,
                TPC: gl.constexpr, stride_w_e, stride_w_r, HI: gl.constexpr = False):
        """Columns COL .. COL + WIDTH - 1 of W_dt for the program's channels, as [BLOCK_E, 1, WIDTH] in
        _lanes_d3's layout (each lane the whole part of its channel's row)."""
        d3: gl.constexpr = _lanes_d3(BLOCK_E, U, TPC, WIDTH, gl.num_warps(), HI)
        wl: gl.constexpr = gl.SliceLayout(1, d3)
        offs_e = eb * BLOCK_E + gl.arange(0, BLOCK_E, layout=gl.SliceLayout(1, wl))
        offs_r = COL + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, wl))
        w = gl.load(w_ptr + gl.expand_dims(offs_e, 1) * stride_w_e + gl.expand_dims(offs_r, 0) * stride_w_r)
        return gl.expand_dims(w.to(gl.float32), 1)

    @gluon.jit
    def _dt_parts(r_grp, wa3, wb3, WA: gl.constexpr, WB: gl.constexpr, TPC: gl.constexpr, lanes: gl.constexpr,
                  HI: gl.constexpr = False, bias=None, CHAIN: gl.constexpr = False):
        """bias + W_dt dt_low for a group of U staged rows ([U, RW], dt_low in columns 0 .. WA + WB - 1) as
        [channels, U] in ``lanes``: the sums over the two parts of the columns (WA, then WB wide), no zero columns;
        with CHAIN (parts of at most 16) one chain from the bias through both parts (_chain_sum)."""
        U: gl.constexpr = r_grp.shape[0]
        BLOCK_E: gl.constexpr = wa3.shape[0]
        da: gl.constexpr = _lanes_d3(BLOCK_E, U, TPC, WA, gl.num_warps(), HI)
        db: gl.constexpr = _lanes_d3(BLOCK_E, U, TPC, WB, gl.num_warps(), HI)
        dta = r_grp.slice(0, WA, dim=1).load(gl.SliceLayout(0, da)).to(gl.float32)
        dtb = r_grp.slice(WA, WB, dim=1).load(gl.SliceLayout(0, db)).to(gl.float32)
        if CHAIN and WA <= 16 and WB <= 16:
            r = _chain_sum(wb3 * gl.expand_dims(dtb, 0), _chain_sum(wa3 * gl.expand_dims(dta, 0), bias, WA, lanes),
                           WB, lanes)
        else:
            sa = gl.convert_layout(gl.sum(wa3 * gl.expand_dims(dta, 0), axis=2), lanes, assert_trivial=True)
            sb = gl.convert_layout(gl.sum(wb3 * gl.expand_dims(dtb, 0), axis=2), lanes, assert_trivial=True)
            r = sa + sb
            if bias is not None:
                r += bias
        return r

    @gluon.jit
    def _steps_view(buf, dtype: gl.constexpr, GROUPS: gl.constexpr, U: gl.constexpr, WIDTH: gl.constexpr,
                    layout: gl.constexpr):
        """The same bytes as ``buf`` (a [2, S, WIDTH] shared buffer) seen as GROUPS = 2 S / U groups of U rows."""
        if _PUBLIC_REINTERPRET:
            view = buf.reinterpret(dtype, [GROUPS, U, WIDTH], layout)
        else:
            view = buf._reinterpret(dtype, [GROUPS, U, WIDTH], layout)
        return view

    @gluon.jit(do_not_specialize=["L", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
    def scan_fwd_lanes_gluon_kernel(
        x_ptr, z_ptr, rows_ptr, dir_off, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b, y_ptr,
        L, E, stride_x_d, stride_x_b, stride_x_l, stride_z_b, stride_z_l,
        stride_y_b, stride_y_l, stride_y_d, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
        hinit_ptr, hend_ptr, dsum_ptr, steps, stride_h_b, stride_h_d, stride_h_c,
        stride_row: gl.constexpr, R: gl.constexpr, N: gl.constexpr, BLOCK_E: gl.constexpr, BLOCK_R: gl.constexpr,
        B_COL: gl.constexpr, C_COL: gl.constexpr, STAGE: gl.constexpr, RW: gl.constexpr, VX: gl.constexpr,
        VR: gl.constexpr, TPC: gl.constexpr, U: gl.constexpr, CHUNKS: gl.constexpr = False,
        HAS_INIT: gl.constexpr = False, WRITE_END: gl.constexpr = False, WRITE_Y: gl.constexpr = True,
        R_HI: gl.constexpr = 0, LANE_HI: gl.constexpr = False, GATE_TANH: gl.constexpr = False,
        CHAIN: gl.constexpr = False,
    ):
        """The staged one-pass inference forward with each channel's states over TPC lanes (as
        ``scan_fwd_staged_gluon_kernel`` with TPC > 1), where the lanes of a channel share its work of a step
        instead of each doing all of it: U steps (a multiple of TPC dividing STAGE) a pass of the loop, and for
        each, one lane computes the whole of W_dt dt_low_t (its dt_low row against all of W_dt's row, no shuffles)
        and softplus, and afterwards D x_t, the gate silu(z_t) and the store of y_t. What every lane still does a
        step: its N / TPC states' decays and updates and its part of C_t . h_t; delta_t reaches the other lanes by
        a sum over the channel's lanes (log2(TPC) shuffles), y_t's part comes back to the step's lane the same way.
        With TPC = 4 a lane evaluates 5 special functions a step instead of 8 (its 4 decays, and a quarter of the
        channel's softplus (2) and sigmoid (2)). Same arguments as that kernel; no states saved.

        CHUNKS (program_id(1) = c): the program runs steps c * steps .. c * steps + steps - 1 (``steps`` a multiple
        of STAGE; without CHUNKS the whole sequence, in the code the one pass had before chunks: the same SASS).
        GATE_TANH: as in ``scan_fwd_staged_gluon_kernel``. CHAIN: W_dt dt_low + bias and a lane's part of C_t . h_t
        as chains of adds (_chain_sum; parts of W_dt's row up to 16 wide), not gl.sum's trees (Triton 3.7 on).
        HAS_INIT: its state starts from hinit [B, 2, chunks, N, E] instead of zero; WRITE_END: it stores its end
        state in hend (same layout) and its sum of delta in dsum [B, 2, chunks, E] (for chunk_carry_kernel; the
        steps from L on, staged as zeros, then leave the state alone); WRITE_Y=False: no output, nor the loads and
        sums that make it (the chunked forward's first pass). R_HI (0: off): W_dt dt_low in two parts, columns 0 ..
        R_HI - 1 and R_HI .. R - 1 (both widths powers of two, _rank_split), instead of over BLOCK_R columns of
        which those from R on are zeros (Vim-Ti's 12 = 8 + 4 instead of 16). LANE_HI: a channel's lanes 32 / TPC
        apart instead of neighbours (_lanes_order: no bank conflicts on dt_low's staged rows)."""
        NW: gl.constexpr = gl.num_warps()
        NS: gl.constexpr = N // TPC
        tile: gl.constexpr = gl.BlockedLayout([1, NS], [32 // TPC, TPC], [NW, 1], _lanes_order(2, LANE_HI))
        # [channels, U steps, BLOCK_R]: a lane holds U / TPC steps, each with a whole dt_low row
        d3: gl.constexpr = _lanes_d3(BLOCK_E, U, TPC, BLOCK_R, NW, LANE_HI)
        lanes: gl.constexpr = gl.SliceLayout(2, d3)  # [channels, U steps]: the steps of a channel over its lanes
        wfull: gl.constexpr = gl.SliceLayout(1, d3)  # [channels, BLOCK_R]: W_dt's whole row in each lane
        ch: gl.constexpr = gl.SliceLayout(1, tile)
        ch_l: gl.constexpr = gl.SliceLayout(1, lanes)  # (the same placement as ch)
        st: gl.constexpr = gl.SliceLayout(0, tile)
        TX: gl.constexpr = BLOCK_E // VX
        x_ld: gl.constexpr = gl.BlockedLayout([1, VX], [32 // TX, TX], [NW, 1], [1, 0])
        TR: gl.constexpr = RW // VR
        r_ld: gl.constexpr = gl.BlockedLayout([1, VR], [32 // TR, TR], [NW, 1], [1, 0])
        buf_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        row_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
        GROUPS: gl.constexpr = 2 * STAGE // U
        d, b, eb, rev, offs_e, offs_n, offs_r, rmask = _program_place(
            E, BLOCK_E, N, BLOCK_R, R, ch, st, gl.SliceLayout(0, wfull), 2)
        a2, w, bias, dskip = _direction_params(d, a_f, a_b, w_f, w_b, bias_f, bias_b, dd_f, dd_b, eb, offs_e, offs_n,
                                               offs_r, rmask, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                               BLOCK_E, wfull)
        bias_l = gl.expand_dims(gl.convert_layout(bias, ch_l, assert_trivial=True), 1)
        dskip_l = gl.expand_dims(gl.convert_layout(dskip, ch_l, assert_trivial=True), 1)
        w3 = gl.expand_dims(w, 1)
        if R_HI:
            wa3 = _w_part(_pick(d, w_f, w_b), eb, 0, R_HI, BLOCK_E, U, TPC, stride_w_e, stride_w_r, LANE_HI)
            wb3 = _w_part(_pick(d, w_f, w_b), eb, R_HI, R - R_HI, BLOCK_E, U, TPC, stride_w_e, stride_w_r, LANE_HI)
        jj = gl.expand_dims(gl.arange(0, U, layout=gl.SliceLayout(0, lanes)), 0)  # [1, U]: a lane's steps
        UT: gl.constexpr = U // TPC
        l3: gl.constexpr = gl.BlockedLayout([1, 1, UT], [32 // TPC, TPC, 1], [NW, 1, 1], _lanes_order(3, LANE_HI))
        x_base = x_ptr + d * stride_x_d + b * stride_x_b + eb * BLOCK_E
        z_base = z_ptr + b * stride_z_b + eb * BLOCK_E
        offs_el = eb * BLOCK_E + gl.arange(0, BLOCK_E, layout=ch_l)
        y_base = gl.expand_dims(y_ptr + b * stride_y_b + d * stride_y_d + offs_el, 1)
        # [1, U]: y's offsets for steps 0 .. U - 1 (token j, or L - 1 - j reversed); a pass adds its shift
        y_offs = gl.where(rev, L - 1 - jj, jj) * stride_y_l
        row_base = rows_ptr + d * dir_off
        x_buf, z_buf, r_buf, x_rows, r_rows = _stage_buffers(x_ptr, z_ptr, rows_ptr, STAGE, BLOCK_E, RW, buf_l, row_l)
        # the same buffers as groups of U steps: [U, width] at a time
        x_steps = _steps_view(x_buf, x_ptr.dtype.element_ty, GROUPS, U, BLOCK_E, buf_l)
        z_steps = _steps_view(z_buf, z_ptr.dtype.element_ty, GROUPS, U, BLOCK_E, buf_l)
        r_steps = _steps_view(r_buf, rows_ptr.dtype.element_ty, GROUPS, U, RW, buf_l)
        if CHUNKS:
            c = gl.program_id(1)
            s_lo = c * steps
            s_hi = gl.minimum(s_lo + steps, L)
        else:
            c = 0
            s_lo = 0
            s_hi = L
        state_off = gl.expand_dims(offs_n, 0) * E + gl.expand_dims(offs_e, 1)  # [N, E] blocks, channels contiguous
        h_off = b * stride_h_b + d * stride_h_d + c * stride_h_c
        if HAS_INIT:
            h = gl.load(hinit_ptr + h_off + state_off)
        else:
            h = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        if WRITE_END:
            dacc = gl.zeros([BLOCK_E, U], gl.float32, layout=lanes)
        offs = _stage_offsets(b, L, rev, stride_x_l, stride_z_l, stride_row, STAGE, BLOCK_E, RW, C_COL + N, x_ld, r_ld)
        _stage_chunk_at(x_buf, z_buf, r_buf, s_lo // STAGE, x_base, z_base, row_base, L, rev, stride_x_l, stride_z_l,
                        stride_row, offs)
        for s0 in range(s_lo, s_hi, U):
            if s0 % STAGE == 0:  # this chunk's copies are done; the next chunk's start (into the other buffer)
                async_copy.wait_group(0)
                _barrier()  # (and every thread is done reading that buffer's previous chunk)
                _stage_chunk_at(x_buf, z_buf, r_buf, s0 // STAGE + 1, x_base, z_base, row_base, L, rev, stride_x_l,
                                stride_z_l, stride_row, offs)
            i = s0 % (2 * STAGE)
            g = i // U
            # delta of the U steps, each in one lane of the channel: [channels, U]
            r_grp = r_steps.index(g)
            x_grp = x_steps.index(g)
            r_grp_rows = _rows_view(r_grp, rows_ptr.dtype.element_ty, U, RW, row_l)
            x_grp_rows = _rows_view(x_grp, x_ptr.dtype.element_ty, U, BLOCK_E, row_l)
            if R_HI:
                delta_l = _dt_parts(r_grp, wa3, wb3, R_HI, R - R_HI, TPC, lanes, LANE_HI, bias_l, CHAIN)
            else:
                dt = r_grp.slice(0, BLOCK_R, dim=1).load(gl.SliceLayout(0, d3)).to(gl.float32)
                if CHAIN and BLOCK_R <= 16:
                    delta_l = _chain_sum(w3 * gl.expand_dims(dt, 0), bias_l, BLOCK_R, lanes)
                else:
                    delta_l = gl.sum(w3 * gl.expand_dims(dt, 0), axis=2) + bias_l
            delta_l = _softplus(delta_l)
            if WRITE_END:  # (steps from L on: no decay, nothing added, not counted)
                delta_l = gl.where(s0 + jj < L, delta_l, 0.0)
                dacc = dacc + delta_l
            yl = gl.zeros([BLOCK_E, U], gl.float32, layout=lanes)
            # [channels, lanes, a lane's steps]: step u in register u % UT of lane u // UT
            delta3 = gl.convert_layout(gl.reshape(delta_l, [BLOCK_E, TPC, UT]), l3, assert_trivial=True)
            for u in gl.static_range(U):
                # the owner lane's register, read by every lane of the channel (one shfl.idx; the reduction only
                # drops the lanes' axis, each lane keeping its own value: its shuffles are dead, ptxas removes them)
                delta = gl.convert_layout(gl.reduce(_lane_of(_register(delta3, u % UT), u // UT, TPC, LANE_HI), 1,
                                                    _first),
                                          ch, assert_trivial=True)
                row = r_grp_rows.index(u)  # (from the group's view: a constant offset from one address a pass)
                ba = row.slice(B_COL, N).load(st).to(gl.float32)
                if WRITE_Y:
                    ca = row.slice(C_COL, N).load(st).to(gl.float32)
                xv = x_grp_rows.index(u).load(ch).to(gl.float32)
                h = gl.exp2(gl.expand_dims(delta, 1) * a2) * h \
                    + gl.expand_dims(delta * xv, 1) * gl.expand_dims(ba, 0)
                if WRITE_Y:
                    if CHAIN:  # (a lane's NS states in a chain, then the sum over the channel's lanes)
                        yu = _chain_sum(h * gl.expand_dims(ca, 0), None, NS, None)
                        if TPC > 1:
                            yu = gl.sum(yu, axis=1)
                    else:
                        yu = gl.sum(h * gl.expand_dims(ca, 0), axis=1)
                    yu = gl.convert_layout(yu, ch_l, assert_trivial=True)
                    yl = gl.where(jj == u, gl.expand_dims(yu, 1), yl)
            if WRITE_Y:  # each step's lane: D x, the gate and the store
                xl = x_grp.permute((1, 0)).load(lanes).to(gl.float32)
                zl = z_steps.index(g).permute((1, 0)).load(lanes).to(gl.float32)
                yv = (yl + dskip_l * xl) * zl * _sigmoid_fast(zl, GATE_TANH)
                # (step s0 + j at token s0 + j, or L - 1 - s0 - j reversed: a shift of y_offs; masked in the last pass)
                yp = y_base + (gl.where(rev, -s0, s0) * stride_y_l + y_offs)
                if s0 + U <= L:
                    gl.store(yp, yv.to(y_ptr.dtype.element_ty))
                else:
                    gl.store(yp, yv.to(y_ptr.dtype.element_ty), mask=(jj < L - s0) & (gl.expand_dims(offs_el, 1) >= 0))
        async_copy.wait_group(0)  # (the copies of the chunk after the last, all masked)
        if WRITE_END:
            gl.store(hend_ptr + h_off + state_off, h)
            gl.store(dsum_ptr + h_off // N + offs_el, gl.sum(dacc, axis=1))

    @gluon.jit
    def _pairs(x, W: gl.constexpr):
        """A [BLOCK_E, W] tensor held whole by its threads as its even and odd columns ([BLOCK_E, W / 2] each, or
        [BLOCK_E] for W = 2): register renames, no data moves."""
        if W == 2:
            even, odd = gl.split(x)
        else:
            even, odd = gl.split(gl.reshape(x, [x.shape[0], W // 2, 2]))
        return even, odd

    @gluon.jit
    def _chain_sum16(p, acc, layout: gl.constexpr):
        """acc + the sum over axis 1 of ``p`` ([BLOCK_E, 16], each row in one thread) as one chain of adds, so
        that the products that make ``p`` fuse into it (FFMA; gl.sum adds in a tree from Triton 3.7 on, whose
        leaves alone fuse: 8 FMUL + 8 FFMA + 7 FADD for a dot product of 16, against 16 FFMA here). ``acc`` and the
        result are [BLOCK_E] in ``layout`` (``acc`` None: nothing added). (Two chains, interleaved, took more registers: the staged inference
        forward 130 -> 147.)"""
        e, o = _pairs(p, 16)
        e0, e1 = _pairs(e, 8)
        o0, o1 = _pairs(o, 8)
        e00, e01 = _pairs(e0, 4)
        e10, e11 = _pairs(e1, 4)
        o00, o01 = _pairs(o0, 4)
        o10, o11 = _pairs(o1, 4)
        a0, a1 = _pairs(e00, 2)
        a2, a3 = _pairs(e01, 2)
        a4, a5 = _pairs(e10, 2)
        a6, a7 = _pairs(e11, 2)
        b0, b1 = _pairs(o00, 2)
        b2, b3 = _pairs(o01, 2)
        b4, b5 = _pairs(o10, 2)
        b6, b7 = _pairs(o11, 2)
        # (columns 0, 1, ..., 15 in order: a0 b0 are 0 1, a4 b4 2 3, a2 b2 4 5, ...)
        r = gl.convert_layout(a0, layout)
        if acc is not None:
            r += acc
        r += gl.convert_layout(b0, layout)
        r += gl.convert_layout(a4, layout)
        r += gl.convert_layout(b4, layout)
        r += gl.convert_layout(a2, layout)
        r += gl.convert_layout(b2, layout)
        r += gl.convert_layout(a6, layout)
        r += gl.convert_layout(b6, layout)
        r += gl.convert_layout(a1, layout)
        r += gl.convert_layout(b1, layout)
        r += gl.convert_layout(a5, layout)
        r += gl.convert_layout(b5, layout)
        r += gl.convert_layout(a3, layout)
        r += gl.convert_layout(b3, layout)
        r += gl.convert_layout(a7, layout)
        r += gl.convert_layout(b7, layout)
        return r

    @gluon.jit
    def _halves(x):
        """``x`` ([..., W], 2-D or 3-D, the last axis's pairs of neighbours in one thread) as its even and its odd
        columns ([..., W / 2]; for W = 2 the last axis dropped): register renames, no data moves."""
        W: gl.constexpr = x.shape[len(x.shape) - 1]
        if W == 2:
            even, odd = gl.split(x)
        elif len(x.shape) == 2:
            even, odd = gl.split(gl.reshape(x, [x.shape[0], W // 2, 2]))
        else:
            even, odd = gl.split(gl.reshape(x, [x.shape[0], x.shape[1], W // 2, 2]))
        return even, odd

    @gluon.jit
    def _link(acc, x, layout: gl.constexpr):
        """acc + x (x converted to ``layout`` unless it is None; ``acc`` None: x alone): one link of a chain."""
        if layout is not None:
            x = gl.convert_layout(x, layout)
        if acc is not None:
            x = acc + x
        return x

    @gluon.jit
    def _chain2(p, acc, layout: gl.constexpr):
        e, o = _halves(p)
        return _link(_link(acc, e, layout), o, layout)

    @gluon.jit
    def _chain4(p, acc, layout: gl.constexpr):
        e, o = _halves(p)
        return _chain2(o, _chain2(e, acc, layout), layout)

    @gluon.jit
    def _chain8(p, acc, layout: gl.constexpr):
        e, o = _halves(p)
        return _chain4(o, _chain4(e, acc, layout), layout)

    @gluon.jit
    def _chain16(p, acc, layout: gl.constexpr):
        e, o = _halves(p)
        return _chain8(o, _chain8(e, acc, layout), layout)

    @gluon.jit
    def _chain_sum(p, acc, K: gl.constexpr, layout: gl.constexpr):
        """acc + the sum of ``p`` over its last axis's K elements in a thread (K = 2, 4, 8 or 16), as one
        chain of adds (the leaves' order: even columns before odd ones, at every level) rather than gl.sum's tree
        (Triton 3.7 on; see _chain_sum16). Where the last axis is K wide it is summed away; where it is wider (a
        row over lanes: [..., K x lanes] with K neighbours a thread), the result keeps it, each lane's partial
        sum, for a gl.sum over the lanes. Each leaf is converted to ``layout`` (None: as it comes)."""
        if K == 2:
            r = _chain2(p, acc, layout)
        elif K == 4:
            r = _chain4(p, acc, layout)
        elif K == 8:
            r = _chain8(p, acc, layout)
        else:
            gl.static_assert(K == 16, "_chain_sum: K must be 2, 4, 8 or 16")
            r = _chain16(p, acc, layout)
        return r

    @gluon.jit
    def _state_sum(p, acc, CHAIN: gl.constexpr, layout: gl.constexpr):
        """acc + p summed over its states (axis 1): by _chain_sum16 with CHAIN (N = 16), else by gl.sum (``acc``
        None: the sum alone)."""
        if CHAIN:
            r = _chain_sum16(p, acc, layout)
        else:
            r = gl.sum(p, axis=1)
            if acc is not None:
                r += acc
        return r

    @gluon.jit
    def _walk_step(hv, delta, xf, zf, gout, gy, sig, bf, cf, mu, a2, dskip, CHAIN: gl.constexpr = False,
                   ch: gl.constexpr = None):
        """One step of the backward's walk for a program's channels, from the state h_t (``hv``), delta, the
        step's x, z, output gradient, gy (= d loss / d the output before the gate) and sigmoid(z), B_t and C_t
        ([1, N]) and the adjoint ``mu`` carried in from the step after: (d z, d x, d loss / d delta, lam = d loss /
        d h_t, delta x, the step's term of d A)."""
        yv = _state_sum(hv * cf, dskip * xf, CHAIN, ch)
        gz = gout * sig * (1.0 + zf * (1.0 - sig)) * yv
        lam = gl.expand_dims(gy, 1) * cf + mu  # d loss / d h_t
        dx = delta * xf
        # d loss / d (delta A) through the decay: lam * decay * h_{t-1} = lam * (h_t - delta x B)
        gdec = lam * (hv - gl.expand_dims(dx, 1) * bf)
        lam_b = _state_sum(lam * bf, None, CHAIN, ch)
        g_delta = _state_sum(gdec * a2, None, CHAIN, ch) * 0.6931471805599453 + xf * lam_b
        gx = delta * lam_b + gy * dskip
        return gz, gx, g_delta, lam, dx, gdec * gl.expand_dims(delta, 1)

    @gluon.jit(do_not_specialize=["L", "steps_per_chunk", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
    def scan_bwd_gluon_kernel(
        x_ptr, z_ptr, rows_f, rows_b, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
        gy_ptr, hsave_ptr, muinit_ptr, scratch_ptr,
        gx_ptr, gz_ptr, graw_ptr, gbc_ptr, ga_ptr, gd_ptr, gbias_ptr,
        L, E, steps_per_chunk,
        stride_x_d, stride_x_b, stride_x_l, stride_z_b, stride_z_l,
        stride_y_b, stride_y_l, stride_y_d, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
        stride_s_b, stride_s_d, stride_s_c, stride_m_b, stride_m_d, stride_m_c,
        stride_gx_d, stride_gx_b, stride_gx_l, stride_gr_d, stride_gr_b, stride_gr_l,
        stride_gbc_d, stride_gbc_eb, stride_gbc_b, stride_gbc_l,
        stride_row: gl.constexpr, R: gl.constexpr, N: gl.constexpr, BLOCK_E: gl.constexpr, BLOCK_R: gl.constexpr,
        B_COL: gl.constexpr, C_COL: gl.constexpr, SAVE_EVERY: gl.constexpr, HAS_MU_INIT: gl.constexpr,
        SMEM_SCRATCH: gl.constexpr, STATES_EN: gl.constexpr, WALK_PREFETCH: gl.constexpr,
    ):
        """Gradients of ``scan_fwd_gluon_kernel`` (as ``scan_bwd_kernel``): one program per (batch, block of BLOCK_E = 32
        channels (one warp, a channel a thread), direction, chunk of steps) walks its steps backwards a block of
        SAVE_EVERY steps at a time: it recomputes the block's states from the one the forward pass saved (hsave [B, 2,
        blocks, E, N] with STATES_EN, as the Gluon forward saves them, else [..., N, E]), keeps them (with delta and
        softplus') in shared memory (SMEM_SCRATCH) or in its rows of a global scratch, then differentiates the block
        from its last step to its first.

        gy: the output gradient [B, L, 2, E] (any strides; stride 0 between directions when both share it). Writes d x
        and d z per direction (gx, gz [2, B, L, E]), d raw delta (graw [2, B, L, E], the gradient of dt_proj's output:
        the caller turns it into d dt_low and d W_dt), this block's sums of d B and d C over its channels (gbc [2, E
        blocks, B, L, 2N], B | C; the caller sums the blocks), and adds the gradients of A_log [2, N, E], D and the
        bias [2, E] atomically at the end. HAS_MU_INIT: the adjoint entering the chunk from its end (muinit [B, 2,
        chunks, N, E]) comes from the chunk-parallel pre-pass. WALK_PREFETCH: the walk loads step s - 1's B and C rows
        during step s (else at the top of their own step: 32 registers fewer)."""
        tile: gl.constexpr = gl.BlockedLayout([1, N], [32, 1], [1, 1], [1, 0])
        wtile: gl.constexpr = gl.BlockedLayout([1, BLOCK_R], [32, 1], [1, 1], [1, 0])
        ch: gl.constexpr = gl.SliceLayout(1, tile)
        st: gl.constexpr = gl.SliceLayout(0, tile)
        # the sums over channels: the [BLOCK_E, N] partials of d B and of d C in shared memory, each read back as a
        # column of half the channels a thread (N = 16: 2 x 16 threads), summed, and the two halves added with one
        # shuffle. Rows padded by 4 (a thread's row of 16 values is written with 4-wide stores, 8 threads a bank
        # phase) and the second half of the rows shifted by 16 banks (a column read hits 32 different banks): no
        # bank conflicts either way.
        red: gl.constexpr = gl.BlockedLayout([BLOCK_E // 2, 1], [2, 16], [1, 1], [0, 1])
        red_out: gl.constexpr = gl.SliceLayout(0, red)
        red_smem: gl.constexpr = gl.PaddedSharedLayout.with_identity_for(
            [[N, 4], [BLOCK_E // 2 * N, 16]], [BLOCK_E, N], [1, 0])
        # the recomputed states: a thread's row of N values written and read by that thread only (4-wide accesses;
        # the swizzle spreads 8 consecutive rows over all banks)
        h_smem: gl.constexpr = gl.SwizzledSharedLayout(4, 2, 4, [1, 0])
        v_smem: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

        d, b, eb, rev, offs_e, offs_n, offs_r, rmask = _program_place(
            E, BLOCK_E, N, BLOCK_R, R, ch, st, gl.SliceLayout(0, wtile), 1)
        chunk = gl.program_id(2)
        local_e = gl.arange(0, BLOCK_E, layout=ch)
        a2, w, bias, dskip = _direction_params(d, a_f, a_b, w_f, w_b, bias_f, bias_b, dd_f, dd_b, eb, offs_e, offs_n,
                                               offs_r, rmask, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                               BLOCK_E, wtile)
        x_base = x_ptr + d * stride_x_d + b * stride_x_b + offs_e
        z_base = z_ptr + b * stride_z_b + offs_e
        gy_base = gy_ptr + b * stride_y_b + d * stride_y_d + offs_e
        gx_base = gx_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
        gz_base = gz_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
        gr_base = graw_ptr + d * stride_gr_d + b * stride_gr_b + offs_e
        row_base = _pick(d, rows_f, rows_b)
        dt_base = row_base + offs_r
        bm_base = row_base + B_COL + offs_n
        cm_base = row_base + C_COL + offs_n
        state_off = gl.expand_dims(offs_n, 0) * E + gl.expand_dims(offs_e, 1)
        if STATES_EN:
            save_off = gl.expand_dims(offs_e, 1) * N + gl.expand_dims(offs_n, 0)
        else:
            save_off = state_off
        # d B | d C rows: [2N] a step
        gbc_base = gbc_ptr + d * stride_gbc_d + eb * stride_gbc_eb + b * stride_gbc_b \
            + gl.arange(0, N, layout=red_out)

        bsum_buf = gl.allocate_shared_memory(gl.float32, [BLOCK_E, N], red_smem)
        csum_buf = gl.allocate_shared_memory(gl.float32, [BLOCK_E, N], red_smem)
        if SMEM_SCRATCH:
            h_buf = gl.allocate_shared_memory(gl.float32, [SAVE_EVERY, BLOCK_E, N], h_smem)
            delta_buf = gl.allocate_shared_memory(gl.float32, [SAVE_EVERY, BLOCK_E], v_smem)
            dsp_buf = gl.allocate_shared_memory(gl.float32, [SAVE_EVERY, BLOCK_E], v_smem)
        # (the global scratch: [programs, SAVE_EVERY, N + 2, BLOCK_E] fp32, channels contiguous)
        prog = ((b * 2 + d) * (E // BLOCK_E) + eb) * gl.num_programs(2) + chunk
        g_scr = scratch_ptr + prog * (SAVE_EVERY * (N + 2) * BLOCK_E) + gl.expand_dims(offs_n, 0) * BLOCK_E \
            + gl.expand_dims(local_e, 1)
        g_vec = scratch_ptr + prog * (SAVE_EVERY * (N + 2) * BLOCK_E) + N * BLOCK_E + local_e

        p_begin = chunk * steps_per_chunk
        p_end = gl.minimum(p_begin + steps_per_chunk, L)
        if HAS_MU_INIT:
            mu = gl.load(muinit_ptr + b * stride_m_b + d * stride_m_d + chunk * stride_m_c + state_off)
        else:
            mu = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        g_a = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        g_d = gl.zeros([BLOCK_E], gl.float32, layout=ch)
        g_bias = gl.zeros([BLOCK_E], gl.float32, layout=ch)
        n_blocks = (p_end - p_begin + SAVE_EVERY - 1) // SAVE_EVERY
        for ci in range(n_blocks):
            c = p_begin // SAVE_EVERY + n_blocks - 1 - ci
            s_begin = c * SAVE_EVERY
            s_end = gl.minimum(s_begin + SAVE_EVERY, L)
            # 1. the block's states, deltas and softplus'(raw delta), recomputed from the saved state
            h = gl.load(hsave_ptr + b * stride_s_b + d * stride_s_d + c * stride_s_c + save_off)
            t = gl.where(rev, L - 1 - s_begin, s_begin)
            row = (b * L + t) * stride_row
            xa = gl.load(x_base + t * stride_x_l)
            da = gl.load(dt_base + row, mask=rmask, other=0.0)
            ba = gl.load(bm_base + row)
            raw_next = _raw_delta(w, da, bias, ch)
            for s in range(s_begin, s_end):
                sn = gl.minimum(s + 1, s_end - 1)
                tn = gl.where(rev, L - 1 - sn, sn)
                rown = (b * L + tn) * stride_row
                xn = gl.load(x_base + tn * stride_x_l)
                dn = gl.load(dt_base + rown, mask=rmask, other=0.0)
                bn = gl.load(bm_base + rown)
                raw = raw_next
                delta = _softplus(raw)
                h = gl.exp2(gl.expand_dims(delta, 1) * a2) * h \
                    + gl.expand_dims(delta * xa.to(gl.float32), 1) * gl.expand_dims(ba.to(gl.float32), 0)
                dsp = _sigmoid(raw)  # d softplus(raw) / d raw
                i = s - s_begin
                if SMEM_SCRATCH:
                    h_buf.index(i).store(h)
                    delta_buf.index(i).store(delta)
                    dsp_buf.index(i).store(dsp)
                else:
                    step = i * ((N + 2) * BLOCK_E)
                    gl.store(g_scr + step, h)
                    gl.store(g_vec + step, delta)
                    gl.store(g_vec + step + BLOCK_E, dsp)
                raw_next = _raw_delta(w, dn, bias, ch)  # (a step ahead: off the next step's critical path)
                xa = xn
                ba = bn
            # 2. walk the block backwards, inputs prefetched a step ahead
            t = gl.where(rev, L - 1 - (s_end - 1), s_end - 1)
            row = (b * L + t) * stride_row
            xa = gl.load(x_base + t * stride_x_l)
            za = gl.load(z_base + t * stride_z_l)
            ga = gl.load(gy_base + t * stride_y_l)
            if WALK_PREFETCH:
                ba = gl.load(bm_base + row)
                ca = gl.load(cm_base + row)
            for si in range(s_end - s_begin):
                s = s_end - 1 - si
                sp = gl.maximum(s - 1, s_begin)
                tp = gl.where(rev, L - 1 - sp, sp)
                rowp = (b * L + tp) * stride_row
                xn = gl.load(x_base + tp * stride_x_l)
                zn = gl.load(z_base + tp * stride_z_l)
                gn = gl.load(gy_base + tp * stride_y_l)
                if WALK_PREFETCH:
                    bn = gl.load(bm_base + rowp)
                    cn = gl.load(cm_base + rowp)
                else:
                    row = (b * L + gl.where(rev, L - 1 - s, s)) * stride_row
                    ba = gl.load(bm_base + row)
                    ca = gl.load(cm_base + row)
                i = s - s_begin
                if SMEM_SCRATCH:
                    hv = h_buf.index(i).load(tile)
                    delta = delta_buf.index(i).load(ch)
                    dsp = dsp_buf.index(i).load(ch)
                else:
                    step = i * ((N + 2) * BLOCK_E)
                    hv = gl.load(g_scr + step)
                    delta = gl.load(g_vec + step)
                    dsp = gl.load(g_vec + step + BLOCK_E)
                t = gl.where(rev, L - 1 - s, s)
                xf = xa.to(gl.float32)
                zf = za.to(gl.float32)
                gout = ga.to(gl.float32)
                bf = gl.expand_dims(ba.to(gl.float32), 0)
                cf = gl.expand_dims(ca.to(gl.float32), 0)
                sig = _sigmoid(zf)
                gy = gout * zf * sig  # d loss / d (the scan's output before the gate)
                gz, gx, g_delta, lam, dx, ga_t = _walk_step(hv, delta, xf, zf, gout, gy, sig, bf, cf, mu, a2, dskip)
                gl.store(gz_base + t * stride_gx_l, gz.to(gz_ptr.dtype.element_ty))
                gl.store(gx_base + t * stride_gx_l, gx.to(gx_ptr.dtype.element_ty))
                g_d += gy * xf
                g_a += ga_t
                g_raw = g_delta * dsp
                g_bias += g_raw
                gl.store(gr_base + t * stride_gr_l, g_raw.to(graw_ptr.dtype.element_ty))
                # d B_t = sum over channels of lam * delta x, d C_t = sum of h_t * gy: through shared memory
                bsum_buf.store(lam * gl.expand_dims(dx, 1))
                csum_buf.store(hv * gl.expand_dims(gy, 1))
                _barrier()
                gbc_row = gbc_base + t * stride_gbc_l
                gl.store(gbc_row, gl.sum(bsum_buf.load(red), axis=0))
                gl.store(gbc_row + N, gl.sum(csum_buf.load(red), axis=0))
                _barrier()
                mu = gl.exp2(gl.expand_dims(delta, 1) * a2) * lam
                xa = xn
                za = zn
                ga = gn
                if WALK_PREFETCH:
                    ba = bn
                    ca = cn
        g_a = g_a * (a2 * 0.6931471805599453)  # d A / d A_log = A
        gl.atomic_add(ga_ptr + d * E * N + state_off, g_a, sem="relaxed")
        gl.atomic_add(gd_ptr + d * E + offs_e, g_d, sem="relaxed")
        gl.atomic_add(gbias_ptr + d * E + offs_e, g_bias, sem="relaxed")

    @gluon.jit
    def _stage_rows(buf, base, b, L, s0, s_hi, rev, stride_row: gl.constexpr, ld: gl.constexpr):
        """Asynchronous copies of steps s0 .. s0 + S - 1 (those below s_hi) of [S, W] columns of x_proj's rows
        (``base``: the direction's rows at the first column) into ``buf`` [S, W]."""
        S: gl.constexpr = buf.shape[0]
        W: gl.constexpr = buf.shape[1]
        s = s0 + gl.arange(0, S, layout=gl.SliceLayout(1, ld))
        t = gl.where(rev, L - 1 - s, s)
        cols = gl.expand_dims(gl.arange(0, W, layout=gl.SliceLayout(0, ld)), 0)
        _async_load(buf, base + gl.expand_dims((b * L + t) * stride_row, 1) + cols,
                    mask=gl.expand_dims(s < s_hi, 1))

    @gluon.jit
    def _stage_channels(buf, base, L, s0, s_hi, rev, stride_l, ld: gl.constexpr):
        """Asynchronous copies of steps s0 .. s0 + S - 1 (those below s_hi) of a [B, L, E]-like tensor's
        BLOCK_E channels (``base``: the program's first channel) into ``buf`` [S, BLOCK_E]."""
        S: gl.constexpr = buf.shape[0]
        W: gl.constexpr = buf.shape[1]
        s = s0 + gl.arange(0, S, layout=gl.SliceLayout(1, ld))
        t = gl.where(rev, L - 1 - s, s)
        cols = gl.expand_dims(gl.arange(0, W, layout=gl.SliceLayout(0, ld)), 0)
        _async_load(buf, base + gl.expand_dims(t * stride_l, 1) + cols,
                    mask=gl.expand_dims(s < s_hi, 1))

    @gluon.jit
    def _softplus_and_slope(x):
        """(softplus(x), its derivative sigmoid(x)) from one exp2; the first with ``_softplus``'s arithmetic."""
        q = gl.exp2(gl.abs(x) * -1.4426950408889634)  # e^-|x|
        sp = gl.maximum(x, 0.0) + 0.6931471805599453 * _ptx_f32(1.0 + q, "lg2.approx.ftz.f32")
        r = _ptx_f32(1.0 + q, "rcp.approx.ftz.f32")
        return sp, gl.where(x >= 0.0, r, q * r)

    @gluon.jit
    def _recompute_step(h, raw, x_rows, bc_rows, j, a2, N: gl.constexpr, ch: gl.constexpr, st: gl.constexpr):
        """One step of the staged backward's recompute of the states: h_t from h_{t-1}, the step's raw delta and
        its x and B (row ``j`` of the staged views)."""
        delta = _softplus(raw)
        xf = x_rows.index(j).load(ch).to(gl.float32)
        bf = bc_rows.index(j).slice(0, N).load(st).to(gl.float32)
        return gl.exp2(gl.expand_dims(delta, 1) * a2) * h + gl.expand_dims(delta * xf, 1) * gl.expand_dims(bf, 0)

    @gluon.jit
    def _add_or_store(ptr, value, ATOMIC: gl.constexpr):
        """``value`` added to *ptr atomically (relaxed; one thread of those that hold an element adds it), or
        stored there."""
        if ATOMIC:
            gl.atomic_add(ptr, value, sem="relaxed")
        else:
            gl.store(ptr, value)

    @gluon.jit(do_not_specialize=["L", "steps_per_chunk", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
    def scan_bwd_staged_gluon_kernel(
        x_ptr, z_ptr, rows_f, rows_b, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b,
        gy_ptr, hsave_ptr, muinit_ptr,
        gx_ptr, gz_ptr, graw_ptr, gbc_ptr, ga_ptr, gd_ptr, gbias_ptr,
        L, E, steps_per_chunk,
        stride_x_d, stride_x_b, stride_x_l, stride_z_b, stride_z_l,
        stride_y_b, stride_y_l, stride_y_d, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
        stride_s_b, stride_s_d, stride_s_c, stride_m_b, stride_m_d, stride_m_c,
        stride_gx_d, stride_gx_b, stride_gx_l, stride_gr_d, stride_gr_b, stride_gr_l,
        stride_gbc_d, stride_gbc_eb, stride_gbc_b, stride_gbc_l,
        stride_row: gl.constexpr, R: gl.constexpr, N: gl.constexpr, BLOCK_E: gl.constexpr, BLOCK_R: gl.constexpr,
        B_COL: gl.constexpr, SAVE_EVERY: gl.constexpr, PART: gl.constexpr, HAS_MU_INIT: gl.constexpr,
        ATOMIC_BC: gl.constexpr, STATES_EN: gl.constexpr, VX: gl.constexpr, VZ: gl.constexpr, VG: gl.constexpr,
        VR: gl.constexpr, CHAIN: gl.constexpr = False,
    ):
        """The Gluon backward with its inputs staged through shared memory and its sums over channels taken a
        part of a block at a time.

        Staging: each block of SAVE_EVERY steps has x, z, the output gradient and x_proj's dt_low and B | C
        columns copied in by cp.async while the block after it (in time; the one before in the walk) is
        processed, into one of two buffers. Every loop reads its inputs from shared memory: each is fetched from
        global memory once, and nothing is prefetched in registers (Nsight Compute on the unstaged kernel: 34% of
        its stall samples on global loads; docs/kernels.md, "Session 16").

        Parts: a block is differentiated PART steps at a time, its last part first. For each part the states
        are recomputed from the block's saved state (through the block's earlier steps, unstored) into a
        [PART, BLOCK_E, N] buffer; d C_t = sum over channels of h_t gy_t is read off that buffer for the whole
        part; the walk then goes down the part, leaving in each step's slot, in place of the state it no longer
        needs, the terms lam_t delta_t x_t whose sum over channels is d B_t, read off after the walk. So the walk
        exchanges nothing between threads (its only barriers are the compiler's, around its reuse of the slots),
        and shared memory holds PART steps of states instead of SAVE_EVERY. At Vim-Ti's widths (sm_90, Triton
        3.6), PART = SAVE_EVERY / 2 recomputes a block's first half twice (~11% more instructions a block) for
        15.4 KB of shared memory a program instead of 24.6 KB: 12 programs an SM (the registers' limit) instead
        of 8. The walk takes 259 instructions a step where the kernel that summed over channels in it took 341.

        d B and d C: with ATOMIC_BC, added into gbc (one block of channels, zeroed by the host) by atomic adds;
        otherwise stored as this block of channels' partial.

        Needs C right after B in the rows (B_COL, C = B_COL + N) and 16-byte aligned tensors
        (triton_scan._bwd_staged_fits); VX / VZ / VG / VR: elements of x / z / the output gradient / a row in
        16 bytes."""
        S: gl.constexpr = SAVE_EVERY
        tile: gl.constexpr = gl.BlockedLayout([1, N], [32, 1], [1, 1], [1, 0])
        wtile: gl.constexpr = gl.BlockedLayout([1, BLOCK_R], [32, 1], [1, 1], [1, 0])
        ch: gl.constexpr = gl.SliceLayout(1, tile)
        st: gl.constexpr = gl.SliceLayout(0, tile)
        wr: gl.constexpr = gl.SliceLayout(0, wtile)
        # the sums over channels: a step's [BLOCK_E, N] slot read back with two threads a state, each over every
        # other channel (rows of one swizzle phase, opposite halves of the banks: no conflicts), then one shuffle
        red: gl.constexpr = gl.BlockedLayout([1, 1], [2, 16], [1, 1], [0, 1])
        red_out: gl.constexpr = gl.SliceLayout(0, red)
        red_ch: gl.constexpr = gl.SliceLayout(1, red)
        h_smem: gl.constexpr = gl.SwizzledSharedLayout(4, 2, 4, [1, 0])
        v_smem: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
        # the copies: 16 bytes a thread, a warp over [32 / (W / V), W] of a [S, W] block
        x_ld: gl.constexpr = gl.BlockedLayout([1, VX], [32 // (BLOCK_E // VX), BLOCK_E // VX], [1, 1], [1, 0])
        z_ld: gl.constexpr = gl.BlockedLayout([1, VZ], [32 // (BLOCK_E // VZ), BLOCK_E // VZ], [1, 1], [1, 0])
        g_ld: gl.constexpr = gl.BlockedLayout([1, VG], [32 // (BLOCK_E // VG), BLOCK_E // VG], [1, 1], [1, 0])
        d_ld: gl.constexpr = gl.BlockedLayout([1, VR], [32 // (BLOCK_R // VR), BLOCK_R // VR], [1, 1], [1, 0])
        bc_ld: gl.constexpr = gl.BlockedLayout([1, VR], [32 // (2 * N // VR), 2 * N // VR], [1, 1], [1, 0])
        buf_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        row_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

        d, b, eb, rev, offs_e, offs_n, offs_r, rmask = _program_place(
            E, BLOCK_E, N, BLOCK_R, R, ch, st, wr, 1)
        chunk = gl.program_id(2)
        # (a staged dt_low row's columns from R on, the rows' padding or B's first columns, meet W_dt's zeros)
        a2, w, bias, dskip = _direction_params(d, a_f, a_b, w_f, w_b, bias_f, bias_b, dd_f, dd_b, eb, offs_e, offs_n,
                                               offs_r, rmask, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
                                               BLOCK_E, wtile)
        gx_base = gx_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
        gz_base = gz_ptr + d * stride_gx_d + b * stride_gx_b + offs_e
        gr_base = graw_ptr + d * stride_gr_d + b * stride_gr_b + offs_e
        # the staged tensors, from the program's first channel / the direction's rows
        x_src = x_ptr + d * stride_x_d + b * stride_x_b + eb * BLOCK_E
        z_src = z_ptr + b * stride_z_b + eb * BLOCK_E
        g_src = gy_ptr + b * stride_y_b + d * stride_y_d + eb * BLOCK_E
        row_base = _pick(d, rows_f, rows_b)
        state_off = gl.expand_dims(offs_n, 0) * E + gl.expand_dims(offs_e, 1)
        if STATES_EN:
            save_off = gl.expand_dims(offs_e, 1) * N + gl.expand_dims(offs_n, 0)
        else:
            save_off = state_off
        gbc_base = gbc_ptr + d * stride_gbc_d + eb * stride_gbc_eb + b * stride_gbc_b \
            + gl.arange(0, N, layout=red_out)

        # a part's states, then (slot by slot, as the walk passes) d B's terms; its raw deltas and gy
        h_buf = gl.allocate_shared_memory(gl.float32, [PART, BLOCK_E, N], h_smem)
        raw_buf = gl.allocate_shared_memory(gl.float32, [PART, BLOCK_E], v_smem)
        gy_buf = gl.allocate_shared_memory(gl.float32, [PART, BLOCK_E], v_smem)
        # two buffers of a block each ([2, S, width]): the copies write [S, width] views, the steps read rows of a
        # [2 S, width] view of the same bytes
        x_buf = gl.allocate_shared_memory(x_ptr.dtype.element_ty, [2, S, BLOCK_E], buf_l)
        z_buf = gl.allocate_shared_memory(z_ptr.dtype.element_ty, [2, S, BLOCK_E], buf_l)
        g_buf = gl.allocate_shared_memory(gy_ptr.dtype.element_ty, [2, S, BLOCK_E], buf_l)
        d_buf = gl.allocate_shared_memory(rows_f.dtype.element_ty, [2, S, BLOCK_R], buf_l)
        bc_buf = gl.allocate_shared_memory(rows_f.dtype.element_ty, [2, S, 2 * N], buf_l)
        x_rows = _rows_view(x_buf, x_ptr.dtype.element_ty, 2 * S, BLOCK_E, row_l)
        z_rows = _rows_view(z_buf, z_ptr.dtype.element_ty, 2 * S, BLOCK_E, row_l)
        g_rows = _rows_view(g_buf, gy_ptr.dtype.element_ty, 2 * S, BLOCK_E, row_l)
        d_rows = _rows_view(d_buf, rows_f.dtype.element_ty, 2 * S, BLOCK_R, row_l)
        bc_rows = _rows_view(bc_buf, rows_f.dtype.element_ty, 2 * S, 2 * N, row_l)

        p_begin = chunk * steps_per_chunk
        p_end = gl.minimum(p_begin + steps_per_chunk, L)
        if HAS_MU_INIT:
            mu = gl.load(muinit_ptr + b * stride_m_b + d * stride_m_d + chunk * stride_m_c + state_off)
        else:
            mu = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        g_a = gl.zeros([BLOCK_E, N], gl.float32, layout=tile)
        g_d = gl.zeros([BLOCK_E], gl.float32, layout=ch)
        g_bias = gl.zeros([BLOCK_E], gl.float32, layout=ch)
        n_blocks = (p_end - p_begin + S - 1) // S
        c_last = p_begin // S + n_blocks - 1
        # the chunk's last block into buffer 0
        s0 = c_last * S
        _stage_channels(x_buf.index(0), x_src, L, s0, L, rev, stride_x_l, x_ld)
        _stage_channels(z_buf.index(0), z_src, L, s0, L, rev, stride_z_l, z_ld)
        _stage_channels(g_buf.index(0), g_src, L, s0, L, rev, stride_y_l, g_ld)
        _stage_rows(d_buf.index(0), row_base, b, L, s0, L, rev, stride_row, d_ld)
        _stage_rows(bc_buf.index(0), row_base + B_COL, b, L, s0, L, rev, stride_row, bc_ld)
        async_copy.commit_group()
        for ci in range(n_blocks):
            c = c_last - ci
            s_begin = c * S
            s_end = gl.minimum(s_begin + S, L)
            slot = ci % 2
            # this block's copies are done, and every thread is done reading the other buffer (the block after
            # this one): the block before this one goes there
            async_copy.wait_group(0)
            _barrier()
            if ci + 1 < n_blocks:
                s0 = s_begin - S
                _stage_channels(x_buf.index(1 - slot), x_src, L, s0, L, rev, stride_x_l, x_ld)
                _stage_channels(z_buf.index(1 - slot), z_src, L, s0, L, rev, stride_z_l, z_ld)
                _stage_channels(g_buf.index(1 - slot), g_src, L, s0, L, rev, stride_y_l, g_ld)
                _stage_rows(d_buf.index(1 - slot), row_base, b, L, s0, L, rev, stride_row, d_ld)
                _stage_rows(bc_buf.index(1 - slot), row_base + B_COL, b, L, s0, L, rev, stride_row, bc_ld)
            async_copy.commit_group()
            first = slot * S - s_begin  # (step s of this block is row s + first of the staged views)
            n_parts = (s_end - s_begin + PART - 1) // PART
            for pi in range(n_parts):
                lo = s_begin + (n_parts - 1 - pi) * PART
                hi = gl.minimum(lo + PART, s_end)
                # 1. the part's states, raw deltas and gy, recomputed from the block's saved state (the steps
                # before the part: states only)
                h = gl.load(hsave_ptr + b * stride_s_b + d * stride_s_d + c * stride_s_c + save_off)
                raw_next = _raw_delta(w, d_rows.index(s_begin + first).load(wr), bias, ch, CHAIN)
                for s in range(s_begin, lo):
                    j = s + first
                    h = _recompute_step(h, raw_next, x_rows, bc_rows, j, a2, N, ch, st)
                    raw_next = _raw_delta(w, d_rows.index(j + 1).load(wr), bias, ch, CHAIN)  # (j + 1 <= lo + first)
                for s in range(lo, hi):
                    j = s + first
                    raw = raw_next
                    h = _recompute_step(h, raw, x_rows, bc_rows, j, a2, N, ch, st)
                    i = s - lo
                    h_buf.index(i).store(h)
                    raw_buf.index(i).store(raw)
                    zf = z_rows.index(j).load(ch).to(gl.float32)
                    gout = g_rows.index(j).load(ch).to(gl.float32)
                    gy_buf.index(i).store(gout * zf * _sigmoid(zf))  # d loss / d (the output before the gate)
                    # (a step ahead: off the next step's critical path; the last step reads its own row again)
                    raw_next = _raw_delta(w, d_rows.index(gl.minimum(j + 1, hi - 1 + first)).load(wr), bias, ch, CHAIN)
                _barrier()
                # 2. d C_t = sum over channels of h_t gy_t, for the part's steps
                for i in range(hi - lo):
                    t = gl.where(rev, L - 1 - (lo + i), lo + i)
                    prod = h_buf.index(i).load(red) * gl.expand_dims(gy_buf.index(i).load(red_ch), 1)
                    _add_or_store(gbc_base + t * stride_gbc_l + N, gl.sum(prod, axis=0), ATOMIC_BC)
                _barrier()  # (before the walk writes over the states)
                # 3. walk the part backwards
                for si in range(hi - lo):
                    s = hi - 1 - si
                    i = s - lo
                    j = s + first
                    hv = h_buf.index(i).load(tile)
                    delta, dsp = _softplus_and_slope(raw_buf.index(i).load(ch))  # (dsp: d delta / d raw delta)
                    gy = gy_buf.index(i).load(ch)
                    t = gl.where(rev, L - 1 - s, s)
                    xf = x_rows.index(j).load(ch).to(gl.float32)
                    zf = z_rows.index(j).load(ch).to(gl.float32)
                    gout = g_rows.index(j).load(ch).to(gl.float32)
                    bc_row = bc_rows.index(j)
                    bf = gl.expand_dims(bc_row.slice(0, N).load(st).to(gl.float32), 0)
                    cf = gl.expand_dims(bc_row.slice(N, N).load(st).to(gl.float32), 0)
                    gz, gx, g_delta, lam, dx, ga_t = _walk_step(hv, delta, xf, zf, gout, gy, _sigmoid(zf), bf, cf, mu,
                                                                a2, dskip, CHAIN, ch)
                    gl.store(gz_base + t * stride_gx_l, gz.to(gz_ptr.dtype.element_ty))
                    gl.store(gx_base + t * stride_gx_l, gx.to(gx_ptr.dtype.element_ty))
                    g_d += gy * xf
                    g_a += ga_t
                    g_raw = g_delta * dsp
                    g_bias += g_raw
                    gl.store(gr_base + t * stride_gr_l, g_raw.to(graw_ptr.dtype.element_ty))
                    h_buf.index(i).store(lam * gl.expand_dims(dx, 1))  # (d B_t's terms, in the state's slot)
                    mu = gl.exp2(gl.expand_dims(delta, 1) * a2) * lam
                _barrier()
                # 4. d B_t = sum over channels of lam_t delta_t x_t, for the part's steps
                for i in range(hi - lo):
                    t = gl.where(rev, L - 1 - (lo + i), lo + i)
                    _add_or_store(gbc_base + t * stride_gbc_l, gl.sum(h_buf.index(i).load(red), axis=0), ATOMIC_BC)
                _barrier()  # (before the next part's states)
        async_copy.wait_group(0)  # (the last, empty group)
        g_a = g_a * (a2 * 0.6931471805599453)  # d A / d A_log = A
        gl.atomic_add(ga_ptr + d * E * N + state_off, g_a, sem="relaxed")
        gl.atomic_add(gd_ptr + d * E + offs_e, g_d, sem="relaxed")
        gl.atomic_add(gbias_ptr + d * E + offs_e, g_bias, sem="relaxed")
else:  # pragma: no cover
    scan_fwd_gluon_kernel = scan_fwd_onepass_gluon_kernel = scan_fwd_staged_gluon_kernel = None
    scan_bwd_gluon_kernel = scan_bwd_staged_gluon_kernel = None
