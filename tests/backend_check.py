"""Shared by the backend tests: one model run on several scan backends, its output and every parameter's gradient."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from vision_mamba.ops import scan_backend


def outputs_and_grads(model: torch.nn.Module, x: torch.Tensor,
                      backends: Sequence[str]) -> List[Tuple[torch.Tensor, List[torch.Tensor]]]:
    """For each backend: (model(x), the gradients of sum(model(x)^2) for the model's parameters, in order)."""
    outs = []
    for backend in backends:
        model.zero_grad()
        with scan_backend(backend):
            out = model(x)
        out.square().sum().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    return outs
