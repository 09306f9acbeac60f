"""``vision-mamba seg-eval``: mIoU, per-class IoU and pixel accuracy of a segmentation checkpoint.

    vision-mamba seg-eval --checkpoint runs/seg_vim/model.safetensors --data-root DATA/coco128 --mode slide

The checkpoint (model.safetensors or last.pth of seg-train) carries its config and class list; ``--set`` changes
data or inference keys (test_scale, slide_stride, val_images, ...). Under torchrun each process evaluates every
world_size-th image and the confusion matrices are summed; process 0 prints and writes the results.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict

from ...engine import cleanup_distributed, init_distributed, resolve_precision
from ...engine.argtypes import non_negative_int
from ...engine.files import write_json
from .config import parse_overrides
from .datasets import DatasetError, dataset_from_config, read_class_list
from .inference import InferenceSettings, Predictor, evaluate
from .metrics import json_safe, per_class_table
from .model import load_segmentation_model
from .train_command import USER_ERRORS, error_message, print_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model.safetensors (or last.pth) written by seg-train, "
                        "or its run directory (for its model.safetensors)")
    parser.add_argument("--data-root", help="dataset folder (default: the one the model was trained on)")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--mode", choices=("whole", "slide"), help="inference mode (default: the config's test_mode)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a config key, e.g. --set test_scale=[1024,256]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="decoding processes (uncached datasets)")
    parser.add_argument("--output", help="write the metrics (with per-class IoU by name) to this JSON file")
    parser.add_argument("--top", type=non_negative_int, default=20, help="per-class lines to print (0: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_same_classes(data_names, model_names) -> None:
    """A DatasetError naming the first class where the dataset's list and the model's differ."""
    data_names, model_names = tuple(data_names), tuple(model_names)
    if data_names == model_names:
        return
    first = next((i for i, (a, b) in enumerate(zip(data_names, model_names)) if a != b), None)
    where = (f"class {first} is {data_names[first]!r} in the dataset and {model_names[first]!r} in the model"
             if first is not None else
             f"the lists agree for {min(len(data_names), len(model_names))} classes, then one of them ends")
    raise DatasetError(f"the dataset's class list ({len(data_names)} classes) differs from the one the model was "
                       f"trained with ({len(model_names)}): {where}")


def run_eval(args: argparse.Namespace) -> Dict[str, Any]:
    overrides = parse_overrides(args.overrides)
    if args.data_root:
        overrides["data_root"] = args.data_root
    if args.mode:
        overrides["test_mode"] = args.mode
    path = Path(args.checkpoint)
    # (a device this machine lacks: said before anything is loaded)
    ctx = init_distributed(args.device)
    try:
        return _run_eval(args, path, overrides, ctx)
    finally:
        cleanup_distributed()


def _run_eval(args: argparse.Namespace, path: Path, overrides: Dict[str, Any], ctx) -> Dict[str, Any]:
    device = ctx.device
    dtype = resolve_precision(args.precision, device)
    model, config, classes = load_segmentation_model(path, overrides)
    if config.dataset == "folders" and config.data_root and config.classes_file:
        listed = Path(config.data_root) / config.classes_file
        if listed.is_file():  # before any image is decoded
            check_same_classes(read_class_list(listed, config.ignore_values, config.ignore_index).names,
                               classes.names)
    dataset = dataset_from_config(config, args.split, verbose=ctx.is_main, progress=not args.no_progress)
    check_same_classes(dataset.classes.names, classes.names)
    predictor = Predictor(model.to(device), InferenceSettings.from_config(config), device, dtype)
    metrics = evaluate(predictor, dataset, classes.num_classes, config.ignore_index, ctx if ctx.is_distributed else None,
                       desc=args.split, num_workers=args.num_workers, progress=not args.no_progress and ctx.is_main,
                       class_names=classes.names)
    return {"checkpoint": str(path), "split": args.split, "mode": config.test_mode, "images": len(dataset),
            "backbone": config.backbone, **metrics}


def main(args: argparse.Namespace) -> int:
    try:
        result = run_eval(args)
    except USER_ERRORS as e:
        print_error("seg-eval", error_message(e))
        return 2
    if os.environ.get("RANK", "0") not in ("", "0"):
        return 0  # (process 0 reports)
    print(f"{result['split']} ({result['images']} images, {result['mode']}): mIoU {100 * result['miou']:.2f}%, "
          f"pixel acc {100 * result['pixel_acc']:.2f}%, mean acc {100 * result['mean_acc']:.2f}%, "
          f"{result['classes_scored']} classes scored")
    print("\n".join(per_class_table(result, result["class_names"], top=args.top or None)))
    if args.output:
        out = dict(result)
        out["per_class_iou"] = dict(zip(result["class_names"], result["per_class_iou"]))
        out["per_class_acc"] = dict(zip(result["class_names"], result["per_class_acc"]))
        out.pop("class_names")
        write_json(args.output, json_safe(out))
    return 0
