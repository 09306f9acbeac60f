"""``vision-mamba det-train``: train a ViTDet-style Mask R-CNN from a YAML config, then evaluate it.

    vision-mamba det-train --config configs/detection/coco128_vim_tiny.yaml --data-root DATA/coco128 \
        --output runs/det_vim --set train.iters=2000 model.img_size=640
    vision-mamba det-train --resume runs/det_vim            # continue after an interruption
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from .config import ConfigError, load_config
from .datasets import AnnotationError


def print_error(command: str, message: object) -> None:
    """``COMMAND: error: MESSAGE`` on stderr, once: under torchrun every process meets the same error and exits with
    the same code, and only the one of RANK 0 prints it."""
    from ...engine import report_error

    report_error(f"{command}: error: {message}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config, merged over the defaults (shipped: "
                        "configs/detection/coco128_vim_tiny.yaml, coco128_deit_tiny.yaml)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.iters=500 model.img_size=512 (values are YAML)")
    parser.add_argument("--data-root", help="folder the data paths are relative to (sets data.root)")
    parser.add_argument("--init", "--init-checkpoint", dest="init",
                        help="classification checkpoint for the backbone (sets model.init)")
    parser.add_argument("--output", help="run directory (sets output)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1 (sets train.device)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                        help="continue a run: RUN is its directory or its checkpoint.pt (alone: the run in --output); "
                             "its stored config is the base; --config, --set and the other flags apply on top")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_config(args: argparse.Namespace):
    """The resolved DetectionConfig and the checkpoint to resume from (or None)."""
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.init:
        overrides.append(f"model.init={args.init}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    resume, base = None, None
    if args.resume is not None:
        from vision_mamba.engine import load_state
        from vision_mamba.models.checkpoint import written_by

        if not args.resume and not args.output:
            raise ConfigError("--resume without a run directory continues the run in --output: pass --resume DIR "
                              "or --output DIR")
        resume = Path(args.resume or args.output)
        if resume.is_dir():
            if not (resume / "checkpoint.pt").is_file() and (resume / "last.pth").is_file():
                raise ConfigError(f"--resume: {resume} is not a det-train run (no checkpoint.pt); its last.pth is "
                                  f"{written_by(resume / 'last.pth') or 'no det-train checkpoint'}")
            resume = resume / "checkpoint.pt"
        if not resume.is_file():
            raise FileNotFoundError(f"no checkpoint to resume at {resume}")
        if args.output and Path(args.output).resolve() != resume.parent.resolve():
            raise ConfigError(f"--resume {args.resume} continues the run in {resume.parent}; --output {args.output} "
                              "names another directory (a run resumes in its own directory)")
        state = load_state(resume, mmap=True)
        base = state.get("config")
        if not isinstance(base, dict) or "categories" not in state:  # (train's and seg-train's hold a config too)
            kind = written_by(resume)
            raise ConfigError(f"--resume: {resume} is not a det-train checkpoint.pt"
                              + (f"; it is {kind}" if kind else " (it holds no detection config)")
                              + ("; pass the run directory" if kind and kind.startswith("det-train") else ""))
        base["output"] = str(resume.parent)
    if args.output:
        overrides.append(f"output={args.output}")
    config = load_config(args.config, overrides, base=base)
    return config, resume


def main(args: argparse.Namespace) -> int:
    from vision_mamba.models.checkpoint import CheckpointError

    try:
        config, resume = resolve_config(args)
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        print_error("det-train", e)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    from .trainer import train_detector

    try:
        command = "vision-mamba " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["det-train"] else None
        summary = train_detector(config, resume=resume, progress=not args.no_progress, command=command)
    except (AnnotationError, ConfigError, FileNotFoundError, CheckpointError) as e:
        print_error("det-train", e)
        return 2
    stopped = summary.get("stopped", "")
    if stopped.startswith(("completed", "time limit")):
        return 0
    return 130 if stopped.startswith("interrupted") else 1  # as train and seg-train exit after SIGINT / SIGTERM
