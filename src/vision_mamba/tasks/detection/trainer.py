"""Iteration-based training of the ViTDet Mask R-CNN, then COCO evaluation.

AdamW with layer-wise lr decay over the backbone blocks (ViTDet: block i of a depth-d backbone gets
``lr * decay ** (d - i)``, the embedding ``decay ** (d + 1)``, pyramid and heads the full lr), no weight decay on
norms, biases, position embeddings and Vim's A / D; linear warm-up, then step (x0.1 at 88.9% and 96.3%) or cosine
decay. bf16 autocast on the parts that take it (see amp.py), the NonFiniteGuard, atomic checkpoints every
``checkpoint_every`` iterations and on SIGINT / SIGTERM, ``resume``, an optional wall-clock limit that ends
training cleanly and still evaluates. Under torchrun, each process takes its slice of every global batch.

The run directory gets config.yaml, checkpoint.pt (training state), model.safetensors (final weights with config
and categories), metrics.jsonl / .csv / tb, curves.png and results.json (the summary, with val / train AP).
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vision_mamba.engine import (
    DistributedContext,
    InterruptGuard,
    MetricLogger,
    NonFiniteGuard,
    capture_rng_state,
    cleanup_distributed,
    init_distributed,
    load_state,
    prepare_run_dir,
    resolve_precision,
    restore_rng_state,
    save_state,
)
from ...engine.config import absolute_path
from ...engine.files import write_json
from ...engine.distributed import check_resume_world_size
from ...engine.rundir import hold_run_dir, refuse_other_commands_run
from .amp import set_autocast
from .config import ConfigError, DetectionConfig
from .datasets import AnnotationError, CocoInstances, collate_detection
from .evaluation import evaluate_model, format_metrics
from .model import build_detector, save_detector
from .transforms import LargeScaleJitter

__all__ = ["StreamBatchSampler", "build_datasets", "lr_factor", "param_groups", "train_detector"]

_logger = logging.getLogger(__name__)

TRUNK_PREFIX = "backbone.trunk."


# ---------------------------------------------------------------------- data
def _data_path(root: Optional[str], path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or root is None else Path(root).expanduser() / p


def build_datasets(config: DetectionConfig, progress: bool = True,
                   ) -> Tuple[CocoInstances, CocoInstances, Optional[CocoInstances]]:
    """(train set with LSJ, val set, train images for evaluation or None); all checked before training."""
    d, m = config.data, config.model
    lsj = LargeScaleJitter(m.img_size, d.scale_range, d.hflip_prob, d.min_box_size)
    train_images, train_ann = _data_path(d.root, d.train_images), _data_path(d.root, d.train_annotations)
    train = CocoInstances(train_images, train_ann, transform=lsj, keep_empty=d.keep_empty,
                          on_bad_annotation=d.on_bad_annotation, progress=progress)
    if train.num_objects == 0:  # (with keep_empty, images without objects alone would train on nothing)
        raise AnnotationError(f"{train_ann}: no objects to train on: none of its {len(train)} images has a "
                              f"non-crowd annotation" + (f" ({train.skipped_annotations} malformed ones skipped)"
                                                         if train.skipped_annotations else ""))
    val = CocoInstances(_data_path(d.root, d.val_images), _data_path(d.root, d.val_annotations),
                        on_bad_annotation=d.on_bad_annotation, categories=train.categories,
                        max_images=config.eval.max_images, progress=progress)
    train_eval = None
    if config.eval.train_set:
        train_eval = CocoInstances(train_images, train_ann, on_bad_annotation=d.on_bad_annotation,
                                   categories=train.categories, max_images=config.eval.max_images, progress=progress)
    return train, val, train_eval


class StreamBatchSampler(torch.utils.data.Sampler):
    """Batches for iterations ``start_iter .. num_iters - 1`` of one sample stream: seeded permutations of
    range(n), one after another. Global batch i covers stream positions [i * B * W, (i + 1) * B * W) and rank r
    takes its B of them, so a resumed run continues exactly where the data order stopped."""

    def __init__(self, num_samples: int, batch_size: int, num_iters: int, start_iter: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_samples <= 0:
            raise ValueError("no samples to draw from")
        self.n, self.batch_size, self.num_iters, self.start_iter = num_samples, batch_size, num_iters, start_iter
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._perms: Dict[int, List[int]] = {}

    def __len__(self) -> int:
        return max(0, self.num_iters - self.start_iter)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch][offset]

    def __iter__(self) -> Iterator[List[int]]:
        global_batch = self.batch_size * self.world_size
        for i in range(self.start_iter, self.num_iters):
            first = i * global_batch + self.rank * self.batch_size
            yield [self._index(p) for p in range(first, first + self.batch_size)]


# ---------------------------------------------------------------------- optimisation
def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> List[Dict[str, Any]]:
    """AdamW parameter groups: each with ``lr_scale`` (layer-wise decay over the backbone, from its
    ``group_matcher``) and ``weight_decay`` (0 for 1-d parameters and the backbone's ``no_weight_decay()``)."""
    from timm.models import group_parameters

    trunk = model.backbone.trunk
    layer_of = group_parameters(trunk, trunk.group_matcher(coarse=False), reverse=True)
    top = max(layer_of.values()) + 1  # the embedding is layer 0, block i is layer i + 1: non-backbone is `top`
    no_decay = set(trunk.no_weight_decay()) if hasattr(trunk, "no_weight_decay") else set()
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(TRUNK_PREFIX):
            short = name[len(TRUNK_PREFIX):]
            layer = min(layer_of.get(short, top - 1), top - 1)
            decay = param.ndim > 1 and short not in no_decay
        else:
            layer, decay = top, param.ndim > 1
        key = (layer, decay)
        if key not in groups:
            groups[key] = dict(params=[], weight_decay=weight_decay if decay else 0.0,
                               lr_scale=float(layer_decay ** (top - layer)),
                               name=f"{'backbone_layer_' + str(layer) if layer < top else 'detector'}"
                                    f"{'' if decay else '_no_decay'}")
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def lr_factor(iteration: int, cfg) -> float:
    """The schedule's multiplier of the base lr at ``iteration`` (0-based) for a TrainConfig ``cfg``."""
    if cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, cfg.iters) / cfg.iters))
    else:
        factor = cfg.gamma ** sum(iteration >= int(m * cfg.iters) for m in cfg.milestones)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------- training
