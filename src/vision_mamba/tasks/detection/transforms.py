"""Large-scale jitter (LSJ), the training augmentation of ViTDet (Ghiasi et al., "Simple Copy-Paste", 2021).

Resize the image so that it fits a ``size`` x ``size`` square, times a random scale in ``scale_range``
(torchvision's ScaleJitter); cut a random window of at most ``size`` x ``size``; flip horizontally. Image, boxes
and masks go through torchvision.transforms.v2 together, then each box is recomputed from its (cropped) mask, and
objects left with an empty mask or a box under ``min_box_size`` pixels are dropped. Padding to the square happens
in the model (after normalisation, with zeros), so the image keeps its true size here.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["LargeScaleJitter", "boxes_from_masks"]


def boxes_from_masks(masks: Tensor) -> Tensor:
    """Masks [N, H, W] (non-empty) -> boxes [N, 4] (x1, y1, x2, y2) enclosing the mask pixels (x2 = last + 1)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    boxes = masks_to_boxes(masks.bool()).float()
    boxes[:, 2:] += 1  # masks_to_boxes gives the last pixel's index; a pixel covers [x, x + 1)
    return boxes


class LargeScaleJitter:
    """``(image uint8 [3, H, W], target) -> (image [3, h, w], target)`` with h, w <= size.

    target: ``boxes`` float [N, 4] xyxy, ``labels`` [N], ``masks`` uint8 [N, H, W]; other keys pass through.
    """

    def __init__(self, size: int, scale_range: Sequence[float] = (0.1, 2.0), hflip_prob: float = 0.5,
                 min_box_size: float = 1.0):
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max; got {scale_range}")
        self.size = int(size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.min_box_size = float(min_box_size)
        self.jitter = v2.ScaleJitter(target_size=(self.size, self.size), scale_range=self.scale_range)
        self.flip = v2.RandomHorizontalFlip(p=hflip_prob)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale_range={self.scale_range}, "
                f"hflip_prob={self.flip.p}, min_box_size={self.min_box_size})")

    def __call__(self, image: Tensor, target: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        height, width = image.shape[-2:]
        sample = dict(
            image=tv_tensors.Image(image),
            boxes=tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(height, width)),
            masks=tv_tensors.Mask(target["masks"]),
        )
        sample = self.jitter(sample)
        h, w = sample["image"].shape[-2:]
        crop_h, crop_w = min(h, self.size), min(w, self.size)
        top = int(torch.randint(0, h - crop_h + 1, ()).item())
        left = int(torch.randint(0, w - crop_w + 1, ()).item())
        sample = {k: F.crop(v, top, left, crop_h, crop_w) for k, v in sample.items()}
        sample = self.flip(sample)

        masks = sample["masks"].as_subclass(Tensor)
        keep = (masks.flatten(1) != 0).any(dim=1)  # bool [N]; empty once cropped away
        boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
        boxes[keep] = boxes_from_masks(masks[keep])
        sizes = boxes[:, 2:] - boxes[:, :2]
        keep &= (sizes >= self.min_box_size).all(dim=1)
        out = dict(target)
        out.update(boxes=boxes[keep], labels=target["labels"][keep], masks=masks[keep].contiguous())
        return sample["image"].as_subclass(Tensor).contiguous(), out
