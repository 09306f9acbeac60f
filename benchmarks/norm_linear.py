"""Inference's out_proj -> Add -> RMSNorm: the fused kernel (``ops/norm_linear_triton.py``) against the two it
replaces (out_proj through cuBLAS, then the Triton norm kernel), at Vim's shapes, on a GPU.

    PYTHONPATH=src python benchmarks/norm_linear.py [--configs JSON] [--shapes vim_tiny:224:128,...] [--out F.json]

Each configuration (a JSON list of dicts of the launch settings, ``norm_linear_block_m`` and the like, over the
defaults of ``triton_scan._config()``) is timed with ``triton.testing.do_bench`` (L2 flushed before each run,
median), after a check of its output against the unfused pair. Bytes are those the fused kernel must move:
out_proj's input (bf16, 2E wide) and the residual (fp32) read, the new residual (fp32) and the normalised rows
(bf16) written. out_proj's weight is [W, W] / 2, as the model's (``halves`` reads one half)."""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

WIDTHS = {"vim_tiny": 192, "vim_small": 384}
SHAPES = "vim_tiny:224:128,vim_tiny:1248:16,vim_tiny:1248:1,vim_small:224:128,vim_small:1248:16"
CONFIGS = json.dumps([{}, {"norm_linear_halves": 1}, {"norm_linear_block_m": 128},
                      {"norm_linear_block_m": 128, "norm_linear_halves": 1}, {"norm_linear_warps": 4},
                      {"norm_linear_stages": 4}, {"norm_linear_block_m": 128, "norm_linear_stages": 2},
                      {"norm_linear_block_k": 32, "norm_linear_stages": 4}])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=SHAPES, help="model:resolution:batch list")
    p.add_argument("--configs", default=CONFIGS, help="JSON list of launch settings for the fused kernel")
    p.add_argument("--out", default=None, help="write the records as JSON here")
    args = p.parse_args()
    import triton.testing

    from vision_mamba.ops.norm_linear_triton import linear_add_rms_norm_triton
    from vision_mamba.ops.rms_norm_triton import add_rms_norm_triton
    from vision_mamba.ops.selective_scan.triton_scan import _config

    dev = torch.device("cuda")
    records = []
    print(f"{torch.cuda.get_device_name()}")
    for shape in args.shapes.split(","):
        model, res, batch = shape.split(":")
        D = WIDTHS[model]
        M = int(batch) * ((int(res) // 16) ** 2 + 1)
        g = torch.Generator(device=dev).manual_seed(0)
        a = torch.randn(M, 4 * D, device=dev, generator=g).to(torch.bfloat16)
        r = torch.randn(M, D, device=dev, generator=g)
        nw = 1 + 0.1 * torch.randn(D, device=dev, generator=g)
        half = (torch.randn(D, 2 * D, device=dev, generator=g) / (2 * D) ** 0.5).to(torch.bfloat16)
        w = torch.cat([half, half], dim=1)
        nbytes = M * 4 * D * 2 + M * D * (4 + 4 + 2)

        def unfused():
            return add_rms_norm_triton(F.linear(a, w), r, nw, 1e-5, True, torch.bfloat16)

        with torch.no_grad():
            ref, ref_r = unfused()
            ms = triton.testing.do_bench(unfused, warmup=25, rep=200)
            rec = dict(model=model, res=int(res), batch=int(batch), rows=M, width=D, kind="cuBLAS + norm kernel",
                       ms=ms, gb_s=nbytes / ms / 1e6)
            records.append(rec)
            print(f"{shape:22s} {'unfused':40s} {ms * 1e3:8.1f} us  {rec['gb_s']:7.0f} GB/s (of the fused bytes)")
            for override in json.loads(args.configs):
                cfg = dict(_config(), norm_linear=1, **override)

                def fused():
                    return linear_add_rms_norm_triton(a, w, r, nw, 1e-5, torch.bfloat16, halves=True, config=cfg)

                got = fused()
                if got is None:
                    print(f"{shape:22s} {json.dumps(override)}: does not apply")
                    continue
                err = ((got[0].float() - ref.float()).norm() / ref.float().norm()).item()
                r_diff = (got[1] - ref_r).abs().max().item()
                ms = triton.testing.do_bench(fused, warmup=25, rep=200)
                rec = dict(model=model, res=int(res), batch=int(batch), rows=M, width=D, kind="fused",
                           config=override, ms=ms, gb_s=nbytes / ms / 1e6, rel_err=err, residual_max_diff=r_diff)
                records.append(rec)
                print(f"{shape:22s} {json.dumps(override):40s} {ms * 1e3:8.1f} us  {rec['gb_s']:7.0f} GB/s  "
                      f"rel err {err:.2e}, residual max diff {r_diff:.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), records=records), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
