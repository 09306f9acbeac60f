"""What the compiler makes of the scan kernels, without a GPU: registers, spills, and the instructions that betray
layout conversions in the generated code (shuffles, shared-memory traffic, barriers), for sm_90 (H100 / H200).

    PYTHONPATH=src python benchmarks/kernel_layouts.py                 # both kernels, the launch defaults
    PYTHONPATH=src python benchmarks/kernel_layouts.py --params-t 0    # force one way of loading A / W_dt
    PYTHONPATH=/path/to/other/triton:src python benchmarks/kernel_layouts.py   # another Triton version
    PYTHONPATH=src python benchmarks/kernel_layouts.py --gluon --sass  # the Gluon scan kernels (gluon_kernels.py)

Each kernel's launch is captured from the real launch code (on small CPU tensors), compiled with
``triton.compile`` for a CUDA 9.0 target with the specialisation Triton's launcher would apply (pointers 16-byte
aligned; integer arguments equal to 1 made constants, those divisible by 16 marked so, except the kernel's
``do_not_specialize`` list; the Vim-Ti widths of the capture, E = 384, are such), and assembled with Triton's
bundled ptxas. Before session 4 the integers were not specialised here, so the layouts this reported then were
not the ones the device compiled (docs/kernels.md, "Session 4"). ``--sass`` adds each kernel's main-loop opcode
counts from the disassembly (cuobjdump, bundled with Triton); ``--out`` keeps the TTGIR, PTX and SASS for reading.
Options choose the launch configuration (``--delta``, ``--prefetch``, ``--block-e``; environment variables such
as VISION_MAMBA_TRITON_SPECIALIZE_E=0 apply as at run time).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, even where the tests interpret

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from vision_mamba.ops.selective_scan import triton_kernels as tk  # noqa: E402
from vision_mamba.ops.selective_scan import triton_scan as ts  # noqa: E402

_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_OPTIONS = ("num_warps", "num_stages", "maxnreg", "enable_fp_fusion")


class _Capture:
    """Stands in for a kernel object: records the arguments of ``kernel[grid](*args, **kwargs)``."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _signature(kernel, args, kwargs):
    sig, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = args[i] if i < len(args) else kwargs[name] if name in kwargs else param.default
        if param.is_constexpr:
            sig[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + _DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # what the launcher specialises for allocator pointers
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int) and not param.do_not_specialize and value == 1:
            sig[name], constexprs[name] = "constexpr", 1  # the launcher turns integer arguments equal to 1 into constants
        elif isinstance(value, int):
            sig[name] = "i32" if abs(value) < 2 ** 31 else "i64"
            if not param.do_not_specialize and value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]  # and marks those divisible by 16 as such
        else:
            raise TypeError(f"{name}: cannot type {type(value).__name__}")
    return sig, constexprs, attrs


def _ptxas(ptx: str, work: Path) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        tool = get_ptxas(90).path
    except TypeError:  # older Triton: no architecture argument
        tool = get_ptxas().path
    src = work / "k.ptx"
    for text in (ptx, re.sub(r"^\.version \d+\.\d+", ".version 8.8", ptx, flags=re.M)):
        src.write_text(text)
        run = subprocess.run([tool, "-arch=sm_90a", "-v", str(src), "-o", str(work / "k.cubin")],
                             capture_output=True, text=True)
        if run.returncode == 0:
            return " ".join(line.split(":", 1)[-1].strip() for line in run.stderr.splitlines()
                            if "registers" in line or "spill" in line)
    return f"ptxas failed: {run.stderr.strip()[:200]}"


