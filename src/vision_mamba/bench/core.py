"""Measuring Vim against DeiT: one case (model, resolution, batch, dtype, attention, mode) -> one record.

What a record's numbers mean (the same on every device):

* ``img_s``: batch / the median time of one iteration. On CUDA each iteration sits between two CUDA events
  (so launch gaps count: that is what users get); on the CPU between two ``time.perf_counter`` reads.
  Inference is ``model.forward_features(x)`` under ``torch.inference_mode()`` in eval mode; training is
  forward, cross-entropy against random labels, backward and an AdamW step.
* ``peak_gib``: CUDA only: ``torch.cuda.max_memory_allocated()`` from just before the timed region (or the graph
  capture) to its end, minus what was allocated just before it (model, input, optimizer state), in GiB.
* bf16 is ``torch.autocast`` with fp32 weights (as users run the models); ``bf16-weights`` casts the model and the
  input to bfloat16 instead.
* Inputs are random normal (never zeros); warm-up iterations run first, then at least ``iters`` iterations and at
  least ``min_time`` seconds are timed.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ATTENTIONS", "DTYPES", "MODES", "MODEL_ALIASES", "BenchConfigError", "Case", "Settings",
    "resolve_model_name", "is_vim", "display_name", "set_attention", "make_cases", "run_case", "run_cases",
    "environment", "write_records", "read_records", "format_table",
]

MODEL_ALIASES = {
    "vim_tiny": "vim_tiny_patch16_224",
    "vim_tiny_stride8": "vim_tiny_patch16_stride8_224",
    "vim_small": "vim_small_patch16_224",
    "vim_small_stride8": "vim_small_patch16_stride8_224",
    "vim_base": "vim_base_patch16_224",
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
}
DTYPES = ("fp32", "bf16", "bf16-weights")
ATTENTIONS = ("flash", "explicit")
MODES = ("infer", "train")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Tolerances of the pre-timing check of a Vim scan backend against the `torch` backend (relative L2 error of
# forward_features over 24 blocks). They catch wrong kernels, not rounding: a wrong scan is off by O(1).
VERIFY_TOLERANCE = {"fp32": 1e-2, "bf16": 1e-1, "bf16-weights": 1e-1}

_OOM_ERRORS: Tuple[type, ...] = tuple(
    t for t in (getattr(torch.cuda, "OutOfMemoryError", None), getattr(torch, "OutOfMemoryError", None)) if t)


class BenchConfigError(ValueError):
    """A bad option: the message says what is wrong and what is allowed."""


# ---------------------------------------------------------------------------------------------- models
def resolve_model_name(name: str) -> str:
    """A short name (vim_tiny, deit_small, ...) or any timm model name -> the timm name."""
    import timm

    import vision_mamba  # noqa: F401  (registers the Vim models)

    key = name.strip()
    full = MODEL_ALIASES.get(key.lower(), key)
    if not timm.is_model(full):
        raise BenchConfigError(
            f"unknown model {name!r}: use one of {', '.join(MODEL_ALIASES)} or a timm model name "
            f"(see timm.list_models())")
    return full


def is_vim(model_name: str) -> bool:
    from vision_mamba import MODEL_NAMES

    return model_name in MODEL_NAMES


def display_name(model_name: str) -> str:
    """vim_tiny_patch16_224 -> Vim-Ti, deit_small_patch16_224 -> DeiT-S; other names are kept."""
    m = re.match(r"^(vim|deit)_(tiny|small|base)_patch16(_stride8)?_224$", model_name)
    if not m:
        return model_name
    family = {"vim": "Vim", "deit": "DeiT"}[m.group(1)]
    size = {"tiny": "Ti", "small": "S", "base": "B"}[m.group(2)]
    return f"{family}-{size}" + (" (stride 8)" if m.group(3) else "")


def size_token(model_name: str) -> Optional[str]:
    m = re.search(r"(tiny|small|base|large|huge)", model_name)
    return m.group(1) if m else None


def attention_modules(model: nn.Module) -> List[nn.Module]:
    """timm's attention layers: every module with a ``fused_attn`` switch (timm 1.0.x, any layer class)."""
    return [m for m in model.modules() if hasattr(m, "fused_attn")]


