"""``vision-mamba eval``: top-1, top-5, per-class accuracy, the confusion matrix and throughput of a classifier
checkpoint on an ImageFolder split.

    vision-mamba eval --checkpoint runs/vim/final.safetensors            # config.yaml of the run next to it
    vision-mamba eval --checkpoint runs/vim                              # the same: a run's final.safetensors
    vision-mamba eval --checkpoint runs/vim/last.pth --ema --json out.json --plot confusion.png
    vision-mamba eval --model vim_tiny_patch16_224 --checkpoint vim_t_midclstok_76p1acc.pth \
        --data /data/imagenet --img-size 224

The model, resolution and data come from the run's configuration (``config.yaml`` beside the checkpoint, or
the configuration inside a ``last.pth``), then ``--config``, then the flags. Throughput is images per second over
the whole evaluation loop (model and batching; on the device-resident path the data is already on the device).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

from ..engine.argtypes import non_negative_int, positive_int

__all__ = ["add_arguments", "main", "run_eval", "resolve_eval_config", "run_checkpoint", "NO_DATA"]

NO_DATA = "(no dataset)"  # the data of a configuration resolved with need_data=False that named none
CONFUSION_MAX_CLASSES = 100  # a confusion matrix is kept in the results and drawn up to this many classes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="weights: a training checkpoint (last.pth), safetensors, or an official .pth; or a run "
                        "directory of train (its final.safetensors; with --ema its last.pth)")
    parser.add_argument("--config", metavar="YAML", help="training config or a run's config.yaml "
                        "(default: the config.yaml next to the checkpoint, or the one inside it)")
    parser.add_argument("--model", help="timm model name (default: from the config)")
    parser.add_argument("--data", help="ImageFolder root (default: from the config), or 'synthetic'")
    parser.add_argument("--split", help="the folder under --data to evaluate (default: the config's val_split)")
    parser.add_argument("--img-size", type=positive_int)
    parser.add_argument("--crop-pct", type=float)
    parser.add_argument("--batch-size", type=positive_int, help="evaluation batch per process")
    parser.add_argument("--device")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--workers", type=non_negative_int)
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    parser.add_argument("--tta", choices=["none", "hflip"], default="none",
                        help="test-time augmentation: hflip averages the logits of each image and its mirror")
    parser.add_argument("--gpu-resident", choices=["auto", "true", "false"],
                        help="decode the split into device memory first (default: the config's choice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any training-config key that matters here (model_kwargs, mean, std, ...)")
    parser.add_argument("--cuda-graph", choices=["on", "off"], default="off",
                        help="on CUDA, replay each batch's forward from a CUDA graph (one capture per batch shape: "
                             "pays off over many batches; default off)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (with per-class accuracy, and "
                        f"the confusion matrix up to {CONFUSION_MAX_CLASSES} classes)")
    parser.add_argument("--plot", metavar="PNG", help="also draw the confusion matrix (up to "
                        f"{CONFUSION_MAX_CLASSES} classes)")
    parser.add_argument("--no-progress", action="store_true")


def run_checkpoint(path: "str | Path", use_ema: bool = False) -> Path:
    """The weights file ``path`` names: the file itself, or in a run directory of ``vision-mamba train`` its final
    weights, final.safetensors (with ``use_ema``: its last.pth, the training state that holds the EMA weights)."""
    path = Path(path)
    if not path.is_dir():
        return path
    name, what = (("last.pth", "the training state with the EMA weights --ema reads") if use_ema else
                  ("final.safetensors", "the final weights of a train run"))
    if not (path / name).is_file():
        others = [] if use_ema else [n for n in ("last.pth", "best.safetensors") if (path / n).is_file()]
        raise FileNotFoundError(f"{path} holds no {name} ({what})" + (f"; pass its {' or '.join(others)}"
                                                                       if others else ""))
    return path / name


def resolve_eval_config(args: argparse.Namespace, need_data: bool = True,
                        checkpoint: "str | Path | None" = None):
    """The configuration of an evaluation (or prediction) of ``checkpoint`` (default ``args.checkpoint``; a weights
    file, as :func:`run_checkpoint` gives it): the run's config.yaml beside it, or the one inside a last.pth, then
    ``--config``, then the flags that ``args`` has. Without ``need_data`` a configuration that names no dataset is
    accepted (prediction reads its own images). ``args`` is only read."""
    from ..engine import load_state
    from ..models.checkpoint import read_metadata
    from .config import QUICKSTART, ConfigError, TrainConfig, apply_overrides, load_yaml, parse_overrides

    values = TrainConfig().to_dict()
    checkpoint = Path(args.checkpoint if checkpoint is None else checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    beside = checkpoint.parent / "config.yaml"
    if args.config:
        apply_overrides(values, load_yaml(args.config), f"config {args.config}")
    elif beside.is_file():
        apply_overrides(values, load_yaml(beside), f"config {beside}")
    elif checkpoint.suffix in (".pth", ".pt"):
        try:
            saved = load_state(checkpoint, mmap=True).get("config")
        except Exception:  # an official or foreign checkpoint: no configuration inside
            saved = None
        if isinstance(saved, dict):
            apply_overrides(values, saved, f"configuration saved in {checkpoint}")
    loaded = bool(args.config or beside.is_file() or values["data"])  # a run's configuration was found
    if not loaded and checkpoint.suffix == ".safetensors":  # weights exported by train name their model and size
        meta = read_metadata(checkpoint)
        if meta.get("model"):
            values["model"], loaded = meta["model"], True
            try:
                for key, parse in (("img_size", int), ("crop_pct", float), ("interpolation", str),
                                   ("model_kwargs", json.loads), ("mean", json.loads), ("std", json.loads)):
                    if key in meta:
                        values[key] = parse(meta[key])
            except ValueError as e:
                raise ConfigError(f"{checkpoint}: unreadable metadata ({e}); pass --config") from e
    if not loaded and args.model is None and getattr(args, "data", None) is None:
        apply_overrides(values, load_yaml(QUICKSTART), "the quick-start preset")
    if loaded and args.model is not None and args.model != values["model"] and values.get("model_kwargs"):
        # The run's model_kwargs (depth, width, ...) belong to its own model: applied to another, they would make a
        # network that is neither (and report it under the other's name).
        print(f"warning: --model {args.model} is not the run's model ({values['model']}): its model_kwargs "
              f"{values['model_kwargs']} are not applied", file=sys.stderr)
        values["model_kwargs"] = {}
    flags: Dict[str, Any] = {}
    for flag, key in (("model", "model"), ("data", "data"), ("split", "val_split"), ("img_size", "img_size"),
                      ("crop_pct", "crop_pct"), ("device", "device"), ("precision", "precision"),
                      ("workers", "workers"), ("batch_size", "eval_batch_size")):
        if getattr(args, flag, None) is not None:
            flags[key] = getattr(args, flag)
    if getattr(args, "gpu_resident", None) is not None:
        flags["gpu_resident"] = {"true": True, "false": False}.get(args.gpu_resident, "auto")
    apply_overrides(values, parse_overrides(getattr(args, "overrides", [])), "--set")
    apply_overrides(values, flags, "command line")
    if not need_data and not values.get("data"):
        values["data"] = NO_DATA  # a prediction brings its own images
    # training-only settings: a run's resident_size must not stop an evaluation at a larger --img-size
    values["resume"] = values["finetune"] = values["resident_size"] = None
    values["teacher"] = values["teacher_checkpoint"] = None
    return TrainConfig.from_dict(values, source="evaluation configuration")


def run_eval(cfg, checkpoint: "str | Path", use_ema: bool = False, progress: bool = True,
             tta: str = "none", cuda_graph: bool = False) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` as configured by ``cfg`` (model, data, val_split, resolution, precision)."""
    from ..data import build_eval_data, check_data_source
    from ..engine import cleanup_distributed, init_distributed, resolve_precision
    from ..models.checkpoint import load_checkpoint
    from .evaluate import evaluate
    from .model import create_classifier

    import torch

    classes = check_data_source(cfg.data, None, cfg.val_split)
    ctx = init_distributed(cfg.device)
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        model = create_classifier(cfg.model, num_classes=len(classes), img_size=cfg.img_size,
                                  model_kwargs=cfg.model_kwargs)
        load_checkpoint(model, checkpoint, strict=True, use_ema=use_ema)
        if hasattr(model, "check_finite"):
            model.check_finite = False
        model.to(ctx.device).eval()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        if ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        batch = cfg.eval_batch_size or 256
        data = build_eval_data(
            cfg.data, split=cfg.val_split, img_size=cfg.img_size, batch_size=batch, eval_batch_size=batch,
            device=ctx.device, world_size=ctx.world_size, rank=ctx.rank, seed=cfg.seed, workers=cfg.workers,
            gpu_resident=cfg.gpu_resident, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean,
            std=cfg.std, synthetic_val=cfg.synthetic_val, synthetic_size=cfg.synthetic_size,
            progress=progress and ctx.is_main)
        metrics = evaluate(model, data.val, ctx.device, resolve_precision(cfg.precision, ctx.device), ctx,
                           progress=progress and ctx.is_main, channels_last=cfg.channels_last,
                           hflip_tta=tta == "hflip", cuda_graph=cuda_graph, confusion=len(classes))
        metrics["unreadable"] += len(data.unreadable)
        matrix = metrics.pop("confusion")
        metrics["per_class"] = [
            dict(name=name, images=sum(row), top1=100.0 * row[i] / sum(row) if sum(row) else None)
            for i, (name, row) in enumerate(zip(classes, matrix))]
        metrics["classes"] = list(classes)
        if len(classes) <= CONFUSION_MAX_CLASSES:
            metrics["confusion"] = matrix
        return dict(model=cfg.model, checkpoint=str(checkpoint), ema=use_ema, tta=tta, data=cfg.data,
                    cuda_graph=cuda_graph and ctx.device.type == "cuda",
                    split=cfg.val_split,
                    img_size=cfg.img_size, crop_pct=cfg.crop_pct, batch_size=batch, device=str(ctx.device),
                    world_size=ctx.world_size, **metrics)
    finally:
        torch.set_num_threads(threads)
        cleanup_distributed()


