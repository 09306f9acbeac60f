"""``vision-mamba seg-train``: train an UperNet segmentation model on a Vim (or timm ViT) backbone.

    vision-mamba seg-train --config configs/segmentation/coco128_vim_tiny.yaml --data-root DATA/coco128 \\
        --output runs/seg_vim --init-checkpoint vim_tiny_imagenette.safetensors --set iters=2000

Settings come from the defaults, then the YAML file, then the flags, then ``--set KEY=VALUE`` (any config key;
values read as YAML). ``--resume RUN`` continues the run in RUN from its last.pth, its saved config the base (a
bare ``--resume``: the run in --output). Under torchrun each process trains on its own share (batch_size is per
process).
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ...models.checkpoint import CheckpointError, written_by
from .config import ConfigError, SegConfig, build_config, load_config, parse_overrides
from .datasets import DatasetError

# flag dest -> config key (a flag left out changes nothing)
FLAG_KEYS = {"data_root": "data_root", "output": "output", "init_checkpoint": "init_checkpoint", "iters": "iters",
             "batch_size": "batch_size", "time_budget": "time_budget_s", "device": "device",
             "precision": "precision", "num_workers": "num_workers"}

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError, FileExistsError)


def error_message(error: BaseException) -> str:
    """What a user error says, without the traceback a DataLoader worker wraps around it (an uncached dataset
    meets a broken file in a worker): its last line, which names the file."""
    text = str(error)
    if "Original Traceback" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[-1].split(": ", 1)[-1] if lines else text
    return text


def print_error(command: str, message: str) -> None:
    """``COMMAND: error: MESSAGE`` on stderr, once: under torchrun every process meets the same error and exits with
    the same code, and only the one of RANK 0 prints it."""
    from ...engine import report_error

    report_error(f"{command}: error: {message}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (e.g. configs/segmentation/coco128_vim_tiny.yaml)")
    g = parser.add_argument_group("common settings (each is also a config key)")
    g.add_argument("--data-root", help="dataset folder (data_root)")
    g.add_argument("--output", help="run directory (output)")
    g.add_argument("--init-checkpoint", "--init", dest="init_checkpoint",
                   help="classification checkpoint for the backbone (init_checkpoint)")
    g.add_argument("--iters", type=int, help="training iterations (iters)")
    g.add_argument("--batch-size", type=int, help="images per process and iteration (batch_size)")
    g.add_argument("--time-budget", type=float, help="seconds for the training loop; the schedule is fitted to it "
                                                      "(time_budget_s)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:1 (device)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), help="(precision)")
    g.add_argument("--num-workers", type=int, help="data loading processes (num_workers)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key, e.g. --set lr=2e-4 --set crop_size=[256,256]")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                        help="continue a run from its last.pth: RUN is its directory (or that file); alone, the run "
                             "in --output. Its saved config is the base; --config, flags and --set apply on top "
                             "(the keys a resume may change, e.g. --iters; others are refused)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resume_dir(args: argparse.Namespace) -> Optional[Path]:
    """The run directory --resume names (None without --resume; --output's with a bare --resume)."""
    if args.resume is None:
        return None
    if not args.resume:
        return None  # (the output the config resolves to)
    path = Path(args.resume)
    if path.is_file():
        if path.name != "last.pth":
            kind = written_by(path)
            raise ConfigError(f"--resume: {path} is not a seg-train last.pth" + (f"; it is {kind}" if kind else "")
                              + ("" if kind and not kind.startswith("seg-train") else "; pass the run directory"))
        path = path.parent
    elif not path.is_dir():
        raise FileNotFoundError(f"--resume: no run directory or checkpoint at {path}")
    if args.output is not None and Path(args.output).resolve() != path.resolve():
        raise ConfigError(f"--resume {args.resume} continues the run in {path}; --output {args.output} names another "
                          "directory (a run resumes in its own directory)")
    return path


def config_from_args(args: argparse.Namespace) -> SegConfig:
    flags: Dict[str, Any] = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items()
                             if getattr(args, dest, None) is not None}
    overrides = parse_overrides(args.overrides)
    run_dir = resume_dir(args)
    if args.resume is None:
        return build_config(args.config, flags, overrides)
    if run_dir is None:  # a bare --resume: the run in --output (or the output --set or the YAML names)
        output = args.output or overrides.get("output") or (load_config(args.config).get("output")
                                                            if args.config else None)
        if not output:
            raise ConfigError("--resume without a run directory continues the run in --output: pass --resume DIR "
                              "or --output DIR")
        run_dir = Path(str(output))
    state_path = run_dir / "last.pth"
    if not state_path.is_file():
        other = run_dir / "checkpoint.pt"
        if other.is_file():
            raise ConfigError(f"--resume: {run_dir} is not a seg-train run (no last.pth); its checkpoint.pt is "
                              f"{written_by(other) or 'no seg-train checkpoint'}")
        raise FileNotFoundError(f"--resume: no checkpoint to resume from at {state_path}")
    from ...engine import load_state

    state = load_state(state_path, mmap=True)
    saved = state.get("config")
    if not isinstance(saved, dict) or not isinstance(state.get("classes"), dict):  # (train's holds a config too)
        kind = written_by(state_path)
        raise ConfigError(f"--resume: {state_path} is not a seg-train checkpoint"
                          + (f"; it is {kind}" if kind else " (it holds no segmentation config)"))
    return build_config(args.config, flags, overrides, {"output": str(run_dir)}, base=saved)


def command_line(args: argparse.Namespace, name: str = "seg-train") -> str:
    """The command that reproduces this run (recorded in summary.json)."""
    parts: List[str] = ["vision-mamba", name]
    if args.config:
        parts += ["--config", str(args.config)]
    for dest in FLAG_KEYS:
        value = getattr(args, dest, None)
        if value is not None:
            parts += ["--" + dest.replace("_", "-"), str(value)]
    for item in args.overrides:
        parts += ["--set", item]
    if args.resume is not None:
        parts += ["--resume"] + ([args.resume] if args.resume else [])
    return shlex.join(parts)


def main(args: argparse.Namespace) -> int:
    from .trainer import train

    try:
        config = config_from_args(args)
        if args.print_config:
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        # (not a config key: a resumed run follows this flag, not the saved config)
        summary = train(config, resume=args.resume is not None, command=command_line(args),
                        progress=not args.no_progress)
    except USER_ERRORS as e:
        print_error("seg-train", error_message(e))
        return 2
    return 130 if summary.get("interrupted") else 0
