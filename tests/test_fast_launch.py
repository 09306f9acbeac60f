"""The launch cache of vision_mamba.ops.fast_launch: its specialisation key (CPU), the fallback to Triton's own
path, and on a GPU the cached launches against Triton's path (same kernels, same results), including arguments
that change a kernel's specialisation (a misaligned tensor, an integer that stops being a multiple of 16)."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are first imported

from vision_mamba.ops.fast_launch import _int_key, _no_hook, fast, fast_launch_enabled, spec_key  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_int_key_separates_what_triton_specialises():
    # == 1, multiple of 16, i32 / i64 / u64 range: each a different key
    keys = [_int_key(v) for v in (1, 16, 17, 0, 2 ** 31, 2 ** 31 + 1, 2 ** 63, 2 ** 63 + 1, -16, -(2 ** 31) - 1)]
    assert keys[0] != keys[1] != keys[2]
    assert keys[1] == keys[3] == keys[8]  # 16, 0 and -16: all multiples of 16, all i32
    assert len({keys[1], keys[2], keys[4], keys[5], keys[6], keys[7]}) == 6
    assert keys[9] == _int_key(2 ** 31 + 1)  # i64 either side
    assert _int_key(2) == _int_key(3) == _int_key(2 ** 31 - 1)  # no specialisation on other values


def test_spec_key():
    base = torch.zeros(64)
    cx = (False, False, True, False, False)
    k = spec_key([base, 64, 128, None, 1.5], cx)
    assert k is not None and k == spec_key([torch.ones(64), 64, 128, None, 2.5], cx)
    assert k != spec_key([base[1:], 64, 128, None, 1.5], cx)  # 4 bytes off: no 16-byte alignment
    assert k == spec_key([base[4:], 64, 128, None, 1.5], cx)  # 16 bytes off: aligned
    assert k != spec_key([base.half(), 64, 128, None, 1.5], cx)  # dtype
    assert k != spec_key([base, 65, 128, None, 1.5], cx)  # not a multiple of 16 any more
    assert k != spec_key([base, 64, 64, None, 1.5], cx)  # a constexpr: keyed by value
    assert k != spec_key([base, 64, 128, base, 1.5], cx)  # None vs a tensor
    assert spec_key([base, 64, True, None, 1.5], cx) != spec_key([base, 64, 1, None, 1.5], cx)  # bool vs int
    p = torch.nn.Parameter(torch.zeros(8))
    assert spec_key([p], (False,)) == spec_key([torch.zeros(8)], (False,))  # a Parameter is a tensor
    assert spec_key([(1, 2)], (False,)) is None  # a kind not keyed here: Triton's own path
    assert spec_key([[1, 2]], (True,)) is None  # an unhashable constexpr


def test_setting_follows_the_environment(monkeypatch):
    monkeypatch.setenv("VISION_MAMBA_TRITON_FAST_LAUNCH", "0")
    assert not fast_launch_enabled()
    monkeypatch.setenv("VISION_MAMBA_TRITON_FAST_LAUNCH", "1")
    assert fast_launch_enabled()
    monkeypatch.delenv("VISION_MAMBA_TRITON_FAST_LAUNCH")
    assert fast_launch_enabled()


def test_hook_settings():
    class Chain:  # Triton 3.5+'s HookChain
        def __init__(self, calls):
            self.calls = calls

    assert _no_hook(None) and _no_hook(Chain([]))
    assert not _no_hook(Chain([print])) and not _no_hook(print)


def test_other_callables_go_through_their_own_path():
    calls = []

    class Kernel:  # stands in for a kernel object, as benchmarks/kernel_layouts.py's recorder does
        def __getitem__(self, grid):
            return lambda *a, **k: calls.append((grid, a, k))

    kern = Kernel()
    fast(kern)[(3,)](1, x=2)
    assert calls == [((3,), (1,), {"x": 2})]
    assert fast(kern) is fast(kern)


def _conv(x, w_f, w_b, b_f, b_b, walk=1):
    from vision_mamba.ops.selective_scan.triton_scan import _config, conv_forward

    return conv_forward(x, w_f, w_b, b_f, b_b, dict(_config(), conv_walk=walk))


def _conv_inputs(L, E, dtype):
    g = torch.Generator().manual_seed(L)
    x = torch.randn(2, L, E + 1, generator=g).to(dtype).to(DEVICE)
    ws = [torch.randn(E, 1, 4, generator=g).to(DEVICE) for _ in range(2)]
    bs = [torch.randn(E, generator=g).to(DEVICE) for _ in range(2)]
    return x, ws, bs


@pytest.mark.gpu
@pytest.mark.parametrize("walk", [0, 1])
def test_cached_launches_match_triton_path(walk, monkeypatch):
    """A conv kernel launched through the cache, across inputs that change its specialisation, against the same
    kernel through Triton's path; and the cache is used (one entry per specialisation). walk 0: the tile kernel
    (conv_fwd_kernel, the one this test had before session 35); 1: the walk down the rows, the default since
    session 29 (conv_fwd_walk_kernel)."""
    from vision_mamba.ops.selective_scan.triton_kernels import conv_fwd_kernel, conv_fwd_walk_kernel

    kernel = conv_fwd_walk_kernel if walk else conv_fwd_kernel
    fast(kernel).cache.clear()
    E = 64
    for dtype in (torch.float32, torch.bfloat16):
        for L in (16, 17, 48):
            x, ws, bs = _conv_inputs(L, E, dtype)
            for view in (x[..., :E], x[..., 1:]):  # aligned, then 2 or 4 bytes off (and an odd row stride)
                view = view.contiguous() if view.data_ptr() % 16 == 0 else view
                monkeypatch.setenv("VISION_MAMBA_TRITON_FAST_LAUNCH", "0")
                want = _conv(view, ws[0], ws[1], bs[0], bs[1], walk)
                monkeypatch.setenv("VISION_MAMBA_TRITON_FAST_LAUNCH", "1")
                for _ in range(3):  # the first call fills the cache, the next ones launch from it
                    got = _conv(view, ws[0], ws[1], bs[0], bs[1], walk)
                    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # (at least both dtypes, each aligned and not; the tile kernel also specialises on the lengths)
    assert len(fast(kernel).cache) >= (4 if walk else 6)


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True])
def test_model_with_cached_launches_matches(monkeypatch, autocast):
    """A Vim model's forward and backward on the Triton backend (fp32, and bf16 autocast): cached launches
    against Triton's path."""
    import timm

    import vision_mamba  # noqa: F401
    from vision_mamba.ops import scan_backend

    torch.manual_seed(0)
    model = timm.create_model("vim_tiny_patch16_224", img_size=64, depth=4).to(DEVICE)
    x = torch.randn(3, 3, 64, 64, device=DEVICE)
    runs = []
    with scan_backend("triton"), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
        for flag in ("0", "1", "1"):
            monkeypatch.setenv("VISION_MAMBA_TRITON_FAST_LAUNCH", flag)
            model.zero_grad(set_to_none=True)
            out = model(x)
            out.float().square().mean().backward()
            with torch.no_grad():
                inf = model(x)
            runs.append((out.detach(), inf, [p.grad.clone() for p in model.parameters()]))
    for out, inf, grads in runs[1:]:
        torch.testing.assert_close(out, runs[0][0], rtol=0, atol=0)
        torch.testing.assert_close(inf, runs[0][1], rtol=0, atol=0)
        for g, g0 in zip(grads, runs[0][2]):  # atomic adds in the scan's backward: the order may differ
            torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-6)


