"""``vision-mamba bench``: Vim vs DeiT feature extraction (the paper's Figure 1) on whatever device is present.

Without grid options it runs a plan: on the CPU a small one (Vim-Ti and DeiT-Ti at 224, batch 1 and 4, fp32,
about a minute or two), on CUDA the full comparison (``--plan figure1``). With ``--models`` / ``--res`` / ... it
runs that grid instead. Prints a table (Vim next to DeiT, with the speed ratios) and writes OUT/NAME.json (a list
of records) and OUT/NAME.png.

    vision-mamba bench                                    # the default plan for this device
    vision-mamba bench --models vim_tiny,deit_tiny --res 512,1024 --batch 32,16 --dtype bf16 --graph
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .core import (ATTENTIONS, COMPILE_MODES, DTYPES, MODEL_ALIASES, BenchConfigError, Case, Settings,
                   format_table, make_cases, read_records, run_cases, write_records)

PLANS = ("cpu-small", "figure1")
GRID_OPTIONS = ("models", "res", "batch", "dtype", "attn", "mode", "graph")

# The issue-3 matrix: Vim-Ti vs DeiT-Ti at these (resolution, batch) pairs.
FIGURE1_RES = (224, 512, 640, 738, 1024, 1248, 1248)
FIGURE1_BATCH = (128, 32, 32, 32, 16, 16, 1)


def plan_cases(plan: str) -> List[Case]:
    """The rows of a named plan, most important first (a time budget skips the tail)."""
    if plan == "cpu-small":
        return make_cases(["vim_tiny", "deit_tiny"], [224, 224], [1, 4], ["fp32"], ATTENTIONS)
    if plan == "figure1":
        tiny = ["vim_tiny", "deit_tiny"]
        small = ["vim_small", "deit_small"]
        return (
            # inference in bf16 and fp32, forward captured in a CUDA graph for both models (launch overhead out)
            make_cases(tiny, FIGURE1_RES, FIGURE1_BATCH, ["bf16"], ATTENTIONS, graph="on")
            + make_cases(small, [224, 1248], [128, 16], ["bf16"], ATTENTIONS, graph="on")
            # a training step: forward, cross-entropy, backward, fused AdamW; eager and replayed from a CUDA graph
            + make_cases(tiny, [224], [128], ["bf16"], ["flash"], modes=["train"], graph="both")
            + make_cases(small, [224], [128], ["bf16"], ["flash"], modes=["train"], graph="on")
            # eager inference, what a plain `model(x)` gets
            + make_cases(tiny, [224, 1248], [128, 16], ["bf16"], ["flash"], graph="off")
            + make_cases(tiny, FIGURE1_RES, FIGURE1_BATCH, ["fp32"], ATTENTIONS, graph="on")
        )
    raise BenchConfigError(f"unknown plan {plan!r}: choose from {', '.join(PLANS)}")


def _csv(text: str) -> List[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 2)[-1]
    what = parser.add_argument_group("what to measure (a grid; without these, a plan)")
    what.add_argument("--plan", choices=PLANS, default=None,
                      help="a named set of rows: cpu-small (the CPU default) or figure1 (the CUDA default: Vim-Ti "
                           "vs DeiT-Ti at 224-1248, bf16 and fp32, Vim-S vs DeiT-S, a training step)")
    what.add_argument("--models", default=None,
                      help=f"comma list: {', '.join(MODEL_ALIASES)} or timm model names (default vim_tiny,deit_tiny)")
    what.add_argument("--res", default=None, help="comma list of input resolutions (default 224)")
    what.add_argument("--batch", default=None,
                      help="batch size: one value, or one per resolution (default 1 on CPU, 32 on CUDA)")
    what.add_argument("--dtype", default=None,
                      help=f"comma list from {', '.join(DTYPES)}; bf16 = autocast with fp32 weights (default fp32)")
    what.add_argument("--attn", default=None,
                      help="DeiT attention, comma list: flash (timm's fused F.scaled_dot_product_attention), "
                           "explicit (q @ k^T, softmax, as the paper's DeiT baseline) (default flash,explicit)")
    what.add_argument("--mode", default=None,
                      help="comma list: infer (forward_features under inference_mode), train (forward, "
                           "cross-entropy, backward, AdamW) (default infer)")
    what.add_argument("--graph", nargs="?", const="on", default=None, choices=("off", "on", "both"),
                      help="capture the inference forward in a CUDA graph and time its replays, for every model "
                           "(bare --graph = on; both = a row each way)")
    how = parser.add_argument_group("how")
    how.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    how.add_argument("--backend", default="auto", choices=("auto", "torch", "compiled", "triton", "reference"),
                     help="Vim's selective-scan backend (default auto: triton on CUDA, torch on CPU)")
    how.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                     help="torch.compile the model (bare --compile = default mode); its compile time is warm-up")
    how.add_argument("--check-finite", choices=("on", "off"), default="on",
                     help="Vim's check of the input for NaN/Inf (on, as users get it: one sync per forward; "
                          "skipped inside CUDA graphs)")
    how.add_argument("--no-verify", action="store_true",
                     help="do not compare a fast Vim backend's output with the torch backend before timing it")
    how.add_argument("--warmup", type=int, default=None, help="warm-up iterations per row (default 3; CPU 1)")
    how.add_argument("--iters", type=int, default=None, help="at least this many timed iterations (default 20; CPU 5)")
    how.add_argument("--min-time", type=float, default=None,
                     help="and at least this many seconds of timed iterations per row (default 1.0)")
    how.add_argument("--max-iters", type=int, default=1000, help="at most this many timed iterations per row")
    how.add_argument("--max-row-time", type=float, default=None,
                     help="time fewer iterations (at least 3) where --iters of them would take longer than this")
    how.add_argument("--total-time", type=float, default=None,
                     help="rows not started this many seconds into the run are recorded as skipped")
    how.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    how.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="runs/bench", help="folder for NAME.json and NAME.png (default runs/bench)")
    out.add_argument("--name", default="bench", help="file name stem (default bench)")
    out.add_argument("--append", action="store_true", help="add to the records already in OUT/NAME.json")
    out.add_argument("--no-plot", action="store_true", help="do not write the PNG")


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchConfigError("--device cuda was asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def build_cases(args: argparse.Namespace, device: torch.device) -> List[Case]:
    grid = [opt for opt in GRID_OPTIONS if getattr(args, opt, None) is not None]
    if args.plan is not None and grid:
        raise BenchConfigError(f"--plan cannot be combined with --{', --'.join(grid)} (a plan fixes the rows)")
    if args.plan is not None or not grid:
        plan = args.plan or ("figure1" if device.type == "cuda" else "cpu-small")
        return plan_cases(plan)
    graph = args.graph or "off"
    if graph != "off" and device.type != "cuda":
        raise BenchConfigError("--graph needs a CUDA device (CUDA graphs)")
    if graph != "off" and args.compile is not None:
        raise BenchConfigError("--graph and --compile do not combine; for graphs under torch.compile use "
                               "--compile reduce-overhead")
    res = _csv(args.res) if args.res is not None else ["224"]
    batch = _csv(args.batch) if args.batch is not None else ["32" if device.type == "cuda" else "1"]
    return make_cases(
        models=_csv(args.models) if args.models is not None else ["vim_tiny", "deit_tiny"],
        res=res, batch=batch,
        dtypes=_csv(args.dtype) if args.dtype is not None else ["fp32"],
        attns=_csv(args.attn) if args.attn is not None else list(ATTENTIONS),
        modes=_csv(args.mode) if args.mode is not None else ["infer"],
        graph=graph,
    )


def _env_prefix() -> str:
    """The VISION_MAMBA_* environment variables set for this run (backend, kernel launch settings) as they would be
    typed before the command: a record's command must reproduce it, and these change what is measured."""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("VISION_MAMBA_"))
    return "".join(f"{k}={shlex.quote(v)} " for k, v in env)


