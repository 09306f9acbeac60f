"""The selective scan: the reference against an explicit scalar loop, the chunked torch path against the reference
(outputs and every gradient, fp32 and bf16, awkward lengths), and the backend switch."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from vision_mamba.ops import (
    get_scan_backend,
    resolve_backend,
    scan_backend,
    selective_scan_chunked,
    selective_scan_fn,
    selective_scan_ref,
    set_scan_backend,
)

from backend_check import outputs_and_grads

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, length, channels=8, states=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=g)
    delta = torch.randn(batch, length, channels, generator=g) * 0.5 - 1.0
    A = -(torch.rand(channels, states, generator=g) * 4 + 0.2)
    B = torch.randn(batch, length, states, generator=g)
    C = torch.randn(batch, length, states, generator=g)
    D = torch.randn(channels, generator=g)
    z = torch.randn(batch, length, channels, generator=g)
    bias = torch.randn(channels, generator=g) * 0.3
    tensors = [u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, z.to(dtype), bias]
    return [t.clone().requires_grad_() for t in tensors]


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def scalar_loop(u, delta, A, B, C, D, z, bias, reverse=False):
    """The scan as scalar float64 arithmetic over every (batch, channel, state, time): no tensor tricks at all."""
    u, delta, A, B, C, D, z, bias = (t.detach().double().numpy() for t in (u, delta, A, B, C, D, z, bias))
    batch, length, channels = u.shape
    states = A.shape[1]
    y = np.zeros_like(u)
    order = range(length - 1, -1, -1) if reverse else range(length)
    for b in range(batch):
        for e in range(channels):
            h = [0.0] * states
            for t in order:
                x = delta[b, t, e] + bias[e]
                dt = x if x > 20 else math.log1p(math.exp(x))
                acc = 0.0
                for n in range(states):
                    h[n] = math.exp(dt * A[e, n]) * h[n] + dt * B[b, t, n] * u[b, t, e]
                    acc += h[n] * C[b, t, n]
                gate = z[b, t, e] / (1 + math.exp(-z[b, t, e]))
                y[b, t, e] = (acc + D[e] * u[b, t, e]) * gate
    return torch.from_numpy(y)


@pytest.mark.parametrize("reverse", [False, True])
def test_reference_matches_scalar_loop(reverse):
    xs = make_inputs(2, 7, channels=3, states=4, seed=1)
    expected = scalar_loop(*xs, reverse=reverse)
    got = selective_scan_ref(*xs, reverse=reverse)
    assert rel_err(got, expected) < 1e-6


def test_reference_without_optional_terms():
    u, delta, A, B, C, D, z, bias = make_inputs(1, 5, channels=2, states=3, seed=2)
    y = selective_scan_ref(u, delta, A, B, C, delta_softplus=False)
    # one step by hand: h_0 = delta_0 B_0 u_0, y_0 = <h_0, C_0>
    y0 = (delta[0, 0, :, None] * B[0, 0, None, :] * u[0, 0, :, None] * C[0, 0, None, :]).sum(-1)
    assert torch.allclose(y[0, 0], y0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("length", [1, 63, 197, 730])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_chunked_matches_reference(dtype, length, batch, reverse):
    xs = make_inputs(batch, length, dtype=dtype, seed=length + batch)
    y_ref = selective_scan_ref(*xs, reverse=reverse)
    grad = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, xs, grad)
    # A small chunk budget forces several chunks (and a ragged last one) even at short lengths.
    y = selective_scan_chunked(*xs, reverse=reverse, chunk_elements=8 * 16 * 50)
    g = torch.autograd.grad(y, xs, grad)
    assert y.dtype == dtype
    # Both compute in fp32 from the same inputs; bf16 only rounds the output and the returned gradients.
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(y, y_ref) < tol
    for name, a, b in zip(NAMES, g, g_ref):
        assert a.dtype == b.dtype
        assert rel_err(a, b) < tol, name


def _have_cpp_compiler() -> bool:
    import shutil

    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++"))


needs_compiler = pytest.mark.skipif(not _have_cpp_compiler(), reason="the `compiled` backend needs a C++ compiler")


@needs_compiler
@pytest.mark.parametrize("length", [1, 45, 64])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_compiled_matches_reference(length, reverse):
    # the forward recurrence through torch.compile in pieces of 32 steps (45: a zero-padded last piece; 64: two whole
    # pieces), the backward recomputing from the states saved at the pieces' starts; every input's gradient
    xs = make_inputs(2, length, seed=length)
    y_ref = selective_scan_ref(*xs, reverse=reverse)
    grad = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, xs, grad)
    y = selective_scan_chunked(*xs, reverse=reverse, compiled=True)
    g = torch.autograd.grad(y, xs, grad)
    assert rel_err(y, y_ref) < 1e-5
    for name, a, b in zip(NAMES, g, g_ref):
        if not b.any():  # one step: dL/dA is exactly zero
            assert a.abs().max() < 1e-6, name
            continue
        assert rel_err(a, b) < 1e-5, name
    with torch.inference_mode(), scan_backend("compiled"):
        xs = [t.detach().to(torch.bfloat16) if t.dim() == 3 else t.detach() for t in xs]
        out = selective_scan_fn(*xs, reverse=reverse)
    assert out.dtype == torch.bfloat16 and rel_err(out, selective_scan_ref(*xs, reverse=reverse)) < 1e-2


@needs_compiler
def test_compiled_backend_whole_model():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vim")
    x = torch.randn(2, 3, 64, 64)
    outs = outputs_and_grads(model, x, ("reference", "compiled"))
    assert rel_err(outs[1][0], outs[0][0]) < 1e-5
    for (name, _), a, b in zip(model.named_parameters(), outs[1][1], outs[0][1]):
        assert rel_err(a, b) < 1e-4, name


def test_chunked_single_chunk_and_no_optionals():
    u, delta, A, B, C, *_ = make_inputs(2, 40)
    delta = (delta.detach().abs() * 0.2).requires_grad_()  # without softplus, delta itself must be positive
    y_ref = selective_scan_ref(u, delta, A, B, C, delta_softplus=False)
    y = selective_scan_chunked(u, delta, A, B, C, delta_softplus=False)
    assert rel_err(y, y_ref) < 1e-5
    g_ref = torch.autograd.grad(y_ref.sum(), [u, delta, A, B, C])
    g = torch.autograd.grad(y.sum(), [u, delta, A, B, C])
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-5


def test_chunked_inference_mode_and_large_decay():
    # Strong decays (|delta * A| up to ~100 per step) must not overflow or produce NaN.
    xs = [t.detach() for t in make_inputs(1, 97)]
    xs[1] = xs[1] + 4.0
    xs[2] = xs[2] * 5
    with torch.inference_mode():
        y = selective_scan_chunked(*xs)
    assert torch.isfinite(y).all()
    assert rel_err(y, selective_scan_ref(*xs)) < 1e-5


def test_backend_switch(monkeypatch):
    monkeypatch.delenv("VISION_MAMBA_SCAN", raising=False)
    set_scan_backend(None)
    assert get_scan_backend() == "auto"
    assert resolve_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("VISION_MAMBA_SCAN", "reference")
    assert resolve_backend(torch.device("cpu")) == "reference"
    with scan_backend("torch"):
        assert get_scan_backend() == "torch"
    with scan_backend("compiled"):  # opt-in only: auto never picks it
        assert resolve_backend(torch.device("cpu")) == "compiled"
    assert get_scan_backend() == "reference"
    set_scan_backend("torch")
    try:
        assert get_scan_backend() == "torch"
    finally:
        set_scan_backend(None)
    monkeypatch.setenv("VISION_MAMBA_SCAN", "fastest")
    with pytest.raises(ValueError, match="unknown scan backend 'fastest' .from the environment variable "
                                         "VISION_MAMBA_SCAN."):
        get_scan_backend()
    with pytest.raises(ValueError, match="unknown scan backend"):
        set_scan_backend("cuda")
    with pytest.raises(TypeError, match="named by a string"):
        set_scan_backend(1)


def test_triton_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="scan backend 'triton'"):
        resolve_backend(torch.device("cpu"), "triton")


def test_dispatch_uses_chosen_backend():
    xs = [t.detach() for t in make_inputs(1, 9)]
    with scan_backend("reference"):
        a = selective_scan_fn(*xs)
    with scan_backend("torch"):
        b = selective_scan_fn(*xs)
    assert rel_err(b, a) < 1e-5
