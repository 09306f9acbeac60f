"""Launching compiled Triton kernels with less host time than ``kernel[grid](...)``.

At every launch, Triton's ``JITFunction.run`` binds and specialises every argument, builds a cache key that
includes ``str(options)``, checks the kernel's globals and reads several settings, and only then calls the
compiled kernel's launcher. Measured on the lent H200's host (Triton 3.6; docs/kernels.md, "Session 14"), that
took 18 - 45 us a launch for this package's kernels, of which the launcher itself is 6 - 12 us, and an eager
Vim-Ti forward makes 73 - 121 of them.

:func:`fast` wraps a ``@triton.jit`` (or ``@gluon.jit``) kernel so that ``fast(kernel)[grid](*args, **kwargs)``
launches like ``kernel[grid](...)`` but keeps, per specialisation key, the compiled kernel Triton returned the
first time, and later calls its launcher directly. The key is computed here, and it refines Triton's own: every
``tl.constexpr`` argument by value; every tensor by dtype and whether its address is a multiple of 16 bytes;
every integer by whether it equals 1, whether it is a multiple of 16 and whether it needs 32 / 64 bits (signed)
or 64 bits (unsigned); None, floats and bools by type; the launch options (``num_warps``, ...) by value; the
device. Anything else (a tuple, a tensor descriptor, ...) makes that call go through Triton's own path. A key seen
for the first time also goes through Triton's path, which compiles or finds the kernel, and launches it.

Triton's path is always taken under the interpreter (``TRITON_INTERPRET=1``), when a launch hook is installed
(profilers such as proton add them), for a Triton whose launcher signature was not checked (before 3.6, or 4.x),
and when ``VISION_MAMBA_TRITON_FAST_LAUNCH=0``. Otherwise the launcher is called without hooks or launch metadata,
as Triton calls it when no hook is installed.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

__all__ = ["fast", "fast_launch_enabled", "spec_key"]

_MISSING = object()
_I32_MIN, _I32_MAX, _U64_FROM = -(1 << 31), (1 << 31) - 1, 1 << 63


def _int_key(a: int) -> int:
    """Triton specialises an integer on == 1 and % 16 == 0, and types it i32, i64 or u64 by its range."""
    if a == 1:
        return -1
    bits = 0 if _I32_MIN <= a <= _I32_MAX else (2 if a >= _U64_FROM else 1)
    return (a % 16 == 0) + 2 * bits


def spec_key(values, constexpr) -> Optional[tuple]:
    """The specialisation key of one launch's argument values (every parameter, in order) given which parameters
    are ``tl.constexpr``; None where an argument is of a kind this module does not key (the caller then launches
    through Triton's own path)."""
    key = []
    append = key.append
    for a, c in zip(values, constexpr):
        t = type(a)
        if c:
            if t is int or t is bool or a is None or t is float or t is str:
                append((t, a))
            else:
                try:
                    hash(a)
                except TypeError:
                    return None
                append((t, a))
        elif t is int:
            append(_int_key(a))
        elif t is torch.Tensor or isinstance(a, torch.Tensor):
            append((a.dtype, a.data_ptr() % 16 == 0))
        elif a is None or t is float or t is bool:
            append(t)
        else:
            return None
    return tuple(key)


_SETTING = [None, None]  # (raw environment value, parsed)


def fast_launch_enabled() -> bool:
    """``VISION_MAMBA_TRITON_FAST_LAUNCH`` (default 1); read from the environment at every call (cached on its raw
    value), so a test or a sweep can change it between calls."""
    raw = os.environ.get("VISION_MAMBA_TRITON_FAST_LAUNCH")
    if raw != _SETTING[0] or _SETTING[1] is None:
        _SETTING[0], _SETTING[1] = raw, (raw or "1").strip().lower() not in ("0", "false", "no", "off")
    return _SETTING[1]


def _triton_supported() -> bool:
    """The compiled kernel's launcher is called as ``run(grid0, grid1, grid2, stream, function, packed_metadata,
    launch_metadata, enter_hook, exit_hook, *args)`` by Triton 3.6, 3.8 and 3.9 (checked in their sources;
    later 3.x releases are assumed to keep it)."""
    try:
        import triton
        from triton.runtime.jit import JITFunction  # noqa: F401
        major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    except Exception:  # pragma: no cover - no Triton, or an unparsable version
        return False
    return major == 3 and minor >= 6


def _no_hook(hook) -> bool:
    """Whether a launch hook setting calls nothing: None, or an empty ``HookChain`` (Triton 3.5+'s default)."""
    return hook is None or getattr(hook, "calls", None) == []


class _Fast:
    """A kernel's launch cache (see the module docstring). ``self[grid](*args, **kwargs)`` launches it."""

    __slots__ = ("fn", "names", "constexpr", "defaults", "cache", "ok")

    def __init__(self, fn):
        self.fn = fn
        self.cache: Dict[Any, tuple] = {}
        self.ok = False
        try:
            from triton.runtime.jit import JITFunction

            if isinstance(fn, JITFunction) and _triton_supported():
                self.names = tuple(p.name for p in fn.params)
                self.constexpr = tuple(bool(p.is_constexpr) for p in fn.params)
                self.defaults = {p.name: p.default for p in fn.params if p.has_default}
                self.ok = True
        except Exception:  # pragma: no cover - a Triton whose JITFunction looks otherwise
            self.ok = False

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid, args, kwargs):
        if not (self.ok and fast_launch_enabled()):
            return self.fn[grid](*args, **kwargs)
        from triton import knobs
        from triton.runtime import driver

        runtime = knobs.runtime
        if not (_no_hook(runtime.launch_enter_hook) and _no_hook(runtime.launch_exit_hook)):
            return self.fn[grid](*args, **kwargs)
        values = list(args)
        options = kwargs
        if len(values) < len(self.names):
            options = dict(kwargs)
            for name in self.names[len(values):]:
                v = options.pop(name, _MISSING)
                if v is _MISSING:
                    v = self.defaults.get(name, _MISSING)
                    if v is _MISSING:  # let Triton report the missing argument
                        return self.fn[grid](*args, **kwargs)
                values.append(v)
        spec = spec_key(values, self.constexpr)
        if spec is None:
            return self.fn[grid](*args, **kwargs)
        active = driver.active
        device = active.get_current_device()
        key = (device, tuple(options.items()), spec)
        try:
            entry = self.cache.get(key)
        except TypeError:  # an unhashable launch option
            return self.fn[grid](*args, **kwargs)
        if entry is None:
            compiled = self.fn[grid](*args, **kwargs)  # Triton's path: compiles or finds, and launches
            if compiled is None or hasattr(compiled, "result"):  # an asynchronous compile: no cache entry yet
                return compiled
            try:
                entry = (compiled.run, compiled.function, compiled.packed_metadata)
            except Exception:  # pragma: no cover - a compiled kernel that looks otherwise
                return compiled
            if len(self.cache) > 512:
                self.cache.clear()
            self.cache[key] = entry
            return compiled
        run, function, metadata = entry
        n = len(grid)
        run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, active.get_current_stream(device), function,
            metadata, None, None, None, *values)
        return None


_KERNELS: Dict[int, _Fast] = {}


def fast(kernel) -> _Fast:
    """The launch cache of ``kernel`` (one per kernel object, made at the first call)."""
    f = _KERNELS.get(id(kernel))
    if f is None or f.fn is not kernel:
        f = _KERNELS[id(kernel)] = _Fast(kernel)
    return f
