"""``vision-mamba det-eval``: COCO box and mask AP of a detector checkpoint.

    vision-mamba det-eval --checkpoint runs/det_vim/model.safetensors --data-root DATA/coco128 [--split train]
    vision-mamba det-eval --checkpoint ckpt.safetensors --images DIR --annotations instances.json --output ap.json

The checkpoint carries its config, so by default the images and annotations are that config's (val) paths. Under
torchrun each process predicts every world_size-th image, and process 0 scores them all and reports.
"""
from __future__ import annotations

import argparse

from ...engine.argtypes import fraction, positive_int
from ...engine.files import write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model.safetensors or checkpoint.pt from det-train, "
                        "or its run directory (for its model.safetensors)")
    parser.add_argument("--data-root", help="folder the config's data paths are relative to")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="which of the config's datasets to evaluate (default val)")
    parser.add_argument("--images", help="image folder (instead of the config's)")
    parser.add_argument("--annotations", help="COCO instances json (instead of the config's)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-images", type=positive_int, help="evaluate the first n images only")
    parser.add_argument("--mask-threshold", type=fraction, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                        help="auto (bf16 on CUDA) | bf16 | fp16 | fp32")
    parser.add_argument("--on-bad-annotation", choices=("error", "skip"), default="error")
    parser.add_argument("--output", help="write the metrics here as JSON")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from vision_mamba.engine import cleanup_distributed, init_distributed

    try:
        ctx = init_distributed(args.device)
    except (ValueError, RuntimeError) as e:  # a device this machine lacks (ConfigError), or no device name
        from .train_command import print_error

        print_error("det-eval", e)
        return 2
    try:
        return _main(args, ctx)
    finally:
        cleanup_distributed()


def _main(args: argparse.Namespace, ctx) -> int:
    from vision_mamba.engine import resolve_precision
    from vision_mamba.engine.config import ConfigError
    from vision_mamba.models.checkpoint import CheckpointError

    from .amp import set_autocast
    from .datasets import AnnotationError, CocoInstances
    from .evaluation import evaluate_model, format_metrics
    from .model import load_detector
    from .train_command import print_error
    from .trainer import _data_path

    device = ctx.device
    try:
        model, config, categories = load_detector(args.checkpoint, device)
        d = config.data
        root = args.data_root or d.root
        images = args.images or str(_data_path(root, d.val_images if args.split == "val" else d.train_images))
        annotations = args.annotations or str(
            _data_path(root, d.val_annotations if args.split == "val" else d.train_annotations))
        dataset = CocoInstances(images, annotations, on_bad_annotation=args.on_bad_annotation,
                                categories=categories, max_images=args.max_images,
                                progress=not args.no_progress and ctx.is_main)
    except (AnnotationError, ConfigError, FileNotFoundError, CheckpointError) as e:
        print_error("det-eval", e)
        return 2
    set_autocast(model, resolve_precision(args.precision, device))
    metrics = evaluate_model(model, dataset, device, args.batch_size, args.mask_threshold,
                             progress=not args.no_progress and ctx.is_main, ctx=ctx)
    if metrics is None:
        return 0  # (process 0 reports)
    metrics.update(checkpoint=str(args.checkpoint), images=images, annotations=annotations)
    print(f"det-eval: {len(dataset)} images: {format_metrics(metrics)}")
    if args.output:
        write_json(args.output, metrics)
    return 0
