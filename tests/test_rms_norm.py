"""The fused Add -> RMSNorm (Triton; under TRITON_INTERPRET=1 without a GPU) against the plain PyTorch reference:
outputs and the gradients of hidden, residual and weight (each in its input's dtype), fp32 and bf16, one tile a
program and several, widths that are and are not powers of two,
with and without an incoming residual, with gradients arriving through both outputs."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are first imported

pytest.importorskip("triton")

from vision_mamba.ops.rms_norm import add_rms_norm, add_rms_norm_ref  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _inputs(rows, width, dtype, with_residual, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(2, rows, width, generator=g) * 2).to(dtype).to(DEVICE).requires_grad_()
    residual = (torch.randn(2, rows, width, generator=g)).to(DEVICE).requires_grad_() if with_residual else None
    weight = (1 + 0.3 * torch.randn(width, generator=g)).to(DEVICE).requires_grad_()
    return hidden, residual, weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("width", [20, 192])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "first"])
@pytest.mark.parametrize("rows", [7, 53])
def test_fused_matches_reference(dtype, width, with_residual, rows):
    # (53 x 2 rows: the backward's programs walk several tiles each, summing d weight over them)
    hidden, residual, weight = _inputs(rows, width, dtype, with_residual, seed=width)
    leaves = [t for t in (hidden, residual, weight) if t is not None]
    outs = {}
    for backend in ("torch", "triton"):
        y, r = add_rms_norm(hidden, residual, weight, 1e-5, backend=backend)
        assert r.dtype == torch.float32 and y.dtype == torch.float32
        g = torch.Generator().manual_seed(1)
        gy = torch.randn(y.shape, generator=g).to(DEVICE)
        gr = torch.randn(r.shape, generator=g).to(DEVICE)
        loss = (y.float() * gy).sum() + (r * gr).sum()
        outs[backend] = (y.detach(), r.detach(), torch.autograd.grad(loss, leaves))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    y_ref, r_ref, g_ref = outs["torch"]
    y, r, grads = outs["triton"]
    torch.testing.assert_close(r, r_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    for a, b in zip(grads, g_ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * b.abs().max().item())


def test_fused_output_dtype_follows_autocast():
    hidden, residual, weight = _inputs(5, 24, torch.float32, True, seed=3)
    device_type = DEVICE.type
    with torch.autocast(device_type, dtype=torch.bfloat16):
        y, r = add_rms_norm(hidden, residual, weight, 1e-5, backend="triton")
    y_ref, r_ref = add_rms_norm_ref(hidden, residual, weight, 1e-5)
    assert y.dtype == torch.bfloat16 and r.dtype == torch.float32
    # (one bf16 rounding of the same fp32 value; the interpreter may round differently by one unit)
    torch.testing.assert_close(y.float(), y_ref.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(r, r_ref)


def test_residual_not_fp32_keeps_dtype():
    hidden, _, weight = _inputs(4, 16, torch.bfloat16, False, seed=4)
    residual = torch.randn(hidden.shape).to(torch.bfloat16).to(DEVICE).requires_grad_()
    y, r = add_rms_norm(hidden, residual, weight, 1e-5, residual_in_fp32=False, backend="triton")
    y_ref, r_ref = add_rms_norm_ref(hidden, residual, weight, 1e-5, residual_in_fp32=False)
    assert r.dtype == torch.bfloat16
    torch.testing.assert_close(r, r_ref)  # (bf16 tolerance: the interpreter rounds fp32 -> bf16 differently)
    # the normalisation is of the stored bf16 residual, exactly as the reference does it
    y_own, _ = add_rms_norm_ref(r.detach(), None, weight, 1e-5, residual_in_fp32=False)
    torch.testing.assert_close(y, y_own, rtol=1e-5, atol=1e-5)
