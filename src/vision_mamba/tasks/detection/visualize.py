"""Predictions drawn onto the image: masks, boxes and "label score" captions (torchvision.utils)."""
from __future__ import annotations

import colorsys
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

__all__ = ["class_color", "draw_detections"]


def class_color(label: int) -> Tuple[int, int, int]:
    """A bright colour per class, well spread around the hue circle (golden-ratio steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_detections(image: Tensor, output: Dict[str, Tensor], class_names: Sequence[str],
                    score_thresh: float = 0.5, max_detections: int = 50, mask_threshold: float = 0.5,
                    mask_alpha: float = 0.45, box_width: int = 2) -> Tensor:
    """image uint8 [3, H, W] and one detector output (original coordinates) -> uint8 [3, H, W] with the
    detections scoring at least ``score_thresh`` (the best ``max_detections``) drawn. ``class_names[label - 1]``
    names a label."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 image [3, H, W], got {image.dtype} {tuple(image.shape)}")
    scores = output["scores"].detach().float().cpu()
    keep = torch.nonzero(scores >= score_thresh).flatten()[:max_detections]  # outputs are sorted by score
    canvas = image.cpu()
    if keep.numel() == 0:
        return canvas
    labels: List[int] = output["labels"].detach().cpu()[keep].tolist()
    colors = [class_color(label) for label in labels]
    if "masks" in output:
        masks = output["masks"].detach().cpu()[keep]
        masks = masks[:, 0] if masks.ndim == 4 else masks
        masks = masks > mask_threshold if masks.is_floating_point() else masks.bool()
        canvas = draw_segmentation_masks(canvas, masks, alpha=mask_alpha, colors=colors)
    captions = [f"{class_names[label - 1] if 0 < label <= len(class_names) else label} {scores[i]:.2f}"
                for label, i in zip(labels, keep.tolist())]
    boxes = output["boxes"].detach().float().cpu()[keep]
    return draw_bounding_boxes(canvas, boxes, labels=captions, colors=colors, width=box_width)
