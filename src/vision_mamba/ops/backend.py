"""Which implementation of the selective scan runs.

One switch for the whole package: the environment variable ``VISION_MAMBA_SCAN`` (read at call time) or
:func:`set_scan_backend` / the :func:`scan_backend` context manager (which take precedence over it).

``reference``  the fp32 loop over time: obviously correct, slow; the yardstick of the tests.
``torch``      vectorised, chunked PyTorch with a hand-written backward; any device, the CPU path.
``compiled``   ``torch`` with its forward recurrence compiled by torch.compile, in pieces of 32 steps (on the CPU
               ~1.8x faster scans; needs a C++ compiler, and compiles for seconds on first use); opt-in only.
``triton``     fused Triton kernels; CUDA tensors (or any tensor under ``TRITON_INTERPRET=1``).
``auto``       the fastest available for the tensor's device: ``triton`` on CUDA when Triton imports, else ``torch``.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator, Optional

import torch

BACKENDS = ("reference", "torch", "compiled", "triton", "auto")
ENV_VAR = "VISION_MAMBA_SCAN"

_override: Optional[str] = None


def _check(name: str, source: str = "") -> str:
    if not isinstance(name, str):
        raise TypeError(f"a scan backend is named by a string, one of {', '.join(BACKENDS)}; got {name!r}")
    key = name.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}{source}; choose one of {', '.join(BACKENDS)}")
    return key


def set_scan_backend(name: Optional[str]) -> None:
    """Choose the scan backend for this process; ``None`` goes back to ``$VISION_MAMBA_SCAN`` (default ``auto``)."""
    global _override
    _override = None if name is None else _check(name)


def get_scan_backend() -> str:
    """The configured backend name (possibly ``auto``)."""
    if _override is not None:
        return _override
    return _check(os.environ.get(ENV_VAR, "auto") or "auto", f" (from the environment variable {ENV_VAR})")


@contextlib.contextmanager
def scan_backend(name: str) -> Iterator[None]:
    """Temporarily use another backend: ``with scan_backend("reference"): model(x)``."""
    global _override
    previous = _override
    _override = _check(name)
    try:
        yield
    finally:
        _override = previous


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``."""
    if not triton_importable():
        return False
    return device.type == "cuda" or triton_interpret()


def resolve_backend(device: torch.device, name: Optional[str] = None) -> str:
    """The concrete backend (reference | torch | compiled | triton) for tensors on ``device``."""
    name = _check(name) if name is not None else get_scan_backend()
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_usable(device) else "torch"
    if name == "triton" and not triton_usable(device):
        why = "Triton is not installed" if not triton_importable() else (
            f"the tensors are on {device.type}; the Triton kernels need CUDA (or TRITON_INTERPRET=1)")
        raise RuntimeError(f"scan backend 'triton' was asked for, but {why}. Use 'auto' or 'torch'.")
    return name
