"""Profile the Triton scan kernels at Vim-Ti 224 px / batch 128 (bf16) under Nsight Compute, and print what the
compiler made of them (registers, spills, shared memory, warps).

    PYTHONPATH=src ncu --clock-control none --profile-from-start off --kernel-name regex:scan_ \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \\
        python benchmarks/profile_scan.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from scan_kernels import E, N, R, make_inputs  # noqa: E402

from vision_mamba.ops.selective_scan import triton_kernels as tk  # noqa: E402
from vision_mamba.ops.selective_scan import triton_scan as ts  # noqa: E402


def compiled_info():
    for fn in (tk.scan_fwd_kernel, tk.scan_bwd_kernel, tk.conv_fwd_kernel):
        for cache in fn.device_caches.values():
            for key, kernel in cache[0].items():
                kernel._init_handles()
                print(f"{fn.__name__}: regs {kernel.n_regs} spills {kernel.n_spills} shared "
                      f"{kernel.metadata.shared} warps {kernel.metadata.num_warps}")


def main():
    batch, length = 128, 197
    xs, z, dbl, w, bias, alog, dd = make_inputs(batch, length, torch.bfloat16, torch.device("cuda"))
    args = ts._bi_args(xs, z, dbl[0], dbl[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0], dd[1], R, N)
    gy = torch.randn(batch, length, 2, E, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):  # compile and warm up
        _, hsave = ts.scan_forward(args, torch.bfloat16, save_states=True)
        ts.scan_backward(args, hsave, gy)
    torch.cuda.synchronize()
    compiled_info()
    torch.cuda.cudart().cudaProfilerStart()
    ts.scan_forward(args, torch.bfloat16, save_states=False)
    ts.scan_backward(args, hsave, gy)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
