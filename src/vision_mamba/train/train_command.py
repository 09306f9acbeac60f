"""``vision-mamba train``: train a classifier (Vim or any timm model) from a YAML config.

    vision-mamba train                                   # built-in quick start: small Vim, synthetic shapes, CPU ok
    vision-mamba train --config configs/imagenette/vim_tiny.yaml --data .data/imagenette-160 --output runs/vim
    vision-mamba train --config configs/imagenette/vim_tiny.yaml --set lr=2e-3 --set model_kwargs.depth=12
    vision-mamba train --resume runs/vim                 # continue an interrupted run (or --resume auto)
    torchrun --nproc_per_node 4 -m vision_mamba.cli train --config ...   # several GPUs (DDP)

Without ``--config`` the quick-start preset is the base. The flags below are shortcuts for ``--set KEY=VALUE``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["add_arguments", "main", "resolve_from_args"]

# flag -> config key (values are parsed by the config's types)
SHORTCUTS = {
    "model": "model", "data": "data", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "img_size": "img_size", "output": "output", "resume": "resume", "finetune": "finetune", "device": "device",
    "precision": "precision", "time_limit_min": "time_limit_min", "seed": "seed", "workers": "workers",
    "teacher": "teacher", "teacher_checkpoint": "teacher_checkpoint",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("Configuration: defaults <- --config YAML (or the quick-start preset) <- --set / flags. "
                     "All keys: vision-mamba train --print-config. See docs/training.md.")
    parser.add_argument("--config", metavar="YAML", help="a YAML config (e.g. configs/imagenette/vim_tiny.yaml); "
                        "default: the built-in quick start (synthetic data, small Vim)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable; values read as YAML; model_kwargs.KEY=VALUE)")
    group = parser.add_argument_group("shortcuts for --set")
    group.add_argument("--model", help="timm model name (vim_tiny_patch16_224, deit_tiny_patch16_224, ...)")
    group.add_argument("--data", help="ImageFolder root with train/ and val/, or 'synthetic'")
    group.add_argument("--epochs", type=int)
    group.add_argument("--batch-size", type=int, help="global batch size (all processes together)")
    group.add_argument("--lr", type=float)
    group.add_argument("--img-size", type=int)
    group.add_argument("--output", help="run directory (default runs/<model>-<data>-<time>)")
    group.add_argument("--resume", metavar="PATH|auto", nargs="?", const="",
                       help="continue from a checkpoint, a run directory (alone: the run in --output), or 'auto' (the "
                            "run in --output if it has a checkpoint, else the newest matching run under runs/; starts "
                            "fresh when there is none)")
    group.add_argument("--finetune", metavar="CKPT", help="start from these weights (pos_embed resized, a classifier "
                       "of another size re-initialised)")
    group.add_argument("--teacher", metavar="MODEL", help="distill from this trained timm classifier (with "
                       "--teacher-checkpoint; distill, distill_alpha, distill_tau: --set)")
    group.add_argument("--teacher-checkpoint", metavar="CKPT", help="the teacher's weights (same classes)")
    group.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    group.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    group.add_argument("--time-limit-min", type=float, help="fit the number of epochs into this many minutes")
    group.add_argument("--seed", type=int)
    group.add_argument("--workers", type=int)
    group.add_argument("--no-progress", action="store_true", help="no progress bars (progress=false)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def _overrides(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from .config import parse_overrides

    shortcuts = {key: getattr(args, flag) for flag, key in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "no_progress", False):
        shortcuts["progress"] = False
    return [parse_overrides(args.overrides), shortcuts]


def find_checkpoint(resume: str, output: Optional[str], model: str, data: Optional[str]) -> Optional[Path]:
    """The checkpoint ``resume`` refers to: a file, a run directory (its last.pth), or 'auto' (see --resume)."""
    from .config import ConfigError

    if resume != "auto":
        path = Path(resume)
        if path.is_dir():
            path = path / "last.pth"
        if not path.is_file():
            raise ConfigError(f"resume: no checkpoint at {path}")
        return path
    if output:
        candidate = Path(output) / "last.pth"
        return candidate if candidate.is_file() else None
    from .trainer import default_output_prefix

    prefix = default_output_prefix(model, data)
    runs = sorted(Path("runs").glob(f"{prefix}-*/last.pth"), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def resolve_from_args(args: argparse.Namespace):
    """The run's configuration: the preset or --config, then overrides; on resume the checkpoint's saved
    configuration is the base (then --config and the overrides, so e.g. --epochs can extend a run)."""
    from ..engine import load_state
    from ..models.checkpoint import written_by
    from .config import QUICKSTART, ConfigError, TrainConfig, apply_overrides, load_yaml, resolve_config

    if args.resume == "":  # a bare --resume: the run in --output
        if not args.output:
            raise ConfigError("--resume without a path continues the run in --output: pass --resume PATH or "
                              "--output DIR")
        args.resume = args.output
    overrides = _overrides(args)
    base = Path(args.config) if args.config else QUICKSTART
    cfg = resolve_config(base, *overrides, sources=["--set", "command line"])
    if not cfg.resume:
        return cfg
    path = find_checkpoint(cfg.resume, cfg.output, cfg.model, cfg.data)
    if path is None:  # 'auto' with nothing to resume: a fresh run
        cfg.resume = None
        return cfg
    kind = written_by(path)
    if kind is not None and kind.startswith(("seg-train's", "det-train's")):  # (its config: another command's keys)
        command = kind.split("'", 1)[0]
        raise ConfigError(f"resume: {path} is {kind}, not a checkpoint of train; continue that run with "
                          f"vision-mamba {command} --resume {path.parent}")
    saved = load_state(path, mmap=True).get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"resume: {path} holds no training configuration; is it a checkpoint of this command?")
    values = TrainConfig().to_dict()
    apply_overrides(values, saved, f"configuration saved in {path}")
    if args.config:
        apply_overrides(values, load_yaml(args.config), f"config {args.config}")
    for override, source in zip(overrides, ["--set", "command line"]):
        apply_overrides(values, override, source)
    values["resume"] = str(path)
    if not (args.output or any(o.startswith("output=") for o in args.overrides)):
        values["output"] = str(path.parent)
    return TrainConfig.from_dict(values, source=f"resumed configuration ({path})")


def main(args: argparse.Namespace) -> int:
    import time

    from .budget import seconds_since_process_start

    # the time budget counts from the start of the process (interpreter, imports and data loading included)
    start = time.perf_counter() - seconds_since_process_start()
    from ..data import DatasetError
    from ..engine import NonFiniteLossError, report_error
    from ..models.checkpoint import CheckpointError
    from .config import ConfigError

    try:
        cfg = resolve_from_args(args)
        if args.print_config:
            import yaml

            from .model import check_model_name

            check_model_name(cfg.model)  # (what a run would refuse first, before printing a config it cannot run)

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from .trainer import Trainer

        result = Trainer(cfg, start_time=start).run()
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as e:
        report_error(f"error: {e}")
        return 2
    except NonFiniteLossError as e:
        report_error(f"error: {e}")
        return 1
    if result.interrupted:
        return 130
    import os

    if int(os.environ.get("RANK", "0")) == 0:  # only the main process prints
        final = result.final
        line = (f"final: top-1 {final.get('top1', float('nan')):.2f}%  top-5 {final.get('top5', float('nan')):.2f}%  "
                f"({final.get('images', 0)} {cfg.val_split} images, {result.epochs_done} epochs, "
                f"{result.minutes:.1f} min)")
        if result.final_ema:
            line += f"  | EMA top-1 {result.final_ema['top1']:.2f}%"
        if result.unreadable_images:
            line += f"  | {result.unreadable_images} unreadable image(s) left out"
        print(line)
        print(f"run directory: {result.run_dir} (last.pth, final.safetensors, metrics.csv, curves.png, results.json)")
    return 0
