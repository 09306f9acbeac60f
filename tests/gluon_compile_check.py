"""Compiles the Gluon inference forward (ops/selective_scan/gluon_kernels.py) for sm_90 without a GPU, with the
specialisation a launch at Vim-Ti's widths gets (pointers 16-byte aligned, integers divisible by 16 marked so),
and checks the generated code has no layout conversions (no shuffles, no barriers). Run by
tests/test_triton.py::test_gluon_forward_compiles_for_sm90 in a process without TRITON_INTERPRET."""
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

from vision_mamba.ops.selective_scan.gluon_kernels import scan_fwd_gluon_kernel as kernel


def main() -> int:
    B, L, E, N, R = 2, 197, 384, 16, 12
    pointers = {"x_ptr": "*bf16", "z_ptr": "*bf16", "rows_ptr": "*fp32", "y_ptr": "*bf16"}
    ints = dict(dir_off=16 * 977, L=L, E=E, stride_x_d=B * L * E, stride_x_b=L * E, stride_x_l=E,
                stride_z_b=L * 2 * E, stride_z_l=2 * E, stride_y_b=L * E, stride_y_l=E, stride_y_d=B * L * E,
                stride_a_e=N, stride_a_n=1, stride_w_e=R, stride_w_r=1)
    constexprs = dict(stride_row=R + 2 * N, R=R, N=N, BLOCK_E=64, BLOCK_R=16, B_COL=R, C_COL=R + N)
    sig, attrs = {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ints:
            sig[name] = "i32"
            if not param.do_not_specialize and ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # pointers: the parameters (w_*, bias_*, a_*, dd_*) are fp32
            sig[name] = pointers.get(name, "*fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(GluonASTSource(kernel, sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1, enable_fp_fusion=True))
    ptx = compiled.asm["ptx"]
    assert ".entry" in ptx and "ex2.approx" in ptx, "no kernel, or no exp2 in it"
    assert "shfl.sync" not in ptx and "bar.sync" not in ptx, "layout conversions in the generated code"
    print(f"Triton {triton.__version__}: compiled for sm_90, no layout conversions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
