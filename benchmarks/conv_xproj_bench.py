"""The mixer's conv and x_proj on the GPU: the conv kernel then cuBLAS's batched product (what inference runs by
default) against the two in one kernel (``conv_xproj_fwd_kernel``, ``VISION_MAMBA_TRITON_CONV_XPROJ=1``), at
Vim-Ti's (and Vim-S's) inference shapes, for several tile configurations; each time the median of CUDA-graph
replays (``triton.testing.do_bench_cudagraph``), with the bytes each way must move and their floor at the copy
bandwidth measured in the same run.

    PYTHONPATH=src python benchmarks/conv_xproj_bench.py --out conv_xproj.json
    PYTHONPATH=src python benchmarks/conv_xproj_bench.py --shapes 224:128 --configs '[{"conv_xproj_warps": 4}]'
"""
from __future__ import annotations

import argparse
import json

import torch
from triton.testing import do_bench_cudagraph

from vision_mamba.ops.selective_scan import triton_scan as ts

DEFAULT_CONFIGS = [
    {},
    {"conv_xproj_block_l": 16, "conv_xproj_warps": 4},
    {"conv_xproj_block_l": 64},
    {"conv_xproj_stages": 1},
    {"conv_xproj_block_l": 16, "conv_xproj_warps": 8, "conv_xproj_stages": 1},
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="224:128,512:32,1248:16", help="res:batch list (Vim-Ti: 384 channels)")
    p.add_argument("--channels", type=int, default=384, help="E (Vim-S: 768)")
    p.add_argument("--width", type=int, default=48, help="x_proj's padded rows (Vim-Ti 48, Vim-S 64)")
    p.add_argument("--configs", type=json.loads, default=None, help="JSON list of fused-kernel settings")
    p.add_argument("--out", default=None, help="write the records as JSON here")
    args = p.parse_args()
    dev = torch.device("cuda")
    E, W = args.channels, args.width
    copy = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    bandwidth = 2 * copy.numel() / (do_bench_cudagraph(lambda: copy.clone(), return_mode="median") * 1e-3)
    del copy
    print(f"{torch.cuda.get_device_name()}, copy {bandwidth / 1e12:.2f} TB/s")
    records = []
    for spec in args.shapes.split(","):
        res, batch = (int(v) for v in spec.split(":"))
        L = (res // 16) ** 2 + 1
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(batch, L, 2 * E, device=dev, generator=g).to(torch.bfloat16)[..., :E]
        w = [torch.randn(E, 1, 4, device=dev, generator=g) * 0.5 for _ in range(2)]
        bias = [torch.randn(E, device=dev, generator=g) for _ in range(2)]
        weights = (torch.randn(2, W, E, device=dev, generator=g) * 0.1).to(torch.bfloat16)
        base = ts._config()
        # x read once (2 bytes an element), both directions' conv output written (4), the rows written in fp32
        nbytes = batch * L * (E * 2 + 2 * E * 2 + 2 * W * 4)
        floor_ms = nbytes / bandwidth * 1e3

        def unfused():
            xs = ts.conv_forward(x, w[0], w[1], bias[0], bias[1], base)
            return ts._x_proj_pair(xs, weights, True)

        runs = [("conv kernel + batched matmul", {}, unfused)]
        for cfg_part in args.configs if args.configs is not None else DEFAULT_CONFIGS:
            cfg = dict(base, **cfg_part)
            runs.append(("fused", cfg_part, lambda cfg=cfg: ts.conv_xproj_forward(
                x, w[0], w[1], bias[0], bias[1], weights, True, cfg)))
        want = unfused()
        for name, cfg_part, fn in runs:
            try:
                got = fn()
                torch.cuda.synchronize()
                rows = got[1] if isinstance(got, tuple) else got
                err = ((rows - want).norm() / want.norm()).item()
                ms = do_bench_cudagraph(fn, rep=100, return_mode="median")
            except Exception as e:  # a configuration the compiler rejects is reported, not fatal
                print(f"{res}/{batch} {name} {cfg_part}: failed: {str(e)[:200]}")
                continue
            records.append(dict(res=res, batch=batch, tokens=L, E=E, W=W, kind=name, config=cfg_part, ms=ms,
                                floor_ms=floor_ms, rel_err_rows=err))
            print(f"{res:5d}/{batch:<4d} {name:30s} {str(cfg_part):70s} {ms:7.4f} ms  floor {floor_ms:6.4f} ms"
                  f"  rows rel err {err:.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), bandwidth=bandwidth, records=records), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