def test_cached_launch_passes_every_parameter_in_order(monkeypatch):
    """Without a GPU: a real JITFunction whose compile-and-launch path and driver are stand-ins. The first launch of
    a specialisation goes through Triton's path; the next ones call the compiled kernel's launcher with the grid,
    the stream, no hooks, and every parameter in the kernel's order (keyword arguments and defaults included); a
    launch whose alignment, divisibility or constexpr changes goes through Triton's path again."""
    import triton.runtime
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    from vision_mamba.ops import fast_launch

    if not fast_launch._triton_supported():
        pytest.skip("a Triton without the checked launcher signature")

    def kernel(a_ptr, n, scale, BLOCK: tl.constexpr, FLAG: tl.constexpr = True):
        pass

    jf = JITFunction(kernel)
    through_triton, launched = [], []

    class Compiled:
        function, packed_metadata = "fn", "meta"

        @staticmethod
        def run(*a):
            launched.append(a)

    def triton_path(*args, grid, warmup, **kwargs):
        through_triton.append((grid, args, kwargs))
        return Compiled()

    class Driver:
        class active:
            @staticmethod
            def get_current_device():
                return 0

            @staticmethod
            def get_current_stream(device):
                return 1234

    monkeypatch.setattr(jf, "run", triton_path)
    monkeypatch.setattr(triton.runtime, "driver", Driver)
    monkeypatch.setenv("VISION_MAMBA_TRITON_FAST_LAUNCH", "1")
    f = fast_launch._Fast(jf)
    assert f.ok
    x = torch.zeros(64)
    f[(4, 2)](x, 32, 0.5, BLOCK=64, num_warps=4)
    assert len(through_triton) == 1 and not launched
    f[(5,)](x, scale=0.25, n=48, BLOCK=64, num_warps=4)  # same key: keywords in another order
    assert len(through_triton) == 1
    assert launched == [(5, 1, 1, 1234, "fn", "meta", None, None, None, x, 48, 0.25, 64, True)]
    for changed in (dict(a=x[1:]), dict(n=33), dict(BLOCK=128), dict(FLAG=False), dict(num_warps=8)):
        kw = dict(a_ptr=x, n=32, scale=0.5, BLOCK=64, num_warps=4)
        kw.update({"a_ptr" if k == "a" else k: v for k, v in changed.items()})
        before = len(through_triton)
        f[(1,)](**kw)
        assert len(through_triton) == before + 1, changed
    monkeypatch.setenv("VISION_MAMBA_TRITON_FAST_LAUNCH", "0")
    f[(5,)](x, 48, 0.25, BLOCK=64, num_warps=4)  # switched off: Triton's path
    assert len(through_triton) == 7 and len(launched) == 1
