"""Profile the scan kernels Vim-Ti runs at 224 px / batch 128 (bf16 activations, x_proj's rows in fp32 as the
model makes them for the Gluon kernels) under Nsight Compute: the one-pass inference forward, the training forward
(saving states) and the backward. Also prints what the compiler made of each kernel (registers, spills, shared
memory, warps).

    PYTHONPATH=src ncu --clock-control none --profile-from-start off --kernel-name regex:scan_ --set full \\
        -o scan python benchmarks/profile_scan.py
    ncu -i scan.ncu-rep --page details          # stall reasons, pipe utilisation, occupancy
    ncu -i scan.ncu-rep --page source --csv --print-source sass   # stall samples per SASS instruction

With --conv, the depthwise conv's kernels instead (forward, and the backward's two passes; --kernel-name regex:conv_).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scan_kernels import E, N, R, make_inputs  # noqa: E402

from vision_mamba.ops.selective_scan import gluon_kernels as gk  # noqa: E402
from vision_mamba.ops.selective_scan import triton_kernels as tk  # noqa: E402
from vision_mamba.ops.selective_scan import triton_scan as ts  # noqa: E402


def compiled_info():
    fns = [tk.scan_fwd_kernel, tk.scan_bwd_kernel, tk.conv_fwd_kernel]
    if gk.AVAILABLE:
        fns += [getattr(gk, name) for name in sorted(dir(gk)) if name.startswith("scan_") and name.endswith("_kernel")]
    for fn in fns:
        for cache in getattr(fn, "device_caches", {}).values():
            for kernel in cache[0].values():
                kernel._init_handles()
                print(f"{fn.__name__}: regs {kernel.n_regs} spills {kernel.n_spills} shared "
                      f"{kernel.metadata.shared} warps {kernel.metadata.num_warps}")


def profile_conv(batch, length):
    x = torch.randn(batch, length, 2 * E, device="cuda", dtype=torch.bfloat16)[..., :E]
    w = [torch.randn(E, 1, 4, device="cuda") * 0.5 for _ in range(2)]
    bias = [torch.randn(E, device="cuda") for _ in range(2)]
    gout = torch.randn(2, batch, length, E, device="cuda", dtype=torch.bfloat16)
    cfg = ts._config()
    for _ in range(3):  # compile and warm up
        ts.conv_forward(x, w[0], w[1], bias[0], bias[1], cfg)
        ts.conv_backward(x, w[0], w[1], bias[0], bias[1], gout, cfg)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    ts.conv_forward(x, w[0], w[1], bias[0], bias[1], cfg)
    ts.conv_backward(x, w[0], w[1], bias[0], bias[1], gout, cfg)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=197)
    parser.add_argument("--rows-bf16", action="store_true", help="x_proj's rows in bf16 (the Triton kernels' form)")
    parser.add_argument("--conv", action="store_true",
                        help="profile the conv's forward and backward instead (as the mixer calls them: x a half of "
                             "in_proj's output; profile with --kernel-name regex:conv_)")
    parser.add_argument("--infer-configs", type=json.loads, default=None,
                        help='only inference forwards, one under each of these launch settings over the defaults '
                             '(a JSON list, e.g. \'[{"onepass_tpc": 2}, {"onepass_tpc": 2, "onepass_unroll": 4}]\')')
    args = parser.parse_args()
    if args.conv:
        return profile_conv(args.batch, args.length)
    batch, length = args.batch, args.length
    rows = torch.bfloat16 if args.rows_bf16 else torch.float32
    xs, z, dbl, w, bias, alog, dd = make_inputs(batch, length, torch.bfloat16, torch.device("cuda"), rows_dtype=rows)
    scan_args = ts._bi_args(xs, z, dbl[0], dbl[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0], dd[1],
                            R, N)
    if args.infer_configs is not None:
        cfgs = [dict(ts._config(), **c) for c in args.infer_configs]
        for cfg in cfgs + cfgs:  # compile and warm up
            ts.scan_forward(scan_args, torch.bfloat16, save_states=False, config=cfg)
        torch.cuda.synchronize()
        compiled_info()
        torch.cuda.cudart().cudaProfilerStart()
        for cfg in cfgs:
            ts.scan_forward(scan_args, torch.bfloat16, save_states=False, config=cfg)
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        return None
    gy = torch.randn(batch, length, 2, E, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):  # compile and warm up
        ts.scan_forward(scan_args, torch.bfloat16, save_states=False)
        _, hsave = ts.scan_forward(scan_args, torch.bfloat16, save_states=True)
        ts.scan_backward(scan_args, hsave, gy)
    torch.cuda.synchronize()
    compiled_info()
    torch.cuda.cudart().cudaProfilerStart()
    ts.scan_forward(scan_args, torch.bfloat16, save_states=False)  # inference: the one-pass kernel
    ts.scan_forward(scan_args, torch.bfloat16, save_states=True)  # training: the general kernel, saving states
    ts.scan_backward(scan_args, hsave, gy)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
