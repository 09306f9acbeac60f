"""Iteration-based segmentation training: AdamW with layer-wise lr decay, linear warm-up + poly schedule, bf16
autocast, a non-finite-loss guard, atomic checkpoints (every N iterations, at the end, and on SIGINT / SIGTERM),
``resume``, an optional wall-clock budget, and the final evaluation (val mIoU, optionally train mIoU).

Files in the run directory: config.yaml (resolved), last.pth (the state to resume from), model.safetensors (final
weights + config + class names), summary.json, metrics.jsonl / metrics.csv / tb/, curves.png.

Time budget: with ``time_budget_s`` the loop times iterations 5..25 (after start-up and kernel compilation),
then shortens the schedule (iterations, and warm-up if it would not fit) so that it ends within the budget; the
poly decay then reaches its end as planned. Every 20 iterations it checks again and shortens the schedule further
if the run fell behind. If the estimate still proves wrong the loop stops at the budget anyway
('stopped_by_time_budget' in the summary). The budget applies to each invocation (a resumed run gets it again).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import PolyLRScheduler
from timm.utils import random_seed
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ...engine import (DistributedContext, InterruptGuard, MetricLogger, NonFiniteGuard, autocast,
                       capture_rng_state, cleanup_distributed, init_distributed, load_state, prepare_run_dir,
                       resolve_precision, restore_rng_state, save_state)
from ...engine.config import absolute_path
from ...engine.files import write_json
from ...engine.distributed import check_resume_world_size
from ...engine.rundir import hold_run_dir, refuse_other_commands_run
from .config import ConfigError, SegConfig
from .datasets import dataset_from_config
from .inference import InferenceSettings, Predictor, evaluate
from .metrics import json_safe
from .model import build_segmentation_model, classes_to_dict, save_segmentation_model, segmentation_loss
from .transforms import TrainTransform

_logger = logging.getLogger(__name__)

__all__ = ["InfiniteSampler", "build_optimizer", "build_scheduler", "TimeBudget", "train"]

# Keys that may differ when a run is resumed; any other change is refused (it would be a different run).
RESUMABLE_CHANGES = {"iters", "time_budget_s", "stop_iter", "num_workers", "checkpoint_every", "log_every", "eval_every",
                     "eval_train", "device", "output", "data_root", "init_checkpoint", "cache_images"}


class InfiniteSampler(Sampler[int]):
    """Endless indices: a fresh permutation per pass (seeded by ``seed`` and the pass number), each process taking
    every world_size-th index, the first ``start`` of this process's stream skipped (resume at the same place)."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start, self.shuffle = start, shuffle

    def _stream(self) -> Iterator[int]:
        epoch = 0
        while True:
            if self.shuffle:
                g = torch.Generator()
                g.manual_seed(self.seed + epoch)
                order = torch.randperm(self.size, generator=g).tolist()
            else:
                order = list(range(self.size))
            # Every process gets the same number of indices per pass (wrapping around), so none runs dry first.
            per_rank = math.ceil(self.size / self.world_size)
            order = (order * (self.world_size + 1))[: per_rank * self.world_size]
            yield from order[self.rank::self.world_size]
            epoch += 1

    def __iter__(self) -> Iterator[int]:
        stream = self._stream()
        for _ in range(self.start):
            next(stream)
        return stream


def build_optimizer(model: nn.Module, config: SegConfig) -> torch.optim.Optimizer:
    """AdamW through timm, with layer-wise lr decay from ``model.group_matcher()`` (each group's 'lr_scale' is
    applied by the timm scheduler) and no weight decay on norms, biases and position embeddings."""
    return create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay,
                               layer_decay=config.layer_decay if config.layer_decay < 1 else None,
                               betas=tuple(config.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, config: SegConfig, total_iters: int,
                    warmup_iters: int) -> PolyLRScheduler:
    """Linear warm-up from lr * warmup_ratio, then poly decay (power ``poly_power``) to ``min_lr`` at
    ``total_iters``; stepped per iteration with ``step_update(i)``."""
    return PolyLRScheduler(optimizer, t_initial=total_iters, power=config.poly_power, lr_min=config.min_lr,
                           warmup_t=warmup_iters, warmup_lr_init=config.lr * config.warmup_ratio,
                           t_in_epochs=False)


