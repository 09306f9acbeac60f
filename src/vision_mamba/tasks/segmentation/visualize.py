"""Colour overlays of label maps: a fixed palette, blending, a legend of the largest classes, panels in a grid."""
from __future__ import annotations

import colorsys
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["make_palette", "colorize", "overlay", "legend", "grid"]

_GOLDEN = 0.6180339887498949


def make_palette(num_classes: int) -> np.ndarray:
    """[num_classes, 3] uint8 colours, the same for every run: hues stepped by the golden ratio (neighbouring ids
    far apart on the colour wheel), saturation and value cycled so that close hues still differ."""
    colours = []
    for i in range(num_classes):
        hue = (i * _GOLDEN) % 1.0
        saturation = (0.95, 0.7, 0.5)[i % 3]
        value = (0.95, 0.75)[(i // 3) % 2]
        colours.append([int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return np.asarray(colours, dtype=np.uint8).reshape(num_classes, 3)


def colorize(labels: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Train ids [H, W] -> RGB [H, W, 3]; the ignore index (and anything outside the palette) is black."""
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    out = np.zeros(labels.shape + (3,), dtype=np.uint8)
    out[valid] = palette[labels[valid]]
    return out


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend the colourised ``labels`` [H, W] over ``image`` [H, W, 3] uint8; ignored pixels keep the image."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colour = colorize(labels, palette, ignore_index).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colour
    keep = (labels == ignore_index) | (labels < 0) | (labels >= len(palette))
    blend[keep] = image[keep]
    return blend.clip(0, 255).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 has a scalable default
    except TypeError:
        return ImageFont.load_default()


def legend(labels: np.ndarray, class_names: Sequence[str], palette: np.ndarray, height: int, top: int = 8,
           width: int = 220, ignore_index: int = 255) -> Image.Image:
    """A panel listing the ``top`` classes by pixel share in ``labels``, with their colours."""
    labels = np.asarray(labels)
    valid = labels[(labels != ignore_index) & (labels >= 0) & (labels < len(class_names))]
    counts = np.bincount(valid.ravel(), minlength=len(class_names)) if valid.size else np.zeros(len(class_names))
    order = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0][:top]
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    row = max(14, min(24, height // max(1, top + 1)))
    font = _font(max(10, min(15, row - 8)))
    total = max(1, int(counts.sum()))
    for k, cls in enumerate(order):
        y = 4 + k * row
        draw.rectangle([6, y + 2, 6 + row - 6, y + row - 4], fill=tuple(int(c) for c in palette[cls]),
                       outline=(0, 0, 0))
        draw.text((row + 6, y + 1), f"{class_names[cls]} {100 * counts[cls] / total:.0f}%", fill=(0, 0, 0), font=font)
    return panel


def grid(rows: List[List[Image.Image]], titles: Optional[List[str]] = None, gap: int = 4) -> Image.Image:
    """Panels in rows (each row's panels side by side, rows stacked), optional column titles on top."""
    widths = [sum(p.width for p in r) + gap * (len(r) - 1) for r in rows]
    heights = [max(p.height for p in r) for r in rows]
    title_h = 22 if titles else 0
    canvas = Image.new("RGB", (max(widths), sum(heights) + gap * (len(rows) - 1) + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if titles:
        x = 0
        font = _font(14)
        for title, panel in zip(titles, rows[0]):
            draw.text((x + 4, 3), title, fill=(0, 0, 0), font=font)
            x += panel.width + gap
    y = title_h
    for r, h in zip(rows, heights):
        x = 0
        for panel in r:
            canvas.paste(panel, (x, y))
            x += panel.width + gap
        y += h + gap
    return canvas
