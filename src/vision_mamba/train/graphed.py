"""A whole training step (forward, loss, backward, gradient clipping, optimizer update) replayed from a CUDA graph.

Why: a Vim step launches a few thousand small kernels (24 blocks x two directions x conv, projections, scan,
norm, and their backward), and on a fast GPU the host cannot queue them as fast as the GPU runs them
(benchmarks/train_profile.py: a Vim-Ti step at 128 px / batch 256 took 96 ms for ~48 ms of GPU work). Captured
once, the step is one launch.

    step = TrainStep(model, criterion, optimizer, device=device, amp_dtype=torch.bfloat16, graph=True)
    for images, targets in batches:
        loss = step(images, targets)      # the update is already applied (or skipped, see below)

What capture needs, and how it is met:
- static inputs: every batch is copied into buffers made at capture (the batch shape must not change; a batch of
  another shape is a ``ValueError``);
- an optimizer that runs on the device without host decisions: torch's fused AdamW / Adam / SGD, whose kernels
  also take a ``found_inf`` flag: the step computes ``found_inf`` from the loss on the device, so a non-finite
  loss leaves weights, moments and step counts unchanged, inside the graph;
- the learning rate as a device tensor: the schedule keeps writing floats into ``param_groups`` (so checkpoints
  and schedulers are unchanged); each call copies them into the tensors the captured update reads;
- randomness: drop path draws from the CUDA generator, whose seed and offset a replay reads when it starts, so
  seeding before each step keeps a run reproducible and resumable (a graph and an eager step draw differently
  from the same seed);
- lazily built state (optimizer moments, cuDNN / cuBLAS workspaces) exists before capture: the first
  ``warmup_steps`` steps run eagerly on a side stream (real updates, same semantics), the next one captures.

With ``graph=False`` the same step runs eagerly (any device): forward, backward, clipping and an optimizer update
that a non-finite loss skips in the same way; the CPU tests run this path.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

from ..engine import autocast

__all__ = ["TrainStep", "graph_unsupported_reason", "supports_found_inf"]

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """True for torch's fused optimizers, whose update kernels skip themselves when ``found_inf`` is set."""
    return bool(optimizer.defaults.get("fused")) and type(optimizer).__module__.startswith("torch.optim")


def graph_unsupported_reason(optimizer: torch.optim.Optimizer, device: torch.device, *, distributed: bool = False,
                             compiled: bool = False, grad_scaler: bool = False) -> Optional[str]:
    """None when a training step with this setup can be captured in a CUDA graph, else why not (in words)."""
    if device.type != "cuda":
        return f"the device is {device.type}, not CUDA"
    if distributed:
        return "several processes (DDP's gradient buckets are not captured here)"
    if compiled:
        return "torch.compile manages its own graphs"
    if grad_scaler:
        return "fp16 needs a grad scaler (use bf16)"
    if not supports_found_inf(optimizer):
        return (f"the optimizer ({type(optimizer).__module__}.{type(optimizer).__name__}) is not one of torch's fused "
                f"optimizers (adamw / adam / sgd are created fused on CUDA)")
    return None


class TrainStep:
    """One optimisation step per call: see the module's doc. ``params``: the parameters to clip (default: all
    that require gradients). ``clip_grad``: max global gradient norm, or None."""

    def __init__(self, model: nn.Module, criterion: Criterion, optimizer: torch.optim.Optimizer, *,
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None, graph: bool = True,
                 clip_grad: Optional[float] = None, params: Optional[List[torch.Tensor]] = None,
                 warmup_steps: int = 3):
        if not supports_found_inf(optimizer):
            raise ValueError("TrainStep needs a fused torch optimizer (e.g. torch.optim.AdamW(..., fused=True)): "
                             "its update must be skippable on the device")
        if graph:
            reason = graph_unsupported_reason(optimizer, device)
            if reason is not None:
                raise ValueError(f"cannot capture the training step in a CUDA graph: {reason}")
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.device, self.amp_dtype, self.use_graph = device, amp_dtype, graph
        self.clip_grad = clip_grad
        self.params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.warmup_steps = max(int(warmup_steps), 1)
        self.eager_steps = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self._static_x: Optional[torch.Tensor] = None
        self._static_y: Optional[torch.Tensor] = None
        self._static_loss: Optional[torch.Tensor] = None
        self._lr_tensors: List[torch.Tensor] = []
        self._capturing = False  # while capturing: autocast without its weight cache

    @property
    def captured(self) -> bool:
        return self.graph is not None

    # ------------------------------------------------------------------ the step's body (eager or captured)
    def _body(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype, cache_enabled=not self._capturing):
            output = self.model(images)
            loss = self.criterion(output, targets)
        loss.backward()
        found_inf = (~torch.isfinite(loss.detach())).float().reshape(())
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        self.optimizer.found_inf = found_inf  # read by the fused kernels: a non-finite loss skips the update
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        return loss.detach()

    def _eager(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if not self.use_graph:
            return self._body(images, targets)
        # before capture, on a side stream (lazy state and library workspaces are made off the capture stream)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            loss = self._body(images, targets)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.eager_steps += 1
        return loss

    def capture(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        """Capture the step for batches shaped like these (their values are only copied; nothing is updated)."""
        if not self.use_graph:
            raise RuntimeError("this TrainStep runs eagerly (graph=False)")
        if self.eager_steps == 0:
            raise RuntimeError("run at least one eager step before capture (it builds the optimizer state)")
        self._static_x = images.detach().clone()
        self._static_y = targets.detach().clone()
        groups = self.optimizer.param_groups
        self._lr_tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device) for g in groups]
        floats = [g["lr"] for g in groups]
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the (static) gradients
        graph = torch.cuda.CUDAGraph()
        for g in groups:
            if "capturable" in g:
                g["capturable"] = True  # the fused kernels are graph-safe; torch asks for the flag during capture
        try:
            for g, t in zip(groups, self._lr_tensors):
                g["lr"] = t
            self._capturing = True
            with torch.cuda.graph(graph):
                self._static_loss = self._body(self._static_x, self._static_y)
        finally:
            self._capturing = False
            for g, lr in zip(groups, floats):
                g["lr"] = lr
        self.graph = graph

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One step on this batch. Returns the loss (a tensor of its own, on the device)."""
        if not self.use_graph or (self.graph is None and self.eager_steps < self.warmup_steps):
            return self._eager(images, targets)
        if self.graph is None:
            self.capture(images, targets)
        if images.shape != self._static_x.shape or targets.shape != self._static_y.shape:
            raise ValueError(f"a captured training step takes batches of one shape: captured images "
                             f"{tuple(self._static_x.shape)} / targets {tuple(self._static_y.shape)}, got "
                             f"{tuple(images.shape)} / {tuple(targets.shape)}")
        self._static_x.copy_(images)
        self._static_y.copy_(targets)
        for t, g in zip(self._lr_tensors, self.optimizer.param_groups):
            t.fill_(float(g["lr"]))
        self.graph.replay()
        return self._static_loss.clone()
