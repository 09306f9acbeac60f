"""``vision-mamba``: one entry point, one subcommand per job.

Each subcommand lives in its own module, imported only when used, which provides
``add_arguments(parser)`` and ``main(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

COMMANDS = {
    "bench": ("vision_mamba.bench.command", "Vim vs DeiT feature-extraction speed and memory (the paper's Figure 1)"),
    "train": ("vision_mamba.train.train_command", "train a classifier (Vim or any timm model) from a YAML config"),
    "eval": ("vision_mamba.train.eval_command", "evaluate a classifier checkpoint: top-1, top-5, per class, speed"),
    "predict": ("vision_mamba.train.predict_command", "top classes of a trained classifier for some images"),
    "seg-train": ("vision_mamba.tasks.segmentation.train_command", "train an UperNet segmentation model"),
    "seg-eval": ("vision_mamba.tasks.segmentation.eval_command", "evaluate a segmentation checkpoint (mIoU)"),
    "seg-predict": ("vision_mamba.tasks.segmentation.predict_command", "write a colour overlay PNG for an image"),
    "det-train": ("vision_mamba.tasks.detection.train_command", "train a ViTDet-style Mask R-CNN"),
    "det-eval": ("vision_mamba.tasks.detection.eval_command", "evaluate a detection checkpoint (COCO AP)"),
    "det-predict": ("vision_mamba.tasks.detection.predict_command", "draw predicted boxes and masks into a PNG"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    return importlib.import_module(module_name)


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vision-mamba", description="Vision Mamba (Vim) for PyTorch")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen subcommand's module is imported (the others would slow down --help).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load(name).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    if os.environ.get("VISION_MAMBA_SCAN"):  # a misspelt backend: said now, not at the first forward pass
        from .ops.backend import get_scan_backend

        try:
            get_scan_backend()
        except ValueError as e:
            _report(f"vision-mamba {args.command}: error: {e}")
            return 2
    from .engine.files import unwritable

    for option in ("json", "plot", "output"):  # where the results go, checked before the work that makes them
        value = getattr(args, option, None)
        reason = unwritable(value) if isinstance(value, str) and value else None
        if reason:
            _report(f"vision-mamba {args.command}: error: --{option} {value}: {reason}")
            return 2
    try:
        return int(_load(args.command).main(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C where a command has no stop of its own (train saves and stops by itself)
        _report(f"vision-mamba {args.command}: interrupted")
        return 130
    except OSError as e:  # what the system refused (a full disk, a folder without permission, ...), in one line
        if os.environ.get("VISION_MAMBA_TRACEBACK", "") not in ("", "0"):
            raise
        _report(f"vision-mamba {args.command}: error: {e} (VISION_MAMBA_TRACEBACK=1 shows where)")
        return 1


def _report(message: str) -> None:
    from .engine import report_error

    report_error(message)


if __name__ == "__main__":
    sys.exit(main())