def check_plot_path(path: str) -> None:
    """A ConfigError unless ``path`` ends in a format matplotlib writes: checked before the evaluation, which an
    ending such as .txt used to end with matplotlib's traceback (and a path without an ending got '.png' added)."""
    from .config import ConfigError

    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:  # (no matplotlib: nothing to ask)
        return
    ending = Path(path).suffix.lower()
    if ending.lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        raise ConfigError(f"--plot {path}: " + (f"matplotlib does not write {ending} files" if ending else
                                                "the file has no ending") +
                          "; give a .png file (or .pdf, .svg, .jpg)")


def main(args: argparse.Namespace) -> int:
    import os

    from ..data import DatasetError
    from ..engine import report_error
    from ..models.checkpoint import CheckpointError
    from .config import ConfigError

    try:
        if args.plot:
            check_plot_path(args.plot)
        checkpoint = run_checkpoint(args.checkpoint, args.ema)
        cfg = resolve_eval_config(args, checkpoint=checkpoint)
        result = run_eval(cfg, checkpoint, use_ema=args.ema, progress=not args.no_progress, tta=args.tta,
                          cuda_graph=getattr(args, "cuda_graph", "off") == "on")
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as e:
        report_error(f"error: {e}")
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"{result['model']} on {result['data']} [{result['split']}], {result['images']} images at "
          f"{result['img_size']} px{' (hflip TTA)' if result['tta'] == 'hflip' else ''}: "
          f"top-1 {result['top1']:.2f}%  top-{result.get('top5_k', 5)} {result['top5']:.2f}%  "
          f"loss {result['loss']:.4f}  {result['img_per_s']:.0f} img/s"
          + (f"  ({result['unreadable']} unreadable images left out)" if result["unreadable"] else ""))
    scored = sorted((c for c in result["per_class"] if c["top1"] is not None), key=lambda c: c["top1"])
    if len(scored) > 1:
        print("lowest per-class top-1: " + ", ".join(f"{c['name']} {c['top1']:.1f}% ({c['images']})"
                                                     for c in scored[:3]))
    if args.plot:
        if "confusion" not in result:
            print(f"warning: no confusion matrix drawn: {len(result['classes'])} classes (more than "
                  f"{CONFUSION_MAX_CLASSES})", file=sys.stderr)
        else:
            from ..engine.metrics import plot_confusion

            title = (f"{result['model']} on {Path(str(result['data'])).name} [{result['split']}]: top-1 "
                     f"{result['top1']:.2f}%")
            print(f"confusion matrix: {plot_confusion(result['confusion'], result['classes'], args.plot, title)}")
    if args.json:
        from ..engine.files import write_json

        write_json(args.json, result)
    return 0
