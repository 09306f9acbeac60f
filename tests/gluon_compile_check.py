"""Compiles the Gluon scan kernels (ops/selective_scan/gluon_kernels.py) for sm_90 without a GPU, as the launch code
calls them: the launches of ``triton_scan.scan_forward`` / ``scan_backward`` are captured on CPU tensors at Vim-Ti's
widths (one pass and chunk-parallel, inference and training, shared-memory and global scratch, both layouts of the
saved states, the staged kernels), then compiled with the specialisation Triton's launcher applies
(benchmarks/kernel_layouts.py).
Checks that each compiles, that the forward has no layout conversions (no shuffles; no barriers but the staged
kernel's, around its buffers) and that the backward's only shuffles and barriers are the ones of its sums over
channels (and the staged kernel's). Run by
tests/test_triton.py::test_gluon_kernels_compile_for_sm90 in a process without TRITON_INTERPRET."""
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import torch  # noqa: E402
import triton  # noqa: E402
from kernel_layouts import _Capture, _signature  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

from vision_mamba.ops.selective_scan import gluon_kernels as gk  # noqa: E402
from vision_mamba.ops.selective_scan import triton_scan as ts  # noqa: E402


KERNELS = ("scan_fwd_gluon_kernel", "scan_fwd_onepass_gluon_kernel", "scan_fwd_staged_gluon_kernel",
           "scan_bwd_gluon_kernel", "scan_bwd_staged_gluon_kernel")


def capture(B, L, cfg, rows_dtype, hsave_layout):
    """The Gluon launches of one forward saving states (training), one without (inference) and one backward, with
    ``cfg`` over the defaults: {kernel name: [(args, kwargs), ...]} for each of the two passes ("train", "infer")
    and the backward ("bwd")."""
    E, N, R = 384, 16, 12
    bf = torch.bfloat16
    xs, z = torch.randn(2, B, L, E, dtype=bf), torch.randn(B, L, 2 * E, dtype=bf)[..., E:]
    dbl = [torch.randn(B * L, R + 2 * N, dtype=rows_dtype) for _ in range(2)]
    w, bias = [torch.randn(E, R) for _ in range(2)], [torch.randn(E) for _ in range(2)]
    alog, dd = [torch.randn(E, N) for _ in range(2)], [torch.randn(E) for _ in range(2)]
    args = ts._bi_args(xs, z, dbl[0], dbl[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0], dd[1], R, N)
    cfg = dict(ts._config(), **cfg)
    originals = {name: getattr(gk, name) for name in KERNELS}
    # (the Triton kernels between or instead of the Gluon launches are not compiled here)
    ts.chunk_carry_kernel = ts.adjoint_chunk_kernel = ts.scan_fwd_kernel = ts.scan_bwd_kernel = _Capture()
    n_save = triton.cdiv(L, ts._save_every(cfg, L))
    hsave = torch.zeros(B, 2, n_save, E, N).transpose(-1, -2) if hsave_layout == "EN" \
        else torch.zeros(B, 2, n_save, N, E)
    passes = dict(train=lambda: ts.scan_forward(args, bf, save_states=True, config=cfg),
                  infer=lambda: ts.scan_forward(args, bf, save_states=False, config=cfg),
                  bwd=lambda: ts.scan_backward(args, hsave, torch.randn(B, L, 2, E, dtype=bf), config=cfg))
    calls = {}
    try:
        for name, run in passes.items():
            caps = {k: _Capture() for k in KERNELS}
            for k, cap in caps.items():
                setattr(gk, k, cap)
            run()
            calls[name] = {k: cap.calls for k, cap in caps.items() if cap.calls}
    finally:
        for k, kernel in originals.items():
            setattr(gk, k, kernel)
    return calls


def padded_args(B, L):
    """A scan's arguments at Vim-Ti's widths with x_proj's rows as the model makes them: fp32, padded to 48 columns
    (dt_low | zeros | B | C)."""
    E, N, R = 384, 16, 12
    xs, z = torch.randn(2, B, L, E, dtype=torch.bfloat16), torch.randn(B, L, 2 * E, dtype=torch.bfloat16)
    rows = torch.randn(2, B * L, 48)
    w, v, a = torch.randn(E, R), torch.randn(E), torch.randn(E, N)
    return ts._bi_args(xs, z[..., E:], rows[0], rows[1], w, w, v, v, a, a, v, v, R, N)


