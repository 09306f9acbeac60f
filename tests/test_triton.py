"""The Triton backend against the reference: the generic scan, the fused bidirectional mixer (conv + scan with
dt_proj folded in + the combine folded into out_proj), and whole models; outputs and every gradient, fp32 and bf16,
outputs poisoned with NaN before each run.

Without a GPU the kernels run under TRITON_INTERPRET=1 on small shapes; on a GPU the `gpu` tests add the real
shapes (lengths up to 6085, Vim-Ti widths)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are first imported

import timm  # noqa: E402

from vision_mamba.layers import BiMambaMixer  # noqa: E402
from vision_mamba.ops import scan_backend, selective_scan_ref  # noqa: E402
from backend_check import outputs_and_grads  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setenv("VISION_MAMBA_POISON", "1")


def rel_err(a, b):
    """Relative error, with a floor on the denominator: with one time step the gradient of A is exactly zero,
    and rounding differences (fused multiply-adds on the GPU) must not count as infinite relative errors."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-2)).item()


def scan_inputs(batch, length, channels, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(batch, length, channels, generator=g),
          torch.randn(batch, length, channels, generator=g) * 0.5 - 1.0,
          -(torch.rand(channels, 16, generator=g) * 4 + 0.2),
          torch.randn(batch, length, 16, generator=g), torch.randn(batch, length, 16, generator=g),
          torch.randn(channels, generator=g), torch.randn(batch, length, channels, generator=g),
          torch.randn(channels, generator=g) * 0.3]
    low = (0, 1, 3, 4, 6)  # activations in the input dtype; A, D, bias stay fp32 as in the model
    return [(t.to(dtype) if i in low else t).to(DEVICE).requires_grad_() for i, t in enumerate(ts)]


def check_scan(batch, length, channels, dtype, reverse):
    from vision_mamba.ops.selective_scan.triton_scan import selective_scan_triton

    xs = scan_inputs(batch, length, channels, dtype, seed=length + batch)
    y_ref = selective_scan_ref(*xs, reverse=reverse)
    grad = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, xs, grad)
    y = selective_scan_triton(*xs, reverse=reverse)
    g = torch.autograd.grad(y, xs, grad)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, y_ref) < tol
    for name, a, b in zip(NAMES, g, g_ref):
        assert torch.isfinite(a).all(), name
        if not b.any():
            # with one time step dL/dA is exactly zero (h_{-1} = 0): only rounding may remain
            scale = max(v.detach().abs().max().item() for v in g_ref if v.any())
            assert a.abs().max().item() < 1e-5 * scale, name
            continue
        assert rel_err(a, b) < tol, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length,batch", [(1, 1), (63, 2)])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_matches_reference(length, batch, dtype, reverse):
    check_scan(batch, length, 8, dtype, reverse)


def perturbed_mixer(dim, seed=0):
    torch.manual_seed(seed)
    mixer = BiMambaMixer(dim)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mixer.to(DEVICE)


