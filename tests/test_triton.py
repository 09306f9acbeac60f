"""The Triton backend against the reference: the generic scan, the fused bidirectional mixer (conv + scan with
dt_proj folded in + the combine folded into out_proj), and whole models; outputs and every gradient, fp32 and bf16,
outputs poisoned with NaN before each run.

Without a GPU the kernels run under TRITON_INTERPRET=1 on small shapes; on a GPU the `gpu` tests add the real
shapes (lengths up to 6085, Vim-Ti widths)."""
from __future__ import annotations

import os
import types

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


def bf16_mixer_outputs(dim):
    """A perturbed mixer of width ``dim`` on one random input under bf16 autocast, without gradients: the reference
    backend's output and the triton backend's."""
    mixer = perturbed_mixer(dim)
    hidden = torch.randn(2, 19, dim, device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        with scan_backend("reference"):
            ref = mixer(hidden)
        with scan_backend("triton"):
            out = mixer(hidden)
    return ref, out


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


@pytest.mark.parametrize("n_chunks,E", [(2, 16), (37, 20), (96, 384)], ids=["2x16", "37x20", "96x384"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_chunk_carry_matches_a_loop(n_chunks, E, reverse):
    # the parallel prefix over chunks (chunk_carry_kernel) against the recurrence walked chunk by chunk; chunk
    # counts below, at and past a power of two, channels that fill a program's block or not
    from types import SimpleNamespace

    from vision_mamba.ops.selective_scan.triton_scan import _chunk_carry

    if E > 64 and DEVICE.type != "cuda":
        pytest.skip("large shape: GPU only")
    g = torch.Generator().manual_seed(n_chunks + E)
    B, ND, N = 2, 2, 16
    hend = torch.randn(B, ND, n_chunks, N, E, generator=g).to(DEVICE)
    dsum = (torch.rand(B, ND, n_chunks, E, generator=g) * 3).to(DEVICE)
    a_log = [torch.randn(E, N, generator=g).to(DEVICE) for _ in range(ND)]
    args = SimpleNamespace(B=B, n_dirs=ND, E=E, N=N, a=a_log, a_is_log=True,
                           param_strides=lambda: (a_log[0].stride(0), a_log[0].stride(1), 0, 0))
    hinit = torch.full_like(hend, float("nan"))
    _chunk_carry(args, hend, dsum, hinit, n_chunks, reverse=reverse)
    expect = torch.empty_like(hend)
    for d in range(ND):
        decay = torch.exp(dsum[:, d, :, None, :] * -torch.exp(a_log[d]).t()[None, None])  # [B, chunks, N, E]
        h = torch.zeros(B, N, E, device=DEVICE)
        for c in (reversed(range(n_chunks)) if reverse else range(n_chunks)):
            expect[:, d, c] = h
            h = decay[:, c] * h + hend[:, d, c]
    assert torch.isfinite(hinit).all()
    assert rel_err(hinit, expect) < 1e-5


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


@pytest.mark.parametrize("pad", ["1", "0"], ids=["padded", "unpadded"])
def test_mixer_rows_padded_or_not(pad, monkeypatch):
    # x_proj's rows laid out dt_low | zeros | B | C (dt_low's 2 columns padded to 16, the default) or dt_low | B | C:
    # both match the reference, forward (with and without autograd) and every gradient; chunk-parallel too
    from vision_mamba.ops.selective_scan.triton_scan import _rank_cols

    # (Vim-Ti 12 -> 16, Vim-S 24 -> 32: B at a multiple of N = 16 columns; Vim-B as it is)
    assert [_rank_cols(r, True) for r in (2, 12, 24, 48)] == [16, 16, 32, 48]
    assert [_rank_cols(r, True, N=4) for r in (2, 12, 24)] == [8, 16, 24] and _rank_cols(12, False) == 12
    monkeypatch.setenv("VISION_MAMBA_TRITON_ROWS_PAD", pad)
    check_mixer(2, 19, 20, monkeypatch=monkeypatch)
    check_mixer(1, 150, 16, min_programs="64", monkeypatch=monkeypatch)


@pytest.mark.parametrize("rank_cols", [3, 8], ids=["unpadded", "padded"])
def test_proj_grads_match_per_direction(rank_cols):
    # the mixer backward's x_proj / dt_proj gradients, both directions in each batched product (_proj_grads),
    # against the same products taken a direction at a time
    from vision_mamba.ops.selective_scan.triton_scan import _proj_grads, dt_proj_grads, xproj_grad_rows

    R, N, E, B, L = 3, 4, 10, 2, 5
    W = rank_cols + 2 * N
    g = torch.Generator().manual_seed(rank_cols)
    rows, xw_pair = torch.randn(2, B, L, W, generator=g), torch.randn(2, W, E, generator=g)
    rows[..., R:rank_cols] = 0  # (the padding columns and their zero x_proj rows)
    xw_pair[:, R:rank_cols] = 0
    xs, gxs, graw = (torch.randn(2, B, L, E, generator=g) for _ in range(3))
    gbc = torch.randn(2, B, L, 2 * N, generator=g)
    w_f, w_b = torch.randn(E, R, generator=g), torch.randn(E, R, generator=g)
    gxs_out = gxs.clone()
    gxw, gw = _proj_grads(rows, xs, gxs_out, graw, gbc, xw_pair, w_f, w_b, R, N)
    for i, w in enumerate((w_f, w_b)):
        r = rows[i].reshape(-1, W)
        g_low, g_w = dt_proj_grads(graw[i].reshape(-1, E), r[:, :rank_cols], w)
        gdbl = torch.cat([g_low, gbc[i].reshape(-1, 2 * N)], dim=1)
        torch.testing.assert_close(gxs_out[i].reshape(-1, E), gxs[i].reshape(-1, E) + gdbl @ xw_pair[i])
        assert gxw[i].shape == (R + 2 * N, E) and gw[i].shape == (E, R) and gw[i].is_contiguous()
        torch.testing.assert_close(gxw[i], xproj_grad_rows(gdbl.t() @ xs[i].reshape(-1, E), R, rank_cols))
        torch.testing.assert_close(gw[i], g_w)


def test_padded_rows_helpers():
    # the padded x_proj weight and its gradient's way back; dt_proj's gradients from padded dt_low columns equal
    # those from the unpadded ones
    from vision_mamba.ops.selective_scan.triton_scan import dt_proj_grads, xproj_grad_rows, xproj_weight_rows

    R, N, E, M = 3, 4, 10, 37
    w = torch.randn(R + 2 * N, E)
    wp = xproj_weight_rows(w, R, 8, torch.float32)
    assert wp.shape == (8 + 2 * N, E) and not wp[R:8].any()
    assert torch.equal(wp[:R], w[:R]) and torch.equal(wp[8:], w[R:])
    assert torch.equal(xproj_grad_rows(wp, R, 8), w)
    assert torch.equal(xproj_grad_rows(torch.stack([wp, 2 * wp]), R, 8), torch.stack([w, 2 * w]))
    assert xproj_weight_rows(w, R, R, torch.float32) is w
    x = torch.randn(M, E)
    rows, rows_p = x @ w.t(), x @ wp.t()
    # (the two products may sum in another order: last-bit differences)
    assert torch.allclose(rows_p[:, 8:], rows[:, R:], atol=1e-5) and not rows_p[:, R:8].any()
    graw, w_dt = torch.randn(M, E), torch.randn(E, R)
    g_low, g_w = dt_proj_grads(graw, rows[:, :R], w_dt)
    g_low_p, g_w_p = dt_proj_grads(graw, rows_p[:, :8], w_dt)
    assert g_low_p.shape == (M, 8) and not g_low_p[:, R:].any()
    assert torch.allclose(g_low_p[:, :R], g_low, atol=1e-5) and torch.allclose(g_w_p, g_w, atol=1e-4)


def test_weight_helpers_match_plain_ops():
    # the launch-saving forms of the mixer's weight preparation give exactly what the plain ops give: both
    # directions' padded x_proj weights (gather with cached constants, also when first made in inference mode),
    # and out_proj's halved weight (alone, and twice side by side)
    from vision_mamba.ops.selective_scan.triton_scan import _half_weight, xproj_weight_pair, xproj_weight_rows

    g = torch.Generator().manual_seed(3)
    for R, N, E in ((12, 16, 40), (3, 4, 10), (24, 16, 8)):
        w_f, w_b = torch.randn(R + 2 * N, E, generator=g), torch.randn(R + 2 * N, E, generator=g)
        for dtype in (torch.float32, torch.bfloat16):
            for rank_cols in {R, -(-R // 8) * 8}:
                want = torch.stack([xproj_weight_rows(w, R, rank_cols, dtype) for w in (w_f, w_b)])
                with torch.inference_mode():
                    first = xproj_weight_pair(w_f, w_b, R, rank_cols, dtype)
                again = xproj_weight_pair(w_f * 1, w_b * 1, R, rank_cols, dtype)  # the cached constants reused
                assert first.dtype == dtype and torch.equal(first, want) and torch.equal(again, want)
    w = torch.randn(7, 12, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        half = (w * 0.5).to(dtype)
        assert torch.equal(_half_weight(w, dtype), half)
        assert torch.equal(_half_weight(w, dtype, copies=2), torch.cat([half, half], dim=1))


def test_mixer_weights_kernel_matches_the_helpers():
    # the one-launch form of an inference call's weights (x_proj's padded pair and out_proj's halved weight) against
    # the helpers above; bit for bit on the GPU, and within one bf16 step under the interpreter (its fp32 -> bf16
    # conversion rounds toward zero)
    from vision_mamba.ops.selective_scan.triton_scan import _half_weight, mixer_weights, xproj_weight_pair

    g = torch.Generator().manual_seed(5)
    for R, N, E, D in ((12, 16, 40, 20), (3, 4, 10, 5), (24, 16, 136, 68)):
        w_f, w_b = (torch.randn(R + 2 * N, E, generator=g).to(DEVICE) for _ in range(2))
        out_w = torch.randn(D, E, generator=g).to(DEVICE)
        for dtype in (torch.float32, torch.bfloat16):
            for rank_cols in {R, -(-R // 8) * 8}:
                tol = dict(rtol=2 ** -7, atol=0) if dtype == torch.bfloat16 and DEVICE.type == "cpu" \
                    else dict(rtol=0, atol=0)
                pair, half = mixer_weights(w_f, w_b, out_w, R, rank_cols, dtype)
                assert pair.dtype == half.dtype == dtype
                torch.testing.assert_close(pair, xproj_weight_pair(w_f, w_b, R, rank_cols, dtype), **tol)
                torch.testing.assert_close(half, _half_weight(out_w, dtype), **tol)
                assert (pair[:, R:rank_cols] == 0).all()
                pair2, none = mixer_weights(w_f, w_b, None, R, rank_cols, dtype)
                assert none is None and torch.equal(pair2, pair)
                _, twice = mixer_weights(w_f, w_b, out_w, R, rank_cols, dtype, copies=2)  # [W, W] / 2
                torch.testing.assert_close(twice, _half_weight(out_w, dtype, copies=2), **tol)
                assert torch.equal(twice[:, :E], half) and torch.equal(twice[:, E:], half)
        # weights that are not contiguous (transposed copies) give the same
        t_f, t_b, t_o = (w.t().contiguous().t() for w in (w_f, w_b, out_w))
        pair3, half3 = mixer_weights(t_f, t_b, t_o, R, rank_cols, torch.float32)
        want_pair, want_half = mixer_weights(w_f, w_b, out_w, R, rank_cols, torch.float32)
        assert torch.equal(pair3, want_pair) and torch.equal(half3, want_half)


def test_config_cached_but_follows_the_environment(monkeypatch):
    # _config() parses the variables once per set of raw values: a changed variable is seen at the next call,
    # every variable it reads is in the cache key, and callers get a dict of their own
    import inspect
    import re

    from vision_mamba.ops.selective_scan import triton_scan as ts

    read = set(re.findall(r'"(VISION_MAMBA_[A-Z0-9_]+)"', inspect.getsource(ts._read_config)))
    assert read and read <= set(ts._ENV_KEYS), read - set(ts._ENV_KEYS)
    monkeypatch.delenv("VISION_MAMBA_TRITON_SAVE_EVERY", raising=False)
    assert ts._config()["save_every"] == 0
    monkeypatch.setenv("VISION_MAMBA_TRITON_SAVE_EVERY", "12")
    cfg = ts._config()
    assert cfg["save_every"] == 12
    cfg["save_every"] = 99
    assert ts._config()["save_every"] == 12
    monkeypatch.setenv("VISION_MAMBA_POISON", "0")
    assert not ts._config()["poison"]
    monkeypatch.setenv("VISION_MAMBA_POISON", "1")
    assert ts._config()["poison"] and torch.isnan(ts._new(3, device="cpu", dtype=torch.float32)).all()


def test_host_launch_arithmetic():
    # the host's ceil division and power-of-two rounding agree with Triton's (which are slow to call from Python)
    import triton

    from vision_mamba.ops.selective_scan.triton_scan import _cdiv, _next_pow2

    for a in range(1, 700):
        assert _next_pow2(a) == triton.next_power_of_2(a)
        for b in (1, 2, 3, 8, 16, 64, 100):
            assert _cdiv(a, b) == triton.cdiv(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("half", [False, True], ids=["sum", "mean"])
def test_pair_sum_matches_torch(dtype, half):
    # the two directions' sum (or mean) from strided rows into a strided out, bit for bit what the unfused ops give;
    # 37 x 2 rows and 70 channels: partial blocks both ways; the output poisoned first
    from vision_mamba.ops.selective_scan.triton_scan import pair_sum

    g = torch.Generator().manual_seed(3)
    ys = torch.randn(2, 37, 2, 70, generator=g).to(DEVICE, dtype)  # [B, L, 2, E]: directions interleaved per token
    a, b = ys[:, :, 0], ys[:, :, 1]
    want = (a.float() + b.float()).to(dtype)
    if half:
        want = want * 0.5

    def same(x, y):
        if DEVICE.type == "cuda" or dtype == torch.float32:
            return torch.equal(x, y)
        # (the interpreter rounds fp32 -> bf16 towards zero where the GPU rounds to nearest: one unit apart at most)
        return bool(((x.float() - y.float()).abs() <= y.float().abs() * 2 ** -7).all())

    got = pair_sum(a, b, half=half)
    assert got.is_contiguous() and same(got, want)
    buf = torch.full((2, 37, 140), float("nan"), device=DEVICE, dtype=dtype)  # [B, L, 2E]: write the second half
    out = pair_sum(a.contiguous(), b, out=buf[..., 70:], half=half)
    assert out.data_ptr() == buf[..., 70:].data_ptr() and same(buf[..., 70:], want)
    assert buf[..., :70].isnan().all()  # nothing written outside out
    with pytest.raises(ValueError):
        pair_sum(a, b, out=torch.empty(2, 70, 37, device=DEVICE, dtype=dtype).transpose(1, 2))


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
    # 3 x 8 rows leaves the last program with 6 of its 24 rows); the two-pass backward, not the walk
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_WALK", "0")
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_ROWS", rows)
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_INPUT_ROWS", input_rows)
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_INPUT_TILES", input_tiles)
    check_mixer(1, 150, 16, min_programs="2", monkeypatch=monkeypatch)


def test_mixer_conv_backward_programs_knob(monkeypatch):
    # the conv backward's first pass split into chunks of rows by its own program target
    # (VISION_MAMBA_TRITON_CONV_BWD_PROGRAMS; 150 rows, one channel block: 3 chunks of 64, 64 and 22 rows); the
    # two-pass backward
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_WALK", "0")
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_PROGRAMS", "4")
    check_mixer(1, 150, 16, min_programs="0", monkeypatch=monkeypatch)


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
    # tensors of 2 x B x L x E elements: the conv's output, the scan's (before: [38, 80], out_proj's input); in_proj's
    # output xz [2, 19, 80] is kept by the mixer (as its two halves x and z before), whatever the setting
    big = [shape for shape in saved if torch.Size(shape).numel() == 2 * 2 * 19 * 40 and shape != (2, 19, 80)]
    assert big == ([] if recompute == "1" else [(2, 2, 19, 40)]), saved
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


@pytest.mark.parametrize("block_l,tiles,walk", [(32, 1, ""), (8, 3, ""), (16, 2, ""), (0, 0, "8,64,2"),
                                                  (0, 0, "16,32,1"), (0, 0, "48,128,1")])
def test_conv_matches_reference(block_l, tiles, walk, monkeypatch):
    # both directions' conv + silu in one launch, x a strided view (as in
    # the mixer); 37 rows: partial last tiles and programs whose later tiles start past the end; 70 channels: a
    # partial channel block. walk: the walk down the rows (conv_fwd_walk_kernel), "rows, channels, warps": about 8
    # rows a program (five programs of 8, the last with 5 rows), 16 (two of 24: windows across programs, a program's
    # last iteration half past its end) or 48 (one of 40)
    from vision_mamba.ops.conv1d import causal_conv1d_ref
    from vision_mamba.ops.selective_scan.triton_scan import _TritonBiConv

    if walk:
        for name, value in zip(("ROWS", "BLOCK_E", "WARPS"), walk.split(",")):
            monkeypatch.setenv(f"VISION_MAMBA_TRITON_CONV_WALK_{name}", value)
        monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_WALK", "1")
    else:
        monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_WALK", "0")
        monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BLOCK_L", str(block_l))
        monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_TILES", str(tiles))
    g = torch.Generator().manual_seed(block_l + tiles + len(walk))
    B, L, E = 2, 37, 70
    x = torch.randn(B, L, 2 * E, generator=g).to(DEVICE)[..., :E]
    w = [torch.randn(E, 1, 4, generator=g).to(DEVICE) for _ in range(2)]
    bias = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    out = _TritonBiConv.apply(x, w[0], w[1], bias[0], bias[1])
    for d in range(2):
        ref = torch.nn.functional.silu(causal_conv1d_ref(x, w[d], bias[d], reverse=d == 1))
        assert torch.isfinite(out[d]).all()
        assert rel_err(out[d], ref) < 2e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_conv_walk_matches_tiles(dtype, monkeypatch):
    # the walk down the rows against the tile kernel, in the interleaved storage the model uses: the same sums in
    # the same order, so the same values up to the compiler's contractions (one bf16 rounding step)
    from vision_mamba.ops.selective_scan.triton_scan import _config, _walk_rows, conv_forward

    assert [_walk_rows(L, 48) for L in (1, 37, 197, 6085)] == [8, 40, 56, 48]
    g = torch.Generator().manual_seed(5)
    B, L, E = 3, 29, 136
    x = torch.randn(B, L, 2 * E, generator=g).to(DEVICE, dtype)[..., :E]
    w = [torch.randn(E, 1, 4, generator=g).to(DEVICE) for _ in range(2)]
    bias = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    outs = []
    for walk in ("0", "1"):
        monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_WALK", walk)
        monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_WALK_ROWS", "8")
        outs.append(conv_forward(x, w[0], w[1], bias[0], bias[1], _config(), interleave=True))
    assert outs[1].dtype == dtype and torch.isfinite(outs[1]).all()
    tol = dict(rtol=2 ** -7, atol=1e-6) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[1], outs[0], **tol)


def test_conv_interleaved_storage():
    # interleave: the same values, stored [B, L, 2, E] (a token's directions side by side) under a [2, B, L, E] view
    from vision_mamba.ops.selective_scan.triton_scan import _config, conv_forward

    g = torch.Generator().manual_seed(3)
    B, L, E = 2, 21, 24
    x = torch.randn(B, L, 2 * E, generator=g).to(DEVICE)[..., :E]
    w = [torch.randn(E, 1, 4, generator=g).to(DEVICE) for _ in range(2)]
    bias = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    plain = conv_forward(x, w[0], w[1], bias[0], bias[1], _config())
    inter = conv_forward(x, w[0], w[1], bias[0], bias[1], _config(), interleave=True)
    assert plain.is_contiguous() and inter.shape == plain.shape == (2, B, L, E)
    assert inter.permute(1, 2, 0, 3).is_contiguous()
    assert torch.equal(inter, plain)


@pytest.mark.parametrize("dim,length", [(20, 19), (32, 40)])
def test_mixer_inference_interleaved(dim, length, monkeypatch):
    # inference with the conv's output (and y over it) stored [B, L, 2, E]: out_proj is one product with K = 2E;
    # against the reference backend, and against the [2, B, L, E] storage's two accumulating products, in fp32 and
    # under bf16 autocast
    from vision_mamba.ops.selective_scan import triton_scan as ts

    mixer = perturbed_mixer(dim, seed=dim)
    hidden = torch.randn(2, length, dim, device=DEVICE)
    calls = []
    real = ts._out_proj_directions

    def spy(ys, *args, **kwargs):
        calls.append(ys.permute(1, 2, 0, 3).is_contiguous())
        return real(ys, *args, **kwargs)

    monkeypatch.setattr(ts, "_out_proj_directions", spy)
    for bf16, tol in ((False, 2e-5), (True, 3e-2)):
        autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16)
        with torch.no_grad(), autocast:
            with scan_backend("reference"):
                ref = mixer(hidden)
            outs = {}
            for setting in ("1", "0"):
                monkeypatch.setenv("VISION_MAMBA_TRITON_INTERLEAVE", setting)
                with scan_backend("triton"):
                    outs[setting] = mixer(hidden)
        assert calls == [True, False], calls
        calls.clear()
        for out in outs.values():
            assert torch.isfinite(out).all() and out.dtype == ref.dtype
            assert rel_err(out, ref) < tol
        assert rel_err(outs["1"], outs["0"]) < (1e-6 if not bf16 else 1e-2)


@pytest.mark.parametrize("walk", ["", "8,64,1", "16,32,2", "48,128,1"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_conv_backward_matches_reference(bias, dtype, walk, monkeypatch):
    # the conv backward's first pass (g_pre and the weight / bias gradients, a direction a program), then d x:
    # every gradient against autograd through the reference conv, in fp32 from the same inputs; 37 rows in two
    # chunks (32 rows in tiles of 8, then 5), 70 channels (a partial block). walk: both passes in one walk down the
    # rows (conv_bwd_walk_kernel), "rows, channels, warps": programs of 8 rows (five, the last with 5), 24 (two:
    # each walks 3 rows into the other's) or one of 40
    from vision_mamba.ops.conv1d import causal_conv1d_ref
    from vision_mamba.ops.selective_scan.triton_scan import _TritonBiConv

    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_PROGRAMS", "12")
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_ROWS", "8")
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_WALK", "1" if walk else "0")
    if walk:
        for name, value in zip(("ROWS", "BLOCK_E", "WARPS"), walk.split(",")):
            monkeypatch.setenv(f"VISION_MAMBA_TRITON_CONV_BWD_WALK_{name}", value)
    g = torch.Generator().manual_seed(5)
    B, L, E = 2, 37, 70
    x = torch.randn(B, L, 2 * E, generator=g).to(DEVICE, dtype)[..., :E].requires_grad_()
    w = [torch.randn(E, 1, 4, generator=g).to(DEVICE).requires_grad_() for _ in range(2)]
    b = [torch.randn(E, generator=g).to(DEVICE).requires_grad_() if bias else None for _ in range(2)]
    gout = torch.randn(2, B, L, E, generator=g).to(DEVICE, dtype)
    leaves = [x, *w] + ([*b] if bias else [])
    got = torch.autograd.grad(_TritonBiConv.apply(x, w[0], w[1], b[0], b[1]), leaves, gout)
    xf = x.detach().float().requires_grad_()
    ref_out = torch.stack([torch.nn.functional.silu(causal_conv1d_ref(xf, w[d], b[d], reverse=d == 1))
                           for d in range(2)])
    want = torch.autograd.grad(ref_out, [xf] + leaves[1:], gout.float())
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for name, a, r in zip(["x", "w_f", "w_b", "bias_f", "bias_b"], got, want):
        assert a.dtype == (dtype if name == "x" else torch.float32) and a.shape == r.shape, name
        assert torch.isfinite(a).all() and rel_err(a.float(), r) < tol, (name, rel_err(a.float(), r))


@pytest.mark.parametrize("walks", ["0", "1"], ids=["tiles", "walks"])
def test_model_triton_matches_reference(walks, monkeypatch):
    # (walks: the conv forward and backward as walks down the rows, conv_fwd_walk_kernel / conv_bwd_walk_kernel)
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_WALK", walks)
    monkeypatch.setenv("VISION_MAMBA_TRITON_CONV_BWD_WALK", walks)
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


def test_prepare_inference_weights_matches_per_layer(monkeypatch):
    # prep_weights: every layer's mixer weights in one launch, against what a layer makes for itself
    # (mixer_weights, and in_proj's weight cast as autocast casts it); bit for bit in fp32, within one bf16 step
    # under the interpreter (its fp32 -> bf16 conversion rounds toward zero)
    from vision_mamba.ops.selective_scan import triton_scan as ts

    monkeypatch.setenv("VISION_MAMBA_TRITON_PREP_WEIGHTS", "1")
    torch.manual_seed(1)
    model = timm.create_model("test_vim").to(DEVICE)
    mixers = [layer.mixer for layer in model.layers]
    cfg = ts._config()
    for dtype in (None, torch.bfloat16):
        made = ts.prepare_inference_weights(mixers, dtype)
        assert len(made) == len(mixers)
        tol = dict(rtol=2 ** -7, atol=0) if dtype is not None and DEVICE.type == "cpu" else dict(rtol=0, atol=0)
        for m, (w_in, pair, half) in zip(mixers, made):
            want_pair, want_half = ts.mixer_weights(
                m.x_proj.weight, m.x_proj_b.weight, m.out_proj.weight, m.dt_rank,
                ts._rank_cols(m.dt_rank, cfg["rows_pad"], m.d_state), dtype or torch.float32, copies=2)
            torch.testing.assert_close(pair, want_pair, **tol)
            torch.testing.assert_close(half, want_half, **tol)
            if dtype is None:
                assert w_in is None
            else:
                torch.testing.assert_close(w_in, m.in_proj.weight.to(dtype), **tol)
    # where it does not apply: off, the [2, B, L, E] storage, weights of another dtype
    for env in (("VISION_MAMBA_TRITON_PREP_WEIGHTS", "0"), ("VISION_MAMBA_TRITON_INTERLEAVE", "0")):
        monkeypatch.setenv(*env)
        assert ts.prepare_inference_weights(mixers, None) is None
        monkeypatch.setenv("VISION_MAMBA_TRITON_PREP_WEIGHTS", "1")
        monkeypatch.setenv("VISION_MAMBA_TRITON_INTERLEAVE", "1")
    assert ts.prepare_inference_weights([m.to(torch.bfloat16) for m in mixers], None) is None


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_model_inference_with_prepared_weights(bf16, monkeypatch):
    # the whole model's inference with every layer's weights made in one launch: no per-layer mixer_weights, and
    # the features of the per-layer path (fp32: the same up to the products' order; bf16 autocast: in_proj's cast
    # rounds differently under the interpreter)
    from vision_mamba.ops.selective_scan import triton_scan as ts

    torch.manual_seed(2)
    model = timm.create_model("test_vim").to(DEVICE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    per_layer = record_results(monkeypatch, ts, "mixer_weights")
    prepared = record_results(monkeypatch, ts, "prepare_inference_weights")
    outs = {}
    autocast = torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16)
    for setting in ("0", "1"):
        monkeypatch.setenv("VISION_MAMBA_TRITON_PREP_WEIGHTS", setting)
        with torch.no_grad(), autocast, scan_backend("triton"):
            outs[setting] = model.forward_features(x)
    assert len(per_layer) == len(model.layers) and len(prepared) == 2
    assert prepared[0] is None and len(prepared[1]) == len(model.layers)
    assert (prepared[1][0][0] is None) == (not bf16)
    with torch.no_grad(), autocast, scan_backend("reference"):
        ref = model.forward_features(x)
    for out in outs.values():
        assert torch.isfinite(out).all() and rel_err(out, ref) < (3e-2 if bf16 else 2e-5)
    assert rel_err(outs["1"], outs["0"]) < (1e-2 if bf16 else 1e-6)
    # a grad-enabled call, or training, runs each layer as before
    with scan_backend("triton"):
        model.forward_features(x)
        model.train()
        with torch.no_grad():
            model.forward_features(x)
    assert len(prepared) == 2


# ---------------------------------------------------------------------------------------------- real shapes (GPU)
def test_inference_scan_reads_fp32_rows(monkeypatch):
    # x_proj's rows in fp32 (as _x_proj_pair writes them on CUDA for bf16 activations): the inference forward
    # reads them as they come; against the reference, activations in bf16
    from vision_mamba.ops.selective_scan import triton_scan as ts

    rows = []

    def fp32_rows(xs, weights, rows_fp32):
        with torch.autocast(DEVICE.type, enabled=False):
            rows.append(torch.einsum("dble,dwe->dblw", xs.float(), weights.float()))
        return rows[-1]

    monkeypatch.setattr(ts, "_x_proj_pair", fp32_rows)
    ref, out = bf16_mixer_outputs(20)
    assert [(r.dtype, r.shape[0]) for r in rows] == [(torch.float32, 2)]
    assert torch.isfinite(out).all() and rel_err(out, ref) < 3e-2


def test_gluon_kernels_compile_for_sm90():
    # Gluon has no interpreter: without a GPU, check at least that the kernels compile for sm_90 with the installed
    # Triton, as the launch code calls them (in a process of its own: under TRITON_INTERPRET the standard functions
    # Gluon calls are interpreted)
    import subprocess
    import sys
    from pathlib import Path

    from vision_mamba.ops.selective_scan import gluon_kernels

    if gluon_kernels.scan_fwd_gluon_kernel is None:
        pytest.skip("this Triton has no Gluon")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("gluon_compile_check.py"))], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Gluon launches compiled for sm_90" in run.stdout


def test_staged_forward_fit_rule():
    # where the staged one-pass kernel's 16-byte asynchronous copies apply (else the unstaged kernel runs)
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if gluon_kernels.async_copy is None:
        pytest.skip("this Triton has no Gluon asynchronous copies")

    E, N, R, B, L = 384, 16, 12, 2, 9
    bf = torch.bfloat16

    def args(rows_width=48, rows_dtype=torch.float32, z_offset=E, x=None, dtype=bf):
        xs = x if x is not None else torch.zeros(2, B, L, E, dtype=dtype)
        z = torch.zeros(B, L, 2 * E + 16, dtype=dtype)[..., z_offset:z_offset + E]
        rows = torch.zeros(2, B * L, rows_width, dtype=rows_dtype)
        w, v, a = torch.zeros(E, R), torch.zeros(E), torch.zeros(E, N)
        made = ts._bi_args(xs, z, rows[0], rows[1], w, w, v, v, a, a, v, v, R, N)
        return made, made.dt[0]

    made, rows = args()
    assert ts._staged_fits(made, 8, rows) == (64, 8, 4)  # the model's padded fp32 rows
    assert ts._staged_fits(made, 4, rows) == (64, 8, 4)
    assert ts._staged_fits(made, 2, rows) is None  # (a warp's 16-byte copies of a step's x: 4 rows of 64 channels)
    # narrower programs (a channel's states over several lanes, onepass_tpc): a warp's copies of x cover 32 / (16-byte
    # vectors a row) steps, so the stage grows to that (_tpc_stage); x rows of whole 16-byte vectors only
    assert ts._staged_fits(made, 8, rows, block_e=16) is None and ts._staged_fits(made, 16, rows, block_e=16)
    assert [ts._tpc_stage(made, 4, rows, e) for e in (64, 16, 8, 4)] == [4, 16, 32, 0]
    made32, rows32 = args(dtype=torch.float32)
    assert [ts._tpc_stage(made32, 4, rows32, e) for e in (16, 8, 4)] == [8, 16, 32]
    assert ts._staged_fits(made, 6, rows) is None and ts._staged_fits(made, 0, rows) is None
    made, rows = args(rows_width=44, rows_dtype=bf)  # 88-byte rows: not whole 16-byte vectors
    assert ts._staged_fits(made, 8, rows) is None
    made, rows = args(rows_width=48, rows_dtype=bf)
    assert ts._staged_fits(made, 8, rows) == (64, 8, 8)
    made, rows = args(rows_width=56)  # B at column 24: not a whole 16-column tile of the staged row
    assert ts._staged_fits(made, 8, rows) is None
    # Vim-S's rows as the model pads them now (dt_rank 24: 32 | B | C, 64 columns; they were 56, as above)
    made, rows = args(rows_width=ts._rank_cols(24, True, N) + 2 * N)
    assert ts._staged_fits(made, 8, rows) == (64, 8, 4)
    made, rows = args(z_offset=E + 4)  # z 8 bytes off a 16-byte boundary
    assert ts._staged_fits(made, 8, rows) is None
    made, rows = args(x=torch.zeros(2, B, L, E + 8, dtype=bf)[..., :E])  # a row stride Triton cannot prove
    assert ts._staged_fits(made, 8, rows) is None
    # the staged backward: (VX, VZ, VG, VR) for x, z, the output gradient and the rows
    gy = torch.zeros(B, L, 2, E, dtype=bf)
    made, rows = args()
    assert ts._bwd_staged_fits(made, gy, 8) == (8, 8, 8, 4)  # the model's padded fp32 rows, 8-step blocks
    assert ts._bwd_staged_fits(made, gy.float(), 8) == (8, 8, 4, 4)
    assert ts._bwd_staged_fits(made, gy, 4) is None  # a warp's copies would repeat rows of a 4-step block
    # its blocks differentiated in parts (a power of two; at least a step a part)
    assert [ts._bwd_part(dict(gluon_bwd_parts=p), 8) for p in (1, 2, 4, 16)] == [8, 4, 2, 1]
    with pytest.raises(ValueError, match="power of two"):
        ts._bwd_part(dict(gluon_bwd_parts=3), 8)
    assert ts._bwd_staged_fits(made, gy, 6) is None
    made, rows = args(rows_width=56)  # Vim-S-like rows: B at column 24 (16-byte aligned), C right after it
    assert ts._bwd_staged_fits(made, gy, 8) == (8, 8, 8, 4)
    made, rows = args(rows_width=48, rows_dtype=bf)  # bf16 rows: dt_low's 16 columns are 2 copies a row
    assert ts._bwd_staged_fits(made, gy, 8) is None
    made, rows = args(z_offset=E + 4)
    assert ts._bwd_staged_fits(made, gy, 8) is None
    made, rows = args()
    assert ts._bwd_staged_fits(made, torch.zeros(B, L, 2, E + 8, dtype=bf)[..., :E], 8) is None


def test_gluon_dispatch_rule(monkeypatch):
    # where the Gluon kernels run by default (Vim's mixer on CUDA, with Gluon there; the device check is faked
    # here): the forward wherever its channel block divides E; the backward where a block's recomputed states stay
    # in shared memory (save intervals up to gluon_smem_steps = 8: sequences under 1,024 tokens), and then the
    # forward saves the states in the Gluon backward's layout; the settings force either way
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    monkeypatch.setattr(gluon_kernels, "AVAILABLE", True)
    monkeypatch.setattr(ts, "_gluon_device", lambda device: True)
    for name in ("GLUON", "GLUON_BWD", "SAVE_EVERY", "GLUON_SMEM_STEPS", "BLOCK_E", "BWD_BLOCK_E", "ONEPASS_TPC",
                 "ONEPASS_MIN_CHANNELS", "ONEPASS_MIN_CHANNELS_WIDE", "ONEPASS_UNROLL", "ONEPASS_SHARE",
                 "ONEPASS_MIN_CHANNELS_SHORT", "ONEPASS_SHORT_TOKENS", "STAGED_MIN_PROGRAMS", "LANES_ALWAYS",
                 "GATE_TANH"):
        monkeypatch.delenv(f"VISION_MAMBA_TRITON_{name}", raising=False)
    cfg = ts._config()

    def args_for(L, E=384, N=16, B=1, R=12):
        xs, z = torch.zeros(2, B, L, E), torch.zeros(B, L, E)
        rows = [torch.zeros(B * L, R + 2 * N) for _ in range(2)]
        p = [torch.zeros(E, R), torch.zeros(E, R), torch.zeros(E), torch.zeros(E), torch.zeros(E, N),
             torch.zeros(E, N), torch.zeros(E), torch.zeros(E)]
        return ts._bi_args(xs, z, rows[0], rows[1], *p, R, N)

    dev = torch.device("cpu")
    # (since session 39 also the long sequences' 16- and 32-step blocks, through the staged kernel's parts; with it
    # off, as before: the Triton backward there)
    assert [ts._gluon_backward_applies(cfg, args_for(L), dev) for L in (197, 1023, 1024, 6085)] == [
        True, True, True, True]
    unstaged = dict(cfg, gluon_bwd_staged=0)
    assert [ts._gluon_backward_applies(unstaged, args_for(L), dev) for L in (197, 1023, 1024, 6085)] == [
        True, True, False, False]
    assert [ts._gluon_backward_applies(dict(cfg, gluon_bwd_staged_steps=s), args_for(6085), dev)
            for s in (8, 16, 32)] == [False, False, True]
    # (a dt rank padded past 16, as Vim-S's 24: since session 41 the 16-step blocks, not the 32-step ones, where
    # the staged kernel measured slower for Vim-S)
    assert [ts._gluon_backward_applies(cfg, args_for(L, R=24), dev) for L in (197, 1024, 4095, 4096, 6085)] == [
        True, True, True, False, False]
    assert ts._gluon_backward_applies(dict(cfg, gluon_bwd_staged_steps_wide=32), args_for(6085, R=24), dev)
    assert not ts._gluon_backward_applies(dict(cfg, gluon_bwd_staged_steps_wide=8), args_for(1024, R=24), dev)
    assert ts._gluon_backward_applies(dict(unstaged, gluon_bwd=1), args_for(6085), dev)  # forced: a global scratch
    # a part: a block in gluon_bwd_parts parts, of at most gluon_bwd_part_max steps
    assert [ts._bwd_part(cfg, n) for n in (4, 8, 16, 32)] == [2, 4, 8, 8]
    assert [ts._bwd_part(dict(cfg, gluon_bwd_part_max=0), n) for n in (8, 16, 32)] == [4, 8, 16]
    with pytest.raises(ValueError, match="power of two"):
        ts._bwd_part(dict(cfg, gluon_bwd_part_max=6), 32)
    assert not ts._gluon_backward_applies(dict(cfg, gluon_bwd=0), args_for(197), dev)
    assert not ts._gluon_backward_applies(cfg, args_for(197, N=8), dev)  # (written for 16 states)
    assert not ts._gluon_backward_applies(cfg, args_for(197, E=48), dev)  # (32 channels a program)
    assert not ts._gluon_forward_applies(cfg, args_for(197, E=96), dev, 64)
    assert not ts._gluon_forward_applies(dict(cfg, gluon=0), args_for(197), dev, 64)
    # the forward: the one-pass kernel for inference without chunks, the general one for 128-channel programs and
    # for training, Triton for chunked 64-channel inference (gluon=1: the general kernel there too)
    kind = ts._gluon_forward_kind
    assert kind(cfg, args_for(197), dev, 64, 1, False) == "onepass"
    assert kind(cfg, args_for(197), dev, 64, 1, True) == "general"  # (training, before the Gluon backward)
    assert kind(cfg, args_for(6085), dev, 128, 3, False) == "general"
    assert kind(cfg, args_for(6085), dev, 128, 3, True) == "general"  # (training, before the staged backward)
    assert kind(unstaged, args_for(6085), dev, 128, 3, True) is None  # (training, before the Triton backward)
    assert kind(cfg, args_for(6085), dev, 64, 3, False) is None
    assert kind(dict(cfg, gluon=1), args_for(6085), dev, 64, 3, False) == "general"
    assert kind(dict(cfg, gluon_onepass=0), args_for(197), dev, 64, 1, False) is None
    assert kind(dict(cfg, gluon=0), args_for(197), dev, 64, 1, False) is None
    # x_proj's rows in fp32 where a Gluon kernel reads them (the Triton ones read bf16 rows faster); Vim-Ti
    # inference at 224 px / batch 128 (one pass), 1248 px / batch 16 (one pass, lanes), 1248 px / batch 1 (chunks
    # of the lanes kernel; with those off, 64-channel chunks of the Triton kernel): with the device's 132 SMs
    monkeypatch.setattr(ts, "_min_programs", lambda device, configured: 8 * 132 if configured < 0 else configured)
    rows = lambda B, L, training=False, c=cfg: ts.rows_in_fp32(c, dev, torch.bfloat16, B, L, 384, 16, training)  # noqa
    assert [rows(128, 197), rows(16, 6085), rows(1, 6085), rows(128, 197, True), rows(16, 6085, True)] == [
        True, True, True, True, True]
    assert not rows(16, 6085, True, c=unstaged)  # (the Triton backward there)
    triton_chunks = dict(cfg, lanes_chunk_warps=0, onepass_tpc=0)
    assert not rows(1, 6085, c=triton_chunks) and rows(16, 6085, c=triton_chunks)  # (1248 / 16: 128-channel chunks)
    assert not rows(1, 6085, c=dict(cfg, onepass_share=0, onepass_tpc=0))
    assert not rows(128, 197, c=dict(cfg, gluon=0)) and not ts.rows_in_fp32(cfg, dev, torch.float32, 128, 197, 384,
                                                                             16, False)
    assert rows(128, 197, c=dict(cfg, gluon=0, rows_fp32=1))
    assert [ts._gluon_smem(cfg, n) for n in (5, 8, 16)] == [False, True, False]
    # steps a pass that are not powers of two: a clear error before anything is launched
    for bad in (dict(unroll=3), dict(unroll=0), dict(share=6), dict(share=-2)):
        with pytest.raises(ValueError, match="powers of two"):
            ts._launch_gluon_onepass(args_for(197), None, 4, tpc=2, **bad)
    # one-pass inference with a thread a channel: gluon_staged_unroll steps a pass of the staged kernel where the
    # dt rank is up to 16 (Vim-Ti), one where it is wider (Vim-S: measured slower with 4)
    unrolls = []
    monkeypatch.setattr(ts, "_launch_gluon_onepass", lambda *a, **k: unrolls.append(k.get("unroll")) or True)
    for R in (12, 16, 24):
        ts.scan_forward(args_for(197, B=2, R=R), torch.float32, save_states=False,
                        config=dict(cfg, min_programs=0, staged_min_programs=0))
    assert unrolls == [4, 4, 1], unrolls
    # inference the plan would chunk, in one pass with a channel's states over onepass_tpc lanes: by default
    # where the launch has at least 6,144 channels (batch x 2 directions x E: Vim-Ti from batch 8), as many where
    # dt_low is wider than 16 (Vim-S's rank 24: from batch 4; Vim-B's 48: from batch 2), else chunked; 4
    # lanes where their busiest scheduler finishes first (with 132 SMs: 8,449 - 12,672 channels, Vim-Ti batches
    # 12 - 16) and the rank pads to 16, else 2; where set, a power of two up to N and dt_low's padded width (16
    # here), 32 * onepass_cpt / tpc channels a program dividing E
    monkeypatch.setattr(ts, "_sm_count", lambda device: 132)
    tpc = lambda t, c=1, **kw: ts._onepass_tpc(dict(cfg, onepass_tpc=t, onepass_cpt=c), args_for(6085, **kw),
                                               dev)  # noqa: E731
    assert cfg["onepass_tpc"] == -1 and cfg["onepass_min_channels"] == 6144
    assert cfg["onepass_min_channels_wide"] == 6144
    assert cfg["onepass_min_channels_short"] == 1536 and cfg["onepass_short_tokens"] == 577
    assert cfg["onepass_unroll"] == 4 and cfg["gluon_staged_unroll"] == 4 and cfg["onepass_share"] == 16
    vim_ti = [tpc(-1, B=b) for b in (1, 7, 8, 9, 10, 11, 12, 16, 17, 20, 32)]  # (rank 12)
    assert vim_ti == [0, 0, 2, 2, 2, 2, 4, 4, 2, 2, 2], vim_ti
    assert [tpc(-1, B=b, E=768) for b in (3, 4, 5, 8, 9)] == [0, 2, 2, 4, 2]
    # sequences of up to 577 tokens (384 px) from 1,536 channels (Vim-Ti from batch 2), for a rank up to 16
    short = lambda L, b, R=12: ts._onepass_tpc(cfg, args_for(L, B=b, R=R), dev)  # noqa: E731
    assert [short(197, b) for b in (1, 2, 3, 4, 6, 8)] == [0, 4, 4, 4, 2, 2]
    assert [short(577, 2), short(578, 2), short(578, 7), short(578, 8), short(1025, 4)] == [4, 0, 0, 2, 0]
    assert [short(197, 2, R=24), short(197, 8, R=24)] == [0, 2]  # (a wide rank: 6,144 channels at any length)
    assert ts._onepass_tpc(dict(cfg, onepass_min_channels_short=768), args_for(197), dev) == 4
    vim_s = [tpc(-1, B=b, E=768, R=24) for b in (1, 2, 4, 5, 6, 8, 16)]
    vim_b = [tpc(-1, B=b, E=1536, R=48) for b in (1, 2, 3)]
    assert vim_s == [0, 0, 2, 2, 2, 2, 2] and vim_b == [0, 2, 2]
    assert tpc(-1, B=8, R=17) == 2 and tpc(-1, B=7, R=17) == 0  # (the rank padded past 16: 6,144 channels too)
    assert tpc(-1, B=12, R=16) == 4 and tpc(-1, B=12, R=17) == 2  # (4 lanes only where measured)
    assert tpc(-1, B=16, R=8) == 2 and tpc(-1, B=16, R=9) == 4  # (4 lanes for a rank padded to 16: measured)
    assert ts._onepass_tpc(dict(cfg, onepass_min_channels=768), args_for(6085), dev) == 4
    assert ts._onepass_tpc(dict(cfg, onepass_min_channels_wide=1 << 20), args_for(6085, B=16, E=768, R=24), dev) == 0
    assert [tpc(0), tpc(0, B=32), tpc(2), tpc(4), tpc(4, 2), tpc(8), tpc(16)] == [0, 0, 2, 4, 4, 8, 16]
    assert tpc(4, E=40) == 4 and tpc(2, E=40) == 0  # (8 channels a program divide 40, 16 do not)
    assert tpc(4, N=16, E=36) == 0 and tpc(8, N=8) == 8 and ts._onepass_tpc(
        dict(cfg, gluon=0, onepass_tpc=4), args_for(6085), dev) == 0
    for bad in (dict(onepass_tpc=3), dict(onepass_tpc=32), dict(onepass_tpc=16, onepass_cpt=1, N=8),
                dict(onepass_tpc=4, onepass_cpt=3)):
        n = bad.pop("N", 16)
        with pytest.raises(ValueError, match="onepass_tpc"):
            ts._onepass_tpc(dict(cfg, **bad), args_for(6085, N=n), dev)
    # inference that the plan does not chunk: in the lanes kernel where the staged kernel's 64-channel one-warp
    # programs would not fill the SMs once (12 an SM: 1,584 with 132 SMs, Vim-Ti below batch 132 at any length),
    # for a rank that pads to 16; staged_min_programs sets the count, 0 turns it off
    under = lambda b, R=12, c=cfg, L=197: ts._staged_underfills(c, args_for(L, B=b, R=R), dev)  # noqa: E731
    assert [under(b) for b in (1, 96, 128, 131, 132, 256)] == [True, True, True, True, False, False]
    assert [under(96, R=16), under(96, R=8), under(96, R=24), under(96, c=dict(cfg, staged_min_programs=0))] == [
        True, False, False, False]
    assert under(96, c=dict(cfg, staged_min_programs=1152)) is False and under(95, c=dict(cfg,
                                                                                        staged_min_programs=1152))
    launches = []
    monkeypatch.setattr(ts, "_launch_gluon_onepass", lambda *a, **k: launches.append(k) or True)
    for b, extra in ((128, {}), (256, {}), (128, dict(staged_min_programs=0)), (256, dict(lanes_always=1))):
        ts.scan_forward(args_for(197, B=b), torch.bfloat16, save_states=False, config=dict(cfg, **extra))
    assert [(k.get("tpc", 1), k.get("share", 0)) for k in launches] == [(2, 16), (1, 0), (1, 0), (2, 16)], launches
    assert cfg["staged_min_programs"] == -1 and cfg["lanes_always"] == 0 and cfg["gate_tanh"] == 0


BI_NAMES = ("xs", "z", "dbl_f", "dbl_b", "w_f", "w_b", "bias_f", "bias_b", "alog_f", "alog_b", "d_f", "d_b")


def record_results(monkeypatch, module, name):
    """A list that receives every result of ``module.name`` from now on (the function still runs as before)."""
    results = []
    original = getattr(module, name)

    def recorded(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, name, recorded)
    return results


def record_onepass_launches(monkeypatch, ts):
    """A list that receives the keyword arguments of every ``ts._launch_gluon_onepass`` call from now on (the
    launch still runs)."""
    calls = []
    original = ts._launch_gluon_onepass

    def recorded(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(ts, "_launch_gluon_onepass", recorded)
    return calls


def bi_scan_inputs(batch, length, dtype, rows_dtype, seed, E=384, N=16, R=12, width=None):
    """The fused scan's inputs at Vim-Ti's widths: xs [2, B, L, E] and z (a strided view) in ``dtype``, x_proj's
    rows per direction [B * L, R + 2N] in ``rows_dtype``, the parameters in fp32; all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(2, batch, length, E, generator=g).to(DEVICE, dtype)
    z = torch.randn(batch, length, 2 * E, generator=g).to(DEVICE, dtype)[..., E:]
    width = width or R + 2 * N  # (the model's rows: 16 + 16 + 16, dt_low | zeros | B | C)
    dbl = [(torch.randn(batch * length, width, generator=g) * 0.5) for _ in range(2)]
    dbl = [torch.cat([t[:, :R], t[:, R:width - 2 * N] * 0, t[:, width - 2 * N:]], 1).to(DEVICE, rows_dtype) for t in dbl]
    w = [(torch.randn(E, R, generator=g) * 0.3).to(DEVICE) for _ in range(2)]
    bias = [(torch.randn(E, generator=g) * 0.5 - 1.0).to(DEVICE) for _ in range(2)]
    alog = [(torch.rand(E, N, generator=g) * 3 - 1).to(DEVICE) for _ in range(2)]
    dd = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    return [t.requires_grad_() for t in (xs, z, *dbl, *w, *bias, *alog, *dd)]


def bi_scan_reference(xs, z, dbl_f, dbl_b, w_f, w_b, bias_f, bias_b, alog_f, alog_b, d_f, d_b):
    """[B, L, 2, E]: the two directions of Vim's scan (dt_proj, softplus, D, silu(z)) by the fp32 reference."""
    B, L, E = z.shape
    R, N = w_f.shape[1], alog_f.shape[1]
    ys = []
    pairs = ((dbl_f, w_f, bias_f, alog_f, d_f), (dbl_b, w_b, bias_b, alog_b, d_b))
    for d, (dbl, w, bias, alog, dd) in enumerate(pairs):
        rows = dbl.float().view(B, L, -1)
        ys.append(selective_scan_ref(xs[d].float(), rows[..., :R] @ w.t(), -torch.exp(alog), rows[..., -2 * N:-N],
                                     rows[..., -N:], dd, z.float(), bias, delta_softplus=True, reverse=d == 1))
    return torch.stack(ys, dim=2)


GLUON_CASES = [  # (length, batch, activations, x_proj's rows, which kernels run in Gluon, Gluon backward's scratch)
    (1, 1, torch.float32, torch.float32, "both", "smem"),
    (63, 3, torch.float32, torch.float32, "both", "smem"),
    (63, 3, torch.bfloat16, torch.bfloat16, "both", "global"),
    (197, 2, torch.bfloat16, torch.float32, "both", "smem"),
    (197, 2, torch.float32, torch.float32, "both", "global"),
    (197, 2, torch.bfloat16, torch.float32, "forward", "smem"),  # Gluon forward, Triton backward
    (197, 2, torch.bfloat16, torch.float32, "backward", "smem"),  # Triton forward, Gluon backward
    (730, 1, torch.bfloat16, torch.float32, "both", "smem"),
    (730, 1, torch.float32, torch.bfloat16, "both", "global"),
    (6085, 1, torch.bfloat16, torch.float32, "both", "global"),  # chunk-parallel forward and backward
    (6085, 1, torch.float32, torch.float32, "both", "smem"),
]


def test_bi_scan_padded_rows_gradients():
    # x_proj's rows as the model makes them (dt_low | zeros | B | C): the fused scan's autograd function gives
    # d rows as wide as the rows, zero in the padding (interpreter-sized on the CPU)
    from vision_mamba.ops.selective_scan import triton_scan as ts

    inputs = bi_scan_inputs(1, 5, torch.float32, torch.float32, seed=5, E=32, width=48)
    ref = bi_scan_reference(*inputs)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    y = ts._TritonBiScan.apply(*inputs, True, dict(ts._config(), min_programs=0))
    g = torch.autograd.grad(y, inputs, grad)
    assert rel_err(y, ref) < 1e-4
    for name, a, b in zip(BI_NAMES, g, g_ref):
        assert a.shape == b.shape and rel_err(a, b) < 1e-4, (name, rel_err(a, b))
    assert g[2][:, 12:16].abs().max() == 0 and g[3][:, 12:16].abs().max() == 0


@pytest.mark.parametrize("error", ["compile", "resources"])
def test_gluon_failure_falls_back_to_triton(error, monkeypatch):
    # a Gluon kernel that does not compile under the installed Triton (Gluon's API moves between releases) or does
    # not fit the device: a warning, Gluon off for the process, and the same scan on the Triton kernels. Here the
    # launch code takes the Gluon path on CPU tensors, each Gluon kernel stands in as one that fails to compile,
    # and the Triton kernels run under the interpreter: forward and gradients must match the reference
    import ast

    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    from vision_mamba.ops.selective_scan import gluon_kernels as gk
    from vision_mamba.ops.selective_scan import triton_scan as ts

    attempts = []

    class Broken:  # kernel[grid](...) raising as Triton does when it cannot build the kernel
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                attempts.append(self.name)
                if error == "compile":
                    raise CompilationError(None, ast.parse("x._reinterpret").body[0], "no attribute _reinterpret")
                raise OutOfResources(300000, 232448, "shared memory")
            return launch

    for name in ("scan_fwd_gluon_kernel", "scan_fwd_onepass_gluon_kernel", "scan_fwd_staged_gluon_kernel",
                 "scan_bwd_gluon_kernel", "scan_bwd_staged_gluon_kernel"):
        monkeypatch.setattr(gk, name, Broken(name))
    monkeypatch.setattr(gk, "AVAILABLE", True)
    monkeypatch.setattr(ts, "_gluon_device", lambda device: True)
    cfg = dict(ts._config(), min_programs=0)
    args = bi_scan_inputs(1, 37, torch.float32, torch.float32, seed=7, E=64, width=48)
    assert ts._gluon_common(-1, ts._bi_args(*[a.detach() for a in args], 12, 16), DEVICE)  # Gluon would run
    ref = bi_scan_reference(*args)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, args, grad)
    with pytest.warns(RuntimeWarning, match="Gluon scan kernels do not compile"):
        y = ts._TritonBiScan.apply(*args, True, cfg)
    assert attempts and not gk.AVAILABLE  # tried once, then off: the backward goes straight to Triton
    tried = len(attempts)
    g = torch.autograd.grad(y, args, grad)
    assert len(attempts) == tried
    assert rel_err(y, ref) < 1e-4
    for name, a, b in zip(BI_NAMES, g, g_ref):
        assert rel_err(a, b) < 1e-4, (name, rel_err(a, b))


def test_gluon_failure_in_the_backward_falls_back(monkeypatch):
    # the forward's Gluon kernels compiled (here: the Triton forward stands in for them), the backward's do not: the
    # gradients come from the Triton backward, from the states as the forward saved them
    import ast

    from triton.compiler.errors import CompilationError

    from vision_mamba.ops.selective_scan import gluon_kernels as gk
    from vision_mamba.ops.selective_scan import triton_scan as ts

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise CompilationError(None, ast.parse("x").body[0], "async_copy_global_to_shared has been removed")
            return launch

    for name in ("scan_bwd_gluon_kernel", "scan_bwd_staged_gluon_kernel"):
        monkeypatch.setattr(gk, name, Broken())
    monkeypatch.setattr(gk, "AVAILABLE", True)
    cfg = dict(ts._config(), min_programs=0)
    args = bi_scan_inputs(2, 21, torch.float32, torch.float32, seed=8, E=64, width=48)
    ref = bi_scan_reference(*args)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, args, grad)
    y = ts._TritonBiScan.apply(*args, True, cfg)  # (on CPU: no Gluon forward)
    monkeypatch.setattr(ts, "_gluon_device", lambda device: True)  # the backward takes the Gluon path
    with pytest.warns(RuntimeWarning, match="Gluon"):
        g = torch.autograd.grad(y, args, grad)
    assert not gk.AVAILABLE
    for name, a, b in zip(BI_NAMES, g, g_ref):
        assert rel_err(a, b) < 1e-4, (name, rel_err(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("length,batch", [(1, 1), (63, 3), (197, 8), (730, 2), (6085, 1)])
def test_conv_walks_at_vim_shapes(length, batch, dtype, monkeypatch):
    # the conv's walks down the rows at Vim-Ti's width (384 channels) and real lengths, forward into both storages
    # and backward with bias, against the fp32 reference conv through autograd and against the tile kernels
    from vision_mamba.ops.conv1d import causal_conv1d_ref
    from vision_mamba.ops.selective_scan import triton_scan as ts

    g = torch.Generator().manual_seed(length)
    E = 384
    x = torch.randn(batch, length, 2 * E, generator=g).to(DEVICE, dtype)[..., :E]
    w = [(torch.randn(E, 1, 4, generator=g) * 0.5).to(DEVICE) for _ in range(2)]
    b = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    gout = torch.randn(2, batch, length, E, generator=g).to(DEVICE, dtype)
    xf = x.detach().float().requires_grad_()
    wr = [v.detach().requires_grad_() for v in w + b]
    ref = torch.stack([torch.nn.functional.silu(causal_conv1d_ref(xf, wr[d], wr[2 + d], reverse=d == 1))
                       for d in range(2)])
    want = torch.autograd.grad(ref, [xf] + wr, gout.float())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    got = {}
    for walk in (0, 1):
        cfg = dict(ts._config(), conv_walk=walk, conv_bwd_walk=walk)
        for interleave in (False, True):
            out = ts.conv_forward(x, w[0], w[1], b[0], b[1], cfg, interleave=interleave)
            assert out.dtype == dtype and torch.isfinite(out).all() and rel_err(out, ref) < tol
            got[walk, interleave] = out
        grads = ts.conv_backward(x, w[0], w[1], b[0], b[1], gout, cfg)
        for name, a, r in zip(["x", "w_f", "w_b", "bias_f", "bias_b"], grads, want):
            assert torch.isfinite(a).all() and rel_err(a.float(), r) < tol, (walk, name, rel_err(a.float(), r))
    torch.testing.assert_close(got[1, True], got[0, True], rtol=1e-5 if dtype == torch.float32 else 2 ** -7,
                               atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("length,batch,dtype,rows_dtype,which,scratch", GLUON_CASES)
def test_gluon_scan_matches_reference_and_triton(length, batch, dtype, rows_dtype, which, scratch, monkeypatch):
    # the Gluon kernels (gluon_kernels.py) through the fused scan's autograd function: output and the gradients of
    # all twelve inputs against the fp32 reference, and against the Triton kernels; both layouts of the saved
    # states (each forward with either backward), the backward's states in shared memory or a global scratch, the
    # chunk-parallel passes at 6085 tokens, save intervals 8 / 16 / 32 by length
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    launches = []
    for name in ("_launch_gluon_forward", "_launch_gluon_backward"):
        original = getattr(ts, name)
        monkeypatch.setattr(ts, name, lambda *a, _f=original, _n=name, **k: (launches.append(_n), _f(*a, **k))[1])
    # (global: the unstaged kernel, whose states go through a global scratch; smem: the staged one where it fits)
    base = dict(ts._config(), gluon_smem_steps=32 if scratch == "smem" else 0, gluon_bwd_staged=int(scratch == "smem"))
    cfg = dict(base, gluon=int(which != "backward"), gluon_bwd=int(which != "forward"))
    inputs = bi_scan_inputs(batch, length, dtype, rows_dtype, seed=length + batch)
    ref = bi_scan_reference(*inputs)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    results = []
    for config in (cfg, dict(base, gluon=0, gluon_bwd=0)):
        y = ts._TritonBiScan.apply(*inputs, True, config)
        results.append((y, torch.autograd.grad(y, inputs, grad.to(y.dtype))))
    min_programs = ts._min_programs(DEVICE, cfg["min_programs"])
    block_e = ts._forward_block_e(cfg, batch, 384, length, 2, min_programs)
    n_chunks, _ = ts._chunking(batch * 384 // block_e * 2, length, min_programs, ts._save_every(cfg, length))
    assert launches.count("_launch_gluon_forward") == (which != "backward") * (1 if n_chunks == 1 else 2)
    assert launches.count("_launch_gluon_backward") == (which != "forward")
    (y, g), (y_t, g_t) = results
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol and rel_err(y, y_t) < tol
    for name, a, b, c in zip(BI_NAMES, g, g_ref, g_t):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, (name, rel_err(a, b))
        assert rel_err(a, c) < tol, (name, rel_err(a, c))


@pytest.mark.gpu
@pytest.mark.parametrize("rows_dtype", [torch.bfloat16, torch.float32], ids=["rows-bf16", "rows-fp32"])
@pytest.mark.parametrize("length,batch", [(1, 1), (63, 3), (197, 2), (730, 4)])
def test_gluon_onepass_forward_matches(length, batch, rows_dtype, monkeypatch):
    # the inference forward in one pass (no chunks, no states saved), which gets a Gluon kernel of its own
    # (scan_fwd_onepass_gluon_kernel): against the fp32 reference, the general Gluon kernel and the Triton one
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    launches = record_onepass_launches(monkeypatch, ts)
    cfg = dict(ts._config(), min_programs=0, staged_min_programs=0)
    inputs = bi_scan_inputs(batch, length, torch.bfloat16, rows_dtype, seed=length)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        outs = [ts._TritonBiScan.apply(*inputs, False, c)
                for c in (cfg, dict(cfg, gluon_onepass=0, gluon=1), dict(cfg, gluon=0))]
    assert len(launches) == 1
    for y in outs:
        assert torch.isfinite(y).all() and rel_err(y, ref) < 1e-2
    assert rel_err(outs[0], outs[1]) < 1e-3 and rel_err(outs[0], outs[2]) < 1e-2
    if length == 197:  # the mixer's inference path (fp32 rows from x_proj on CUDA) against the reference
        check_mixer(2, 197, 192, torch.bfloat16, min_programs="0", monkeypatch=monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("stage", [0, 4], ids=["unstaged", "staged"])
@pytest.mark.parametrize("tpc,cpt", [(2, 1), (4, 1), (4, 2), (8, 1)], ids=["tpc2", "tpc4", "tpc4-cpt2", "tpc8"])
@pytest.mark.parametrize("length,batch,dtype,E", [
    (1, 1, torch.bfloat16, 384), (63, 3, torch.float32, 384), (65, 3, torch.float32, 384),
    (197, 2, torch.bfloat16, 48), (730, 4, torch.bfloat16, 384), (6085, 1, torch.bfloat16, 384),
    (6085, 2, torch.float32, 48)])
def test_gluon_onepass_tpc_matches(length, batch, dtype, E, tpc, cpt, stage, monkeypatch):
    # inference that the plan would split into chunks (min_programs forces it here), in one pass with each
    # channel's states over tpc lanes (the TPC of scan_fwd_onepass_gluon_kernel, or of the staged kernel where
    # staging is on and the tensors allow it): against the fp32 reference and the chunked launches it replaces;
    # sequences of up to 64 steps are not chunked, so the one-lane kernels run them
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    calls = record_onepass_launches(monkeypatch, ts)
    cfg = dict(ts._config(), min_programs=1 << 20, onepass_tpc=tpc, onepass_cpt=cpt, gluon_staged=stage,
               staged_min_programs=0)  # (unchunked: the one-lane kernels, not the lanes below a wave)
    staged = record_results(monkeypatch, ts, "_tpc_stage")
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + tpc, E=E, width=48)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, cfg)
        n_tpc = len(calls)
        y_chunked = ts._TritonBiScan.apply(*inputs, False, dict(cfg, onepass_tpc=0, lanes_chunk_warps=0))
    launches = [k.get("tpc", 1) for k in calls]
    chunked = ts._forward_plan(cfg, batch, length, E, 2, DEVICE)[3] > 1
    assert chunked == (length > 64)
    # (unchunked, the one-lane one-pass kernel runs: 384 channels here)
    assert launches[:n_tpc] == ([tpc] if chunked else [1]) and tpc not in launches[n_tpc:]
    # staged where asked, the programs' x rows being whole 16-byte vectors (the rows, padded here, allow it): one-warp
    # programs of 32 cpt / tpc channels, or, in the lanes kernel (onepass_share, a channel a thread) with more than
    # 2 lanes, programs of lanes_warps (4) warps, 128 / tpc channels, where they divide E
    block = 32 * cpt // tpc
    if cfg["onepass_share"] and cpt == 1 and stage and ts._lanes_warps(cfg, tpc) > 1:
        wide = 32 * ts._lanes_warps(cfg, tpc) // tpc
        block = wide if E % wide == 0 else block
    can_stage = bool(stage) and block * inputs[0].element_size() % 16 == 0
    assert len(staged) == (n_tpc if stage and chunked else 0) and all(bool(v) == can_stage for v in staged)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol and rel_err(y, y_chunked) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("unroll", [2, 4])
@pytest.mark.parametrize("tpc", [1, 2, 4])
@pytest.mark.parametrize("length,batch,dtype", [
    (1, 1, torch.bfloat16), (7, 2, torch.float32), (63, 3, torch.bfloat16), (197, 2, torch.float32),
    (730, 3, torch.bfloat16), (6085, 1, torch.bfloat16)])
def test_gluon_staged_unroll_matches(length, batch, dtype, tpc, unroll, monkeypatch):
    # the staged inference forward with several steps a pass of its loop (UNROLL; the lengths leave a partial
    # last pass, whose steps past the end store nothing): against the fp32 reference and the same launch a step
    # a pass, with a thread a channel (one pass, gluon_staged_unroll) and with tpc lanes a channel (a length the
    # plan chunks, onepass_unroll)
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    calls = record_onepass_launches(monkeypatch, ts)
    cfg = dict(ts._config(), onepass_unroll=1, gluon_staged_unroll=1, onepass_share=0, gluon_staged=4,
               staged_min_programs=0)  # (unchunked: a thread a channel, not the lanes below a wave)
    if tpc == 1:
        cfg = dict(cfg, min_programs=0)
    else:
        cfg = dict(cfg, min_programs=1 << 20, onepass_tpc=tpc)
    lanes = tpc if ts._forward_plan(cfg, batch, length, 384, 2, DEVICE)[3] > 1 else 1  # (short: not chunked)
    staged = record_results(monkeypatch, ts, "_tpc_stage" if lanes > 1 else "_staged_fits")
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + 7 * unroll, width=48)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y1 = ts._TritonBiScan.apply(*inputs, False, cfg)
        y = ts._TritonBiScan.apply(*inputs, False, dict(cfg, onepass_unroll=unroll, gluon_staged_unroll=unroll))
    unrolls = [(k.get("tpc", 1), k.get("unroll", 1)) for k in calls]
    assert unrolls == [(lanes, 1), (lanes, unroll)], unrolls
    assert len(staged) == 2 and all(staged)  # (the staged kernel ran, both times)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol
    # the same arithmetic a step, but for the compiler's choice of fused multiply-adds: bf16 outputs may round
    # the other way in a few places
    assert rel_err(y, y1) < (1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("tpc", [-1, 2, 4])
@pytest.mark.parametrize("length,batch,dtype", [
    (7, 2, torch.float32), (63, 3, torch.bfloat16), (197, 8, torch.bfloat16), (197, 3, torch.float32)])
def test_gluon_lanes_always_matches(length, batch, dtype, tpc, monkeypatch):
    # lanes_always: inference that the plan does not chunk also in the lanes kernel (tpc lanes a channel, -1 the
    # rule's), against the fp32 reference and the staged kernel with a thread a channel that it replaces
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    calls = record_onepass_launches(monkeypatch, ts)
    cfg = dict(ts._config(), min_programs=0, gluon_staged=4, onepass_tpc=tpc, staged_min_programs=0)
    assert ts._forward_plan(cfg, batch, length, 384, 2, DEVICE)[3] == 1  # (not chunked)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + tpc, width=48)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, dict(cfg, lanes_always=1))
        y1 = ts._TritonBiScan.apply(*inputs, False, dict(cfg, lanes_always=0))
    lanes = [k.get("tpc", 1) for k in calls]
    rule = ts._lanes_tpc(cfg, types.SimpleNamespace(N=16, R=12), batch * 768, DEVICE)
    assert lanes[1] == 1 and lanes[0] == (tpc if tpc > 0 else rule), lanes
    assert calls[0].get("share"), calls  # (the lanes kernel: the channel's work of a step shared)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol
    assert rel_err(y, y1) < (1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["staged", "lanes"])
@pytest.mark.parametrize("length,batch,dtype", [
    (7, 2, torch.float32), (63, 3, torch.bfloat16), (197, 2, torch.bfloat16), (197, 3, torch.float32),
    (730, 2, torch.bfloat16), (6085, 1, torch.bfloat16)])
def test_gluon_gate_tanh_matches(length, batch, dtype, kernel, monkeypatch):
    # gate_tanh (the gate's sigmoid by tanh.approx, for 16-bit outputs only; fp32 outputs keep the exact form) in
    # the staged kernel with a thread a channel and in the lanes kernel: against the fp32 reference and the same
    # launch with the special-function unit's exp2 and rcp
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    calls = record_onepass_launches(monkeypatch, ts)
    cfg = dict(ts._config(), gluon_staged=4)
    cfg = dict(cfg, min_programs=0, staged_min_programs=0) if kernel == "staged" else \
        dict(cfg, min_programs=1 << 20, onepass_tpc=2)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + 4, width=48)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, dict(cfg, gate_tanh=1))
        y_plain = ts._TritonBiScan.apply(*inputs, False, dict(cfg, gate_tanh=0))
    assert calls[0]["special"] == dict(GATE_TANH=dtype != torch.float32), calls[0]
    assert calls[1]["special"] == dict(GATE_TANH=False)
    # (lanes: chunked by the plan, or not and then below the staged kernel's wave, _staged_underfills)
    assert calls[0].get("tpc", 1) == (2 if kernel == "lanes" else 1)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol
    assert rel_err(y, y_plain) < (1e-5 if dtype == torch.float32 else 4e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("unroll", [1, 8, 16])
@pytest.mark.parametrize("tpc", [2, 4])
@pytest.mark.parametrize("length,batch,dtype,R", [
    (65, 3, torch.float32, 12), (197, 2, torch.bfloat16, 12), (730, 3, torch.bfloat16, 12),
    (731, 1, torch.float32, 12), (6085, 1, torch.bfloat16, 12), (730, 2, torch.bfloat16, 24),
    (128, 2, torch.bfloat16, 12), (96, 1, torch.bfloat16, 24), (80, 2, torch.float32, 16)])
def test_gluon_lanes_share_matches(length, batch, dtype, R, tpc, unroll, monkeypatch):
    # onepass_share: the lanes of a channel share its work of a step (scan_fwd_lanes_gluon_kernel, max(share,
    # tpc) steps a pass, the lengths leaving a partial last pass), against the fp32 reference and the staged
    # kernel where every lane does all of it; Vim-Ti's widths, and Vim-S's (dt rank 24, rows 32 + 16 + 16)
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    calls = record_onepass_launches(monkeypatch, ts)
    stages = record_results(monkeypatch, ts, "_tpc_stage")
    unrolls = record_results(monkeypatch, ts, "_lanes_unroll")
    cfg = dict(ts._config(), min_programs=1 << 20, onepass_tpc=tpc, gluon_staged=4)
    E, width = (384, 48) if R == 12 else (768, 64)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + tpc + unroll, E=E, R=R, width=width)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, dict(cfg, onepass_share=unroll))
        y_plain = ts._TritonBiScan.apply(*inputs, False, dict(cfg, onepass_share=0))
    shares = [(k.get("tpc"), k.get("share")) for k in calls]
    assert shares == [(tpc, unroll), (tpc, 0)], shares
    assert len(stages) == 2 and all(st >= tpc for st in stages), stages
    # (the lanes kernel ran, its steps a pass cut to the stage: 8 for fp32 activations' stage of 8 steps)
    assert unrolls == [min(max(unroll, tpc), stages[0])], (unrolls, stages)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol
    # (delta's dot product summed in one lane instead of over the channel's lanes: another order of the sums)
    assert rel_err(y, y_plain) < (1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("warps", [2, 4])
@pytest.mark.parametrize("tpc", [2, 4])
@pytest.mark.parametrize("length,batch,dtype,R", [
    (197, 2, torch.bfloat16, 12), (730, 3, torch.bfloat16, 12), (731, 1, torch.float32, 12),
    (128, 2, torch.bfloat16, 12), (730, 2, torch.bfloat16, 24), (6085, 1, torch.bfloat16, 12)])
def test_gluon_lanes_warps_matches(length, batch, dtype, R, tpc, warps, monkeypatch):
    # lanes_warps: the lanes kernel in programs of several warps (32 warps / tpc channels, the staged copies of a
    # step spread over the program), against the fp32 reference and one-warp programs
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    fits = []
    original = ts._staged_fits

    def staged_fits(args, stage, rows, block_e=64, num_warps=1):
        fits.append((block_e, num_warps, stage))
        return original(args, stage, rows, block_e, num_warps)

    monkeypatch.setattr(ts, "_staged_fits", staged_fits)
    cfg = dict(ts._config(), min_programs=1 << 20, onepass_tpc=tpc, gluon_staged=4, onepass_share=16)
    E, width = (384, 48) if R == 12 else (768, 64)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + tpc + warps, E=E, R=R, width=width)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, dict(cfg, lanes_warps=warps))
        launched = fits[-1]
        y_one = ts._TritonBiScan.apply(*inputs, False, dict(cfg, lanes_warps=1))
    assert launched[:2] == (32 * warps // tpc, warps), fits  # (the launch's own check, last before it ran)
    assert fits[-1][:2] == (32 // tpc, 1), fits
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol
    # (the same arithmetic a channel; only the compiler's schedule may differ)
    assert rel_err(y, y_one) < (1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["onepass2", "onepass4", "chunks"])
@pytest.mark.parametrize("length,batch,dtype,R", [
    (197, 2, torch.bfloat16, 12), (730, 3, torch.bfloat16, 12), (731, 1, torch.float32, 12),
    (128, 2, torch.bfloat16, 12), (730, 2, torch.bfloat16, 24), (6085, 1, torch.bfloat16, 12),
    (4096, 1, torch.bfloat16, 12)])
def test_gluon_lanes_high_matches(length, batch, dtype, R, mode, monkeypatch):
    # lanes_high: the lanes kernel with a channel's lanes 32 / TPC apart in the warp (LANE_HI), in one pass (2
    # lanes, one-warp programs; 4 lanes, 4-warp programs) and in chunks, against the fp32 reference and the
    # kernel with a channel's lanes side by side
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    cfg = dict(ts._config(), min_programs=1 << 20, gluon_staged=4, onepass_share=16)
    if mode == "chunks":
        cfg.update(onepass_tpc=0, lanes_chunk_warps=16)
        launches = record_results(monkeypatch, ts, "_lanes_chunking")
    else:
        cfg.update(onepass_tpc=2 if mode == "onepass2" else 4)
        launches = record_onepass_launches(monkeypatch, ts)
    E, width = (384, 48) if R == 12 else (768, 64)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + len(mode), E=E, R=R, width=width)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, dict(cfg, lanes_high=1))
        y_side = ts._TritonBiScan.apply(*inputs, False, dict(cfg, lanes_high=0))
    if mode == "chunks":
        assert len(launches) == 2 and all(plan is not None for plan in launches), launches
    else:
        assert [k.get("high") for k in launches] == [True, False], launches
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol
    # (the same arithmetic a lane, the same order of the sums over a channel's lanes)
    assert rel_err(y, y_side) < (1e-5 if dtype == torch.float32 else 1e-3)


def test_lanes_chunking_plan(monkeypatch):
    # where inference that stays chunked runs in chunks of the lanes kernel, and how it cuts the sequence: whole
    # stages a chunk, as many chunks as make lanes_chunk_warps one-warp programs an SM (on the CPU too: the plan
    # is host arithmetic)
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    monkeypatch.setattr(gluon_kernels, "AVAILABLE", True)
    monkeypatch.setattr(ts, "_gluon_device", lambda device: True)
    monkeypatch.setattr(ts, "_sm_count", lambda device: 132)
    cpu = torch.device("cpu")

    def plan(batch, length, rows_dtype=torch.bfloat16, **cfg):
        inputs = bi_scan_inputs(batch, length, torch.bfloat16, rows_dtype, seed=0, width=48)
        args = ts._bi_args(*inputs, 12, 16)
        return ts._lanes_chunking(dict(ts._config(), **dict(dict(lanes_chunk_warps=16), **cfg)), args, cpu)

    # Vim-Ti at 1248 px, batch 1: 24 programs of 16 channels a direction; 16 x 132 programs -> 44 chunks of 139
    # steps, rounded up to whole stages of 16 (a 16-channel warp copies 16 steps of bf16 x at a time): 43 of 144
    assert plan(1, 6085) == (16, 16, 43, 144)
    assert plan(1, 6085, lanes_chunk_warps=4) == (16, 16, 11, 560)
    assert plan(4, 6085) == (16, 16, 11, 560)
    assert plan(1, 6085, torch.float32) == (16, 16, 43, 144)
    assert plan(1, 65) == (16, 16, 5, 16)  # (no chunk shorter than a stage)
    assert plan(1, 6085, onepass_share=8) == (16, 8, 43, 144)
    assert plan(64, 300) is None  # (the batch alone makes enough programs: one chunk)
    for off in (dict(lanes_chunk_warps=0), dict(onepass_share=0), dict(gluon_staged=0), dict(gluon=0)):
        assert plan(1, 6085, **off) is None, off


def test_lanes_tpc_and_warps(monkeypatch):
    # the lanes a channel of a one-pass launch by the rule (lanes_tpc) and the warps a program that go with them
    # (lanes_warps -1: one for 2 lanes, 4 for more); host arithmetic, on the CPU too
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    monkeypatch.setattr(gluon_kernels, "AVAILABLE", True)
    monkeypatch.setattr(ts, "_gluon_device", lambda device: True)
    args = ts._bi_args(*bi_scan_inputs(16, 300, torch.bfloat16, torch.float32, seed=0, width=48), 12, 16)
    cfg = dict(ts._config(), onepass_tpc=-1, onepass_min_channels=12288, onepass_short_tokens=0)
    cpu = torch.device("cpu")
    assert ts._onepass_tpc(dict(cfg, lanes_tpc=2), args, cpu) == 2  # (16 x 2 x 384 = 12,288 channels)
    assert ts._onepass_tpc(dict(cfg, lanes_tpc=4), args, cpu) == 4
    assert ts._onepass_tpc(dict(cfg, lanes_tpc=4, onepass_min_channels=12289), args, cpu) == 0  # (chunked)
    # lanes_tpc -1, for a dt rank that pads to 16: 4 where the busiest of the 4 x SMs schedulers, counting whole
    # warps (16 channels a warp with 2 lanes, 8 with 4), is done first with them, a 4-lane warp at 0.6 of a 2-lane
    # one; else 2
    monkeypatch.setattr(ts, "_sm_count", lambda device: 132)
    assert ts._onepass_tpc(dict(cfg, lanes_tpc=-1), args, cpu) == 4  # (2 lanes: 768 warps, at most 2 a scheduler;
    # 4 lanes: 1,536, at most 3; 0.6 x 3 < 2)
    assert ts._onepass_tpc(dict(cfg, lanes_tpc=-1, onepass_min_channels=1), args, cpu) == 4
    monkeypatch.setattr(ts, "_sm_count", lambda device: 96)
    assert ts._onepass_tpc(dict(cfg, lanes_tpc=-1), args, cpu) == 2  # (384 schedulers: 2 warps against 4)
    monkeypatch.setattr(ts, "_sm_count", lambda device: 132)
    assert ts._LANES4_COST == 0.6  # (765 / 1,287 SASS instructions a pass, rounded)

    def brute(channels, sms):  # the busiest scheduler's warps, dealt out one at a time
        load = {lanes: [0] * (4 * sms) for lanes in (2, 4)}
        for lanes in (2, 4):
            for w in range(-(-channels // (32 // lanes))):
                load[lanes][w % (4 * sms)] += 1
        return 4 if ts._LANES4_COST * max(load[4]) < max(load[2]) else 2

    class Shape:
        N, R = 16, 12

    for sms in (66, 132):
        monkeypatch.setattr(ts, "_sm_count", lambda device, n=sms: n)
        for channels in range(768, 40000, 768):
            assert ts._lanes_tpc(dict(cfg, lanes_tpc=-1), Shape, channels, cpu) == brute(channels, sms), channels
    monkeypatch.setattr(ts, "_sm_count", lambda device: 132)
    wide = ts._bi_args(*bi_scan_inputs(16, 300, torch.bfloat16, torch.float32, seed=0, R=24), 24, 16)
    assert ts._onepass_tpc(dict(cfg, lanes_tpc=-1), wide, cpu) == 2  # (Vim-S's rank 24: 4 lanes measured slower)
    assert ts._config()["lanes_tpc"] == -1 and ts._config()["lanes_high"] == 1
    assert [ts._lanes_warps(dict(cfg, lanes_warps=-1), t) for t in (2, 4, 8)] == [1, 4, 4]
    assert ts._lanes_warps(dict(cfg, lanes_warps=2), 4) == 2


def test_rank_split():
    # the lanes kernel's W_dt dt_low in two parts whose widths are powers of two (R_HI, then R - R_HI >= 4), where
    # dt's rank is such a sum and not a power of two itself; 0 (one part, padded to a power of two) elsewhere or off
    from vision_mamba.ops.selective_scan import triton_scan as ts

    cfg = dict(ts._config(), lanes_rank_split=1)
    got = {R: ts._rank_split(cfg, R) for R in (1, 2, 3, 6, 12, 13, 16, 20, 24, 48, 96)}
    assert got == {1: 0, 2: 0, 3: 0, 6: 0, 12: 8, 13: 0, 16: 0, 20: 16, 24: 16, 48: 32, 96: 64}, got
    assert ts._rank_split(dict(cfg, lanes_rank_split=0), 12) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["onepass2", "onepass4", "chunks"])
@pytest.mark.parametrize("length,batch,dtype,R,E", [
    (197, 2, torch.bfloat16, 12, 384), (731, 1, torch.float32, 12, 384), (6085, 1, torch.bfloat16, 12, 384),
    (730, 2, torch.bfloat16, 24, 768), (300, 1, torch.float32, 16, 384), (300, 2, torch.bfloat16, 13, 384),
    (300, 1, torch.float32, 48, 1536)], ids=["ti-197", "ti-731", "ti-6085", "s-730", "r16", "r13", "b-300"])
def test_gluon_lanes_chain_matches(length, batch, dtype, R, E, mode, monkeypatch):
    # gluon_chain on the lanes kernel (one pass with 2 or 4 lanes a channel, and chunks): W_dt dt_low + bias in
    # one chain over the rank's two parts (Vim-Ti 8 + 4, Vim-S 16 + 8), over 16 columns (R = 13, 16: no split),
    # or as gl.sum where a part is wider than 16 (Vim-B 32 + 16); a lane's part of C_t . h_t chained, then summed
    # over the lanes. Against the fp32 reference and the kernel with gl.sum's sums
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    cfg = dict(ts._config(), min_programs=1 << 20, gluon_staged=4, onepass_share=16)
    if mode == "chunks":
        cfg.update(onepass_tpc=0, lanes_chunk_warps=16)
        launches = []
        chunked = ts._launch_lanes_chunked
        monkeypatch.setattr(ts, "_launch_lanes_chunked",
                            lambda *a, **k: launches.append(dict(k, share=16)) or chunked(*a, **k))
    else:
        cfg.update(onepass_tpc=2 if mode == "onepass2" else 4)
        launches = record_onepass_launches(monkeypatch, ts)
    width = ts._rank_cols(R, True, 16) + 32
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + R, E=E, R=R, width=width)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, dict(cfg, gluon_chain=1))
        y_tree = ts._TritonBiScan.apply(*inputs, False, dict(cfg, gluon_chain=0))
    assert [(k.get("chain"), k.get("share")) for k in launches] == [(True, 16), (False, 16)], launches
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol
    # (the same products, added in another order)
    assert rel_err(y, y_tree) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("share", [8, 16])
@pytest.mark.parametrize("warps", [4, 16])
@pytest.mark.parametrize("length,batch,dtype,R", [
    (65, 3, torch.float32, 12), (197, 2, torch.bfloat16, 12), (730, 3, torch.bfloat16, 12),
    (731, 1, torch.float32, 12), (6085, 1, torch.bfloat16, 12), (6085, 2, torch.float32, 12),
    (730, 2, torch.bfloat16, 24), (4096, 1, torch.bfloat16, 12)])
def test_gluon_lanes_chunked_matches(length, batch, dtype, R, warps, share, monkeypatch):
    # lanes_chunk_warps: inference that stays chunked, in chunks of scan_fwd_lanes_gluon_kernel (a first pass to
    # each chunk's end state, the carry, a second pass writing y), against the fp32 reference and the Triton
    # kernels' chunks; chunks of one stage up to hundreds of steps, a last chunk cut short by the sequence's end
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    plans = record_results(monkeypatch, ts, "_lanes_chunking")
    cfg = dict(ts._config(), min_programs=1 << 20, onepass_tpc=0, gluon_staged=4, lanes_chunk_warps=warps,
               onepass_share=share)
    E, width = (384, 48) if R == 12 else (768, 64)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + warps, E=E, R=R, width=width)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y = ts._TritonBiScan.apply(*inputs, False, cfg)
        y_triton = ts._TritonBiScan.apply(*inputs, False, dict(cfg, lanes_chunk_warps=0))
    assert len(plans) == 2 and plans[0] is not None and plans[1] is None, plans
    stage, unroll, n_chunks, steps = plans[0]
    assert unroll == min(share, stage)  # (fp32 activations: a stage of 8 steps)
    assert n_chunks > 1 and steps % stage == 0 and (n_chunks - 1) * steps < length <= n_chunks * steps
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) < tol and rel_err(y, y_triton) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("stage", [4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("length,batch", [(1, 1), (7, 2), (8, 1), (9, 3), (63, 3), (197, 2), (730, 4)])
def test_gluon_staged_forward_matches(length, batch, dtype, stage, monkeypatch):
    # the one-pass inference forward with its inputs staged through shared memory (scan_fwd_staged_gluon_kernel):
    # lengths shorter than a chunk, whole chunks and a partial last one, against the fp32 reference and the
    # one-pass kernel without staging
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    staged = record_results(monkeypatch, ts, "_staged_fits")
    cfg = dict(ts._config(), min_programs=0, staged_min_programs=0)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + stage, width=48)
    with torch.no_grad():
        ref = bi_scan_reference(*inputs)
        y_staged = ts._TritonBiScan.apply(*inputs, False, dict(cfg, gluon_staged=stage))
        assert len(staged) == 1 and staged[0] is not None  # (the staged kernel ran)
        y_plain = ts._TritonBiScan.apply(*inputs, False, dict(cfg, gluon_staged=0))
    assert len(staged) == 1
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert y_staged.dtype == dtype and torch.isfinite(y_staged).all()
    assert rel_err(y_staged, ref) < tol
    # the same arithmetic, in the same order; but with gluon_chain the staged kernel adds a channel's states in a
    # chain from D x (the plain kernel: gl.sum, then D x), which can round a bf16 output the other way
    same = 2e-3 if ts._chain_sums(cfg) and dtype == torch.bfloat16 else 1e-5
    assert rel_err(y_staged, y_plain) < same


@pytest.mark.gpu
@pytest.mark.parametrize("stage", [4, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("length,batch,save_every", [(1, 1, 0), (7, 2, 0), (9, 3, 0), (63, 3, 4), (197, 2, 0),
                                                     (730, 2, 0)])
def test_gluon_staged_training_forward_matches(length, batch, dtype, stage, save_every, monkeypatch):
    # the training forward in one pass staged through shared memory (scan_fwd_staged_gluon_kernel saving the
    # states entering every block): its output and saved states against the general Gluon forward's, and every
    # gradient through it against the fp32 reference
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    staged = record_results(monkeypatch, ts, "_staged_fits")
    cfg = dict(ts._config(), min_programs=0, gluon_bwd=1, save_every=save_every)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + stage, width=48)
    R, N = inputs[4].shape[1], inputs[8].shape[1]
    args = ts._bi_args(*[t.detach() for t in inputs], R, N)
    outs = []
    for config in (dict(cfg, gluon_train_staged=stage), dict(cfg, gluon_train_staged=0)):
        outs.append(ts.scan_forward(args, dtype, save_states=True, config=config))  # (outputs poisoned first)
    assert len(staged) == 1 and staged[0] is not None  # (the staged kernel ran, for the first config only)
    (y_s, h_s), (y_g, h_g) = outs
    assert h_s.shape == h_g.shape and h_s.stride() == h_g.stride()
    assert torch.isfinite(y_s).all() and torch.isfinite(h_s).all()
    assert rel_err(h_s, h_g) < 1e-5  # (the same arithmetic, in the same order)
    # (the gate applied in another order: a last-bit difference in fp32 can round a bf16 output the other way)
    assert rel_err(y_s, y_g) < (1e-5 if dtype == torch.float32 else 2e-3)
    ref = bi_scan_reference(*inputs)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    y = ts._TritonBiScan.apply(*inputs, True, dict(cfg, gluon_train_staged=stage))
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    assert rel_err(y, ref) < tol
    for name, a, b in zip(BI_NAMES, torch.autograd.grad(y, inputs, grad.to(y.dtype)), g_ref):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, (name, rel_err(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("parts,atomic_bc,chain", [(1, 0, 0), (2, 0, 0), (4, 0, 0), (2, 1, 0), (2, 1, 1)],
                         ids=["1", "2", "4", "2-atomic", "2-atomic-chain"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("length,batch,min_programs,width", [
    (1, 1, 0, 48), (7, 2, 0, 48), (8, 1, 0, 48), (9, 3, 0, 48), (63, 3, 0, 48), (197, 2, 0, 48), (197, 1, -1, 48),
    (730, 2, -1, 48), (197, 2, 0, 44), (63, 1, -1, 44)])
def test_gluon_staged_backward_matches(length, batch, min_programs, width, dtype, parts, atomic_bc, chain,
                                      monkeypatch):
    # the Gluon backward with each block's inputs staged through shared memory (scan_bwd_staged_gluon_kernel):
    # partial and whole 8-step blocks, each differentiated in 1, 2 or 4 parts (partial blocks: fewer, the last one
    # short), one pass and chunk-parallel (min_programs -1: the adjoint carried into the chunks), the model's
    # padded rows (48: dt_low | zeros | B | C) and unpadded ones (44: B at column 12), d B / d C as partials per
    # block of channels or added atomically, the walk's sums over states by gl.sum or as chains, against the fp32
    # reference and the unstaged Gluon backward, all twelve gradients
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    staged = record_results(monkeypatch, ts, "_bwd_staged_fits")
    cfg = dict(ts._config(), min_programs=min_programs, gluon=1, gluon_bwd=1)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + batch, width=width)
    ref = bi_scan_reference(*inputs)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    results = []
    for config in (dict(cfg, gluon_bwd_staged=1, gluon_bwd_parts=parts, gluon_bwd_atomic_bc=atomic_bc,
                        gluon_chain=chain),
                   dict(cfg, gluon_bwd_staged=0)):
        y = ts._TritonBiScan.apply(*inputs, True, config)
        results.append(torch.autograd.grad(y, inputs, grad.to(y.dtype)))
    assert len(staged) == 1 and staged[0] is not None  # (the staged kernel ran, once)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    # (the same arithmetic but for the order of the sums over channels and the form of softplus' slope: last-bit
    # differences in fp32, which can round a bf16 gradient the other way)
    same = 1e-5 if dtype == torch.float32 else 2e-3
    for name, a, b, c in zip(BI_NAMES, results[0], g_ref, results[1]):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, (name, rel_err(a, b))
        if length == 1 and name.startswith("alog") and chain:
            # (with one step, A's gradient is exactly zero and both kernels give rounding noise, which the chained
            # sums round otherwise; the reference check above bounds it)
            continue
        assert rel_err(a, c) < same, (name, rel_err(a, c))


def _staged_backward_matches(monkeypatch, inputs, staged_cfg, dtype):
    """The fused scan's twelve gradients with ``staged_cfg`` (which must launch the staged Gluon backward, once)
    against the fp32 reference and the Triton backward."""
    from vision_mamba.ops.selective_scan import triton_scan as ts

    staged = record_results(monkeypatch, ts, "_bwd_staged_fits")
    ref = bi_scan_reference(*inputs)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    results = []
    for config in (staged_cfg, dict(staged_cfg, gluon_bwd=0)):
        y = ts._TritonBiScan.apply(*inputs, True, config)
        results.append(torch.autograd.grad(y, inputs, grad.to(y.dtype)))
    assert len(staged) == 1 and staged[0] is not None  # (the staged kernel ran, once)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for name, a, b, c in zip(BI_NAMES, results[0], g_ref, results[1]):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, (name, rel_err(a, b))
        assert rel_err(a, c) < 2 * tol, (name, rel_err(a, c))


@pytest.mark.gpu
@pytest.mark.parametrize("save_every,parts", [(16, 2), (16, 4), (32, 4), (32, 8)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("length,batch,min_programs", [(730, 2, 0), (1100, 1, -1)])
def test_gluon_staged_backward_long_blocks_matches(length, batch, min_programs, dtype, save_every, parts,
                                                  monkeypatch):
    # the staged backward on the long sequences' save intervals (16 and 32 steps; a block's states in shared memory
    # a part at a time), one pass and chunk-parallel, against the fp32 reference and the Triton backward, all twelve
    # gradients
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    cfg = dict(ts._config(), min_programs=min_programs, save_every=save_every, gluon=1, gluon_bwd=1,
               gluon_bwd_staged=1, gluon_bwd_parts=parts, gluon_bwd_part_max=0)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + save_every + parts)
    _staged_backward_matches(monkeypatch, inputs, cfg, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("save_every", [16, 32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("E,R", [(384, 12), (768, 24)], ids=["vim_ti", "vim_s"])
def test_gluon_staged_backward_long_blocks_by_default_rule(E, R, save_every, dtype, monkeypatch):
    # the default rule (parts of at most 8 steps) on long blocks, chunk-parallel, at Vim-Ti's widths and Vim-S's
    # (E = 768, dt_rank 24 in padded rows; for them the rule's wide threshold is raised to 32 here)
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    N = 16
    width = ts._rank_cols(R, True, N) + 2 * N
    cfg = dict(ts._config(), min_programs=-1, save_every=save_every, gluon_bwd_staged_steps_wide=32)
    inputs = bi_scan_inputs(1, 1100, dtype, torch.float32, seed=save_every + E, E=E, R=R, width=width)
    _staged_backward_matches(monkeypatch, inputs, cfg, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("length,batch", [(197, 2), (63, 3), (9, 1)])
def test_gluon_staged_kernels_at_vim_s_widths(length, batch, dtype, monkeypatch):
    # Vim-S's widths (E = 768, dt_rank 24 in rows padded as the model pads them: 32 | B | C): the staged inference
    # forward, the staged training forward and the staged backward all run, against the fp32 reference (output and
    # all twelve gradients) and the unstaged kernels
    from vision_mamba.ops.selective_scan import gluon_kernels
    from vision_mamba.ops.selective_scan import triton_scan as ts

    if not gluon_kernels.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    E, R, N = 768, 24, 16
    width = ts._rank_cols(R, True, N) + 2 * N
    fwd_fits = record_results(monkeypatch, ts, "_staged_fits")
    bwd_fits = record_results(monkeypatch, ts, "_bwd_staged_fits")
    cfg = dict(ts._config(), min_programs=0, gluon=1, gluon_bwd=1)
    inputs = bi_scan_inputs(batch, length, dtype, torch.float32, seed=length + batch, E=E, R=R, width=width)
    ref = bi_scan_reference(*inputs)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    with torch.no_grad():
        y_inf = ts._TritonBiScan.apply(*inputs, False, cfg)
    y = ts._TritonBiScan.apply(*inputs, True, cfg)
    grads = torch.autograd.grad(y, inputs, grad.to(y.dtype))
    assert len(fwd_fits) == 2 and all(f is not None for f in fwd_fits)  # (inference and training: staged)
    assert len(bwd_fits) == 1 and bwd_fits[0] is not None
    plain = dict(cfg, gluon_staged=0, gluon_train_staged=0, gluon_bwd_staged=0)
    y_plain = ts._TritonBiScan.apply(*inputs, True, plain)
    grads_plain = torch.autograd.grad(y_plain, inputs, grad.to(y.dtype))
    assert len(fwd_fits) == 2 and len(bwd_fits) == 1  # (the unstaged kernels ran)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for out in (y_inf, y):
        assert torch.isfinite(out).all() and rel_err(out, ref) < tol
    assert rel_err(y_inf, y_plain) < (1e-5 if dtype == torch.float32 else 2e-3)
    same = 1e-5 if dtype == torch.float32 else 2e-3
    for name, a, b, c in zip(BI_NAMES, grads, g_ref, grads_plain):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, (name, rel_err(a, b))
        assert rel_err(a, c) < same, (name, rel_err(a, c))


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