def compile_call(kernel, call):
    args, kwargs = call
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion") if k in kwargs}
    sig, constexprs, attrs = _signature(kernel, args, kwargs)
    compiled = triton.compile(GluonASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=options)
    return compiled.asm["ptx"]


def check_forward(ptx):
    assert ".entry" in ptx and "ex2.approx" in ptx, "no kernel, or no exp2 in it"
    assert "shfl.sync" not in ptx, "layout conversions in the forward"


def check_backward(kernel_name, ptx):
    # the sums over channels: one shuffle each for d B and d C. The unstaged kernel: two barriers a step (none
    # elsewhere). The staged kernel: one after each block's copies arrive, four a part around its two passes over
    # channels, and the compiler's between a loop's store to a shared buffer and the next step's use of it
    # (one in the recompute, two in the walk): ten in the PTX under Triton 3.6 and 3.8
    assert ".entry" in ptx and "ex2.approx" in ptx, "no kernel, or no exp2 in it"
    bars = 10 if "staged" in kernel_name else 4
    assert ptx.count("shfl.sync") <= 2 and ptx.count("bar.sync") <= bars, \
        (kernel_name, ptx.count("shfl.sync"), ptx.count("bar.sync"))


def main() -> int:
    kernels = {name: getattr(gk, name) for name in KERNELS}
    gk.AVAILABLE = True
    ts._gluon_device = lambda device: True  # the launch code on CPU tensors, as on CUDA
    cases = [  # (B, L, config, x_proj's rows, saved states' layout for the backward)
        (2, 197, dict(min_programs=0), torch.float32, "EN"),  # one pass, states in shared memory
        # chunks (128 channels a forward program), a global scratch, the adjoint carried into the chunks
        (1, 300, dict(min_programs=64, save_every=32, gluon_bwd=1), torch.bfloat16, "NE"),
        # the forward (forced) saving states for the Triton backward (not compiled here)
        (2, 63, dict(min_programs=0, save_every=5, ahead=0, gluon=1, gluon_bwd=0), torch.float32, "EN"),
    ]
    checked = 0
    with tempfile.TemporaryDirectory():
        for B, L, cfg, rows_dtype, layout in cases:
            calls = capture(B, L, cfg, rows_dtype, layout)
            assert calls["train"], (B, L, {k: list(v) for k, v in calls.items()})
            assert bool(calls["bwd"]) == bool(cfg.get("gluon_bwd", 1)), calls["bwd"].keys()
            # (one-pass inference: the one-pass kernel, staged or not, where the sequence runs in one pass)
            onepass = {"scan_fwd_onepass_gluon_kernel", "scan_fwd_staged_gluon_kernel"} & set(calls["infer"])
            assert bool(onepass) == (cfg["min_programs"] == 0), calls["infer"].keys()
            for pass_name in ("train", "infer"):
                for name, launches in calls[pass_name].items():
                    for call in launches:
                        ptx = compile_call(kernels[name], call)
                        check_forward(ptx)
                        if name != "scan_fwd_staged_gluon_kernel":
                            assert "bar.sync" not in ptx, "layout conversions in the forward"
                        checked += 1
            for name, launches in calls["bwd"].items():
                for call in launches:
                    check_backward(name, compile_call(kernels[name], call))
                    checked += 1
        # the one-pass forward staged through shared memory, on the model's padded fp32 rows: inference, and the
        # training forward saving the states for the Gluon backward
        staged_kernel = gk.scan_fwd_staged_gluon_kernel
        # (inference also several steps a pass of its loop, UNROLL; never the training forward)
        for B, L, stage, save, unroll in ((2, 197, 8, False, 1), (1, 5, 4, False, 1), (2, 197, 4, True, 1),
                                          (1, 9, 8, True, 1), (2, 197, 4, False, 2), (2, 197, 8, True, 2)):
            cap = _Capture()
            gk.scan_fwd_staged_gluon_kernel = cap
            ts.scan_forward(padded_args(B, L), torch.bfloat16, save_states=save,
                            config=dict(ts._config(), min_programs=0, gluon_staged=stage, gluon_train_staged=stage,
                                        gluon_staged_unroll=unroll))
            gk.scan_fwd_staged_gluon_kernel = staged_kernel
            assert len(cap.calls) == 1 and cap.calls[0][1]["SAVE_STATES"] == save, len(cap.calls)
            assert cap.calls[0][1].get("UNROLL", 1) == (1 if save else unroll), cap.calls[0][1].get("UNROLL")
            ptx = compile_call(staged_kernel, cap.calls[0])
            assert "cp.async" in ptx and "ex2.approx" in ptx and "shfl.sync" not in ptx
            checked += 1
        # the backward staged through shared memory, on the model's padded fp32 rows: 8-step blocks, one pass and
        # chunk-parallel (the adjoint carried in), each block differentiated in one, two or four parts, d B / d C
        # added atomically or written as partials
        staged_bwd = gk.scan_bwd_staged_gluon_kernel
        atomics = {}  # {ATOMIC_BC: atomic instructions in the PTX}
        for B, L, extra in ((2, 197, dict(min_programs=0, gluon_bwd_parts=2, gluon_bwd_atomic_bc=1)),
                            (1, 300, dict(min_programs=64, gluon_bwd_parts=2, gluon_bwd_atomic_bc=1)),
                            (2, 197, dict(min_programs=0, gluon_bwd_parts=1, gluon_bwd_atomic_bc=1)),
                            (2, 63, dict(min_programs=0, gluon_bwd_parts=4, gluon_bwd_atomic_bc=1)),
                            (2, 197, dict(min_programs=0, gluon_bwd_parts=2, gluon_bwd_atomic_bc=0))):
            E, N = 384, 16
            args = padded_args(B, L)
            cfg = dict(ts._config(), gluon_bwd_staged=1, **extra)
            cap = _Capture()
            gk.scan_bwd_staged_gluon_kernel = cap
            n_save = triton.cdiv(L, ts._save_every(cfg, L))
            hsave = torch.zeros(B, 2, n_save, E, N).transpose(-1, -2)
            ts.scan_backward(args, hsave, torch.randn(B, L, 2, E, dtype=torch.bfloat16), config=cfg)
            gk.scan_bwd_staged_gluon_kernel = staged_bwd
            assert len(cap.calls) == 1, len(cap.calls)
            assert cap.calls[0][1]["PART"] == 8 // extra["gluon_bwd_parts"], cap.calls[0][1]["PART"]
            ptx = compile_call(staged_bwd, cap.calls[0])
            assert "cp.async" in ptx
            # the sums of d A, d D and the bias are added atomically in every form; with ATOMIC_BC, d B and d C too
            # (one more atomic instruction each)
            n_atomic = len(re.findall(r"\s(?:red|atom)\.global\.", ptx))
            atomic_bc = cap.calls[0][1]["ATOMIC_BC"]
            assert atomic_bc == bool(extra["gluon_bwd_atomic_bc"])
            atomics.setdefault(atomic_bc, n_atomic)
            assert n_atomic == atomics[atomic_bc], (extra, n_atomic, atomics)
            check_backward("scan_bwd_staged_gluon_kernel", ptx)
            checked += 1
    assert atomics[True] == atomics[False] + 2, atomics
    # the sums over a channel's states (and, in the backward, over dt_low's columns) by gl.sum or as one chain of
    # adds (gluon_chain): both compile, with no layout conversions the other does not have
    for chain in (0, 1):
        cfg = dict(ts._config(), min_programs=0, gluon_staged=4, gluon_train_staged=4, gluon_chain=chain)
        for save in (False, True):
            cap = _Capture()
            gk.scan_fwd_staged_gluon_kernel = cap
            ts.scan_forward(padded_args(2, 197), torch.bfloat16, save_states=save, config=cfg)
            gk.scan_fwd_staged_gluon_kernel = staged_kernel
            assert len(cap.calls) == 1 and cap.calls[0][1]["CHAIN"] == bool(chain), cap.calls
            ptx = compile_call(staged_kernel, cap.calls[0])
            assert "cp.async" in ptx and "ex2.approx" in ptx and "shfl.sync" not in ptx
            checked += 1
        cap = _Capture()
        gk.scan_bwd_staged_gluon_kernel = cap
        hsave = torch.zeros(2, 2, triton.cdiv(197, ts._save_every(cfg, 197)), 384, 16).transpose(-1, -2)
        ts.scan_backward(padded_args(2, 197), hsave, torch.randn(2, 197, 2, 384, dtype=torch.bfloat16), config=cfg)
        gk.scan_bwd_staged_gluon_kernel = staged_bwd
        assert len(cap.calls) == 1 and cap.calls[0][1]["CHAIN"] == bool(chain), cap.calls
        check_backward("scan_bwd_staged_gluon_kernel", compile_call(staged_bwd, cap.calls[0]))
        checked += 1
    # inference the plan would chunk, in one pass with each channel's states over TPC lanes (onepass_tpc), staged
    # or not: the only shuffles are those of its two sums a channel and step (over dt_low's columns and over the
    # states), log2(TPC) each; y is stored by one lane of a channel's TPC (predicated stores). Staged, narrow
    # programs copy more steps at a time (_tpc_stage: a warp's copies of a step cover 32 / (16-byte vectors a row)
    # rows)
    onepass = gk.scan_fwd_onepass_gluon_kernel
    # (and staged, several steps a pass of the loop: UNROLL, each step's shuffles and predicated store repeated)
    for tpc, cpt, stage, expect_stage, unroll in (
            (2, 1, 0, 0, 1), (4, 1, 0, 0, 1), (4, 2, 0, 0, 1), (8, 1, 0, 0, 1), (2, 1, 4, 16, 1), (4, 1, 4, 32, 1),
            (4, 2, 4, 16, 1), (4, 2, 32, 32, 1), (2, 1, 4, 16, 2), (2, 1, 4, 16, 4)):
        caps = {name: _Capture() for name in ("scan_fwd_onepass_gluon_kernel", "scan_fwd_staged_gluon_kernel")}
        for name, cap in caps.items():
            setattr(gk, name, cap)
        ts.scan_forward(padded_args(1, 300), torch.bfloat16, save_states=False,
                        config=dict(ts._config(), min_programs=1 << 20, onepass_tpc=tpc, onepass_cpt=cpt,
                                    gluon_staged=stage, onepass_unroll=unroll, onepass_share=0))
        gk.scan_fwd_onepass_gluon_kernel, gk.scan_fwd_staged_gluon_kernel = onepass, staged_kernel
        name = "scan_fwd_staged_gluon_kernel" if expect_stage else "scan_fwd_onepass_gluon_kernel"
        calls = caps[name].calls
        counts = {k: len(c.calls) for k, c in caps.items()}
        assert len(calls) == 1 and sum(counts.values()) == 1, counts
        kwargs = calls[0][1]
        assert kwargs["TPC"] == tpc and kwargs["BLOCK_E"] == 32 * cpt // tpc, kwargs
        assert kwargs.get("STAGE", 0) == expect_stage, kwargs.get("STAGE")
        assert kwargs.get("UNROLL", 1) == unroll, kwargs.get("UNROLL")
        ptx = compile_call(getattr(gk, name), calls[0])
        assert ".entry" in ptx and "ex2.approx" in ptx
        assert ("cp.async" in ptx) == bool(expect_stage) and ("bar.sync" in ptx) == bool(expect_stage)
        shuffles = 2 * (tpc.bit_length() - 1) * cpt * unroll
        assert ptx.count("shfl.sync") == shuffles, (tpc, cpt, ptx.count("shfl.sync"), shuffles)
        stores = [line.strip() for line in ptx.splitlines() if "st.global" in line]
        assert stores and all(re.match(r"@%p\d+ st\.global\.", line) for line in stores), stores
        checked += 1
    # the same with the lanes of a channel sharing its work of a step (onepass_share: scan_fwd_lanes_gluon_kernel,
    # onepass_share steps a pass, at least tpc, at most the stage of 16 steps here): per step, delta from its lane to
    # the channel's other lanes and y's sum over them, and nothing else crosses lanes; each lane stores its own
    # steps, once unmasked (a whole pass) and once predicated (the last pass, cut by the end)
    lanes_kernel = gk.scan_fwd_lanes_gluon_kernel
    # (and programs of several warps, lanes_warps: 32 warps / tpc channels, staged 16 or 32 steps at a time; and a
    # channel's lanes 32 / tpc apart, lanes_high; and its sums as chains of adds, gluon_chain: no more shuffles)
    for tpc, unroll, expect_u, warps, high, chain in (
            (2, 1, 2, 1, 0, 0), (2, 4, 4, 1, 0, 0), (4, 4, 4, 1, 0, 0), (4, 8, 8, 1, 0, 0), (2, 16, 16, 1, 0, 0),
            (2, 32, 16, 1, 0, 0), (2, 16, 16, 2, 0, 0), (4, 16, 16, 2, 0, 0), (4, 16, 16, 4, 0, 0), (2, 16, 16, 1, 1, 0),
            (4, 16, 16, 4, 1, 0), (2, 16, 16, 1, 1, 1), (4, 16, 16, 4, 1, 1), (2, 4, 4, 1, 0, 1)):
        cap = _Capture()
        gk.scan_fwd_lanes_gluon_kernel = cap
        ts.scan_forward(padded_args(1, 300), torch.bfloat16, save_states=False,
                        config=dict(ts._config(), min_programs=1 << 20, onepass_tpc=tpc, onepass_share=unroll,
                                    lanes_warps=warps, lanes_high=high, gluon_chain=chain))
        gk.scan_fwd_lanes_gluon_kernel = lanes_kernel
        assert len(cap.calls) == 1, len(cap.calls)
        kwargs = cap.calls[0][1]
        assert kwargs["TPC"] == tpc and kwargs["U"] == expect_u and kwargs["BLOCK_E"] == 32 * warps // tpc, kwargs
        assert kwargs["LANE_HI"] == bool(high) and kwargs["CHAIN"] == bool(chain), kwargs
        assert kwargs["num_warps"] == warps and kwargs["STAGE"] >= 32 * warps // (kwargs["BLOCK_E"] // 8), kwargs
        ptx = compile_call(lanes_kernel, cap.calls[0])
        assert "cp.async" in ptx and ".entry" in ptx and "ex2.approx" in ptx
        # (delta from its lane: one shfl.idx a step, and a reduction whose butterfly shuffles only keep each lane's
        # own value: dead, which ptxas removes; y: log2(TPC) butterflies a step)
        bfly = 2 * (tpc.bit_length() - 1) * expect_u
        assert ptx.count("shfl.sync.idx") == expect_u and ptx.count("shfl.sync.bfly") == bfly, \
            (tpc, unroll, ptx.count("shfl.sync.idx"), ptx.count("shfl.sync.bfly"), bfly)
        stores = [line.strip() for line in ptx.splitlines() if "st.global" in line]
        masked = [line for line in stores if re.match(r"@%p\d+ st\.global\.", line)]
        assert len(stores) == 2 * len(masked) == 2 * expect_u // tpc, stores
        checked += 1
    # inference that stays chunked, in chunks of the lanes kernel (lanes_chunk_warps): a first pass that only ends
    # each chunk's state (no output: no y sums, so half the shuffles, and only the end state's and delta's sums
    # stored), then a pass from each chunk's start state that writes y; the carry between them is a Triton kernel
    ts._sm_count = lambda device: 132
    for B, L, high, chain in ((1, 300, 0, 0), (1, 6085, 0, 0), (1, 6085, 1, 0), (1, 6085, 1, 1)):
        cap = _Capture()
        gk.scan_fwd_lanes_gluon_kernel = cap
        ts.scan_forward(padded_args(B, L), torch.bfloat16, save_states=False,
                        config=dict(ts._config(), min_programs=1 << 20, onepass_tpc=0, lanes_chunk_warps=16,
                                    lanes_high=high, gluon_chain=chain))
        gk.scan_fwd_lanes_gluon_kernel = lanes_kernel
        assert len(cap.calls) == 2, len(cap.calls)
        (args1, first), (args2, second) = cap.calls
        assert not first["WRITE_Y"] and first["WRITE_END"] and not first["HAS_INIT"], first
        assert second["WRITE_Y"] and not second["WRITE_END"] and second["HAS_INIT"], second
        assert first["LANE_HI"] == second["LANE_HI"] == bool(high), (first, second)
        assert first["CHAIN"] == second["CHAIN"] == bool(chain), (first, second)
        for call, bfly in ((cap.calls[0], first["U"]), (cap.calls[1], 2 * second["U"])):
            ptx = compile_call(lanes_kernel, call)
            assert "cp.async" in ptx and ".entry" in ptx and "ex2.approx" in ptx
            # (one shfl.idx a step for delta; the butterflies as above, and the first pass's sum of delta)
            assert ptx.count("shfl.sync.idx") == call[1]["U"], (B, L, ptx.count("shfl.sync.idx"))
            assert ptx.count("shfl.sync.bfly") == bfly + (1 if call is cap.calls[0] else 0), \
                (B, L, ptx.count("shfl.sync.bfly"), bfly)
            checked += 1
    print(f"Triton {triton.__version__}: {checked} Gluon launches compiled for sm_90, no layout conversions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