class TimeBudget:
    """Fits the number of iterations to a wall-clock budget (see the module docstring).

    ``replan`` is called after every iteration with the count done in this invocation; at the check points (after
    ``skip + measure`` iterations, then every ``every``) it returns the total that fits, from the mean time per
    iteration since ``skip``: first the fitted total, later a shorter one if the run fell behind (never longer).
    The check points depend only on the count, so every process of a DDP run reaches them together.
    """

    def __init__(self, seconds: float, skip: int = 5, measure: int = 20, every: int = 20, margin: float = 0.97):
        self.seconds, self.skip, self.measure, self.every, self.margin = seconds, skip, measure, every, margin
        self._t_skip: Optional[float] = None
        self.sec_per_iter: Optional[float] = None
        self.stopped = False

    def is_check_point(self, done: int) -> bool:
        first = self.skip + self.measure
        return done >= first and (done - first) % self.every == 0

    def replan(self, done: int, elapsed: float, iteration: int, planned: int) -> Optional[int]:
        """``done``: iterations in this invocation, ``iteration``: the global count, ``planned``: the current
        total. Returns the total to use at a check point, else None."""
        if done == self.skip:
            self._t_skip = elapsed
        if self._t_skip is None or not self.is_check_point(done):
            return None
        self.sec_per_iter = (elapsed - self._t_skip) / (done - self.skip)
        remaining = self.seconds * self.margin - elapsed
        fits = iteration + max(1, int(remaining / max(self.sec_per_iter, 1e-9)))
        return min(planned, fits)

    def over(self, elapsed: float) -> bool:
        return elapsed >= self.seconds


def _check_resume(saved: Dict[str, Any], config: SegConfig) -> None:
    now = config.to_dict()
    changed = [k for k, v in saved.items() if k in now and k not in RESUMABLE_CHANGES and now[k] != v]
    if changed:
        details = "; ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed[:8])
        raise ConfigError(f"--resume: the config differs from the saved run in {details}. Only "
                          f"{', '.join(sorted(RESUMABLE_CHANGES))} may change when resuming.")


def _already_complete(saved: Dict[str, Any], config: SegConfig, run_dir: Path) -> Optional[str]:
    """For a run with nothing left to train that was evaluated at its end: what to tell the user; else None."""
    total = int(saved["total_iters"]) if saved["config"]["iters"] == config.iters else config.iters
    done, end = int(saved["iter"]), min(total, config.stop_iter or total)
    if done < end:
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None  # stopped before or during the final evaluation: resuming finishes it
    if summary.get("iters") != done or not (run_dir / "model.safetensors").is_file():
        return None
    miou = f", val mIoU {100 * summary['val_miou']:.2f}%" if isinstance(summary.get("val_miou"), float) else ""
    return (f"the run in {run_dir} is already complete ({done}/{end} iterations{miou}); nothing to do. To train "
            f"longer, resume with more --iters" + (" (or a later stop_iter)" if end < total else ""))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def train(config: SegConfig, resume: bool = False, command: str = "", progress: bool = True) -> Dict[str, Any]:
    """Train (or continue, with ``resume``) the run ``config`` describes; returns its summary (also written to
    summary.json). Under torchrun each process trains on its share of every batch. ``progress``: False draws no
    bars (--no-progress), the plain log lines instead."""
    ctx = init_distributed(config.device)
    try:
        return _train(config, ctx, resume, command, progress)
    finally:
        cleanup_distributed()