def set_attention(model: nn.Module, attn: str) -> int:
    """'flash': timm's fused path (F.scaled_dot_product_attention); 'explicit': q @ k^T, softmax, @ v.
    Returns the number of attention modules switched; raises if the model has none."""
    if attn not in ATTENTIONS:
        raise BenchConfigError(f"unknown attention {attn!r}: choose from {', '.join(ATTENTIONS)}")
    modules = attention_modules(model)
    if not modules:
        raise BenchConfigError(f"{type(model).__name__} has no timm attention module (no `fused_attn` switch)")
    for m in modules:
        m.fused_attn = attn == "flash"
    return len(modules)


def has_attention(model_name: str) -> bool:
    """Whether a timm model has attention layers with a fused/explicit switch (built once on the CPU to see)."""
    if is_vim(model_name):
        return False
    return _has_attention_cached(model_name)


_ATTN_CACHE: Dict[str, bool] = {}


def _has_attention_cached(model_name: str) -> bool:
    if model_name not in _ATTN_CACHE:
        import timm

        _ATTN_CACHE[model_name] = bool(attention_modules(timm.create_model(model_name, pretrained=False)))
    return _ATTN_CACHE[model_name]


# ---------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One measurement. ``attn`` is 'flash' | 'explicit' for models with timm attention, else None."""

    model: str
    res: int
    batch: int
    dtype: str = "fp32"
    attn: Optional[str] = None
    mode: str = "infer"
    graph: bool = False


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise BenchConfigError(f"{what} must be a positive integer, got {value!r}")
    number = int(value)
    if number <= 0:
        raise BenchConfigError(f"{what} must be a positive integer, got {value!r}")
    return number


def make_cases(
    models: Sequence[str],
    res: Sequence[int],
    batch: Sequence[int],
    dtypes: Sequence[str] = ("fp32",),
    attns: Sequence[str] = ATTENTIONS,
    modes: Sequence[str] = ("infer",),
    graph: str = "off",
) -> List[Case]:
    """The grid: modes x dtypes x (res, batch) pairs x models x attention (for models that have it) x graph.

    ``batch`` holds one value per resolution, or a single value for all. The outer loops come first in the
    result, so with a time budget the first dtype / resolution is measured first.
    """
    if not models:
        raise BenchConfigError("no models given")
    names = [resolve_model_name(m) for m in models]
    resolutions = [_positive_int(r, "a resolution") for r in res]
    batches = [_positive_int(b, "a batch size") for b in batch]
    if not resolutions:
        raise BenchConfigError("no resolutions given")
    if len(batches) == 1:
        batches = batches * len(resolutions)
    if len(batches) != len(resolutions):
        raise BenchConfigError(f"--batch takes one value, or one per resolution: got {len(batches)} batch sizes "
                               f"for {len(resolutions)} resolutions")
    for r in resolutions:
        if r < 16:
            raise BenchConfigError(f"resolution {r} is smaller than one 16x16 patch")
    for d in dtypes:
        if d not in DTYPES:
            raise BenchConfigError(f"unknown dtype {d!r}: choose from {', '.join(DTYPES)}")
    for a in attns:
        if a not in ATTENTIONS:
            raise BenchConfigError(f"unknown attention {a!r}: choose from {', '.join(ATTENTIONS)} (DeiT only)")
    for m in modes:
        if m not in MODES:
            raise BenchConfigError(f"unknown mode {m!r}: choose from {', '.join(MODES)}")
    if graph not in ("off", "on", "both"):
        raise BenchConfigError(f"--graph takes off, on or both, got {graph!r}")
    if not attns and any(has_attention(n) for n in names):
        raise BenchConfigError("no attention kind given: use --attn flash, explicit or flash,explicit")
    graphs = {"off": (False,), "on": (True,), "both": (False, True)}[graph]
    cases = []
    for mode in _unique(modes):
        for dtype in _unique(dtypes):
            for r, b in _unique(zip(resolutions, batches)):
                for g in graphs:
                    for name in _unique(names):
                        kinds = _unique(attns) if has_attention(name) else [None]
                        for a in kinds:
                            cases.append(Case(name, r, b, dtype, a, mode, g))
    return cases


