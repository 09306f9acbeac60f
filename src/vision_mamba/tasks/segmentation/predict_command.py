"""``vision-mamba seg-predict``: segment images and write a colour overlay PNG.

    vision-mamba seg-predict --checkpoint runs/seg_vim/model.safetensors --image x.jpg --output overlay.png
    vision-mamba seg-predict --checkpoint ... --image a.jpg b.jpg --mask a.png b.png --output grid.png

One row per image: the prediction blended over the image, with a legend of its largest classes; with ``--mask``
(the dataset's raw class-index masks) the image and the ground truth come first, for comparison. The palette is
fixed, so the same class has the same colour in every file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image

from ...engine import resolve_device, resolve_precision
from ...engine.argtypes import fraction, non_negative_int
from .config import parse_overrides
from .datasets import read_image, read_raw_mask
from .inference import InferenceSettings, Predictor
from .model import load_segmentation_model
from .train_command import USER_ERRORS
from .visualize import grid, legend, make_palette, overlay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model.safetensors (or last.pth) written by seg-train, "
                        "or its run directory (for its model.safetensors)")
    parser.add_argument("--image", nargs="+", required=True, help="one or more images")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--mask", nargs="+", help="ground-truth masks (raw values), one per image, shown beside")
    parser.add_argument("--mode", choices=("whole", "slide"), help="inference mode (default: the config's test_mode)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change an inference key, e.g. --set test_scale=[1024,256]")
    parser.add_argument("--alpha", type=fraction, default=0.55, help="opacity of the colours")
    parser.add_argument("--legend", type=non_negative_int, default=8, help="classes in the legend (0: no legend)")
    parser.add_argument("--width", type=non_negative_int, default=384, help="width of each panel in pixels (0: image size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto")


def _fit(panel: np.ndarray, width: int, nearest: bool) -> Image.Image:
    image = Image.fromarray(panel)
    if width <= 0 or image.width == width:
        return image
    height = max(1, round(image.height * width / image.width))
    return image.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR)


def run_predict(args: argparse.Namespace) -> Path:
    images = [Path(p) for p in args.image]
    masks = [Path(p) for p in args.mask] if args.mask else None
    for p in images + (masks or []):
        if not p.is_file():
            raise FileNotFoundError(f"not found: {p}")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"--mask needs one mask per image: {len(images)} images, {len(masks)} masks")
    overrides = parse_overrides(args.overrides)
    if args.mode:
        overrides["test_mode"] = args.mode
    model, config, classes = load_segmentation_model(args.checkpoint, overrides)
    device = resolve_device(args.device)
    predictor = Predictor(model.to(device), InferenceSettings.from_config(config), device,
                          resolve_precision(args.precision, device))
    palette = make_palette(classes.num_classes)
    rows: List[List[Image.Image]] = []
    for i, path in enumerate(images):
        # a photo is shown as a viewer turns it (EXIF); with a ground-truth mask, as stored (the mask's pixels)
        image = read_image(path, exif=masks is None)
        labels = predictor.predict(image).cpu().numpy()
        rgb = image.permute(1, 2, 0).numpy()
        row = []
        if masks is not None:
            truth = classes.encode(read_raw_mask(masks[i]), masks[i]).long().numpy()
            if truth.shape != labels.shape:
                raise ValueError(f"{masks[i]} is {truth.shape[1]}x{truth.shape[0]} but {path} is "
                                 f"{labels.shape[1]}x{labels.shape[0]}")
            row += [_fit(rgb, args.width, False),
                    _fit(overlay(rgb, truth, palette, args.alpha, classes.ignore_index), args.width, False)]
        row.append(_fit(overlay(rgb, labels, palette, args.alpha, classes.ignore_index), args.width, False))
        if args.legend > 0:
            row.append(legend(labels, classes.names, palette, height=row[-1].height, top=args.legend))
        rows.append(row)
    titles = (["image", "ground truth"] if masks is not None else []) + [f"prediction ({config.backbone})"]
    if args.legend > 0:
        titles.append("predicted classes")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, titles).save(out, optimize=True)
    return out


def main(args: argparse.Namespace) -> int:
    try:
        with torch.inference_mode():
            out = run_predict(args)
    except (*USER_ERRORS, ValueError) as e:
        print(f"seg-predict: error: {e}", file=sys.stderr)
        return 2
    print(f"seg-predict: wrote {out}")
    return 0
