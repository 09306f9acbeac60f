"""The selective scan in plain, vectorised PyTorch: the ``torch`` backend, and the path every CPU user gets.

The sequence is cut into chunks; only one chunk's [B, T, E, N] decay / state tensors exist at a time. Inside a
chunk the linear recurrence h_t = a_t * h_{t-1} + b_t runs in about 3 * sqrt(T) in-place tensor operations
instead of T: the chunk is viewed as G groups of S steps; one pass of S steps scans every group at once from a
zero state while turning a into its running product, and one pass over the G groups adds each group's true
incoming state times that running product (see README.md). The backward pass is written by hand: it recomputes
the states of each chunk from the saved chunk-boundary states and runs the adjoint recurrence in reverse.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# Elements of one [B, T, E, N] chunk buffer (fp32): 2**18 (1 MiB) measured fastest at Vim-Ti shapes on a 2-core CPU.
DEFAULT_CHUNK_ELEMENTS = 1 << 18


MIN_CHUNK_STEPS = 16  # fewer steps per chunk and the per-chunk ops dominate


def _chunk_length(batch: int, channels: int, states: int, length: int, chunk_elements: int) -> int:
    return max(1, min(length, max(MIN_CHUNK_STEPS, chunk_elements // max(1, batch * channels * states))))


# Below this many elements per time step ([B, E, N]), per-op overhead dominates and grouping the recurrence into
# ~3 sqrt(T) ops pays; above it, a plain step-by-step recurrence (one pass over memory) is faster (measured on a
# 2-core CPU at Vim-Ti shapes: batch 1 groups, batch 2 and up does not).
SEQUENTIAL_ABOVE = 8192


def _group_steps(length: int, step_elements: int = 0) -> int:
    """Steps per group (S) for a chunk of ``length``: about sqrt(length) keeps S + G smallest; 1 (plain sequential
    recurrence) when each step is large enough to amortise an op."""
    if step_elements >= SEQUENTIAL_ABOVE:
        return 1
    return max(1, math.ceil(math.sqrt(length)))


def linear_recurrence_(a: Tensor, b: Tensor, steps: int, reverse: bool = False) -> None:
    """In place over dim 1 of [B, T, ...] (T a multiple of ``steps``): b <- h, with

        forward:  h_t = a_t * h_{t-1} + b_t   (h_{-1} = 0)
        reverse:  h_t = a_t * h_{t+1} + b_t   (h_T = 0)

    ``a`` is overwritten (with running products). Zero padding at the end of the time axis is harmless in both
    directions.
    """
    batch, length = a.shape[:2]
    groups = length // steps
    assert groups * steps == length, "pad the chunk to a multiple of the group size"
    a4 = a.view(batch, groups, steps, *a.shape[2:])
    b4 = b.view(batch, groups, steps, *b.shape[2:])
    if not reverse:
        for s in range(1, steps):
            b4[:, :, s].addcmul_(a4[:, :, s], b4[:, :, s - 1])
            a4[:, :, s].mul_(a4[:, :, s - 1])
        for g in range(1, groups):
            b4[:, g].addcmul_(a4[:, g], b4[:, g - 1, steps - 1:])
    else:
        for s in range(steps - 2, -1, -1):
            b4[:, :, s].addcmul_(a4[:, :, s], b4[:, :, s + 1])
            a4[:, :, s].mul_(a4[:, :, s + 1])
        for g in range(groups - 2, -1, -1):
            b4[:, g].addcmul_(a4[:, g], b4[:, g + 1, :1])


class _Buffers:
    """Flat fp32 storage for the chunk tensors, allocated once per call and reused by every chunk: fresh large
    allocations cost page faults on the CPU (first touch), which would otherwise dominate the scan."""

    def __init__(self, count: int, numel: int, like: Tensor):
        self.flat = [like.new_empty(numel) for _ in range(count)]

    def view(self, i: int, *shape: int) -> Tensor:
        n = 1
        for d in shape:
            n *= d
        return self.flat[i][:n].view(*shape)


def _decay_and_input(delta: Tensor, u: Tensor, A: Tensor, B: Tensor, a: Tensor, b: Tensor) -> None:
    """a <- exp(delta * A), b <- delta * u * B for one chunk, zero-padded in time: a, b are [B, T', E, N]."""
    length = delta.shape[1]
    torch.mul(delta.unsqueeze(-1), A, out=a[:, :length])
    a[:, :length].exp_()
    torch.mul((delta * u).unsqueeze(-1), B.unsqueeze(2), out=b[:, :length])
    if a.shape[1] > length:
        a[:, length:].zero_()
        b[:, length:].zero_()


def softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) as max(x, 0) + log(1 + exp(-|x|)): F.softplus goes through log1p, which some CPU builds
    of torch do not vectorise (several times slower)."""
    return x.abs().neg_().exp_().add_(1).log_().add_(x.clamp(min=0))


def _contract_states(h: Tensor, v: Tensor) -> Tensor:
    """sum_n h[b, t, e, n] v[b, t, n] -> [B, T, E], as a row vector times h^T: several times faster on the CPU
    than the batched matrix-vector product h @ v."""
    return torch.matmul(v.unsqueeze(2), h.transpose(-1, -2)).squeeze(2)


def _bounds(length: int, chunk: int):
    return [(t, min(t + chunk, length)) for t in range(0, length, chunk)]


def _padded(length: int, step_elements: int = 0) -> Tuple[int, int]:
    steps = _group_steps(length, step_elements)
    return steps, -(-length // steps) * steps


def _scan_forward(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int,
                  keep_states: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """y_t = <h_t, C_t> (no D, no gate) for fp32 forward-ordered inputs; optionally the state entering each chunk."""
    batch, length, channels = u.shape
    states_n = A.shape[1]
    y = u.new_empty(batch, length, channels)
    spans = _bounds(length, chunk)
    states = u.new_zeros(batch, len(spans), channels, states_n) if keep_states else None
    step_elements = batch * channels * states_n
    longest = max(_padded(t1 - t0, step_elements)[1] for t0, t1 in spans)
    buf = _Buffers(2, batch * longest * channels * states_n, u)
    h0 = None
    for i, (t0, t1) in enumerate(spans):
        S, Tp = _padded(t1 - t0, step_elements)
        a, b = buf.view(0, batch, Tp, channels, states_n), buf.view(1, batch, Tp, channels, states_n)
        _decay_and_input(delta[:, t0:t1], u[:, t0:t1], A, B[:, t0:t1], a, b)
        if h0 is not None:
            if states is not None:
                states[:, i] = h0
            b[:, 0].addcmul_(a[:, 0], h0)
        linear_recurrence_(a, b, S)
        h = b[:, :t1 - t0]
        y[:, t0:t1] = _contract_states(h, C[:, t0:t1])
        h0 = h[:, -1].clone()
    return y, states


# The `compiled` backend: the forward recurrence in pieces of this many steps, each piece one function compiled by
# torch.compile (inductor fuses the piece's steps into one loop over the [B, E, N] states, the decays computed in
# registers). The first shape compiles a version for its sizes, a second one a version with dynamic batch and
# width that serves every later shape (torch.compile's default: no recompilation per batch size); ~5 - 12 s each
# on a 2-core CPU. 32 steps: see docs/cpu_speed.md for the sizes timed against each other.
COMPILED_STEPS = 32


def _piece(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
    """T steps of the scan from state h, written as the plain loop torch.compile unrolls and fuses: u, delta
    [B, T, E] (fp32, delta after softplus), A [E, N], B, C [B, T, N], h [B, E, N] -> (y [B, T, E], h after)."""
    ys = []
    for t in range(u.shape[1]):
        d = delta[:, t].unsqueeze(-1)
        h = torch.exp(d * A) * h + (d * u[:, t].unsqueeze(-1)) * B[:, t].unsqueeze(1)
        ys.append((h * C[:, t].unsqueeze(1)).sum(-1))
    return torch.stack(ys, 1), h


@functools.lru_cache(maxsize=None)
def _compiled_piece():
    return torch.compile(_piece, dynamic=None, fullgraph=True)


def _scan_forward_compiled(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           keep_states: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """As :func:`_scan_forward` with chunks of COMPILED_STEPS, each through the compiled piece. The sequence is
    zero-padded to whole pieces (delta = 0: decay 1 and no input, so the padded steps leave the state as it is)."""
    batch, length, channels = u.shape
    T = COMPILED_STEPS
    pad = -length % T
    if pad:
        u, delta, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (u, delta, B, C))
    n = (length + pad) // T
    h = u.new_zeros(batch, channels, A.shape[1])
    states = u.new_zeros(batch, n, channels, A.shape[1]) if keep_states else None
    y = u.new_empty(batch, length + pad, channels)
    fn = _compiled_piece()
    for i in range(n):
        if states is not None:
            states[:, i] = h
        s = slice(i * T, (i + 1) * T)
        try:
            y[:, s], h = fn(u[:, s], delta[:, s], A, B[:, s], C[:, s], h)
        except Exception as e:  # no C++ compiler, an unsupported platform, ...
            raise RuntimeError(f"scan backend 'compiled' needs a working torch.compile (inductor; on the CPU a C++ "
                               f"compiler): {type(e).__name__}: {str(e)[:300]}. Use the 'torch' backend.") from e
    return y[:, :length], states


def _dsilu(z: Tensor) -> Tuple[Tensor, Tensor]:
    s = torch.sigmoid(z)
    return z * s, s * (1 + z * (1 - s))


class _SelectiveScanChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, reverse: bool, chunk_elements: int,
                grad_enabled: bool, compiled: bool = False):
        dtype = u.dtype
        batch, length, channels = u.shape
        flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
        uf, Bf, Cf = flip(u.float()), flip(B.float()), flip(C.float())
        dl = flip(delta.float())
        if delta_bias is not None:
            dl = dl + delta_bias.float()
        if delta_softplus:
            dl = softplus(dl)
        Af = A.float()
        # (ctx.needs_input_grad alone is true under inference_mode too when a parameter is passed in directly)
        needs_grad = grad_enabled and any(ctx.needs_input_grad[:8])
        if compiled:
            chunk = COMPILED_STEPS  # the backward recomputes from the states saved at the pieces' starts
            y, states = _scan_forward_compiled(uf, dl, Af, Bf, Cf, keep_states=needs_grad)
        else:
            chunk = _chunk_length(batch, channels, A.shape[1], length, chunk_elements)
            y, states = _scan_forward(uf, dl, Af, Bf, Cf, chunk, keep_states=needs_grad)
        if D is not None:
            y.addcmul_(uf, D.float())
        if z is not None:
            y.mul_(F.silu(flip(z.float())))
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
            ctx.options = (delta_softplus, reverse, chunk)
        return flip(y).to(dtype)

    @staticmethod
    def backward(ctx, grad_out):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        delta_softplus, reverse, chunk = ctx.options
        flip = (lambda t: t.flip(1)) if reverse else (lambda t: t)
        with torch.no_grad():
            g = flip(grad_out.float())
            uf, Bf, Cf = flip(u.float()), flip(B.float()), flip(C.float())
            Af = A.float()
            raw = flip(delta.float())
            if delta_bias is not None:
                raw = raw + delta_bias.float()
            dl = softplus(raw) if delta_softplus else raw
            if z is not None:
                zf = flip(z.float())
                gate, dgate = _dsilu(zf)
                g_y = g * gate
                g_z = torch.empty_like(g)
            else:
                g_y, g_z = g, None
            g_u = g_y * D.float() if D is not None else torch.zeros_like(uf)
            g_D = (g_y * uf).sum((0, 1)) if D is not None else None
            g_dl = torch.empty_like(dl)
            g_A = torch.zeros_like(Af)
            g_B = torch.empty_like(Bf)
            g_C = torch.empty_like(Cf)
            spans = _bounds(uf.shape[1], chunk)
            batch, channels, states_n = uf.shape[0], uf.shape[2], Af.shape[1]
            step_elements = batch * channels * states_n
            longest = max(_padded(t1 - t0, step_elements)[1] for t0, t1 in spans)
            buf = _Buffers(4, batch * longest * channels * states_n, uf)
            carry = None  # d loss / d h entering from the chunk after, already multiplied by its first decay
            for i in range(len(spans) - 1, -1, -1):
                t0, t1 = spans[i]
                T = t1 - t0
                S, Tp = _padded(T, step_elements)
                shape = (batch, Tp, channels, states_n)
                a, h, decay, lam = (buf.view(k, *shape) for k in range(4))
                d_c, u_c, B_c, C_c, gy_c = dl[:, t0:t1], uf[:, t0:t1], Bf[:, t0:t1], Cf[:, t0:t1], g_y[:, t0:t1]
                _decay_and_input(d_c, u_c, Af, B_c, a, h)
                decay.copy_(a)
                h0 = states[:, i] if i > 0 else None
                if h0 is not None:
                    h[:, 0].addcmul_(a[:, 0], h0)
                linear_recurrence_(a, h, S)
                h = h[:, :T]
                if g_z is not None:
                    y_c = _contract_states(h, C_c)
                    if D is not None:
                        y_c.addcmul_(u_c, D.float())
                    g_z[:, t0:t1] = g[:, t0:t1] * y_c * dgate[:, t0:t1]
                g_C[:, t0:t1] = torch.matmul(gy_c.unsqueeze(-2), h).squeeze(-2)
                # adjoint: lam_t = g_y_t C_t + decay_{t+1} lam_{t+1}, run as a reverse recurrence
                torch.mul(gy_c.unsqueeze(-1), C_c.unsqueeze(2), out=lam[:, :T])
                lam[:, T:].zero_()
                if carry is not None:
                    lam[:, T - 1].add_(carry)
                shifted = a  # the running products are no longer needed: reuse the buffer
                shifted[:, :T - 1] = decay[:, 1:T]
                shifted[:, T - 1:].zero_()
                linear_recurrence_(shifted, lam, S, reverse=True)
                lam = lam[:, :T]
                carry = decay[:, 0] * lam[:, 0]
                lam_B = _contract_states(lam, B_c)                                           # [B, T, E]
                g_B[:, t0:t1] = torch.matmul((d_c * u_c).unsqueeze(-2), lam).squeeze(-2)
                g_u[:, t0:t1].addcmul_(d_c, lam_B)
                # d loss / d decay_t = lam_t * h_{t-1}; fold in d decay / d(delta A) = decay
                lam.mul_(decay[:, :T])
                lam[:, 1:].mul_(h[:, :-1])
                if h0 is not None:
                    lam[:, 0].mul_(h0)
                else:
                    lam[:, 0].zero_()
                torch.mul(lam, Af, out=decay[:, :T])
                g_dl[:, t0:t1] = decay[:, :T].sum(-1)
                g_dl[:, t0:t1].addcmul_(u_c, lam_B)
                g_A.add_(torch.einsum("bten,bte->en", lam, d_c))
            g_raw = g_dl * torch.sigmoid(raw) if delta_softplus else g_dl
            g_bias = g_raw.sum((0, 1)) if delta_bias is not None else None
            grads = (
                flip(g_u).to(u.dtype), flip(g_raw).to(delta.dtype), g_A.to(A.dtype),
                flip(g_B).to(B.dtype), flip(g_C).to(C.dtype),
                g_D.to(D.dtype) if D is not None else None,
                flip(g_z).to(z.dtype) if z is not None else None,
                g_bias.to(delta_bias.dtype) if delta_bias is not None else None,
            )
        return grads + (None, None, None, None, None)


def _exporting() -> bool:
    is_exporting = getattr(getattr(torch, "compiler", None), "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = True,
    reverse: bool = False,
    chunk_elements: Optional[int] = None,
    compiled: bool = False,
) -> Tensor:
    """Same contract as :func:`selective_scan_ref` (shapes [B, L, E], [E, N], [B, L, N]); fp32 state, output in
    u's dtype, differentiable in every tensor argument. ``compiled``: the forward recurrence through torch.compile
    (the `compiled` backend); the backward is the same either way.

    Under ``torch.export`` the reference's loop over time runs instead: this path's in-place buffers and its
    chunk sizes, chosen from the batch size, would make the exported program fail when called with gradients
    enabled and pin its batch dimension."""
    if _exporting():
        from .reference import selective_scan_ref

        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    chunk_elements = chunk_elements or DEFAULT_CHUNK_ELEMENTS
    return _SelectiveScanChunked.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, chunk_elements,
                                       torch.is_grad_enabled(), compiled)
