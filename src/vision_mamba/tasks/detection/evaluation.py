"""COCO evaluation with pycocotools: predictions -> COCO results (boxes xywh, RLE masks) -> COCOeval.

    results = detections_to_coco(outputs, image_ids, category_ids)     # any predictions, any source
    metrics = evaluate_coco(dataset.coco, results, image_ids)          # {'bbox_AP': 0.41, 'segm_AP50': ...}
    metrics = evaluate_model(model, dataset, device)                   # both steps over a whole dataset

Metrics are COCO's own fractions in [0, 1]: AP (IoU .50:.95), AP50, AP75, APs, APm, APl, for 'bbox' and 'segm'.
A size range without ground truth has no AP (None, where COCOeval says -1).
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["STAT_NAMES", "detections_to_coco", "evaluate_coco", "evaluate_model", "format_metrics", "predict_dataset"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(outputs: Sequence[Dict[str, Tensor]], image_ids: Sequence[int],
                       category_ids: Sequence[int], mask_threshold: float = 0.5) -> List[Dict[str, Any]]:
    """torchvision detector outputs (original image coordinates) -> COCO result dicts.

    outputs[i]: ``boxes`` [N, 4] (x1, y1, x2, y2), ``scores`` [N], ``labels`` [N] in 1..K, optionally ``masks``
    [N, 1, H, W] (probabilities, thresholded at ``mask_threshold``) or [N, H, W]. ``category_ids[label - 1]`` is
    the COCO category of a label.
    """
    from pycocotools import mask as mask_utils

    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results: List[Dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        labels = out["labels"].detach().cpu().tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        if min(labels) < 1 or max(labels) > len(category_ids):
            raise ValueError(f"labels must be in 1..{len(category_ids)}; got {min(labels)}..{max(labels)}")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        rles: List[Optional[Dict[str, Any]]] = [None] * len(labels)
        if "masks" in out:
            masks = out["masks"].detach()
            masks = masks[:, 0] if masks.ndim == 4 else masks
            binary = masks > mask_threshold if masks.is_floating_point() else masks.bool()
            # [N, W, H] row-major is [H, W, N] column-major: the layout pycocotools encodes, without a copy.
            array = binary.transpose(1, 2).to(torch.uint8).contiguous().cpu().numpy().transpose(2, 1, 0)
            rles = mask_utils.encode(array)
            for rle in rles:
                rle["counts"] = rle["counts"].decode("ascii")
        for i, label in enumerate(labels):
            result = dict(image_id=int(image_id), category_id=int(category_ids[label - 1]),
                          bbox=[round(v, 2) for v in xywh[i]], score=float(scores[i]))
            if rles[i] is not None:
                result["segmentation"] = rles[i]
            results.append(result)
    return results


def _results_as_coco(coco_gt, results: List[Dict[str, Any]]):
    from pycocotools.coco import COCO

    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(results)
    empty = COCO()  # loadRes refuses an empty list; no detections is a valid (all-zero) answer
    empty.dataset = dict(images=list(coco_gt.dataset.get("images", [])),
                         categories=list(coco_gt.dataset.get("categories", [])), annotations=[])
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def evaluate_coco(coco_gt, results: List[Dict[str, Any]], image_ids: Optional[Iterable[int]] = None,
                  iou_types: Sequence[str] = ("bbox", "segm"), verbose: bool = False) -> Dict[str, Optional[float]]:
    """COCOeval of ``results`` (COCO result dicts) against ``coco_gt`` (a pycocotools COCO) on ``image_ids``
    (default: every image of coco_gt). Returns ``{f'{iou_type}_{stat}': value}`` for the STAT_NAMES."""
    from pycocotools.cocoeval import COCOeval

    ids = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    missing = set(ids) - set(coco_gt.getImgIds())
    if missing:
        raise ValueError(f"image ids {sorted(missing)[:5]} are not in the ground truth")
    foreign = {r["image_id"] for r in results} - set(ids)
    if foreign:
        raise ValueError(f"results for images outside the evaluated set: {sorted(foreign)[:5]}")
    metrics: Dict[str, Optional[float]] = {}
    for iou_type in iou_types:
        if iou_type == "segm" and results and not all("segmentation" in r for r in results):
            raise ValueError("segm evaluation needs a 'segmentation' in every result")
        coco_dt = _results_as_coco(coco_gt, results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.params.imgIds = ids
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with sink:
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)]):
            metrics[f"{iou_type}_{name}"] = None if value < 0 else float(value)
    return metrics


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset, device: "str | torch.device", batch_size: int = 8,
                    mask_threshold: float = 0.5, max_images: Optional[int] = None, progress: bool = True,
                    desc: str = "predict", shard: Tuple[int, int] = (0, 1)) -> List[Dict[str, Any]]:
    """Run ``model`` (a torchvision detector) over a CocoInstances dataset's original images -> COCO results;
    ``shard`` (rank, world size): only every world_size-th image from the rank-th."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    mine = list(range(shard[0], n, shard[1]))
    results: List[Dict[str, Any]] = []
    try:
        for start in tqdm(range(0, len(mine), batch_size), desc=desc, disable=not progress, leave=False,
                          mininterval=1.0):
            indices = mine[start:start + batch_size]
            images = [dataset.image(i).to(device, non_blocking=True).float().div_(255) for i in indices]
            outputs = model(images)
            results += detections_to_coco(outputs, [dataset.image_ids[i] for i in indices], dataset.category_ids,
                                          mask_threshold)
    finally:
        model.train(was_training)
    return results


def evaluate_model(model: nn.Module, dataset, device: "str | torch.device", batch_size: int = 8,
                   mask_threshold: float = 0.5, max_images: Optional[int] = None, progress: bool = True,
                   desc: str = "evaluate", ctx=None) -> Optional[Dict[str, Optional[float]]]:
    """Box and mask AP of ``model`` on a CocoInstances dataset (every image, or the first ``max_images``).

    Under DDP (``ctx``, a DistributedContext of several processes; every process calls this) each process predicts
    every world_size-th image, process 0 gathers the predictions and scores them, and the others get None."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None and ctx.is_distributed else (0, 1)
    results = predict_dataset(model, dataset, device, batch_size, mask_threshold, max_images,
                              progress and rank == 0, desc, shard=(rank, world))
    if world > 1:
        parts: Optional[List[List[Dict[str, Any]]]] = [[] for _ in range(world)] if rank == 0 else None
        torch.distributed.gather_object(results, parts, dst=0)
        if rank != 0:
            return None
        results = [r for part in parts for r in part]
    metrics = evaluate_coco(dataset.coco, results, dataset.image_ids[:n])
    metrics["num_images"] = n
    metrics["num_detections"] = len(results)
    return metrics


def format_metrics(metrics: Dict[str, Any]) -> str:
    """'box AP 41.2 (AP50 62.0, AP75 44.9) | mask AP 37.1 (...)', in percent."""
    parts = []
    for iou_type, title in (("bbox", "box"), ("segm", "mask")):
        if f"{iou_type}_AP" not in metrics:
            continue
        vals = {k: metrics.get(f"{iou_type}_{k}") for k in STAT_NAMES}
        pct = {k: ("-" if v is None else f"{100 * v:.1f}") for k, v in vals.items()}
        parts.append(f"{title} AP {pct['AP']} (AP50 {pct['AP50']}, AP75 {pct['AP75']}, "
                     f"s/m/l {pct['APs']}/{pct['APm']}/{pct['APl']})")
    return " | ".join(parts)
