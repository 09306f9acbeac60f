"""The built-in dataset: coloured shapes and textures drawn by code (no download, the same on every machine).

Ten classes, each an object at a random position and size, turned by up to 20 degrees, in a random colour on a
random background with a brightness gradient and pixel noise:

    disc, square, triangle, ring, plus, frame (hollow square), horizontal stripes, vertical stripes,
    checkerboard, dots

A horizontal flip keeps every class, so the usual flip augmentation is safe. Colour and position carry no
information, only shape and texture do; the rotations stay small so that a small model learns the set from a
few tens of thousands of samples (the quick start: a few minutes on a CPU).

    images, labels = generate_shapes(1000, size=32, seed=0)   # uint8 [1000, 3, 32, 32], int64 [1000]
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["SYNTHETIC_CLASSES", "generate_shapes", "synthetic_split", "export_image_folder"]

SYNTHETIC_CLASSES: Tuple[str, ...] = (
    "disc", "square", "triangle", "ring", "plus", "frame", "h_stripes", "v_stripes", "checker", "dots",
)


def _rotated(xx: Tensor, yy: Tensor, cx: Tensor, cy: Tensor, angle: Tensor) -> Tuple[Tensor, Tensor]:
    """Pixel grid [S, S] -> coordinates [n, S, S] relative to the centres, rotated by ``angle`` [n]."""
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _shape_mask(cls: int, u: Tensor, v: Tensor, r: Tensor, period: Tensor) -> Tensor:
    """Foreground mask [n, S, S] of class ``cls`` in rotated coordinates (u, v), radius r [n, 1, 1]."""
    dist = torch.sqrt(u * u + v * v)
    box = torch.maximum(u.abs(), v.abs())
    name = SYNTHETIC_CLASSES[cls]
    if name == "disc":
        return dist < r
    if name == "square":
        return box < 0.8 * r
    if name == "triangle":  # equilateral, circumradius r: three half-planes at 120 degrees
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            a = 2 * math.pi * k / 3 + math.pi / 2
            inside &= (u * math.cos(a) + v * math.sin(a)) < 0.5 * r
        return inside
    if name == "ring":
        return (dist < r) & (dist > 0.55 * r)
    if name == "plus":
        arm = 0.3 * r
        return ((u.abs() < arm) & (v.abs() < r)) | ((v.abs() < arm) & (u.abs() < r))
    if name == "frame":
        return (box < 0.85 * r) & (box > 0.5 * r)
    patch = box < 0.85 * r
    if name == "h_stripes":
        return patch & (torch.sin(2 * math.pi * v / period) > 0)
    if name == "v_stripes":
        return patch & (torch.sin(2 * math.pi * u / period) > 0)
    if name == "checker":
        return patch & (torch.sin(math.pi * u / (0.5 * period)) * torch.sin(math.pi * v / (0.5 * period)) > 0)
    if name == "dots":
        cu = torch.remainder(u, period) - period / 2
        cv = torch.remainder(v, period) - period / 2
        return patch & (cu * cu + cv * cv < (0.3 * period) ** 2)
    raise AssertionError(name)


@torch.no_grad()
def generate_shapes(num_images: int, size: int = 32, seed: int = 0, max_angle: float = 20.0
                    ) -> Tuple[Tensor, Tensor]:
    """Draw ``num_images`` images of the ten classes (balanced, shuffled), objects turned by up to
    ``max_angle`` degrees either way.

    Returns:
        images: uint8 [N, 3, size, size]; labels: int64 [N] indexing :data:`SYNTHETIC_CLASSES`.
    The result depends only on (num_images, size, seed).
    """
    if num_images <= 0:
        raise ValueError(f"num_images must be > 0, got {num_images}")
    if size < 16:
        raise ValueError(f"synthetic images need at least 16 pixels per side, got size={size}")
    g = torch.Generator().manual_seed(int(seed))
    n, s = num_images, size

    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=g)

    labels = (torch.arange(n) % len(SYNTHETIC_CLASSES))[torch.randperm(n, generator=g)]
    radius = uniform(n, low=0.28 * s, high=0.45 * s)
    # centres keep at least ~70% of the object inside the image
    cx = uniform(n) * (s - 1.2 * radius) + 0.6 * radius
    cy = uniform(n) * (s - 1.2 * radius) + 0.6 * radius
    angle = uniform(n, low=-max_angle, high=max_angle) * (math.pi / 180)
    period = uniform(n, low=3.5, high=6.0) * (s / 32) ** 0.5
    background = uniform(n, 3)
    # every channel of the foreground differs from the background by 0.3 to 0.7 (cyclically): always visible
    foreground = torch.remainder(background + uniform(n, 3, low=0.3, high=0.7), 1.0)
    noise_std = uniform(n, low=0.02, high=0.06)
    gradient = uniform(n, 2, low=-0.25, high=0.25)

    coords = torch.arange(s, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    mask = torch.zeros(n, s, s, dtype=torch.bool)
    for cls in range(len(SYNTHETIC_CLASSES)):
        idx = (labels == cls).nonzero().flatten()
        if idx.numel() == 0:
            continue
        u, v = _rotated(xx, yy, cx[idx], cy[idx], angle[idx])
        mask[idx] = _shape_mask(cls, u, v, radius[idx, None, None], period[idx, None, None])

    m = mask[:, None].float()
    image = m * foreground[:, :, None, None] + (1 - m) * background[:, :, None, None]
    ramp = (gradient[:, 0, None, None] * (xx / s - 0.5) + gradient[:, 1, None, None] * (yy / s - 0.5))[:, None]
    image = image + ramp + noise_std[:, None, None, None] * torch.randn(n, 3, s, s, generator=g)
    images = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.to(torch.int64)


def synthetic_split(split: str, num_images: int, size: int = 32, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """The 'train' or 'val' split: the same generator with seeds that never overlap between splits."""
    offsets = {"train": 0, "val": 1}
    if split not in offsets:
        raise ValueError(f"the synthetic dataset has the splits 'train' and 'val', not {split!r}")
    return generate_shapes(num_images, size=size, seed=2 * int(seed) + offsets[split])


def export_image_folder(images: Tensor, labels: Tensor, root: "str | Path",
                        classes: Sequence[str] = SYNTHETIC_CLASSES, suffix: str = ".png") -> List[Path]:
    """Write uint8 images [N, 3, H, W] as an ImageFolder tree ``root/<class>/<i>.png`` (for examples and tests)."""
    from PIL import Image

    root = Path(root)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels.tolist())):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}{suffix}"
        Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())).save(path)
        paths.append(path)
    return paths
