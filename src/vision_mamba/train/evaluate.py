"""Top-1 / top-5 accuracy, loss and throughput of a classifier over an evaluation loader (sharded under DDP)."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import DistributedContext, autocast

__all__ = ["evaluate", "STOP_CHECK_BATCHES"]

STOP_CHECK_BATCHES = 4  # an evaluation asks its stop callback every this many batches


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             ctx: Optional[DistributedContext] = None, progress: bool = False, desc: str = "eval",
             channels_last: bool = False, hflip_tta: bool = False, cuda_graph: bool = False,
             stop: Optional[Callable[[], bool]] = None, confusion: Optional[int] = None) -> Dict[str, Any]:
    """Run ``model`` over ``loader`` (batches (images, targets, readable mask or None)); ``channels_last``:
    images in that memory format (for a model converted to it); ``hflip_tta``: logits averaged over each image
    and its mirror image (test-time augmentation; twice the work); ``cuda_graph``: on CUDA, forwards replayed
    from CUDA graphs (:class:`vision_mamba.CUDAGraphInference`, a graph per batch shape) instead of eager calls.

    Returns top1 / top5 (percent; top5 is top-``top5_k``, min(5, classes)), loss (cross-entropy, no smoothing),
    images (counted over all processes), img_per_s (images / wall time of the loop, all processes together) and
    unreadable (images left out).
    Accuracies are summed on the device and read once at the end. ``confusion``: the number of classes K (the
    logits' width), to return the K x K confusion matrix too (``confusion[true][predicted]``: image counts).

    ``stop``: asked every STOP_CHECK_BATCHES batches whether to abandon the evaluation (a stop request: torchrun
    kills its workers 30 s after passing a signal on, and a long evaluation must not outlast that); its answer must
    be the same on every process (the trainer's is agreed by an all-reduce), and it is asked only within the
    batches every process has. An abandoned evaluation returns {"abandoned": True}.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    forward = model
    if cuda_graph and device.type == "cuda":
        from ..inference import CUDAGraphInference

        forward = CUDAGraphInference(model, max_graphs=4)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1 hits, top5 hits, loss sum, count
    top_k = 5  # (top-5 counts the k = min(5, classes) best: with fewer than 5 classes it is top-k)
    cells = (confusion or 0) ** 2
    matrix = torch.zeros(cells, dtype=torch.float64, device=device)  # [K * K] counts, true class major
    checked = 0  # the batches within which stop is asked: those every process has
    if stop is not None:
        checked = len(loader) if hasattr(loader, "__len__") else 0
        if ctx is not None and ctx.is_distributed:
            fewest = torch.tensor([checked], dtype=torch.int64, device=device)
            torch.distributed.all_reduce(fewest, op=torch.distributed.ReduceOp.MIN)
            checked = int(fewest)
    _sync(device)
    start = time.perf_counter()
    # (disable=None: no bar where stderr is not a terminal, whose log its carriage returns would garble)
    for index, (images, targets, readable) in enumerate(tqdm(
            loader, desc=desc, disable=None if progress else True, leave=False, mininterval=2.0)):
        if index < checked and index % STOP_CHECK_BATCHES == STOP_CHECK_BATCHES - 1 and stop():
            model.train(was_training)
            return dict(abandoned=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = forward(images).float()
            if hflip_tta:
                logits = (logits + forward(images.flip(-1)).float()) / 2
        k = top_k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == targets[:, None]
        losses = F.cross_entropy(logits, targets, reduction="none")
        weight = readable.to(torch.float64) if readable is not None else torch.ones_like(losses, dtype=torch.float64)
        sums += torch.stack([(hits[:, 0] * weight).sum(), (hits.any(dim=1) * weight).sum(),
                             (losses.double() * weight).sum(), weight.sum()])
        if confusion:
            if logits.shape[1] != confusion:
                raise ValueError(f"confusion: {confusion} classes expected, the logits have {logits.shape[1]}")
            matrix += torch.bincount(targets * confusion + top[:, 0], weights=weight, minlength=cells)
    _sync(device)
    elapsed = time.perf_counter() - start
    unreadable = torch.tensor([float(getattr(loader, "unreadable", 0))], dtype=torch.float64, device=device)
    if ctx is not None and ctx.is_distributed:
        ctx.all_reduce_sum(sums)
        ctx.all_reduce_sum(unreadable)
        if confusion:
            ctx.all_reduce_sum(matrix)
        elapsed_t = torch.tensor([elapsed], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(elapsed_t, op=torch.distributed.ReduceOp.MAX)
        elapsed = float(elapsed_t)
    top1, top5, loss, count = sums.tolist()
    model.train(was_training)
    count = max(count, 1.0)
    result: Dict[str, Any] = dict(top1=100.0 * top1 / count, top5=100.0 * top5 / count, top5_k=top_k, loss=loss / count,
                                  images=int(count), img_per_s=count / max(elapsed, 1e-9),
                                  unreadable=int(unreadable.item()))
    if confusion:
        result["confusion"] = matrix.round().long().view(confusion, confusion).tolist()
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