def command_line(args: Optional[argparse.Namespace] = None) -> str:
    """The command as typed (from sys.argv), or, when called from Python, rebuilt from the options given; prefixed
    with the VISION_MAMBA_* environment variables in effect."""
    argv = list(sys.argv)
    if "bench" in argv[1:2] or args is None:
        if argv and (argv[0].endswith("vision-mamba") or argv[0].endswith("cli.py")):
            argv[0] = "vision-mamba"
        return _env_prefix() + shlex.join(argv)
    defaults = vars(parse([]))
    parts = ["vision-mamba", "bench"]
    for key, value in vars(args).items():
        if key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            parts += [flag, str(value)]
    return _env_prefix() + shlex.join(parts)


def busy_cpu_warning() -> Optional[str]:
    """A note when other processes keep the CPU busy: then several threads per op wait on each other and times
    can be many times longer than on an idle machine."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    if load < 0.75 * cores:
        return None
    return (f"note: the CPU is busy (load average {load:.1f} on {cores} cores): timings will be noisy"
            + ("; with other work running, --threads 1 is often much faster" if torch.get_num_threads() > 1 else ""))


def make_settings(args: argparse.Namespace, device: torch.device, command: str) -> Settings:
    cpu = device.type == "cpu"
    settings = Settings(
        device=device, backend=args.backend, compile=args.compile,
        warmup=args.warmup if args.warmup is not None else (1 if cpu else 3),
        iters=args.iters if args.iters is not None else (5 if cpu else 20),
        min_time=args.min_time if args.min_time is not None else 1.0,
        max_iters=args.max_iters, max_row_time=args.max_row_time, total_time=args.total_time,
        check_finite=args.check_finite == "on", verify=not args.no_verify, seed=args.seed, command=command,
    )
    if args.threads is not None and args.threads < 1:
        raise BenchConfigError("--threads must be at least 1")
    settings.validate()
    return settings


def run(args: argparse.Namespace, command: Optional[str] = None, log=print) -> int:
    """The subcommand's work; raises BenchConfigError for bad options."""
    device = resolve_device(args.device)
    if args.threads is not None and args.threads >= 1:
        torch.set_num_threads(args.threads)
    settings = make_settings(args, device, command if command is not None else command_line(args))
    cases = build_cases(args, device)
    if args.compile is not None and any(c.graph for c in cases):
        raise BenchConfigError("--compile cannot be combined with a plan that uses CUDA graphs; give a grid")
    out_dir = Path(args.out)
    json_path = out_dir / f"{args.name}.json"
    png_path = out_dir / f"{args.name}.png"
    previous = read_records(json_path) if args.append and json_path.exists() else []
    log(f"vision-mamba bench: {len(cases)} rows on {device} -> {json_path}")
    if device.type == "cpu":
        warning = busy_cpu_warning()
        if warning:
            log(warning)
    records: List[dict] = []

    def save(record: dict) -> None:
        records.append(record)
        write_records(previous + records, json_path)

    interrupted = False
    started = time.monotonic()
    try:
        run_cases(cases, settings, on_record=save, log=log)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: writing the rows measured so far")
    every = previous + records
    write_records(every, json_path)
    log("")
    log(format_table(records))
    if not args.no_plot and every:
        from .plot import plot_records

        plot_records(every, png_path, title="Vim vs DeiT feature extraction")
        log(f"\nwrote {json_path} and {png_path} ({time.monotonic() - started:.0f} s)")
    else:
        log(f"\nwrote {json_path} ({time.monotonic() - started:.0f} s)")
    errors = [r for r in records if str(r["status"]).startswith(("error", "wrong"))]
    for r in errors:
        log(f"failed: {r['name']} {r['res']}px b{r['batch']} {r['dtype']} {r.get('attn') or ''}: {r['status']}")
    if interrupted:
        return 130
    return 1 if errors else 0


def main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except BenchConfigError as err:
        print(f"vision-mamba bench: error: {err}", file=sys.stderr)
        return 2


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse bench options alone (for scripts and tests)."""
    parser = argparse.ArgumentParser(prog="vision-mamba bench")
    add_arguments(parser)
    return parser.parse_args(list(argv))