def check_mixer(batch, length, dim, dtype=torch.float32, min_programs="0", monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setenv("VISION_MAMBA_TRITON_MIN_PROGRAMS", min_programs)
    mixer = perturbed_mixer(dim)
    hidden = torch.randn(batch, length, dim, device=DEVICE, dtype=dtype, requires_grad=True)
    params = [hidden] + list(mixer.parameters())
    names = ["hidden"] + [n for n, _ in mixer.named_parameters()]
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    outs, grads = [], []
    for backend in ("reference", "triton"):
        with scan_backend(backend), autocast:
            out = mixer(hidden.float() if dtype == torch.bfloat16 else hidden)
        outs.append(out)
    grad = torch.randn_like(outs[0])
    for out in outs:
        grads.append(torch.autograd.grad(out, params, grad))
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert torch.isfinite(outs[1]).all()
    assert rel_err(outs[1], outs[0]) < tol
    # without autograd the scan writes its output over the conv's (a path of its own)
    with torch.no_grad(), scan_backend("triton"), autocast:
        out = mixer(hidden.float() if dtype == torch.bfloat16 else hidden)
    assert torch.isfinite(out).all()
    assert rel_err(out, outs[0]) < tol
    for name, a, b in zip(names, grads[1], grads[0]):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, name


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_chunk_parallel(reverse, monkeypatch):
    # few programs -> forward and backward split the sequence into chunks (150 steps: 64 + 64 + 22) joined by
    # carries (the backward's adjoint carried from the last chunk to the first)
    monkeypatch.setenv("VISION_MAMBA_TRITON_MIN_PROGRAMS", "64")
    from vision_mamba.ops.selective_scan.triton_scan import _chunking

    assert _chunking(2, 150, 64) == (3, 64)
    check_scan(1, 150, 20, torch.float32, reverse)


@pytest.mark.parametrize("save_every", ["8", "5", "32"])
def test_scan_save_intervals(save_every, monkeypatch):
    # the states saved every 8, 5 or 32 steps instead of 16, chunk-parallel
    # (150 steps: chunks of 56, 50 or 64) so that program ranges, blocks and the last short block all move
    monkeypatch.setenv("VISION_MAMBA_TRITON_MIN_PROGRAMS", "64")
    monkeypatch.setenv("VISION_MAMBA_TRITON_SAVE_EVERY", save_every)
    from vision_mamba.ops.selective_scan.triton_scan import _chunking

    assert _chunking(2, 150, 64, int(save_every)) == (3, {"8": 56, "5": 50, "32": 64}[save_every])
    check_scan(1, 150, 20, torch.float32, True)
    check_mixer(2, 19, 20, monkeypatch=monkeypatch)


def test_launch_choices_by_shape(monkeypatch):
    # by default the states are saved every 8 steps below SHORT_SEQUENCE, every 16 up to LONG_SEQUENCE, every 32
    # from there on; the forward computes a step ahead for 128-channel programs and when it saves states
    from vision_mamba.ops.selective_scan import triton_scan as ts

    for name in ("SAVE_EVERY", "AHEAD", "PREFETCH"):
        monkeypatch.delenv(f"VISION_MAMBA_TRITON_{name}", raising=False)
    cfg = ts._config()
    assert [ts._save_every(cfg, n) for n in (1, 197, 1023, 1024, 4095, 4096, 6085)] == [8, 8, 8, 16, 16, 32, 32]
    assert [ts._forward_ahead(cfg, b, save) for b, save in ((64, False), (128, False), (64, True))] == [
        False, True, True]
    assert not ts._forward_ahead(dict(cfg, prefetch=2), 128, True)
    with pytest.raises(ValueError, match="PREFETCH=1"):
        ts._forward_ahead(dict(cfg, prefetch=2, ahead=1), 64, False)
    monkeypatch.setenv("VISION_MAMBA_TRITON_SAVE_EVERY", "12")  # the variables win
    monkeypatch.setenv("VISION_MAMBA_TRITON_AHEAD", "0")
    assert ts._save_every(ts._config(), 6085) == 12 and not ts._forward_ahead(ts._config(), 128, True)
    # forward and backward agree on the interval the rule picks (here 32 for 150 steps)
    monkeypatch.delenv("VISION_MAMBA_TRITON_SAVE_EVERY")
    monkeypatch.setattr(ts, "SHORT_SEQUENCE", 50)
    monkeypatch.setattr(ts, "LONG_SEQUENCE", 100)
    check_scan(1, 150, 20, torch.float32, False)


@pytest.mark.parametrize("delta,prefetch", [("matmul", "2"), ("fold", "2"), ("matmul", "1"), ("matmul", "4")])
def test_mixer_matches_reference(delta, prefetch, monkeypatch):
    # width 20 -> 40 channels: not a multiple of the channel block; length 19 crosses a state-saving boundary.
    # delta from a batched matmul before the scan or dt_proj folded into it; the forward's prefetch depths
    monkeypatch.setenv("VISION_MAMBA_TRITON_DELTA", delta)
    monkeypatch.setenv("VISION_MAMBA_TRITON_PREFETCH", prefetch)
    check_mixer(2, 19, 20, monkeypatch=monkeypatch)


@pytest.mark.parametrize("ahead", ["0", "1"], ids=["in-step", "ahead"])
@pytest.mark.parametrize("delta", ["matmul", "fold"])
def test_computing_ahead(delta, ahead, monkeypatch):
    # the forward computing delta and the gate of step s + 1 during step s (VISION_MAMBA_TRITON_AHEAD=1), the
    # backward its recomputed delta likewise and the gate's gradient factors of step s - 1 during step s
    # (VISION_MAMBA_TRITON_BWD_AHEAD=1), or each at the top of its own step (=0), whatever the defaults pick: the
    # generic scan both ways in time, the mixer, and the chunk-parallel passes (the forward's first pass and
    # carries, the backward's adjoint pass)
    monkeypatch.setenv("VISION_MAMBA_TRITON_AHEAD", ahead)
    monkeypatch.setenv("VISION_MAMBA_TRITON_BWD_AHEAD", ahead)
    monkeypatch.setenv("VISION_MAMBA_TRITON_DELTA", delta)
    check_scan(2, 63, 20, torch.float32, True)
    check_mixer(2, 19, 20, monkeypatch=monkeypatch)
    check_mixer(1, 150, 16, min_programs="64", monkeypatch=monkeypatch)


def test_mixer_wide_blocks(monkeypatch):
    # 128 channels per forward program and 64 per backward program (what long sequences and large batches get)
    monkeypatch.setenv("VISION_MAMBA_TRITON_BLOCK_E", "128")
    monkeypatch.setenv("VISION_MAMBA_TRITON_BWD_BLOCK_E", "64")
    check_mixer(1, 19, 64, monkeypatch=monkeypatch)


@pytest.mark.parametrize("res,batch,fwd,bwd", [
    (128, 512, 64, 64), (224, 128, 64, 32), (224, 256, 64, 64), (512, 32, 64, 32), (640, 32, 64, 32),
    (738, 32, 64, 32), (1024, 16, 128, 64), (1248, 16, 128, 64), (1248, 1, 64, 32)])
def test_block_choice_by_shape(res, batch, fwd, bwd):
    # channels per program chosen by launch shape (Vim-Ti: E = 384, both directions, 8 programs per SM of 132):
    # the widths the H200 sweep found fastest at these shapes
    from vision_mamba.ops.selective_scan.triton_scan import _backward_block_e, _config, _forward_block_e

    cfg = dict(_config(), block_e=0, bwd_block_e=0)
    L = (res // 16) ** 2 + 1
    assert _forward_block_e(cfg, batch, 384, L, 2, 8 * 132) == fwd
    assert _backward_block_e(cfg, batch, 384, L, 2, 8 * 132) == bwd
    assert _forward_block_e(dict(cfg, block_e=32), batch, 384, L, 2, 8 * 132) == 32  # a set value wins
    assert _forward_block_e(cfg, batch, 40, L, 2, 8 * 132) == 64  # never wider than the channels


def test_xproj_weights_layout():
    from vision_mamba.ops.selective_scan.triton_scan import xproj_weights

    R, N, E = 3, 4, 5
    w_f, w_b = torch.randn(R + 2 * N, E), torch.randn(R + 2 * N, E)
    w = xproj_weights(w_f, w_b, R, N)
    assert w.shape == (2, 16, E)  # 11 rows padded to 16
    for i, src in enumerate((w_f, w_b)):
        assert torch.equal(w[i, :2 * N], src[R:]) and torch.equal(w[i, 2 * N:2 * N + R], src[:R])
        assert not w[i, 2 * N + R:].any()


@pytest.mark.parametrize("params_t", ["0", "1"], ids=["direct", "transposed"])
@pytest.mark.parametrize("delta", ["matmul", "fold"])
def test_mixer_both_parameter_layouts(params_t, delta, monkeypatch):
    # both ways of loading A / W_dt (the default depends on the Triton version) compute the same thing
    monkeypatch.setenv("VISION_MAMBA_TRITON_DELTA", delta)
    monkeypatch.setenv("VISION_MAMBA_TRITON_PARAMS_T", params_t)
    monkeypatch.setenv("VISION_MAMBA_TRITON_BWD_PARAMS_T", params_t)
    check_mixer(2, 19, 20, monkeypatch=monkeypatch)


@pytest.mark.parametrize("delta", ["matmul", "fold"])
def test_mixer_chunk_parallel_forward(delta, monkeypatch):
    # few programs -> the sequence is split in chunks scanned in parallel, then stitched with their carries
    monkeypatch.setenv("VISION_MAMBA_TRITON_DELTA", delta)
    check_mixer(1, 150, 16, min_programs="64", monkeypatch=monkeypatch)


@pytest.mark.parametrize("rows,input_rows,input_tiles", [("8", "16", "1"), ("16", "8", "3"), ("8", "32", "2")])
def test_mixer_conv_backward_in_chunks(rows, input_rows, input_tiles, monkeypatch):
    # 150 rows = 5 tiles of 32; two programs' worth of work -> the conv's weight gradients are summed over two
    # chunks of rows (3 tiles + 2 tiles), each program looping over its tiles; the scan is chunked too. Tilings
    # of the backward's passes (rows per tile of the first, of the second, and the second's tiles per program:
    # 3 x 8 rows leaves the last program with 6 of its 24 rows)
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_ROWS", rows)
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_INPUT_ROWS", input_rows)
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_INPUT_TILES", input_tiles)
    check_mixer(1, 150, 16, min_programs="2", monkeypatch=monkeypatch)


@pytest.mark.parametrize("recompute", ["1", "0"], ids=["recompute", "keep"])
def test_mixer_training_keeps_no_conv_output(recompute, monkeypatch):
    # in training the conv's output [2, B, L, E] is recomputed in the backward pass (the default) or kept for it
    # (VISION_MAMBA_TRITON_RECOMPUTE_CONV=0, separate autograd nodes); both match the reference, and only the
    # second keeps a tensor of that shape for the backward pass; neither keeps the scan's [B, L, 2, E] output
    monkeypatch.setenv("VISION_MAMBA_TRITON_RECOMPUTE_CONV", recompute)
    check_mixer(2, 19, 20, monkeypatch=monkeypatch)
    mixer = perturbed_mixer(20)
    hidden = torch.randn(2, 19, 20, device=DEVICE, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), scan_backend("triton"):
        mixer(hidden).sum().backward()
    # tensors of 2 x B x L x E elements: the conv's output, the scan's (before: [38, 80], out_proj's input)
    big = [shape for shape in saved if torch.Size(shape).numel() == 2 * 2 * 19 * 40]
    assert big == ([] if recompute == "1" else [(2, 2, 19, 40)]), saved
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


@pytest.mark.parametrize("block_l,tiles", [(32, 1), (8, 3), (16, 2)])
def test_conv_matches_reference(block_l, tiles, monkeypatch):
    # both directions' conv + silu in one launch, x a strided view (as in the mixer); 37 rows: partial last tiles
    # and programs whose later tiles start past the end; 70 channels: a partial channel block
    from vision_mamba.ops.conv1d import causal_conv1d_ref
    from vision_mamba.ops.selective_scan.triton_scan import _TritonBiConv

    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BLOCK_L", str(block_l))
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_TILES", str(tiles))
    g = torch.Generator().manual_seed(block_l + tiles)
    B, L, E = 2, 37, 70
    x = torch.randn(B, L, 2 * E, generator=g).to(DEVICE)[..., :E]
    w = [torch.randn(E, 1, 4, generator=g).to(DEVICE) for _ in range(2)]
    bias = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    out = _TritonBiConv.apply(x, w[0], w[1], bias[0], bias[1])
    for d in range(2):
        ref = torch.nn.functional.silu(causal_conv1d_ref(x, w[d], bias[d], reverse=d == 1))
        assert torch.isfinite(out[d]).all()
        assert rel_err(out[d], ref) < 2e-6


def test_model_triton_matches_reference():
    torch.manual_seed(0)
    model = timm.create_model("test_vim").to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    outs = outputs_and_grads(model, x, ("reference", "triton"))
    assert rel_err(outs[1][0], outs[0][0]) < 2e-5
    for (name, _), a, b in zip(model.named_parameters(), outs[1][1], outs[0][1]):
        assert rel_err(a, b) < 1e-4, name


# ---------------------------------------------------------------------------------------------- real shapes (GPU)
def test_inference_scan_reads_fp32_rows(monkeypatch):
    # x_proj's rows in fp32 (as _x_proj writes them on CUDA for bf16 activations): the inference forward reads
    # them as they come; against the reference, activations in bf16
    from vision_mamba.ops.selective_scan import triton_scan as ts

    rows = []

    def fp32_rows(x, weight, rows_fp32):
        with torch.autocast(DEVICE.type, enabled=False):
            rows.append(torch.nn.functional.linear(x.float(), weight.float()))
        return rows[-1]

    monkeypatch.setattr(ts, "_x_proj", fp32_rows)
    mixer = perturbed_mixer(20)
    hidden = torch.randn(2, 19, 20, device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        with scan_backend("reference"):
            ref = mixer(hidden)
        with scan_backend("triton"):
            out = mixer(hidden)
    assert [r.dtype for r in rows] == [torch.float32] * 2
    assert torch.isfinite(out).all() and rel_err(out, ref) < 3e-2


def test_gluon_forward_compiles_for_sm90():
    # Gluon has no interpreter: without a GPU, check at least that the kernel compiles for sm_90 with the installed
    # Triton (in a process of its own: under TRITON_INTERPRET the standard functions Gluon calls are interpreted)
    import subprocess
    import sys
    from pathlib import Path

    from vision_mamba.ops.selective_scan import gluon_kernels

    if gluon_kernels.scan_fwd_gluon_kernel is None:
        pytest.skip("this Triton has no Gluon")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("gluon_compile_check.py"))], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no layout conversions" in run.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("rows_dtype", [torch.bfloat16, torch.float32], ids=["rows-bf16", "rows-fp32"])
@pytest.mark.parametrize("length,batch", [(1, 1), (63, 3), (197, 2), (6085, 1)])
def test_gluon_forward_matches_triton_and_reference(length, batch, rows_dtype, monkeypatch):
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    monkeypatch.setenv("VISION_MAMBA_TRITON_MIN_PROGRAMS", "0")  # one launch without chunks: where Gluon applies
    monkeypatch.setenv("VISION_MAMBA_TRITON_GLUON", "1")  # (opt-in until measured on a GPU)
    monkeypatch.setenv("VISION_MAMBA_TRITON_ROWS_FP32", "1")
    E, N, R = 384, 16, 12
    g = torch.Generator().manual_seed(length)
    xs = torch.randn(2, batch, length, E, generator=g).to(DEVICE, torch.bfloat16)
    z = torch.randn(batch, length, 2 * E, generator=g).to(DEVICE, torch.bfloat16)[..., E:]
    dbl = [(torch.randn(batch * length, R + 2 * N, generator=g) * 0.5).to(DEVICE, rows_dtype) for _ in range(2)]
    w = [(torch.randn(E, R, generator=g) * 0.3).to(DEVICE) for _ in range(2)]
    bias = [(torch.randn(E, generator=g) * 0.5).to(DEVICE) for _ in range(2)]
    alog = [torch.randn(E, N, generator=g).to(DEVICE) for _ in range(2)]
    dd = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    args = ts._bi_args(xs, z, dbl[0], dbl[1], w[0], w[1], bias[0], bias[1], alog[0], alog[1], dd[0], dd[1], R, N)
    cfg = ts._config()
    assert ts._gluon_applies(cfg, args, xs.device)
    y_gluon, _ = ts.scan_forward(args, torch.bfloat16, save_states=False, config=cfg)
    y_triton, _ = ts.scan_forward(args, torch.bfloat16, save_states=False, config=dict(cfg, gluon=0))
    assert torch.isfinite(y_gluon).all()
    assert rel_err(y_gluon, y_triton) < 1e-2
    for d in range(2):
        rows = dbl[d].float().view(batch, length, -1)
        ref = selective_scan_ref(xs[d].float(), rows[..., :R] @ w[d].t(), -torch.exp(alog[d]), rows[..., R:R + N],
                                 rows[..., R + N:], dd[d], z.float(), bias[d], delta_softplus=True, reverse=d == 1)
        assert rel_err(y_gluon[:, :, d], ref) < 1e-2, d
    if length == 197:  # the mixer's inference path (fp32 rows from x_proj on CUDA) against the reference
        check_mixer(2, 197, 192, torch.bfloat16, min_programs="0", monkeypatch=monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length", [1, 63, 197, 730, 6085])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_real_shapes(length, batch, dtype, reverse):
    check_scan(batch, length, 384, dtype, reverse)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length,batch", [(197, 8), (730, 2), (6085, 1)])
@pytest.mark.parametrize("delta", ["matmul", "fold"])
def test_mixer_real_shapes(length, batch, dtype, delta, monkeypatch):
    # batch 1 at 6085 tokens uses the chunk-parallel forward (auto); the others the one-pass scan
    monkeypatch.delenv("VISION_MAMBA_TRITON_MIN_PROGRAMS", raising=False)
    monkeypatch.setenv("VISION_MAMBA_TRITON_DELTA", delta)
    check_mixer(batch, length, 192, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224"])
def test_vim_tiny_triton_matches_reference(name):
    model = timm.create_model(name).to(DEVICE).eval()
    x = torch.randn(2, 3, 224, 224, device=DEVICE)
    with torch.no_grad():
        with scan_backend("reference"):
            ref = model.forward_features(x)
        with scan_backend("triton"):
            out = model.forward_features(x)
    assert rel_err(out, ref) < 1e-4
