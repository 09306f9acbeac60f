"""Segmentation metrics from a confusion matrix: mIoU, per-class IoU, pixel accuracy, mean class accuracy.

Rows are ground truth, columns prediction; pixels whose ground truth is the ignore index are not counted.
IoU_c = TP_c / (GT_c + PRED_c - TP_c). A class absent from both the ground truth and the prediction has no IoU
(NaN) and is left out of the mean; a class that is predicted but absent from the ground truth has IoU 0 and counts.
The matrix is a plain sum, so it is reduced across processes with one all-reduce.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["ConfusionMatrix", "metrics_from_confusion", "json_safe"]


class ConfusionMatrix:
    """Accumulates a [K, K] int64 confusion matrix on ``device`` with torch.bincount."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: "torch.device | str" = "cpu"):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """prediction, target: integer tensors of the same shape (any), target may hold the ignore index."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        k = self.num_classes
        target = target.to(self.matrix.device)
        prediction = prediction.to(self.matrix.device)
        valid = target != self.ignore_index
        t, p = target[valid].long(), prediction[valid].long()
        if t.numel():
            bad_t = (t < 0) | (t >= k)
            bad_p = (p < 0) | (p >= k)
            if bool(bad_t.any()):
                raise ValueError(f"target labels {torch.unique(t[bad_t]).tolist()[:10]} are outside 0..{k - 1} "
                                 f"and not the ignore index {self.ignore_index}")
            if bool(bad_p.any()):
                raise ValueError(f"predicted labels {torch.unique(p[bad_p]).tolist()[:10]} are outside 0..{k - 1}")
        self.matrix += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def all_reduce(self, ctx) -> None:
        """Sum the matrices of all processes (``ctx``: engine.DistributedContext)."""
        if ctx is not None:
            ctx.all_reduce_sum(self.matrix)

    def compute(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        return metrics_from_confusion(self.matrix, class_names)


def metrics_from_confusion(matrix: Tensor, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """{'miou', 'pixel_acc', 'mean_acc', 'per_class_iou', 'per_class_acc', 'num_pixels', 'classes_scored'}:
    floats in [0, 1]; per-class lists hold NaN where a class has no IoU (absent from prediction and ground truth)
    or no accuracy (absent from the ground truth)."""
    m = matrix.detach().double().cpu()
    tp = m.diag()
    gt = m.sum(dim=1)
    pred = m.sum(dim=0)
    union = gt + pred - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    total = m.sum()
    scored = ~torch.isnan(iou)
    out: Dict[str, Any] = {
        "miou": float(iou[scored].mean()) if bool(scored.any()) else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(acc[~torch.isnan(acc)].mean()) if bool((~torch.isnan(acc)).any()) else float("nan"),
        "per_class_iou": iou.tolist(),
        "per_class_acc": acc.tolist(),
        "num_pixels": int(total),
        "classes_scored": int(scored.sum()),
    }
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def json_safe(value: Any) -> Any:
    """NaN / Inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def per_class_table(metrics: Dict[str, Any], class_names: Sequence[str], top: Optional[int] = None) -> List[str]:
    """Lines 'name  IoU  acc' for the classes that were scored, best IoU first."""
    rows = [(n, iou, acc) for n, iou, acc in zip(class_names, metrics["per_class_iou"], metrics["per_class_acc"])
            if not math.isnan(iou)]
    rows.sort(key=lambda r: -r[1])
    rows = rows[:top] if top else rows
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'class':<{width}}  IoU    acc"]
    for name, iou, acc in rows:
        acc_text = "  -  " if math.isnan(acc) else f"{100 * acc:5.1f}"
        lines.append(f"{name:<{width}}  {100 * iou:5.1f}  {acc_text}")
    return lines
