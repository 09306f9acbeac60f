"""Inference replayed from CUDA graphs: the model's kernels issued with one launch instead of a few hundred.

An eager forward of Vim-Ti issues ~320 kernels, and Python plus the launches cost the host 15-20 ms a call on the
H200's host: more than the GPU's 6.7 ms at 224 px / batch 128 (docs/kernels.md, "Session 13"). A CUDA graph records
those kernels once per input shape and replays them; ``vision-mamba bench --graph`` measures exactly this.

    runner = vision_mamba.CUDAGraphInference(model)          # or model.forward_features, any fn(x) -> tensor
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = runner(images)                              # first call per shape: warm-up and capture

What to know:
- Inference only: the call runs under ``torch.inference_mode()``, whatever the caller's grad mode.
- One graph per input shape, dtype, device, autocast setting, scan backend and the model's train / eval mode (at
  most ``max_graphs``, then the oldest is dropped). Anything else that changes the computation (a new model
  attribute, an environment variable of the Triton kernels) needs :meth:`reset`.
- Weights are read where they were at capture: in-place updates (``load_state_dict``, an optimizer step, ``copy_``)
  are seen by the next replay; parameters replaced by new tensors are not (call :meth:`reset`).
- The output is a copy (``clone=True``, the default); ``clone=False`` returns the graph's own output buffer,
  overwritten by the next call of the same shape.
- Where a graph cannot help (CPU tensors, a capture already under way), the function runs eagerly; so does a
  shape whose capture failed (with a warning saying why). A Vim model's input check (wrong size or channels, NaN /
  Inf with ``check_finite``) runs before every replay, as in eager mode.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["CUDAGraphInference"]


class _Entry:
    __slots__ = ("graph", "static_in", "static_out")

    def __init__(self, graph, static_in: Tensor, static_out: Tensor):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out


def _owner(fn) -> Optional[nn.Module]:
    """The module behind ``fn``: the module itself, or the module a bound method belongs to."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class CUDAGraphInference:
    """Calls ``fn(x)`` by replaying a CUDA graph captured for ``x``'s shape (see the module docstring).

    Args:
        fn: a module or a function of one tensor returning one tensor (e.g. ``model.forward_features``).
        warmup: eager calls on a side stream before each capture (compiles the Triton kernels, creates cuBLAS
            handles).
        max_graphs: graphs kept at most (one per input shape and setting); the oldest goes first.
        clone: return a copy of the output (else the graph's output buffer itself).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], *, warmup: int = 2, max_graphs: int = 8,
                 clone: bool = True):
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (the capture needs compiled kernels), got {warmup}")
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be at least 1, got {max_graphs}")
        self.fn = fn
        self.module = _owner(fn)
        self.warmup = warmup
        self.max_graphs = max_graphs
        self.clone = clone
        self._graphs: "collections.OrderedDict[tuple, _Entry]" = collections.OrderedDict()
        self._eager: set = set()  # settings whose capture failed: run eagerly

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def reset(self) -> None:
        """Drop every captured graph (and the memory they hold); retry captures that failed."""
        self._graphs.clear()
        self._eager.clear()

    def _key(self, x: Tensor) -> tuple:
        from .ops import resolve_backend

        autocast = torch.is_autocast_enabled("cuda")
        return (tuple(x.shape), x.dtype, x.device, tuple(x.stride()), autocast,
                torch.get_autocast_dtype("cuda") if autocast else None,
                resolve_backend(x.device), self.module.training if self.module is not None else None)

    def _check(self, x: Tensor) -> None:
        check = getattr(self.module, "_check_input", None)
        if check is not None:
            check(x)

    def _capture(self, x: Tensor) -> _Entry:
        device = x.device
        autocast = torch.is_autocast_enabled("cuda")
        # autocast's cache of cast weights must stay off inside a capture (what torch.cuda.make_graphed_callables
        # asks too): the casts become part of the graph
        cast = torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False) if autocast \
            else contextlib.nullcontext()
        static_in = x.detach().clone()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode(), cast:
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        gc.collect()
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), cast, torch.cuda.graph(graph):
            static_out = self.fn(static_in)
        if not isinstance(static_out, Tensor):
            raise TypeError(f"CUDAGraphInference needs a function returning one tensor; got {type(static_out)}")
        return _Entry(graph, static_in, static_out)

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"CUDAGraphInference takes one tensor; got {type(x)}")
        if not x.is_cuda or torch.cuda.is_current_stream_capturing():
            with torch.inference_mode():
                return self.fn(x)
        self._check(x)
        key = self._key(x)
        entry = self._graphs.get(key)
        if entry is None and key in self._eager:
            with torch.inference_mode():
                return self.fn(x)
        if entry is None:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            try:
                entry = self._capture(x)
            except RuntimeError as e:  # e.g. an op that cannot be captured: this shape runs eagerly from now on
                warnings.warn(f"CUDAGraphInference: capture failed for input {tuple(x.shape)} ({e}); running "
                              "eagerly", RuntimeWarning, stacklevel=2)
                self._eager.add(key)
                torch.cuda.synchronize(x.device)
                with torch.inference_mode():
                    return self.fn(x)
            self._graphs[key] = entry
        else:
            self._graphs.move_to_end(key)
        with torch.inference_mode():
            entry.static_in.copy_(x)
            entry.graph.replay()
            return entry.static_out.clone() if self.clone else entry.static_out