def _loop_mix(work: Path, out: Path = None, name: str = "") -> str:
    """The SASS of the cubin ptxas just wrote: the opcodes of each innermost loop body of 40 instructions or more
    (the instructions between a backward branch and its target), per opcode, largest first: what one pass of a
    time loop costs (a backward kernel has two: the recompute and the walk)."""
    tool = Path(_tool_dir()) / "cuobjdump"
    run = subprocess.run([str(tool), "-sass", str(work / "k.cubin")], capture_output=True, text=True)
    if run.returncode != 0:
        return "(no SASS)"
    if out is not None:
        (out / f"{name}.sass").write_text(run.stdout)
    ins = []  # (address, opcode, text)
    for line in run.stdout.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*)", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(3), m.group(4)))
    loops = []  # (target, branch address) of every backward branch
    for addr, op, rest in ins:
        t = re.search(r"`?\(?\.L_x_\d+\)?|0x([0-9a-f]+)", rest)
        if op.startswith("BRA") and t and t.group(1):
            target = int(t.group(1), 16)
            if target < addr:
                loops.append((target, addr))
    # the innermost loops (no other loop inside), in program order: a kernel's time loops
    inner = [(lo, hi) for lo, hi in loops if not any(lo <= a < b <= hi and (a, b) != (lo, hi) for a, b in loops)]
    inner = [(lo, hi) for lo, hi in inner if sum(1 for a, _, _ in ins if lo <= a <= hi) >= 40]
    if not inner:
        return "(no loop found)"
    parts = []
    for lo, hi in sorted(inner):
        body = [o for a, o, _ in ins if lo <= a <= hi]
        counts = {}
        for op in body:
            key = op.split(".")[0]
            counts[key] = counts.get(key, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        parts.append(f"loop {len(body)} instructions: " + ", ".join(f"{k} {v}" for k, v in top[:14]))
    return "\n           ".join(parts)


def _tool_dir() -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        return str(Path(get_ptxas(90).path).parent)
    except TypeError:
        return str(Path(get_ptxas().path).parent)


def report(name, kernel, call, work: Path, out: Path = None, sass: bool = False) -> str:
    args, kwargs = call
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    sig, constexprs, attrs = _signature(kernel, args, kwargs)
    source = ASTSource
    if type(kernel).__name__.startswith("Gluon"):  # a Gluon kernel (gluon_kernels.py)
        from triton.experimental.gluon._runtime import GluonASTSource as source
    compiled = triton.compile(source(kernel, sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=options)
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    if out is not None:
        (out / f"{name}.ptx").write_text(ptx)
        (out / f"{name}.ttgir").write_text(ttgir)
    layouts = len(set(re.findall(r"^#blocked\d* = ", ttgir, flags=re.M)))
    smem = compiled.metadata.shared if hasattr(compiled.metadata, "shared") else "?"
    text = (f"{name:10s} {_ptxas(ptx, work)}, shared {smem} B | shfl {ptx.count('shfl.sync')}, "
            f"ld.shared {ptx.count('ld.shared')}, "
            f"st.shared {ptx.count('st.shared')}, bar.sync {ptx.count('bar.sync')}, blocked layouts {layouts}")
    if sass:
        text += "\n           " + _loop_mix(work, out, name.replace(" ", "_"))
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params-t", type=int, default=-1, help="-1: the launch default for this Triton; 0 or 1")
    p.add_argument("--block-e", type=int, default=None, help="forward channels per program (default: the launch's)")
    p.add_argument("--bwd-block-e", type=int, default=None)
    p.add_argument("--delta", default=None, help="matmul or fold (default: the launch's)")
    p.add_argument("--prefetch", type=int, default=None, help="forward prefetch depth (default: the launch's)")
    p.add_argument("--out", type=Path, default=None, help="keep the TTGIR / PTX (and SASS) here")
    p.add_argument("--sass", action="store_true", help="also count the opcodes of each kernel's main loop (SASS)")
    p.add_argument("--no-save", action="store_true", help="the forward as inference runs it (no states saved)")
    p.add_argument("--gluon", action="store_true",
                   help="the Gluon scan kernels (gluon_kernels.py) instead of the Triton ones, x_proj's rows in fp32")
    p.add_argument("--save-every", type=int, default=0, help="steps between saved states (default: by length)")
    p.add_argument("--rows-fp32", action="store_true", help="x_proj's rows in fp32 (as --gluon has them)")
    p.add_argument("--unroll", type=int, default=1,
                   help="steps a pass of the staged inference kernel's loop (onepass_unroll, gluon_staged_unroll)")
    args = p.parse_args()
    fwd, bwd = _Capture(), _Capture()
    ts.scan_fwd_kernel, ts.scan_bwd_kernel = fwd, bwd
    cfg = dict(ts._config(), params_t=args.params_t, bwd_params_t=args.params_t, min_programs=0,
               gluon=int(args.gluon), gluon_bwd=int(args.gluon), save_every=args.save_every,
               gluon_bwd_staged=0, gluon_train_staged=0,  # (the staged kernels: reported apart, below)
               onepass_unroll=args.unroll, gluon_staged_unroll=args.unroll)
    if args.gluon:
        from vision_mamba.ops.selective_scan import gluon_kernels as gk

        kernels = {"forward": gk.scan_fwd_gluon_kernel, "backward": gk.scan_bwd_gluon_kernel}
        gk.AVAILABLE = True
        gk.scan_fwd_gluon_kernel, gk.scan_bwd_gluon_kernel = fwd, bwd
        ts._gluon_device = lambda device: True  # noqa: E731  (the launch code on CPU tensors, as on CUDA)
    else:
        kernels = {"forward": tk.scan_fwd_kernel, "backward": tk.scan_bwd_kernel}
    if args.block_e:
        cfg["block_e"] = args.block_e
    if args.bwd_block_e:
        cfg["bwd_block_e"] = args.bwd_block_e
    for key in ("delta", "prefetch"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    B, L, E, N, R = 2, 65, 384, 16, 12  # Vim-Ti's widths
    bf = torch.bfloat16
    xs, z = torch.randn(2, B, L, E, dtype=bf), torch.randn(B, L, E, dtype=bf)
    dbl = torch.randn(2, B * L, R + 2 * N, dtype=torch.float32 if args.gluon or args.rows_fp32 else bf)
    w, bias = [torch.randn(E, R) for _ in range(2)], [torch.randn(E) for _ in range(2)]
    alog, dd = [torch.randn(E, N) for _ in range(2)], [torch.randn(E) for _ in range(2)]
    if cfg["delta"] == "fold":
        scan_args = ts._bi_args(xs, z, dbl[0], dbl[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0],
                                dd[1], R, N)
    else:
        rows = torch.randn(2, B * L, ts._bc_width(R, N), dtype=bf)
        delta = torch.randn(2, B * L, E, dtype=bf)
        scan_args = ts._bi_delta_args(xs, z, rows, delta, bias[0], bias[1], alog[0], alog[1], dd[0], dd[1])
    ts.scan_forward(scan_args, bf, save_states=not args.no_save, config=cfg)
    ts.scan_backward(scan_args, torch.zeros(B, 2, triton.cdiv(L, ts._save_every(cfg, L)), N, E),
                     torch.randn(B, L, 2, E, dtype=bf), config=cfg)
    # the depthwise conv + silu of both directions, forward and backward (launches captured the same way)
    cf, cw_, cb, cbi, cbw = _Capture(), _Capture(), _Capture(), _Capture(), _Capture()
    ts.conv_fwd_kernel, ts.conv_fwd_walk_kernel = cf, cw_
    ts.conv_bwd_dir_kernel, ts.conv_bwd_input_kernel, ts.conv_bwd_walk_kernel = cb, cbi, cbw
    x = torch.randn(B, L, E, dtype=bf)
    cw = [torch.randn(E, 1, 4, dtype=bf) for _ in range(2)]
    cbias = [torch.randn(E, dtype=bf) for _ in range(2)]
    for walk in (0, 1):  # the tile kernel and the walk down the rows, into the interleaved storage inference uses
        ts.conv_forward(x, cw[0], cw[1], cbias[0], cbias[1], dict(cfg, conv_walk=walk), interleave=True)
    for walk in (0, 1):  # two passes over tiles, and one walk down the rows
        ts.conv_backward(x, cw[0], cw[1], cbias[0], cbias[1], torch.randn(2, B, L, E, dtype=bf),
                         dict(cfg, conv_bwd_walk=walk))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"Triton {triton.__version__}, sm_90, delta {cfg['delta']}, prefetch {cfg['prefetch']}, "
          f"channels per program {cfg['block_e'] or 64} / {cfg['bwd_block_e'] or 32}, PARAMS_T {args.params_t} "
          f"(-1 = default: forward {ts._params_t(-1, False)}, backward {ts._params_t(-1, True)})")
    inference = []
    if args.gluon:  # the inference forward's one-pass kernels, with and without staging, on the model's padded rows
        rows48 = torch.randn(2, B * L, ts._rank_cols(R, True) + 2 * N)
        inf_args = ts._bi_args(xs, z, rows48[0], rows48[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0],
                               dd[1], R, N)
        for name, stage in (("forward, one pass (inference)", 0), ("forward, one pass, staged (inference)", 8)):
            kernel = gk.scan_fwd_staged_gluon_kernel if stage else gk.scan_fwd_onepass_gluon_kernel
            cap = _Capture()
            setattr(gk, kernel.__name__, cap)
            ts.scan_forward(inf_args, bf, save_states=False, config=dict(cfg, gluon=-1, gluon_staged=stage))
            setattr(gk, kernel.__name__, kernel)
            inference.append((name, kernel, cap.calls[0]))
        # the training forward of one pass, staged (saving states for the Gluon backward)
        cap = _Capture()
        staged_fwd = gk.scan_fwd_staged_gluon_kernel
        gk.scan_fwd_staged_gluon_kernel = cap
        ts.scan_forward(inf_args, bf, save_states=True, config=dict(cfg, gluon_train_staged=4))
        gk.scan_fwd_staged_gluon_kernel = staged_fwd
        if cap.calls:
            inference.append(("forward, one pass, staged (training)", staged_fwd, cap.calls[0]))
        # the backward with each block's inputs staged through shared memory (the same padded rows)
        cap = _Capture()
        staged_bwd = gk.scan_bwd_staged_gluon_kernel
        gk.scan_bwd_staged_gluon_kernel = cap
        n_save = triton.cdiv(L, ts._save_every(cfg, L))
        ts.scan_backward(inf_args, torch.zeros(B, 2, n_save, E, N).transpose(-1, -2),
                         torch.randn(B, L, 2, E, dtype=bf), config=dict(cfg, gluon_bwd_staged=1))
        gk.scan_bwd_staged_gluon_kernel = staged_bwd
        if cap.calls:
            inference.append(("backward, staged", staged_bwd, cap.calls[0]))
        # inference that the plan would chunk, in one pass with a channel's states over TPC lanes (onepass_tpc;
        # the plan is made to chunk here by asking for more programs than the shape has), unstaged, staged, and
        # staged with the lanes sharing the channel's work of a step (onepass_share: 8 or 16 steps a pass; 16 also
        # at a stage of 32 steps)
        for tpc, cpt, stage, share in ((2, 1, 0, 0), (4, 1, 0, 0), (4, 2, 0, 0), (8, 1, 0, 0), (2, 1, 4, 0),
                                       (4, 1, 4, 0), (4, 2, 4, 0), (2, 1, 4, 8), (4, 1, 4, 8), (2, 1, 4, 16),
                                       (2, 1, 32, 16)):
            kernel = gk.scan_fwd_staged_gluon_kernel if stage else gk.scan_fwd_onepass_gluon_kernel
            kernel = gk.scan_fwd_lanes_gluon_kernel if share else kernel
            cap = _Capture()
            setattr(gk, kernel.__name__, cap)
            ts.scan_forward(inf_args, bf, save_states=False,
                            config=dict(cfg, gluon=-1, min_programs=1 << 20, onepass_tpc=tpc, onepass_cpt=cpt,
                                        gluon_staged=stage, onepass_share=share))
            setattr(gk, kernel.__name__, kernel)
            staged = f", staged {cap.calls[0][1]['STAGE']}" if stage else ""
            staged += f", shared over {cap.calls[0][1]['U']} steps" if share else ""
            warps = cap.calls[0][1].get("num_warps", 1)
            staged += f", programs of {warps} warps" if warps > 1 else ""  # (lanes_warps: 4 for 4 lanes)
            inference.append((f"forward, one pass, {tpc} lanes a channel, {cpt} a thread{staged} (inference)", kernel,
                              cap.calls[0]))
        # inference that stays chunked, in chunks of the lanes kernel (lanes_chunk_warps; 132 SMs): the first pass
        # (each chunk's end state, no output) and the second (from each chunk's start state, writing y)
        cap = _Capture()
        lanes_kernel, sm_count, carry = gk.scan_fwd_lanes_gluon_kernel, ts._sm_count, ts.chunk_carry_kernel
        gk.scan_fwd_lanes_gluon_kernel, ts._sm_count, ts.chunk_carry_kernel = cap, (lambda device: 132), _Capture()
        ts.scan_forward(inf_args, bf, save_states=False,
                        config=dict(cfg, gluon=-1, min_programs=1 << 20, onepass_tpc=0, lanes_chunk_warps=24))
        gk.scan_fwd_lanes_gluon_kernel, ts._sm_count, ts.chunk_carry_kernel = lanes_kernel, sm_count, carry
        for call, which in zip(cap.calls, ("end states", "output")):
            inference.append((f"forward, chunks of the lanes kernel, {which} (inference)", lanes_kernel, call))
    with tempfile.TemporaryDirectory() as tmp:
        for name, kernel, call in inference:
            print(report(name, kernel, call, Path(tmp), args.out, args.sass))
        print(report("forward", kernels["forward"], fwd.calls[0], Path(tmp), args.out, args.sass))
        print(report("backward", kernels["backward"], bwd.calls[0], Path(tmp), args.out, args.sass))
        print(report("conv forward (conv_fwd_kernel)", tk.conv_fwd_kernel, cf.calls[0], Path(tmp), args.out, args.sass))
        print(report("conv forward, a walk down the rows (conv_fwd_walk_kernel)", tk.conv_fwd_walk_kernel,
                     cw_.calls[0], Path(tmp), args.out, args.sass))
        print(report("conv backward (g_pre, weights; a direction a program)", tk.conv_bwd_dir_kernel, cb.calls[0],
                     Path(tmp), args.out, args.sass))
        print(report("conv backward (input)", tk.conv_bwd_input_kernel, cbi.calls[0], Path(tmp), args.out, args.sass))
        print(report("conv backward, one walk down the rows (conv_bwd_walk_kernel)", tk.conv_bwd_walk_kernel,
                     cbw.calls[0], Path(tmp), args.out, args.sass))
    return 0


if __name__ == "__main__":
    sys.exit(main())