def _train(config: SegConfig, ctx: DistributedContext, resume: bool, command: str,
           progress: bool = True) -> Dict[str, Any]:
    device = ctx.device
    dtype = resolve_precision(config.precision, device)
    config.data_root = absolute_path(config.data_root)  # (recorded absolute: a resume or seg-eval reads it again)
    run_dir = Path(config.output)
    state_path = run_dir / "last.pth"
    saved = None
    # one run writes a directory at a time (a new one is locked when it is made, below)
    lock = hold_run_dir(run_dir, ctx) if run_dir.is_dir() else None
    if run_dir.is_dir():  # a run of train (its last.pth) or det-train (checkpoint.pt) is not written over either
        refuse_other_commands_run(run_dir, "seg-train")
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume from at {state_path}")
        saved = load_state(state_path)
        _check_resume(saved["config"], config)
        complete = _already_complete(saved, config, run_dir)
        if complete is not None:  # resuming would only evaluate again and log a second final row
            if ctx.is_main:
                print(f"seg-train: {complete}", flush=True)
            return {"already_complete": True, "iters": int(saved["iter"]), "run_dir": str(run_dir)}
        check_resume_world_size(saved.get("world_size"), ctx, state_path)
    elif state_path.is_file():
        raise FileExistsError(f"{run_dir} already holds a run ({state_path.name}); continue it with --resume {run_dir} "
                              f"or choose another --output")
    if config.norm == "bn" and config.batch_size < 2:
        raise ConfigError("batch_size must be >= 2 per process with norm 'bn' (batch norm of the 1x1 pooled map "
                          "needs two values per channel); use norm: gn for batch size 1")
    random_seed(config.seed, ctx.rank)

    # Data first: bad files are reported before any model is built.
    train_set = dataset_from_config(config, "train", TrainTransform.from_config(config), verbose=ctx.is_main,
                                    progress=progress)
    val_set = dataset_from_config(config, "val", verbose=ctx.is_main, progress=progress)
    classes = train_set.classes
    num_classes, class_names = classes.num_classes, list(classes.names)

    model = build_segmentation_model(config, num_classes, load_init=saved is None).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if ctx.is_distributed and device.type == "cuda":  # SyncBatchNorm runs on GPUs only; gloo on CPU keeps BN
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    guard = NonFiniteGuard(ctx=ctx)
    start_iter, total, warmup = 0, config.iters, config.warmup_iters
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start_iter = int(saved["iter"])
        if saved["config"]["iters"] == config.iters:  # keep a schedule fitted to an earlier budget
            total, warmup = int(saved["total_iters"]), int(saved["warmup_iters"])
        guard.load_state_dict(saved.get("nonfinite", {}))
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
    unwrapped = model
    if ctx.is_distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    scheduler = build_scheduler(optimizer, config, total, warmup)
    lock = hold_run_dir(run_dir, ctx, lock)  # held until this function returns
    if ctx.is_main:
        prepare_run_dir(run_dir, config.to_dict())
    logger = MetricLogger(run_dir, enabled=ctx.is_main, step_key="iter",
                          resume_step=start_iter if saved is not None else None)

    sampler = InfiniteSampler(len(train_set), config.seed, ctx.rank, ctx.world_size,
                              start=start_iter * config.batch_size)
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        prefetch_factor=4 if config.num_workers > 0 else None)

    def save(iteration: int) -> None:
        if ctx.is_main:
            save_state(state_path, {
                "model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(), "iter": iteration,
                "total_iters": total, "warmup_iters": warmup, "rng": capture_rng_state(),
                "config": config.to_dict(), "classes": classes_to_dict(classes), "nonfinite": guard.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "world_size": ctx.world_size})
        ctx.barrier()

    def run_eval(dataset, desc: str) -> Dict[str, Any]:
        if ctx.is_distributed:  # each process evaluates its share with process 0's BN statistics (the saved model)
            for buffer in unwrapped.buffers():
                dist.broadcast(buffer, 0)
        unwrapped.eval()
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False  # every image size would be autotuned anew
        predictor = Predictor(unwrapped, InferenceSettings.from_config(config), device, dtype)
        metrics = evaluate(predictor, dataset, num_classes, config.ignore_index, ctx, desc=desc,
                           num_workers=config.num_workers, progress=progress, class_names=class_names)
        torch.backends.cudnn.benchmark = benchmark
        unwrapped.train()
        return metrics

    bar = progress and sys.stderr.isatty()
    budget = TimeBudget(config.time_budget_s) if config.time_budget_s else None
    it, stop_reason = start_iter, None
    sums: Dict[str, torch.Tensor] = {}
    window_start, window_iters = time.perf_counter(), 0
    model.train()
    if ctx.is_main:
        n_params = sum(p.numel() for p in unwrapped.parameters())
        print(f"seg-train: {config.backbone} UperNet, {n_params / 1e6:.2f} M parameters, {num_classes} classes, "
              f"{len(train_set)} train / {len(val_set)} val images, crop {config.crop_hw}, batch "
              f"{config.batch_size} x {ctx.world_size}, iterations {start_iter} -> {total}, device "
              f"{_device_name(device)}, precision {dtype or 'fp32'}", flush=True)
    # a bar on a terminal; in a log file, about ten plain lines a run instead (a bar's carriage returns there
    # glue its updates and the next message into one line); with --no-progress, those lines on a terminal too
    pbar = tqdm(total=total, initial=start_iter, desc="train", disable=not (ctx.is_main and bar),
                dynamic_ncols=True, mininterval=1.0)
    print_every = max(1, round(total / (10 * config.log_every)))
    data_iter = iter(loader)  # draws the loader's seed: before restoring, so a resumed run continues exactly
    if saved is not None:
        if ctx.is_distributed:  # only rank 0's generators were saved: give each process its own stream again
            random_seed(config.seed + 1000 * start_iter, ctx.rank)
        else:
            restore_rng_state(saved["rng"])
    t_start = time.perf_counter()
    with InterruptGuard() as interrupt:
        while it < min(total, config.stop_iter or total):
            scheduler.step_update(it)
            images, masks = next(data_iter)
            images = images.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            with autocast(device, dtype):
                outputs = model(images)
                loss, parts = segmentation_loss(outputs, masks, config.ignore_index, config.aux_weight)
            optimizer.zero_grad(set_to_none=True)
            if guard.ok(loss):
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if config.grad_clip:
                    nn.utils.clip_grad_norm_(unwrapped.parameters(), config.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                for k, v in dict(parts, loss=loss.detach()).items():
                    sums[k] = sums.get(k, 0) + v.float()
                window_iters += 1
            it += 1
            pbar.update(1)

            if it % config.log_every == 0 or it == total:
                now = time.perf_counter()
                record: Dict[str, Any] = {"iter": it}
                record.update({k: float(v) / max(1, window_iters) for k, v in sums.items()})
                record["lr"] = max(g["lr"] for g in optimizer.param_groups)
                record["sec_per_iter"] = (now - window_start) / max(1, window_iters)
                record["epoch"] = it * config.batch_size * ctx.world_size / len(train_set)
                record["skipped_steps"] = guard.skipped
                logger.log(record)
                pbar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", lr=f"{record['lr']:.2e}")
                if ctx.is_main and not bar and ((it // config.log_every) % print_every == 0 or it == total):
                    print(f"seg-train: iteration {it}/{total}, loss {record.get('loss', float('nan')):.4f}, lr "
                          f"{record['lr']:.2e}, {record['sec_per_iter']:.3g} s/iteration", flush=True)
                sums, window_start, window_iters = {}, now, 0
            if config.eval_every and it % config.eval_every == 0 and it < total and it != config.stop_iter:
                val = run_eval(val_set, f"val @ {it}")
                logger.log({"iter": it, "val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"]})
            if it % config.checkpoint_every == 0 and it < total:
                save(it)

            elapsed = time.perf_counter() - t_start
            stop_now = False
            if budget is not None:
                new_total = budget.replan(it - start_iter, elapsed, it, total)
                if new_total is not None and ctx.is_distributed:  # check points are the same on every process
                    new_total = ctx.broadcast_object(new_total)
                if new_total is not None and new_total != total:
                    total = new_total
                    if warmup >= total // 2:  # a warm-up longer than half the run would leave no decay
                        warmup = total // 4
                    scheduler = build_scheduler(optimizer, config, total, warmup)
                    pbar.total = total
                    pbar.refresh()
                    if ctx.is_main:
                        print(f"\nseg-train: {budget.sec_per_iter:.3f} s/iteration; the {config.time_budget_s:g} s "
                              f"budget fits {total} iterations (warm-up {warmup})", flush=True)
                stop_now = budget.over(elapsed) and it < total
            interrupted = interrupt.requested
            if ctx.is_distributed:  # every process must stop at the same iteration
                flags = torch.tensor([float(interrupted), float(stop_now)], device=device)
                ctx.all_reduce_sum(flags)
                interrupted, stop_now = bool(flags[0] > 0), bool(flags[1] > 0)
            if interrupted:
                stop_reason = f"interrupted ({interrupt.signal_name or 'signal'})"
                break
            if stop_now:
                stop_reason = "time budget"
                if budget is not None:
                    budget.stopped = True
                break
    pbar.close()
    train_seconds = time.perf_counter() - t_start
    del data_iter  # stop the workers before evaluating
    save(it)
    if stop_reason is not None and stop_reason.startswith("interrupted"):
        if ctx.is_main:
            print(f"seg-train: {stop_reason} at iteration {it}; saved {state_path}. Continue with --resume {run_dir}.",
                  flush=True)
        logger.close()
        return {"interrupted": True, "iters": it, "checkpoint": str(state_path)}

    val = run_eval(val_set, "val")
    train_metrics = run_eval(train_set, "train (no augmentation)") if config.eval_train else None
    record = {"iter": it, "val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"]}
    if train_metrics is not None:
        record.update(train_miou=train_metrics["miou"], train_pixel_acc=train_metrics["pixel_acc"])
    logger.log(record)
    summary = {
        "backbone": config.backbone,
        "init": Path(config.init_checkpoint).name if config.init_checkpoint else "scratch",
        "iters": it,
        "planned_iters": total,
        "configured_iters": config.iters,
        "warmup_iters": warmup,
        "val_miou": val["miou"],
        "train_miou": train_metrics["miou"] if train_metrics else None,
        "val_pixel_acc": val["pixel_acc"],
        "train_pixel_acc": train_metrics["pixel_acc"] if train_metrics else None,
        "val_mean_acc": val["mean_acc"],
        "val_classes_scored": val["classes_scored"],
        "val_per_class_iou": dict(zip(class_names, val["per_class_iou"])),
        "num_classes": num_classes,
        "crop_size": list(config.crop_hw),
        "batch_size": config.batch_size * ctx.world_size,
        "lr": config.lr,
        "layer_decay": config.layer_decay,
        "test_mode": config.test_mode,
        "train_seconds": round(train_seconds, 1),
        "sec_per_iter": round(budget.sec_per_iter, 4) if budget is not None and budget.sec_per_iter else
        round(train_seconds / max(1, it - start_iter), 4),
        "time_budget_s": config.time_budget_s,
        "stopped_by_time_budget": bool(budget is not None and budget.stopped),
        "stop_iter": config.stop_iter,
        "skipped_steps": guard.skipped,
        "params_m": round(sum(p.numel() for p in unwrapped.parameters()) / 1e6, 3),
        "device": _device_name(device),
        "world_size": ctx.world_size,
        "precision": str(dtype).replace("torch.", "") if dtype is not None else "fp32",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "command": command,
    }
    if ctx.is_main:
        save_segmentation_model(unwrapped, run_dir / "model.safetensors", config, classes,
                                extra={"iters": it, "val_miou": val["miou"]})
        write_json(run_dir / "summary.json", json_safe(summary))
        logger.plot(run_dir / "curves.png", title=f"{config.backbone} UperNet")
        train_text = f", train mIoU {100 * train_metrics['miou']:.2f}%" if train_metrics else ""
        print(f"seg-train: {it} iterations in {train_seconds:.0f} s; val mIoU {100 * val['miou']:.2f}% "
              f"(pixel acc {100 * val['pixel_acc']:.1f}%){train_text}. Saved {run_dir / 'model.safetensors'}",
              flush=True)
    logger.close()
    ctx.barrier()
    return summary