def train_detector(config: DetectionConfig, resume: "Optional[str | Path]" = None, progress: bool = True,
                   command: Optional[str] = None) -> Dict[str, Any]:
    """Train (or resume), then evaluate; returns the summary also written to ``results.json``.

    progress: tqdm bars (otherwise about ten plain log lines per run). command: recorded in the summary."""
    config.validate()
    ctx = init_distributed(config.train.device)
    try:
        return _train(config, Path(resume) if resume else None, ctx, progress, command)
    finally:
        cleanup_distributed()


def _state(model: nn.Module, optimizer, iteration: int, nonfinite: NonFiniteGuard, config: DetectionConfig,
           categories, train_seconds: float, world_size: int) -> Dict[str, Any]:
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(), iter=iteration,
                rng=capture_rng_state(), nonfinite=nonfinite.state_dict(), config=config.to_dict(),
                categories=list(categories), train_seconds=float(train_seconds), world_size=world_size)


def _already_complete(state: Dict[str, Any], config: DetectionConfig, run_dir: Path) -> Optional[str]:
    """For a run with nothing left to train that was evaluated at its end: what to tell the user; else None."""
    done = int(state["iter"])
    if done < config.train.iters:
        return None
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None  # stopped before or during the final evaluation: resuming finishes it
    if results.get("iters") != done:
        return None
    return (f"the run in {run_dir} is already complete ({done}/{config.train.iters} iterations); nothing to do. "
            f"To train longer, resume with --set train.iters=N (N > {done})")


