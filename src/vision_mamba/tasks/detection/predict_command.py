"""``vision-mamba det-predict``: detect objects in one image and draw boxes, labels and masks into a PNG.

    vision-mamba det-predict --checkpoint runs/det_vim/model.safetensors --image x.jpg --output pred.png \
        --score-thresh 0.5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...engine.argtypes import fraction, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model.safetensors or checkpoint.pt from det-train, "
                        "or its run directory (for its model.safetensors)")
    parser.add_argument("--image", required=True, help="an image file (any format PIL reads)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--score-thresh", type=fraction, default=0.5, help="draw detections scoring at least this")
    parser.add_argument("--max-detections", type=positive_int, default=50, help="draw at most this many (best first)")
    parser.add_argument("--mask-threshold", type=fraction, default=0.5)
    parser.add_argument("--json", help="also write the drawn detections (COCO-style boxes xywh) to this file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="auto (bf16 on CUDA) | bf16 | fp16 | fp32")


def main(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from vision_mamba.engine import resolve_device, resolve_precision
    from vision_mamba.engine.config import ConfigError
    from vision_mamba.models.checkpoint import CheckpointError

    from .amp import set_autocast
    from .datasets import load_image
    from .model import load_detector
    from .visualize import draw_detections

    if not args.output.lower().endswith(".png"):
        print(f"det-predict: error: --output must be a .png file, got {args.output}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        image = load_image(args.image, exif=True)  # as a viewer shows the photo
        model, _, categories = load_detector(args.checkpoint, device)
    except (ConfigError, FileNotFoundError, OSError, CheckpointError) as e:
        print(f"det-predict: error: {e}", file=sys.stderr)
        return 2
    set_autocast(model, resolve_precision(args.precision, device))
    with torch.no_grad():
        output = model([image.to(device).float().div_(255)])[0]
    names = [c["name"] for c in categories]
    drawn = draw_detections(image, output, names, args.score_thresh, args.max_detections, args.mask_threshold)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(args.output)
    keep = (output["scores"] >= args.score_thresh).nonzero().flatten()[: args.max_detections].cpu()
    detections = [dict(category=names[int(output["labels"][i]) - 1], score=round(float(output["scores"][i]), 4),
                       bbox=[round(float(v), 1) for v in (output["boxes"][i, :2].tolist()
                                                          + (output["boxes"][i, 2:] - output["boxes"][i, :2]).tolist())])
                  for i in keep.tolist()]
    print(f"det-predict: {len(detections)} detections with score >= {args.score_thresh} drawn into {args.output}")
    if args.json:
        from ...engine.files import write_json

        write_json(args.json, detections)
    return 0