def _unique(items: Iterable) -> list:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """How to measure. ``warmup`` / ``iters`` / ``min_time``: per case, warm-up iterations, then at least ``iters``
    timed iterations and at least ``min_time`` seconds of them (at most ``max_iters``, and no more than fit in
    ``max_row_time`` seconds, but at least 3). ``total_time``: cases not started within that many seconds of the
    run's start are recorded as skipped."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "auto"
    compile: Optional[str] = None
    warmup: int = 3
    iters: int = 20
    min_time: float = 1.0
    max_iters: int = 1000
    max_row_time: Optional[float] = None
    total_time: Optional[float] = None
    check_finite: bool = True
    verify: bool = True
    seed: int = 0
    command: str = ""

    def validate(self) -> None:
        if self.device.type not in ("cpu", "cuda"):
            raise BenchConfigError(f"device must be cpu or cuda, got {self.device}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BenchConfigError("--device cuda was asked for, but CUDA is not available here")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise BenchConfigError(f"unknown compile mode {self.compile!r}: choose from {', '.join(COMPILE_MODES)}")
        if self.warmup < 0 or self.iters < 1 or self.max_iters < self.iters or self.min_time < 0:
            raise BenchConfigError("need warmup >= 0, iters >= 1, max_iters >= iters and min_time >= 0")
        if (self.max_row_time is not None and self.max_row_time <= 0) or (
                self.total_time is not None and self.total_time < 0):
            raise BenchConfigError("--max-row-time must be > 0 and --total-time >= 0")
        from vision_mamba.ops import resolve_backend

        try:
            resolve_backend(self.device, self.backend)
        except (ValueError, RuntimeError) as e:
            raise BenchConfigError(str(e)) from None


# ---------------------------------------------------------------------------------------------- environment
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    """What the numbers depend on: device, library versions, threads."""
    import timm

    env: Dict[str, Any] = {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    else:
        env["device"] = f"CPU: {cpu_name()} ({os.cpu_count()} cores)"
    env["threads"] = torch.get_num_threads()
    return env


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_one(step: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def _time_many(step: Callable[[], Any], device: torch.device, n: int) -> List[float]:
    """Seconds of each of n iterations. On CUDA, events around every iteration and one sync at the end."""
    if n <= 0:
        return []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def time_steps(step: Callable[[], Any], device: torch.device, iters: int, min_time: float,
               max_iters: int, max_time: Optional[float] = None) -> List[float]:
    """Time ``step`` (already warmed up): a probe iteration, then enough for ``iters`` and ``min_time``; with
    ``max_time``, fewer iterations (at least 3) where ``iters`` of them would take longer than that."""
    first = _time_one(step, device)
    n = max(iters, math.ceil(min_time / max(first, 1e-9)))
    n = min(n, max_iters)
    if max_time is not None:
        n = min(n, max(3, int(max_time / max(first, 1e-9))))
    return [first] + _time_many(step, device, n - 1)


# ---------------------------------------------------------------------------------------------- one case
class _Models:
    """Keeps inference models (fp32 weights) built per (name, res), so dtype / attention / graph variants of one
    model share it. Training and bf16-weights cases build their own."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache: Dict[Tuple[str, int], nn.Module] = {}

    def build(self, name: str, res: int) -> nn.Module:
        import timm

        kwargs: Dict[str, Any] = {"pretrained": False, "img_size": res}
        if is_vim(name):
            kwargs["check_finite"] = self.settings.check_finite
        model = timm.create_model(name, **kwargs)
        return model.to(self.settings.device)

    def get(self, case: Case) -> nn.Module:
        if case.mode == "train" or case.dtype == "bf16-weights":
            self.cache.clear()  # free memory before a case that owns its model
            model = self.build(case.model, case.res)
            return model.to(torch.bfloat16) if case.dtype == "bf16-weights" else model
        key = (case.model, case.res)
        if key not in self.cache:
            self.cache[key] = self.build(case.model, case.res).eval()
        return self.cache[key]

    def clear(self) -> None:
        self.cache.clear()


