"""The inference forward scan of Vim's mixer in Gluon (Triton's explicit-layout dialect): the same computation as
``scan_fwd_kernel`` for its most used launch (dt_proj folded in, both directions, no chunking, no saved states),
with the register layout written down instead of left to the compiler.

Why: in plain Triton the compiler lays the [channels, states] tile out as 4 channels x 8 states per thread (what
the [N, E] state loads suggest to it), so each step's B_t, C_t and dt_low rows arrive as scalar 2-byte loads
(every other state per thread) and the sums over states take shuffles (docs/kernels.md, "Session 4" and
"Session 7"). Here a thread owns CPT whole channels with all N states: the sums over states stay in the thread,
B_t, C_t and dt_low are loaded with vector loads (the same addresses in every thread: broadcasts), and the
per-channel vectors need no conversion. For sm_90 with Triton 3.6 that is 275 instead of 352 SASS instructions
per step of the time loop with fp32 x_proj rows, 350 instead of 375 with bf16 rows (``kernel_layouts.py``).

Gluon has no interpreter: this kernel runs only on a GPU, where ``tests/test_triton.py`` compares it with the
Triton kernel and the reference; on the CPU a test compiles it for sm_90. ``scan_forward`` falls back to the
Triton kernel wherever this one does not apply. Opt-in (VISION_MAMBA_TRITON_GLUON=1) until it has been run and
measured on a GPU: so far it has only been compiled.
"""
from __future__ import annotations

import os

try:  # Gluon is experimental: absent from older Triton releases, and it cannot run under the interpreter
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    AVAILABLE = os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
except ImportError:  # pragma: no cover - depends on the installed Triton
    gluon = gl = None
    AVAILABLE = False

if gluon is not None:

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
    def _pick(d, first, second):
        p = first
        if d == 1:
            p = second
        return p

    @gluon.jit(do_not_specialize=["L", "stride_a_e", "stride_a_n", "stride_w_e", "stride_w_r"])
    def scan_fwd_gluon_kernel(
        x_ptr, z_ptr, rows_ptr, dir_off, w_f, w_b, bias_f, bias_b, a_f, a_b, dd_f, dd_b, y_ptr,
        L, E, stride_x_d, stride_x_b, stride_x_l, stride_z_b, stride_z_l,
        stride_y_b, stride_y_l, stride_y_d, stride_a_e, stride_a_n, stride_w_e, stride_w_r,
        stride_row: gl.constexpr, R: gl.constexpr, N: gl.constexpr, BLOCK_E: gl.constexpr, BLOCK_R: gl.constexpr,
        B_COL: gl.constexpr, C_COL: gl.constexpr,
    ):
        """y[b, t, d, e] = silu(z) * (C_t . h_t + D x_t) with h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t and
        delta_t = softplus(W_dt dt_low_t + bias), for direction d (1: reversed in time), channels e of this
        program. x [2, B, L, E]; z [B, L, E] (any row stride); x_proj's rows [2 directions, B * L, stride_row]
        (dt_low | B | C, direction 1 ``dir_off`` elements after direction 0; bf16 or fp32); A_log [E, N], W_dt
        [E, R], bias and D [E] per direction. BLOCK_E must divide E (a program: BLOCK_E / 32 channels a thread
        per warp)."""
        NW: gl.constexpr = gl.num_warps()
        CPT: gl.constexpr = BLOCK_E // (32 * NW)
        tile: gl.constexpr = gl.BlockedLayout([CPT, N], [32, 1], [NW, 1], [1, 0])
        wtile: gl.constexpr = gl.BlockedLayout([CPT, BLOCK_R], [32, 1], [NW, 1], [1, 0])
        ch: gl.constexpr = gl.SliceLayout(1, tile)
        st: gl.constexpr = gl.SliceLayout(0, tile)
        pid_be = gl.program_id(0)
        d = gl.program_id(2)
        n_eb = E // BLOCK_E
        b = pid_be // n_eb
        eb = pid_be % n_eb
        rev = d == 1
        offs_e = eb * BLOCK_E + gl.arange(0, BLOCK_E, layout=ch)
        offs_n = gl.arange(0, N, layout=st)
        offs_we = eb * BLOCK_E + gl.arange(0, BLOCK_E, layout=gl.SliceLayout(1, wtile))
        offs_r = gl.arange(0, BLOCK_R, layout=gl.SliceLayout(0, wtile))
        rmask = offs_r < R
        # the direction's parameters, loaded once
        a_log = gl.load(_pick(d, a_f, a_b) + gl.expand_dims(offs_e, 1) * stride_a_e
                        + gl.expand_dims(offs_n, 0) * stride_a_n).to(gl.float32)
        a2 = -gl.exp(a_log) * 1.4426950408889634  # A log2(e): exp(delta A) = exp2(delta a2)
        w = gl.load(_pick(d, w_f, w_b) + gl.expand_dims(offs_we, 1) * stride_w_e
                    + gl.expand_dims(offs_r, 0) * stride_w_r, mask=gl.expand_dims(rmask, 0), other=0.0).to(gl.float32)
        bias = gl.load(_pick(d, bias_f, bias_b) + offs_e).to(gl.float32)
        dskip = gl.load(_pick(d, dd_f, dd_b) + offs_e).to(gl.float32)
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
else:  # pragma: no cover
    scan_fwd_gluon_kernel = None
