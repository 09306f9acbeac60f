"""What the compiler makes of the scan kernels, without a GPU: registers, spills, and the instructions that betray
layout conversions in the generated code (shuffles, shared-memory traffic, barriers), for sm_90 (H100 / H200).

    PYTHONPATH=src python benchmarks/kernel_layouts.py                 # both kernels, the launch defaults
    PYTHONPATH=src python benchmarks/kernel_layouts.py --params-t 0    # force one way of loading A / W_dt
    PYTHONPATH=/path/to/other/triton:src python benchmarks/kernel_layouts.py   # another Triton version

Each kernel's launch is captured from the real launch code (on small CPU tensors), compiled with
``triton.compile`` for a CUDA 9.0 target, and assembled with Triton's bundled ptxas. A conversion-free time loop
shows as: no ``ld.shared``, a handful of barriers outside the loop, and (backward) exactly the 160 shuffles of
the two channel reductions. This is how the choice of ``PARAMS_T`` per Triton version (``triton_scan.py``) was
made; run it again when Triton changes. ``--out`` keeps the TTGIR and PTX for reading.
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
_OPTIONS = ("num_warps", "maxnreg", "enable_fp_fusion")


class _Capture:
    """Stands in for a kernel object: records the arguments of ``kernel[grid](*args, **kwargs)``."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _signature(kernel, args, kwargs):
    sig, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        value = args[i] if i < len(args) else kwargs[name]
        if param.is_constexpr:
            sig[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            sig[name] = "*" + _DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # what the launcher specialises for allocator pointers
        elif isinstance(value, bool):
            sig[name] = "i1"
        elif isinstance(value, int):
            sig[name] = "i32"
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


def report(name, kernel, call, work: Path, out: Path = None) -> str:
    args, kwargs = call
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    sig, constexprs, attrs = _signature(kernel, args, kwargs)
    compiled = triton.compile(ASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=options)
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    if out is not None:
        (out / f"{name}.ptx").write_text(ptx)
        (out / f"{name}.ttgir").write_text(ttgir)
    layouts = len(set(re.findall(r"^#blocked\d* = ", ttgir, flags=re.M)))
    return (f"{name:10s} {_ptxas(ptx, work)} | shfl {ptx.count('shfl.sync')}, ld.shared {ptx.count('ld.shared')}, "
            f"st.shared {ptx.count('st.shared')}, bar.sync {ptx.count('bar.sync')}, blocked layouts {layouts}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params-t", type=int, default=-1, help="-1: the launch default for this Triton; 0 or 1")
    p.add_argument("--block-e", type=int, default=None, help="forward channels per program (default: the launch's)")
    p.add_argument("--bwd-block-e", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="keep the TTGIR / PTX here")
    args = p.parse_args()
    fwd, bwd = _Capture(), _Capture()
    ts.scan_fwd_kernel, ts.scan_bwd_kernel = fwd, bwd
    cfg = dict(ts._config(), params_t=args.params_t, bwd_params_t=args.params_t, min_programs=0)
    if args.block_e:
        cfg["block_e"] = args.block_e
    if args.bwd_block_e:
        cfg["bwd_block_e"] = args.bwd_block_e
    B, L, E, N, R = 2, 65, 384, 16, 12  # Vim-Ti's widths
    bf = torch.bfloat16
    xs, z = torch.randn(2, B, L, E, dtype=bf), torch.randn(B, L, E, dtype=bf)
    dbl = torch.randn(2, B * L, R + 2 * N, dtype=bf)
    w, bias = [torch.randn(E, R) for _ in range(2)], [torch.randn(E) for _ in range(2)]
    alog, dd = [torch.randn(E, N) for _ in range(2)], [torch.randn(E) for _ in range(2)]
    scan_args = ts._bi_args(xs, z, dbl[0], dbl[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0], dd[1],
                            R, N)
    ts.scan_forward(scan_args, bf, save_states=True, config=cfg)
    ts.scan_backward(scan_args, torch.zeros(B, 2, triton.cdiv(L, ts.SAVE_EVERY), N, E),
                     torch.randn(B, L, 2, E, dtype=bf), config=cfg)
    # the depthwise conv + silu of both directions, forward and backward (launches captured the same way)
    cf, cb, cbi = _Capture(), _Capture(), _Capture()
    ts.conv_fwd_kernel, ts.conv_bwd_kernel, ts.conv_bwd_input_kernel = cf, cb, cbi
    x = torch.randn(B, L, E, dtype=bf, requires_grad=True)
    cw = [torch.randn(E, 1, 4, dtype=bf, requires_grad=True) for _ in range(2)]
    cbias = [torch.randn(E, dtype=bf, requires_grad=True) for _ in range(2)]
    ts._TritonBiConv.apply(x, cw[0], cw[1], cbias[0], cbias[1]).float().sum().backward()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"Triton {triton.__version__}, sm_90, PARAMS_T {args.params_t} "
          f"(-1 = default: forward {ts._params_t(-1, False)}, backward {ts._params_t(-1, True)})")
    with tempfile.TemporaryDirectory() as tmp:
        print(report("forward", tk.scan_fwd_kernel, fwd.calls[0], Path(tmp), args.out))
        print(report("backward", tk.scan_bwd_kernel, bwd.calls[0], Path(tmp), args.out))
        print(report("conv forward", tk.conv_fwd_kernel, cf.calls[0], Path(tmp), args.out))
        print(report("conv backward (g_pre, weights)", tk.conv_bwd_kernel, cb.calls[0], Path(tmp), args.out))
        print(report("conv backward (input)", tk.conv_bwd_input_kernel, cbi.calls[0], Path(tmp), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