def _autocast(case: Case, device: torch.device, cache_enabled: bool = True):
    if case.dtype != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


def _is_oom(err: BaseException) -> bool:
    if _OOM_ERRORS and isinstance(err, _OOM_ERRORS):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def _capture_graph(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int):
    """Warm up on a side stream (as CUDA graph capture requires), then capture one call of ``fn``."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    gc.collect()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _verify_backend(model: nn.Module, case: Case, settings: Settings,
                    backend: str) -> Tuple[float, Optional[str]]:
    """Compare forward_features on ``backend`` with the `torch` backend at the row's own batch size (the launch
    plan, and so the kernel that runs, depends on it: batch 1 takes the chunk-parallel scan, batch 128 at 224 px
    the one-pass one), fresh random input. Returns the relative error and None if they agree, else the reason."""
    import vision_mamba

    x = torch.randn(case.batch, 3, case.res, case.res, device=settings.device,
                    dtype=torch.bfloat16 if case.dtype == "bf16-weights" else torch.float32)
    with torch.inference_mode():
        with vision_mamba.scan_backend(backend), _autocast(case, settings.device):
            out = model.forward_features(x)
        with vision_mamba.scan_backend("torch"), _autocast(case, settings.device):
            ref = model.forward_features(x)
    err = _rel_err(out, ref)
    tol = VERIFY_TOLERANCE[case.dtype]
    if not err <= tol:
        return err, (f"wrong output: the {backend!r} backend differs from the 'torch' backend by {err:.3g} "
                     f"(relative L2, forward_features, batch {case.batch}; tolerance {tol:g}); not timed")
    return err, None


_VERIFIED: Dict[Tuple[str, int, int, str, str, str], Tuple[float, Optional[str]]] = {}


def _base_record(case: Case, settings: Settings) -> Dict[str, Any]:
    from vision_mamba.ops import resolve_backend

    vim = is_vim(case.model)
    return {
        "model": case.model, "name": display_name(case.model), "res": case.res, "batch": case.batch,
        "dtype": case.dtype, "attn": case.attn, "mode": case.mode,
        "backend": resolve_backend(settings.device, settings.backend) if vim else None,
        "graph": False, "compile": settings.compile, "check_finite": settings.check_finite if vim else None,
        "img_s": None, "ms": None, "ms_min": None, "ms_max": None, "iters": 0, "peak_gib": None,
        "status": "ok", "note": None,
    }


def run_case(case: Case, settings: Settings, models: Optional[_Models] = None) -> Dict[str, Any]:
    """Measure one case; never raises for OOM or a failing model (the record's status says what happened)."""
    import vision_mamba

    device = settings.device
    models = models or _Models(settings)
    vim = is_vim(case.model)
    record = _base_record(case, settings)
    notes: List[str] = []
    try:
        ctx = vision_mamba.scan_backend(settings.backend) if vim else contextlib.nullcontext()
        with ctx:
            result = _measure(case, settings, models, record["backend"], notes)
        record.update(result)
    except Exception as err:  # noqa: BLE001 -- the record carries the failure; the run goes on
        if _is_oom(err):
            record["status"] = "oom"
        else:
            record["status"] = f"error: {type(err).__name__}: {_first_line(err)}"
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if notes:
        record["note"] = "; ".join(notes)
    return record


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def _measure(case: Case, settings: Settings, models: _Models, backend: Optional[str],
             notes: List[str]) -> Dict[str, Any]:
    device = settings.device
    torch.manual_seed(settings.seed)
    model = models.get(case)
    model.train(case.mode == "train")
    if case.attn is not None:
        set_attention(model, case.attn)
    out: Dict[str, Any] = {}
    if (is_vim(case.model) and settings.verify and backend not in (None, "torch", "reference")
            and case.mode == "infer"):
        key = (case.model, case.res, case.batch, case.dtype, backend, str(device))
        if key not in _VERIFIED:
            _VERIFIED[key] = _verify_backend(model, case, settings, backend)
        out["verify_rel_err"], problem = _VERIFIED[key]
        if problem is not None:
            return {**out, "status": problem}
    in_dtype = torch.bfloat16 if case.dtype == "bf16-weights" else torch.float32
    x = torch.randn(case.batch, 3, case.res, case.res, device=device, dtype=in_dtype)
    if case.mode == "train":
        step = _train_step(model, x, case, settings, notes)
        for _ in range(max(settings.warmup, 1)):
            step()
        out["graph"] = bool(getattr(step, "graphed", False))
        if out["graph"]:
            step.train_step.optimizer.zero_grad(set_to_none=True)  # as after an eager step: not in the baseline
    else:
        forward = model.forward_features
        if settings.compile is not None:
            forward = torch.compile(forward, mode=None if settings.compile == "default" else settings.compile)

        def call(cache_enabled: bool = True) -> torch.Tensor:
            with torch.inference_mode(), _autocast(case, device, cache_enabled):
                return forward(x)

        step = call
        if case.graph:
            graph_step = _graph_step(call, x, case, settings, notes)
            if graph_step is not None:
                step = graph_step
                out["graph"] = True
        if step is call:
            for _ in range(settings.warmup):
                call()
    _sync(device)
    gc.collect()
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        if out.get("graph"):
            step.capture()  # the graph's activations are allocated during capture: count them
    elif out.get("graph"):
        step.capture()
    times = time_steps(step, device, settings.iters, settings.min_time, settings.max_iters, settings.max_row_time)
    if device.type == "cuda":
        out["peak_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    if out.get("graph") and case.mode == "infer":
        problem = step.check()
        if problem:
            return {"status": problem, "graph": True}
    median = statistics.median(times)
    out.update(img_s=case.batch / median, ms=median * 1e3, ms_min=min(times) * 1e3, ms_max=max(times) * 1e3,
               iters=len(times))
    return out


class _GraphStep:
    """A forward captured in a CUDA graph; calling it replays the graph."""

    def __init__(self, call, x: torch.Tensor, case: Case, settings: Settings):
        self.call, self.x, self.case, self.settings = call, x, case, settings
        self.graph = None
        self.output = None

    def capture(self) -> None:
        # Autocast's weight cache must be off during capture: the cached casts would be freed after it.
        self.graph, self.output = _capture_graph(lambda: self.call(cache_enabled=False), self.settings.device, 0)

    def __call__(self) -> None:
        self.graph.replay()

    def check(self) -> Optional[str]:
        """Replay on fresh random input and compare with an eager call (catches values frozen at capture)."""
        self.x.copy_(torch.randn_like(self.x))
        self.graph.replay()
        replayed = self.output.clone()
        eager = self.call()
        err = _rel_err(replayed, eager)
        if not err <= 1e-3:
            return f"error: CUDA graph replay differs from the eager forward by {err:.3g} (relative L2)"
        return None


def _graph_step(call, x: torch.Tensor, case: Case, settings: Settings, notes: List[str]) -> Optional[_GraphStep]:
    """Warm up (side stream) and try one trial capture; None (eager timing, with a note) if capture fails."""
    device = settings.device
    if device.type != "cuda":
        notes.append("CUDA graph: not on CUDA, ran eagerly")
        return None
    try:
        graph, _ = _capture_graph(lambda: call(cache_enabled=False), device, max(settings.warmup, 1))
        del graph, _
    except Exception as err:  # noqa: BLE001
        if _is_oom(err):
            raise
        notes.append(f"CUDA graph capture failed ({type(err).__name__}: {_first_line(err)}); timed eagerly")
        torch.cuda.synchronize(device)
        return None
    return _GraphStep(call, x, case, settings)


class _GraphTrainStep:
    """A training step (forward, backward, fused AdamW) replayed from a CUDA graph (train.graphed.TrainStep)."""

    graphed = True

    def __init__(self, train_step, x: torch.Tensor, target: torch.Tensor):
        self.train_step, self.x, self.target = train_step, x, target

    def capture(self) -> None:
        self.train_step.capture(self.x, self.target)

    def __call__(self) -> None:
        self.train_step(self.x, self.target)


def _train_step(model: nn.Module, x: torch.Tensor, case: Case, settings: Settings, notes: List[str]):
    device = settings.device
    num_classes = getattr(model, "num_classes", 1000) or 1000
    target = torch.randint(0, num_classes, (case.batch,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if device.type == "cuda":
        try:
            optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=True)
            notes.append("AdamW fused")
        except (TypeError, RuntimeError, ValueError):
            optimizer = None
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
        notes.append("AdamW (default implementation)")
    forward = model
    if settings.compile is not None:
        forward = torch.compile(model, mode=None if settings.compile == "default" else settings.compile)

    if case.graph:
        from ..train.graphed import TrainStep, graph_unsupported_reason

        reason = graph_unsupported_reason(optimizer, device, compiled=settings.compile is not None)
        if reason is None:
            amp = torch.bfloat16 if case.dtype == "bf16" else None
            # warm-up steps (eager, side stream) come from _measure; capture is called after the memory reset
            train_step = TrainStep(model, lambda logits, t: F.cross_entropy(logits.float(), t), optimizer,
                                   device=device, amp_dtype=amp, graph=True, warmup_steps=10 ** 9)
            return _GraphTrainStep(train_step, x, target)
        notes.append(f"CUDA graph: {reason}; this training step ran eagerly")

    def step() -> None:
        with _autocast(case, device):
            logits = forward(x)
            loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_cases(
    cases: Sequence[Case],
    settings: Settings,
    on_record: Optional[Callable[[Dict[str, Any]], None]] = None,
    log: Optional[Callable[[str], None]] = print,
) -> List[Dict[str, Any]]:
    """Measure every case in order, tagging each record with the environment and the command line."""
    settings.validate()
    env = environment(settings.device)
    start = time.monotonic()
    models = _Models(settings)
    records = []
    try:
        for i, case in enumerate(cases, 1):
            elapsed = time.monotonic() - start
            if settings.total_time is not None and elapsed > settings.total_time:
                record = _base_record(case, settings)
                record["status"] = f"skipped: time budget of {settings.total_time:g} s spent"
            else:
                record = run_case(case, settings, models)
            record.update(env)
            record["command"] = settings.command
            records.append(record)
            if log is not None:
                log(f"[{i}/{len(cases)} {time.monotonic() - start:6.1f} s] {describe(record)}")
            if on_record is not None:
                on_record(record)
    finally:
        models.clear()
    return records


def describe(record: Dict[str, Any]) -> str:
    what = f"{record['name']} {record['mode']} {record['res']}px b{record['batch']} {record['dtype']}"
    if record.get("attn"):
        what += f" {record['attn']}"
    if record.get("graph"):
        what += " graph"
    if record["status"] != "ok":
        return f"{what}: {record['status']}"
    peak = f", peak {record['peak_gib']:.2f} GiB" if record.get("peak_gib") is not None else ""
    return f"{what}: {record['img_s']:.1f} img/s ({record['ms']:.2f} ms median of {record['iters']}){peak}"


# ---------------------------------------------------------------------------------------------- files
def write_records(records: List[Dict[str, Any]], path: Path) -> None:
    """The JSON list, written atomically (a partial run leaves a readable file)."""
    from ..engine.files import write_json

    write_json(path, records, indent=1, default=str)


def read_records(path: Path) -> List[Dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise BenchConfigError(f"{path} does not hold a list of bench records")
    return data


# ---------------------------------------------------------------------------------------------- table
def _fmt_speed(record: Optional[Dict[str, Any]]) -> str:
    if record is None:
        return ""
    status = record.get("status", "ok")
    if status == "ok" and record.get("img_s") is not None:
        v = record["img_s"]
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"
    if status == "oom":
        return "OOM"
    return "skip" if str(status).startswith("skipped") else "error"


def _fmt_mem(record: Optional[Dict[str, Any]]) -> str:
    if record is None or record.get("status") != "ok" or record.get("peak_gib") is None:
        return "" if record is None or record.get("status") == "ok" else "-"
    return f"{record['peak_gib']:.2f}"


def _ratio(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> str:
    if not a or not b or a.get("status") != "ok" or b.get("status") != "ok" or not b.get("img_s"):
        return ""
    return f"{a['img_s'] / b['img_s']:.2f}x"


def _exec_kind(record: Dict[str, Any]) -> str:
    if record.get("compile"):
        return "compile" if record["compile"] == "default" else f"compile:{record['compile']}"
    return "graph" if record.get("graph") else "eager"


def comparison_rows(records: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
    """Vim next to DeiT: one row per (mode, dtype, res, batch, execution, Vim model), with the DeiT model of the
    same size (tiny with tiny...; any, if no size matches), one column pair per attention kind, and the ratios."""
    attns = _unique(r.get("attn") or "-" for r in records if not is_vim(r["model"]))
    attns = sorted(attns, key=lambda a: (ATTENTIONS.index(a) if a in ATTENTIONS else 99, a))
    memory = any(r.get("peak_gib") is not None for r in records)
    header = ["mode", "dtype", "res", "batch", "exec", "Vim", "img/s"] + (["GiB"] if memory else []) + ["vs"]
    for a in attns:
        label = "" if a == "-" else f" {a}"
        header += [f"img/s{label}"] + ([f"GiB{label}"] if memory else [])
    header += [f"Vim/{a}" if a != "-" else "Vim/other" for a in attns]

    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in records:
        key = (r["mode"], r["dtype"], r["res"], r["batch"], _exec_kind(r))
        groups.setdefault(key, []).append(r)
    rows = []
    for key in sorted(groups, key=lambda k: (MODES.index(k[0]) if k[0] in MODES else 9, k[1], k[2], -k[3], k[4])):
        group = groups[key]
        vims = [r for r in group if is_vim(r["model"])]
        others = [r for r in group if not is_vim(r["model"])]
        other_models = _unique(r["model"] for r in others)
        used = set()
        pairs: List[Tuple[Optional[Dict[str, Any]], Optional[str]]] = []
        for v in vims:
            same = [m for m in other_models if size_token(m) == size_token(v["model"])]
            partners = same or other_models or [None]
            for m in partners:
                pairs.append((v, m))
                used.add(m)
        pairs += [(None, m) for m in other_models if m not in used]
        for v, m in pairs:
            by_attn = {(r.get("attn") or "-"): r for r in others if r["model"] == m} if m else {}
            row = [key[0], key[1], str(key[2]), str(key[3]), key[4], v["name"] if v else "", _fmt_speed(v)]
            row += ([_fmt_mem(v)] if memory else []) + [display_name(m) if m else ""]
            for a in attns:
                row += [_fmt_speed(by_attn.get(a))] + ([_fmt_mem(by_attn.get(a))] if memory else [])
            row += [_ratio(v, by_attn.get(a)) for a in attns]
            rows.append(row)
    return header, rows


def format_table(records: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """The comparison table as aligned text, or as a markdown table."""
    header, rows = comparison_rows(records)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
