"""Inference's fused out_proj -> Add -> RMSNorm (one Triton kernel; under TRITON_INTERPRET=1 without a GPU) against
the product rounded as out_proj rounds it and the norm's reference after it: the new residual and the normalised
rows, with and without an incoming residual, partial row tiles, widths that are and are not powers of two, tile
settings; where the fused path applies; and its place in the model (the features of the blocks run one by one).
Outputs are poisoned with NaN before each run."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are first imported

pytest.importorskip("triton")

import timm  # noqa: E402

from vision_mamba.ops import scan_backend  # noqa: E402
from vision_mamba.ops.rms_norm import add_rms_norm_ref, linear_add_rms_norm  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setenv("VISION_MAMBA_POISON", "1")
    monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR", "1")  # (off by default until a GPU measures it faster)


def _inputs(rows, k, width, dtype, with_residual, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, rows, k, generator=g).to(dtype).to(DEVICE)
    weight = (torch.randn(width, k, generator=g) / k ** 0.5).to(dtype).to(DEVICE)
    residual = (torch.randn(2, rows, width, generator=g) * 3).to(DEVICE) if with_residual else None
    norm_w = (1 + 0.3 * torch.randn(width, generator=g)).to(DEVICE)
    return a, weight, residual, norm_w


def _expected(a, weight, residual, norm_w):
    """The unfused path's numbers: out_proj's output rounded to a's dtype, then the norm's reference (fp32)."""
    hidden = (a.double() @ weight.double().t()).to(a.dtype)
    y, r = add_rms_norm_ref(hidden, residual, norm_w, 1e-5)
    return y, r, hidden


@pytest.mark.parametrize("k,width", [(128, 32), (384, 192), (64, 48)])
@pytest.mark.parametrize("rows", [1, 45])
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "first"])
@pytest.mark.parametrize("dtype,out", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)],
                         ids=["bf16", "fp16-to-fp32"])
@pytest.mark.parametrize("tiles", ["default", "small", "halves"])
def test_fused_matches_product_then_norm(k, width, rows, with_residual, dtype, out, tiles, monkeypatch):
    # 2 x 45 rows: a partial row tile; widths 32, 192 (Vim-Ti's: three chunks of 64 columns) and 48 (three of 16);
    # K in 2, 6 and 1 steps of 64 (or 8, 24 and 4 of 16); "halves": the weight [w', w'] read as w' (K = 64: one
    # half-step short of a whole one, so that case does not apply and runs the whole weight)
    if tiles == "small":
        monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR_BLOCK_M", "16")
        monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR_BLOCK_K", "16")
        monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR_STAGES", "1")
    a, weight, residual, norm_w = _inputs(rows, k, width, dtype, with_residual, seed=k + rows)
    if tiles == "halves":
        weight = torch.cat([weight[:, :k // 2]] * 2, dim=1)
    with torch.no_grad():
        got = linear_add_rms_norm(a, weight, residual, norm_w, 1e-5, out, halves=tiles == "halves",
                                  backend="triton")
    assert got is not None
    y, r = got
    y_ref, r_ref, hidden = _expected(a, weight, residual, norm_w)
    assert y.shape == r.shape == (2, rows, width) and y.dtype == out and r.dtype == torch.float32
    # (out_proj's output may round the other way now and then: one step of its dtype)
    step = hidden.float().abs().max().item() * 2.0 ** -7
    torch.testing.assert_close(r, r_ref, rtol=0, atol=step)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2)


def test_fused_path_where_it_applies(monkeypatch):
    a, weight, residual, norm_w = _inputs(5, 64, 32, torch.bfloat16, True, seed=0)
    bf = torch.bfloat16
    with torch.no_grad():
        assert linear_add_rms_norm(a, weight, residual, norm_w, 1e-5, bf, backend="triton") is not None
        # not on another backend, nor with a weight in another dtype than a, nor a residual not in fp32
        assert linear_add_rms_norm(a, weight, residual, norm_w, 1e-5, bf, backend="reference") is None
        assert linear_add_rms_norm(a, weight.float(), residual, norm_w, 1e-5, bf, backend="triton") is None
        assert linear_add_rms_norm(a, weight, residual.to(bf), norm_w, 1e-5, bf, backend="triton") is None
        monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR", "0")
        assert linear_add_rms_norm(a, weight, residual, norm_w, 1e-5, bf, backend="triton") is None
        monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR", "1")
        monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR_MAX_WIDTH", "16")  # (a width over the limit)
        assert linear_add_rms_norm(a, weight, residual, norm_w, 1e-5, bf, backend="triton") is None
    # nor where gradients are on
    monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR_MAX_WIDTH", "384")
    assert linear_add_rms_norm(a, weight, residual, norm_w, 1e-5, bf, backend="triton") is None


def _model():
    torch.manual_seed(3)
    model = timm.create_model("test_vim").to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _count_fused(monkeypatch):
    from vision_mamba.ops import norm_linear_triton as nl

    calls = []
    real = nl.linear_add_rms_norm_triton

    def counted(*args, **kwargs):
        calls.append(real(*args, **kwargs) is not None)
        return None if not calls[-1] else real(*args, **kwargs)

    monkeypatch.setattr(nl, "linear_add_rms_norm_triton", counted)
    return calls


def _features(model, x, backend="triton"):
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16), scan_backend(backend):
        return model.forward_features(x)


def test_model_inference_fuses_out_proj_and_norm(monkeypatch):
    # bf16 autocast inference on the Triton backend: every block's out_proj with the next norm (the last with the
    # final norm) in the fused kernel; against the blocks run one by one on the same prepared weights (a no-op hook
    # keeps them so), the fused path's loop with the kernel off, and the reference backend
    model = _model()
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    calls = _count_fused(monkeypatch)
    fused = _features(model, x)
    assert calls == [True] * len(model.layers)
    monkeypatch.setenv("VISION_MAMBA_TRITON_NORM_LINEAR", "0")
    kernel_off = _features(model, x)
    assert calls[len(model.layers):] == [False] * len(model.layers)
    handle = model.layers[0].register_forward_pre_hook(lambda m, args: None)
    blocks = _features(model, x)
    handle.remove()
    assert len(calls) == 2 * len(model.layers)
    ref = _features(model, x, "reference")
    err = lambda a, b: ((a.double() - b.double()).norm() / b.double().norm()).item()  # noqa: E731
    assert fused.dtype == blocks.dtype == torch.float32 and torch.isfinite(fused).all()
    assert torch.equal(kernel_off, blocks)  # (the same kernels, called from the fused path's loop)
    assert err(fused, blocks) < 1e-2 and err(fused, ref) < 3e-2


def test_model_hooks_keep_the_blocks(monkeypatch):
    # a forward hook on a block: the blocks run one by one (the hook sees each call), nothing fused
    model = _model()
    x = torch.randn(1, 3, 64, 64, device=DEVICE)
    calls = _count_fused(monkeypatch)
    seen = []
    handle = model.layers[1].register_forward_hook(lambda m, args, out: seen.append(out[0].shape))
    _features(model, x)
    handle.remove()
    assert calls == [] and len(seen) == 1
    _features(model, x)
    assert calls == [True] * len(model.layers)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("k,width,rows", [(768, 192, 25216), (1536, 384, 6085), (768, 192, 1)])
def test_fused_at_vim_shapes(k, width, rows):
    # Vim-Ti at 224 px / batch 128 (2 x 12,608 rows), Vim-S at 1248 px / batch 2, one row (x 2)
    a, weight, residual, norm_w = _inputs(max(1, rows // 2), k, width, torch.bfloat16, True, seed=width)
    with torch.no_grad():
        y, r = linear_add_rms_norm(a, weight, residual, norm_w, 1e-5, torch.bfloat16, backend="triton")
        y_ref, r_ref, hidden = _expected(a, weight, residual, norm_w)
    torch.testing.assert_close(r, r_ref, rtol=0, atol=hidden.float().abs().max().item() * 2.0 ** -7)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=1e-2, atol=1e-2)