def _train(config: DetectionConfig, resume: Optional[Path], ctx: DistributedContext, progress: bool,
           command: Optional[str]) -> Dict[str, Any]:
    tc = config.train
    main = ctx.is_main
    device = ctx.device
    dtype = resolve_precision(tc.precision, device)
    _seed_everything(tc.seed + ctx.rank)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # the fp32 parts (predictors) may use TF32

    # the data's paths are relative to data.root, else to this directory: recorded absolute, since a resume or
    # det-eval reads them again, maybe from elsewhere
    config.data.root = absolute_path(config.data.root or ".")
    run_dir = Path(config.output)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output: {run_dir} is a file, not a run directory")
    # one run writes a directory at a time (a new one is locked when it is made, below)
    lock = hold_run_dir(run_dir, ctx) if run_dir.is_dir() else None
    if run_dir.is_dir():  # a run of train or seg-train (their last.pth) is not written over either
        refuse_other_commands_run(run_dir, "det-train")
    if resume is None and (run_dir / "checkpoint.pt").is_file():
        raise ConfigError(f"{run_dir} already holds a run (checkpoint.pt): continue it with --resume {run_dir}, or "
                          f"choose another --output")
    state = load_state(resume) if resume is not None else None
    if state is not None:
        complete = _already_complete(state, config, run_dir)
        if complete is not None:  # resuming would only evaluate again and log a second final row
            if main:
                print(f"det-train: {complete}", flush=True)
            return dict(stopped="completed", already_complete=True, iters=int(state["iter"]), run_dir=str(run_dir))
        check_resume_world_size(state.get("world_size"), ctx, resume)
    train_set, val_set, train_eval_set = build_datasets(config, progress=progress and main)
    categories = train_set.categories
    if state is not None and list(state["categories"]) != categories:
        raise AnnotationError(f"{resume} was trained on {len(state['categories'])} categories, and "
                              f"{_data_path(config.data.root, config.data.train_annotations)} has "
                              f"{len(categories)} categories that are not the same: resume with the run's own data")

    model = build_detector(config.model, train_set.num_classes, init="" if state is not None else None)
    model.to(device)
    set_autocast(model, dtype)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay, tc.layer_decay), lr=tc.lr,
                                  betas=(tc.betas[0], tc.betas[1]))
    nonfinite = NonFiniteGuard(ctx=ctx)
    start_iter, previous_seconds = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        nonfinite.load_state_dict(state.get("nonfinite", {}))
        start_iter, previous_seconds = int(state["iter"]), float(state.get("train_seconds", 0.0))
        restore_rng_state(state["rng"])
        if ctx.is_distributed:  # only rank 0's generators were saved: give each process its own stream again
            _seed_everything(tc.seed + 1000 * start_iter + ctx.rank)
        del state
    if start_iter >= tc.iters and main:
        _logger.warning("the checkpoint is at iteration %d of %d: nothing left to train", start_iter, tc.iters)

    lock = hold_run_dir(run_dir, ctx, lock)  # held until this function returns
    if main:
        prepare_run_dir(run_dir, config.to_dict())
    logger = MetricLogger(run_dir, enabled=main, step_key="iter", resume_step=start_iter if resume else None)
    net: nn.Module = model
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = StreamBatchSampler(len(train_set), tc.batch_size, tc.iters, start_iter, tc.seed, ctx.rank,
                                 ctx.world_size)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=config.data.workers,
                                         collate_fn=collate_detection, pin_memory=device.type == "cuda")
    if main:
        print(f"det-train: {config.model.backbone} at {config.model.img_size}px, {len(train_set)} training images, "
              f"{train_set.num_classes} classes, iterations {start_iter}..{tc.iters} of batch "
              f"{tc.batch_size * ctx.world_size}, precision {dtype or 'fp32'}, device {device}, run dir {run_dir}",
              flush=True)

    iteration, stop_reason = start_iter, "completed"
    window: Dict[str, float] = defaultdict(float)
    window_steps, window_start, window_first = 0, time.monotonic(), start_iter
    t_start = time.monotonic()
    limit = None if tc.time_limit_minutes is None else 60.0 * tc.time_limit_minutes
    print_every = max(1, round(tc.iters / (10 * tc.log_every)))  # plain log lines: about ten per run
    bar = tqdm(total=tc.iters, initial=start_iter, desc="det-train", disable=not (progress and main),
               mininterval=1.0 if sys.stderr.isatty() else 10.0, dynamic_ncols=True)
    net.train()
    with InterruptGuard() as interrupt:
        for images, targets in loader:
            factor = lr_factor(iteration, tc)
            for group in optimizer.param_groups:
                group["lr"] = tc.lr * group["lr_scale"] * factor
            images = [img.to(device, non_blocking=True).float().div_(255) for img in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            losses = net(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            if nonfinite.ok(loss):
                loss.backward()
                if tc.clip_grad:
                    window["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad))
                optimizer.step()
                for k, v in losses.items():
                    window[k] += v.detach()
                window["loss"] += loss.detach()
                window_steps += 1
            iteration += 1
            bar.update(1)
            if iteration % tc.log_every == 0 or iteration == tc.iters:
                record = _window_record(window, window_steps, ctx)
                record.update(iter=iteration, lr=tc.lr * factor, skipped_steps=nonfinite.skipped,
                              seconds_per_iter=(time.monotonic() - window_start) / (iteration - window_first))
                logger.log(record)
                if "loss" in record:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{tc.lr * factor:.2e}", refresh=False)
                    if main and not progress and (iteration // tc.log_every) % print_every == 0:
                        print(f"det-train: iter {iteration}/{tc.iters} loss {record['loss']:.4f} "
                              f"lr {tc.lr * factor:.2e} {record['seconds_per_iter']:.3f} s/iter "
                              f"({time.monotonic() - t_start:.0f} s)", flush=True)
                window, window_steps = defaultdict(float), 0
                window_start, window_first = time.monotonic(), iteration
            if main and tc.checkpoint_every and iteration % tc.checkpoint_every == 0 and iteration < tc.iters:
                save_state(run_dir / "checkpoint.pt", _state(model, optimizer, iteration, nonfinite, config,
                                                              categories, previous_seconds + time.monotonic() - t_start,
                                                              ctx.world_size))
            stop = iteration < tc.iters and (interrupt.requested or
                                             (limit is not None and time.monotonic() - t_start > limit))
            if ctx.is_distributed:
                flag = torch.tensor([1.0 if stop else 0.0], device=device)
                stop = bool(ctx.all_reduce_sum(flag).item() > 0)
            if stop:
                stop_reason = f"interrupted ({interrupt.signal_name})" if interrupt.requested else "time limit"
                break
    bar.close()
    train_seconds = previous_seconds + time.monotonic() - t_start
    if window_steps:
        record = _window_record(window, window_steps, ctx)
        record.update(iter=iteration, lr=tc.lr * lr_factor(iteration - 1, tc), skipped_steps=nonfinite.skipped)
        logger.log(record)
    if main:
        save_state(run_dir / "checkpoint.pt", _state(model, optimizer, iteration, nonfinite, config, categories,
                                                      train_seconds, ctx.world_size))
        try:
            logger.plot(run_dir / "curves.png", title=f"{config.model.backbone} Mask R-CNN")
        except ImportError as e:  # matplotlib is optional where only training runs
            _logger.warning("no curves.png: %s", e)
    if stop_reason.startswith("interrupted"):
        if main:
            print(f"det-train: {stop_reason} at iteration {iteration}; checkpoint saved. Resume with "
                  f"--resume {run_dir / 'checkpoint.pt'}", flush=True)
        logger.close()
        return dict(stopped=stop_reason, iters=iteration, run_dir=str(run_dir))

    summary: Dict[str, Any] = dict(
        backbone=config.model.backbone, init=config.model.init, img_size=config.model.img_size,
        batch_size=tc.batch_size * ctx.world_size, iters=iteration, iters_planned=tc.iters, stopped=stop_reason,
        train_seconds=round(train_seconds, 1), train_images=len(train_set), skipped_steps=nonfinite.skipped,
        skipped_annotations=train_set.skipped_annotations,
        loss_curve=[[r["iter"], round(r["loss"], 4)] for r in logger.records if "loss" in r],
        command=command,
    )
    if main:
        save_detector(model, run_dir / "model.safetensors", config, categories)
    # every process evaluates its share of the images; process 0 scores them and reports
    ec = config.eval
    eval_record: Dict[str, Any] = {"iter": iteration}
    try:
        for name, dataset in (("val", val_set), ("train", train_eval_set)):
            if dataset is None:
                continue
            t0 = time.monotonic()
            metrics = evaluate_model(model, dataset, device, ec.batch_size, ec.mask_threshold, ec.max_images,
                                     progress=progress and main, desc=f"evaluate {name}", ctx=ctx)
            if main:
                metrics["seconds"] = round(time.monotonic() - t0, 1)
                summary[name] = metrics
                print(f"det-train: {name} ({metrics['num_images']} images): {format_metrics(metrics)}", flush=True)
                eval_record.update({f"{name}_{k}": v for k, v in metrics.items()
                                    if isinstance(v, float) and k.endswith(("_AP", "_AP50"))})
    except KeyboardInterrupt:  # Ctrl-C during the evaluation: training is saved, a resume only evaluates
        logger.close()
        if main:
            print(("\n" if progress else "") +  # (a line of its own, not the end of the progress bar's)
                  f"det-train: interrupted during the evaluation after iteration {iteration}; the trained weights "
                  f"are saved in {run_dir / 'model.safetensors'}. Evaluate them with --resume {run_dir}", flush=True)
        return dict(stopped="interrupted (during the evaluation)", iters=iteration, run_dir=str(run_dir))
    if main:
        logger.log(eval_record)
        write_json(run_dir / "results.json", summary)
    ctx.barrier()
    logger.close()
    summary["run_dir"] = str(run_dir)
    return summary


def _window_record(window: Dict[str, Any], steps: int, ctx: DistributedContext) -> Dict[str, float]:
    """Mean of each accumulated loss over the window's applied steps (and over processes)."""
    if steps == 0:
        return {}
    out = {}
    for key, value in window.items():
        value = torch.as_tensor(value, dtype=torch.float32, device=ctx.device) / steps
        out[key] = float(ctx.all_reduce_mean(value.detach().clone()).item())
    return out
