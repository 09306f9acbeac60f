"""The classification training loop: one process or many (torchrun + DDP), resumable to the step.

    from vision_mamba.train import TrainConfig, Trainer
    result = Trainer(TrainConfig(data="synthetic", ...)).run()

What one run does, in order: check the configuration and the data folders (errors before any work), build the
model, decode / index the data, the optimizer (timm AdamW, no weight decay on 1-D parameters and on the model's
``no_weight_decay()`` names), the schedule (timm cosine with warm-up, stepped per update), EMA, mixup / cutmix,
then train. Every step:

- draws its randomness from seeds derived from (seed, epoch, step, rank) (augmentation, mixup, drop path), and
  each sample's augmentation from its own seed, so a run resumed mid-epoch repeats the uninterrupted run exactly;
- runs forward under bf16 autocast on CUDA (fp32 on CPU), and skips the update when the loss is not finite
  (engine.NonFiniteGuard: counted, reported, the run stops when there are too many);
- checks for SIGINT / SIGTERM: the first one finishes the step, writes ``last.pth`` and returns.
Every epoch: evaluation (model and EMA), metrics to CSV / JSON lines / TensorBoard, ``last.pth`` written
atomically; at the end the weights are exported as safetensors and the curves drawn.

The checkpoint holds model, optimizer, scheduler, EMA, grad scaler, non-finite counters, RNG states, epoch, the
step inside the epoch and the resolved configuration. The batch size is global, so the same run can resume on
another number of processes: order of samples, steps per epoch and schedule are unchanged (the per-process random
streams differ, so the continuation is then equivalent, not bit-identical).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..data import AugmentOptions, build_classification_data, mix_seed
from ..data.builder import check_data_source
from ..engine import (DistributedContext, InterruptGuard, MetricLogger, NonFiniteGuard, RunDirLock,
                      autocast, capture_rng_state, cleanup_distributed, init_distributed, load_state,
                      prepare_run_dir, resolve_precision, restore_rng_state, save_state)
from ..engine.config import absolute_path
from ..engine.files import write_json
from ..engine.rundir import hold_run_dir, refuse_other_commands_run
from ..models.checkpoint import (CLASSIFICATION_FORMAT, check_fit, checkpoint_classes, load_checkpoint,
                                 save_state_dict)
from .budget import StepTimer, plan_epochs
from .config import ConfigError, TrainConfig
from .distill import DistillationLoss, Teacher, pack_targets
from .evaluate import evaluate
from .graphed import TrainStep, graph_unsupported_reason
from .model import EmaWeights, check_model_name, create_classifier, unwrap

__all__ = ["Trainer", "TrainResult", "default_output", "default_output_prefix", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = CLASSIFICATION_FORMAT
_FUSED_OPTS = ("adamw", "adam", "sgd", "momentum")  # timm names of optimizers torch has fused kernels for
StepHook = Callable[["Trainer", int, int, torch.Tensor], None]

# Seconds between the plain progress lines written where stderr is not a terminal (a log file)
PROGRESS_LINE_SECONDS = 30.0


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    planned_epochs: int
    interrupted: bool = False
    final: Dict[str, float] = field(default_factory=dict)  # evaluation of the final weights
    final_ema: Dict[str, float] = field(default_factory=dict)
    best_top1: Optional[float] = None
    best_epoch: Optional[int] = None
    minutes: float = 0.0  # wall time of the whole run, the processes before a resume included
    skipped_steps: int = 0
    unreadable_images: int = 0
    checkpoint: Optional[Path] = None
    weights: Optional[Path] = None


def default_output_prefix(model: str, data: Optional[str]) -> str:
    """<model>-<dataset folder name> (or -synthetic)."""
    data_name = "synthetic" if data == "synthetic" else Path(str(data).rstrip("/")).name or "data"
    return f"{model}-{data_name}"


def default_output(cfg: TrainConfig, stamp: Optional[str] = None) -> Path:
    """runs/<model>-<dataset name>-<date-time>."""
    stamp = stamp or datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{default_output_prefix(cfg.model, cfg.data)}-{stamp}"


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class Trainer:
    """One training run as configured by ``cfg`` (see :class:`~vision_mamba.train.config.TrainConfig`).

    ``step_hook(trainer, epoch, step, loss)`` is called after every step on every process (``loss`` is the
    step's loss tensor on the device; reading it costs a sync). ``start_time`` (``time.perf_counter()``) is when
    the run's wall-clock budget started (default: now).
    """

    def __init__(self, cfg: TrainConfig, step_hook: Optional[StepHook] = None, start_time: Optional[float] = None):
        self.cfg = cfg
        self.step_hook = step_hook
        self.start_time = time.perf_counter() if start_time is None else start_time
        self.ctx: Optional[DistributedContext] = None
        self._lock: Optional[RunDirLock] = None  # the run directory's, held by the main process while it runs

    # ================================================================== helpers
    def log(self, message: str) -> None:
        if self.ctx is None or self.ctx.is_main:
            from tqdm import tqdm

            tqdm.write(message)

    def _lock_run_dir(self, output: Path) -> None:
        """Hold the run directory's lock (the main process, until the run ends): one run writes a directory at a
        time, so a second run started with the same output, or a resume while the run (or its orphaned workers)
        still goes, is refused instead of interleaving its files (RunDirBusy, a ConfigError, on every process)."""
        self._lock = hold_run_dir(output, self.ctx, self._lock)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _seed_step(self, epoch: int, step: int) -> None:
        """Everything random in one step (augmentation on the device, mixup, erasing, drop path) draws from
        generators seeded here, so the step is the same whether or not the run was interrupted before it."""
        import random

        seed = mix_seed(self.cfg.seed, epoch, step, self.ctx.rank)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    # ================================================================== setup
    def setup(self) -> None:
        cfg = self.cfg
        classes = check_data_source(cfg.data, cfg.train_split, cfg.val_split)  # fails before any work
        if cfg.data != "synthetic":  # (recorded absolute: a resume reads it again, maybe from elsewhere)
            cfg.data = absolute_path(cfg.data)
        if cfg.teacher_checkpoint and Path(cfg.teacher_checkpoint).expanduser().exists():
            cfg.teacher_checkpoint = absolute_path(cfg.teacher_checkpoint)
        check_model_name(cfg.model)
        self.ctx = ctx = init_distributed(cfg.device)
        self.device = ctx.device
        if cfg.batch_size % ctx.world_size:
            raise ConfigError(f"config key 'batch_size': the global batch ({cfg.batch_size}) must be divisible by "
                              f"the number of processes ({ctx.world_size})")
        if cfg.mixup_active and (cfg.batch_size // ctx.world_size) % 2:
            raise ConfigError(f"config key 'batch_size': mixup / cutmix need an even batch per process "
                              f"({cfg.batch_size} / {ctx.world_size} processes)")
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)

        # ---------------- run directory (named once, on the main process)
        output = Path(cfg.output) if cfg.output else default_output(cfg)
        output = Path(ctx.broadcast_object(str(output)))
        self.run_dir = output
        self.checkpoint_path = output / "last.pth"
        if output.exists() and not output.is_dir():
            raise ConfigError(f"config key 'output': {output} is a file, not a run directory")
        if output.is_dir():  # (a new directory is locked when it is made, below)
            self._lock_run_dir(output)
            refuse_other_commands_run(output, "train")  # (seg-train's last.pth, det-train's checkpoint.pt)
        if not cfg.resume and self.checkpoint_path.exists():
            raise ConfigError(f"{output} already holds a run ({self.checkpoint_path.name}): continue it with "
                              f"--resume {output}, or choose another --output")
        resumed = Path(cfg.resume) / "last.pth" if cfg.resume and Path(cfg.resume).is_dir() else cfg.resume
        if cfg.resume and self.checkpoint_path.exists() and not _same_file(self.checkpoint_path, resumed):
            raise ConfigError(f"{output} already holds another run ({self.checkpoint_path.name}); resuming "
                              f"{cfg.resume} there would overwrite it: choose another --output, or leave it out "
                              f"to continue in {Path(cfg.resume).parent}")

        # ---------------- model, then data (decoding may take a while: errors in the model come first)
        augment = AugmentOptions(
            scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, color_jitter=cfg.color_jitter,
            auto_augment=cfg.auto_augment, ra_group=cfg.ra_group, re_prob=cfg.reprob, re_mode=cfg.remode,
            re_count=cfg.recount, no_aug=cfg.no_aug)
        model = create_classifier(cfg.model, num_classes=len(classes), img_size=cfg.img_size, drop_path=cfg.drop_path,
                                  drop=cfg.drop, model_kwargs=cfg.model_kwargs)
        if hasattr(model, "check_finite"):
            model.check_finite = False  # its input check syncs the GPU every forward; the loss guard covers NaNs
        if cfg.finetune and not cfg.resume:
            # a classifier of other classes is not kept, even where there are as many (the names are stored with
            # the weights of our runs; other checkpoints are judged by their classifier's size alone)
            source_classes = checkpoint_classes(cfg.finetune)
            other_classes = source_classes is not None and source_classes != list(classes)
            report = load_checkpoint(model, cfg.finetune, strict=True, use_ema=cfg.finetune_ema, adapt_head=True,
                                     drop_head=other_classes)
            if other_classes and len(source_classes) == len(classes):
                shown = [f"{a} -> {b}" for a, b in zip(source_classes, classes) if a != b]
                self.log(f"the checkpoint's classifier was trained on other classes ({', '.join(shown[:4])}"
                         f"{' ...' if len(shown) > 4 else ''}): it is not kept")
            self.log(f"fine-tuning from {cfg.finetune}" +
                     (f" (kept as initialised: {', '.join(report['skipped'])})" if report["skipped"] else ""))
        if cfg.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.teacher: Optional[Teacher] = None
        if cfg.teacher:
            check_model_name(cfg.teacher, key="teacher")
            self.teacher = Teacher(cfg.teacher, cfg.teacher_checkpoint, num_classes=len(classes),
                                   img_size=cfg.img_size, device=self.device, amp_dtype=self.amp_dtype,
                                   model_kwargs=cfg.teacher_kwargs, channels_last=cfg.channels_last,
                                   input_size=cfg.teacher_img_size)
        local_batch = cfg.batch_size // ctx.world_size
        self.data = build_classification_data(
            cfg.data, img_size=cfg.img_size, batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size or 2 * local_batch, device=self.device,
            world_size=ctx.world_size, rank=ctx.rank, seed=cfg.seed, workers=cfg.workers,
            gpu_resident=cfg.gpu_resident, resident_size=cfg.resident_size, resident_max_gb=cfg.resident_max_gb,
            crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, augment=augment,
            repeats=cfg.repeated_aug, train_split=cfg.train_split, val_split=cfg.val_split,
            synthetic_train=cfg.synthetic_train, synthetic_val=cfg.synthetic_val,
            synthetic_size=cfg.synthetic_size, progress=cfg.progress and ctx.is_main)
        self.steps_per_epoch = self.data.train.steps_per_epoch

        # ---------------- optimisation (timm)
        from timm.optim import create_optimizer_v2

        opt_kwargs: Dict[str, Any] = dict(eps=cfg.opt_eps, betas=tuple(cfg.opt_betas)) if "adam" in cfg.opt or \
            "lamb" in cfg.opt else {}
        if cfg.opt in ("sgd", "momentum", "nesterov"):
            opt_kwargs = dict(momentum=cfg.momentum)
        self.optimizer = None
        if self.device.type == "cuda" and cfg.opt in _FUSED_OPTS:  # one kernel per update, skippable on the device
            try:
                self.optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                     filter_bias_and_bn=True, fused=True, **opt_kwargs)
            except (TypeError, ValueError, RuntimeError):
                self.optimizer = None
        if self.optimizer is None:
            self.optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                 filter_bias_and_bn=True, **opt_kwargs)
        self.planned_epochs: Optional[int] = None if cfg.time_limit_min else cfg.epochs
        self.scheduler = self._make_scheduler(cfg.epochs)
        self.ema = EmaWeights(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema else None
        self.scaler = None
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.guard = NonFiniteGuard(max_consecutive=cfg.max_nonfinite, max_total=cfg.max_nonfinite_total, ctx=ctx)

        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.mixup = None
        if cfg.mixup_active:
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                               switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                               label_smoothing=cfg.smoothing, num_classes=len(classes))
        if self.teacher is not None:
            self.criterion: nn.Module = DistillationLoss(cfg.distill, cfg.distill_alpha, cfg.distill_tau)
        elif cfg.mixup_active:
            self.criterion = SoftTargetCrossEntropy()
        elif cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

        # ---------------- wrappers
        self.train_model: nn.Module = model
        if ctx.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.graph_step: Optional[TrainStep] = None
        if cfg.cuda_graph and self.device.type == "cuda":
            reason = graph_unsupported_reason(self.optimizer, self.device, distributed=ctx.is_distributed,
                                              compiled=cfg.compile, grad_scaler=self.scaler is not None)
            if reason is None:
                self.graph_step = TrainStep(self.train_model, self.criterion, self.optimizer, device=self.device,
                                            amp_dtype=self.amp_dtype, graph=True, clip_grad=cfg.clip_grad)
            else:
                self.log(f"training steps run eagerly, not from a CUDA graph: {reason}")

        # ---------------- progress counters (restored on resume)
        self.epoch = 0
        self.step = 0  # steps done inside self.epoch
        self.num_updates = 0
        self.epoch_stats = dict(loss_sum=0.0, steps=0, seconds=0.0)
        self.best_top1: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.train_seconds = 0.0
        self.earlier_wall_seconds = 0.0  # wall time of the processes before a resume (from the checkpoint)
        self._val_unreadable = 0  # images the last streaming evaluation left out (all processes)
        self._final_reserve = 5.0  # seconds kept for the final evaluation and exports (measured when planning)
        if cfg.resume:
            path = Path(cfg.resume)
            self._resume(path / "last.pth" if path.is_dir() else path)  # a run directory means its last.pth
        # The run directory and its config.yaml are written only now, once everything above has been checked: a
        # refused resume or a bad setting leaves an earlier run's directory as it was, and no stray one.
        self._lock_run_dir(output)
        if ctx.is_main:
            prepare_run_dir(output, cfg.to_dict())
        ctx.barrier()
        self.logger = MetricLogger(self.run_dir, enabled=ctx.is_main, step_key="epoch",
                                   resume_step=self.epoch if cfg.resume else None)
        n_params = sum(p.numel() for p in model.parameters())
        self.log(f"{cfg.model}: {n_params / 1e6:.2f} M parameters, {len(classes)} classes | data {cfg.data}: "
                 f"{self.data.num_train} train / {self.data.num_val} val images "
                 f"({'device-resident' if self.data.resident else 'streaming'}) | {ctx.world_size} process(es) on "
                 f"{self.device} | {'fp32' if self.amp_dtype is None else self.amp_dtype} | global batch "
                 f"{cfg.batch_size}, {self.steps_per_epoch} steps per epoch | run dir {self.run_dir}")
        self.teacher_top1: Optional[float] = None
        if self.teacher is not None:
            metrics = evaluate(self.teacher.module, self.data.val, self.device, self.amp_dtype, ctx,
                               progress=cfg.progress and ctx.is_main, desc="eval teacher",
                               channels_last=cfg.channels_last)
            self.teacher_top1 = metrics["top1"]
            self.log(f"distilling from {cfg.teacher} ({cfg.teacher_checkpoint}): val top-1 {metrics['top1']:.2f}% | "
                     f"{cfg.distill}, alpha {cfg.distill_alpha}" +
                     (f", tau {cfg.distill_tau}" if cfg.distill == "soft" else ""))
        if self.data.unreadable:
            self.log(f"warning: {len(self.data.unreadable)} unreadable image(s) left out, e.g. "
                     f"{self.data.unreadable[0][0]} ({self.data.unreadable[0][1]})")

    def _make_scheduler(self, epochs: int):
        from timm.scheduler import create_scheduler_v2

        cfg = self.cfg
        scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.sched, num_epochs=epochs, warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        if scheduler is not None:
            scheduler.step_update(self.num_updates if hasattr(self, "num_updates") else 0)
        return scheduler

    # ================================================================== checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return dict(
            format=CHECKPOINT_FORMAT,
            model=unwrap(self.model).state_dict(),
            model_ema=self.ema.state_dict() if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            nonfinite=self.guard.state_dict(),
            rng=capture_rng_state(),
            epoch=self.epoch, step=self.step, num_updates=self.num_updates,
            steps_per_epoch=self.steps_per_epoch, planned_epochs=self.planned_epochs,
            epoch_stats=dict(self.epoch_stats),
            best_top1=self.best_top1, best_epoch=self.best_epoch, train_seconds=self.train_seconds,
            wall_seconds=self.earlier_wall_seconds + time.perf_counter() - self.start_time,
            classes=list(self.data.classes), world_size=self.ctx.world_size,
            config=self.cfg.to_dict(),
        )

    def save_checkpoint(self) -> Path:
        state = self.state_dict()  # every process: capture_rng_state is local, but only the main one writes
        if self.ctx.is_main:
            save_state(self.checkpoint_path, state)
        self.ctx.barrier()
        return self.checkpoint_path

    def _resume(self, path: Path) -> None:
        state = load_state(path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path} is not a training checkpoint of this command (format {state.get('format')!r});"
                              f" to start from its weights use finetune instead of resume")
        if list(state["classes"]) != list(self.data.classes):
            raise ConfigError(f"cannot resume from {path}: it was trained on other classes "
                              f"({len(state['classes'])} vs {len(self.data.classes)} here)")
        if state["step"] and state["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(f"cannot resume from {path} in the middle of an epoch with another epoch length "
                              f"({state['steps_per_epoch']} steps then, {self.steps_per_epoch} now: did batch_size "
                              f"or the dataset change?)")
        missing, unexpected, mismatched = check_fit(unwrap(self.model), state["model"])
        if missing or unexpected or mismatched:
            problems = "; ".join(mismatched[:3] + [f"missing {k}" for k in missing[:3]] +
                                 [f"unexpected {k}" for k in unexpected[:3]])
            raise ConfigError(f"cannot resume from {path}: its weights do not fit the model built from this "
                              f"configuration ({problems}). Resuming needs the run's own model, model_kwargs and "
                              f"img_size; to start a new run from these weights use finetune instead")
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("model_ema") is not None:
            self.ema.load_state_dict(state["model_ema"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.guard.load_state_dict(state["nonfinite"])
        self.epoch, self.step, self.num_updates = state["epoch"], state["step"], state["num_updates"]
        self.epoch_stats = dict(state["epoch_stats"])
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.earlier_wall_seconds = state.get("wall_seconds", 0.0)
        planned = state["planned_epochs"]
        saved_epochs = state["config"].get("epochs")
        if self.cfg.time_limit_min is None and saved_epochs != self.cfg.epochs:
            planned = self.cfg.epochs
            self.log(f"resuming with epochs={self.cfg.epochs} (the checkpoint's run had {saved_epochs}): the "
                     f"schedule is rebuilt for the new length")
        self.planned_epochs = planned
        self.scheduler = self._make_scheduler(planned if planned is not None else self.cfg.epochs)
        if self.scheduler is not None and state.get("scheduler") is not None and planned == state["planned_epochs"]:
            self.scheduler.load_state_dict(state["scheduler"])
            self.scheduler.step_update(self.num_updates)
        if state["world_size"] == self.ctx.world_size:
            restore_rng_state(state["rng"])
        else:
            self.log(f"resuming on {self.ctx.world_size} process(es) (saved with {state['world_size']}): sample order "
                     f"and schedule are preserved, per-process random streams differ")
        total = self.planned_epochs or self.cfg.epochs
        if self.epoch >= total:
            self.log(f"resumed from {path}: all {total} epochs are trained; evaluating and exporting the final "
                     f"weights (to train further: --epochs N with N > {total})")
        else:
            self.log(f"resumed from {path}: epoch {self.epoch + 1}, step {self.step}/{self.steps_per_epoch}")

    def export_weights(self, name: str, module: nn.Module) -> Path:
        path = self.run_dir / name
        if self.ctx.is_main:
            dtype = _dtype(self.cfg.export_dtype)
            state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in module.state_dict().items()}
            cfg = self.cfg  # enough to rebuild the model and its preprocessing without the run's config.yaml
            metadata = {
                "model": cfg.model, "classes": json.dumps(self.data.classes), "img_size": str(cfg.img_size),
                "model_kwargs": json.dumps(cfg.model_kwargs), "crop_pct": str(cfg.crop_pct),
                "interpolation": cfg.interpolation, "mean": json.dumps(cfg.mean), "std": json.dumps(cfg.std)}
            grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
            if grid is not None:
                metadata["patch_grid"] = json.dumps([int(g) for g in grid])
            save_state_dict(state, path, metadata=metadata)
        return path

    # ================================================================== training
    def _train_epoch(self, interrupt: InterruptGuard, timer: Optional[StepTimer]) -> bool:
        """Train the rest of ``self.epoch`` from ``self.step``; False if interrupted."""
        from tqdm import tqdm

        cfg, ctx = self.cfg, self.ctx
        epoch = self.epoch
        self.train_model.train()
        batches = self.data.train.epoch(epoch, self.step)
        total = self.planned_epochs or cfg.epochs
        # a bar on a terminal; in a log file (nohup, a cluster job) its carriage returns would glue its updates
        # and the next message into one line, so there a plain line at most every PROGRESS_LINE_SECONDS tells
        # the progress instead
        interactive = _interactive()
        bar = tqdm(total=self.steps_per_epoch, initial=self.step, desc=f"epoch {epoch + 1}/{total}",
                   disable=not (cfg.progress and ctx.is_main and interactive), dynamic_ncols=True, leave=False,
                   mininterval=1.0)
        t_line = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        steps_ok = 0
        self._sync()
        t_epoch = t_log = time.perf_counter()
        steps_at_log = self.step
        interrupted = False
        while self.step < self.steps_per_epoch:
            self._seed_step(epoch, self.step)
            images, targets = next(batches)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.teacher is not None:  # the teacher sees the same augmented images; its logits ride along
                targets = pack_targets(targets, self.teacher(images), cfg.smoothing)
            if self.graph_step is not None:
                # forward, backward and update in one replay; a non-finite loss skipped the update on the device
                loss = self.graph_step(images, targets)
                applied = self.guard.ok(loss)
                if applied:
                    self._update_ema()
            else:
                with autocast(self.device, self.amp_dtype):
                    output = self.train_model(images)
                    loss = self.criterion(output, targets)
                self._backward(loss)
                # (checked after the backward pass has been queued: the host waits once per step, for the whole
                # forward and backward, instead of idling the GPU while it queues the backward pass)
                applied = self.guard.ok(loss)
                if applied:
                    self._step()
                else:
                    self.optimizer.zero_grad(set_to_none=True)
            if applied:
                loss_sum += loss.detach().double()
                steps_ok += 1
            else:
                self.log(f"epoch {epoch + 1} step {self.step}: non-finite loss, update skipped "
                         f"({self.guard.skipped} so far)")
            self.step += 1
            self.num_updates += 1
            if self.scheduler is not None:
                self.scheduler.step_update(num_updates=self.num_updates)
            if timer is not None:
                timer.mark()
            if self.step_hook is not None:
                self.step_hook(self, epoch, self.step - 1, loss.detach())
            bar.update(1)
            if ctx.is_main and cfg.progress and (self.step % cfg.log_interval == 0 or
                                                 self.step == self.steps_per_epoch):
                now = time.perf_counter()
                rate = (self.step - steps_at_log) * cfg.batch_size / max(now - t_log, 1e-9)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{self._lr():.2e}", img_s=_rate(rate),
                                refresh=False)
                if not interactive and now - t_line >= PROGRESS_LINE_SECONDS and self.step < self.steps_per_epoch:
                    self.log(f"epoch {epoch + 1}/{total}, step {self.step}/{self.steps_per_epoch}: loss "
                             f"{float(loss.detach()):.4f}, lr {self._lr():.2e}, {_rate(rate)} img/s")
                    t_line = now
                t_log, steps_at_log = now, self.step
            if self._stop_requested(interrupt):
                interrupted = True
                break
        bar.close()
        self._sync()
        seconds = time.perf_counter() - t_epoch
        self.train_seconds += seconds
        self.epoch_stats["loss_sum"] += float(loss_sum)
        self.epoch_stats["steps"] += steps_ok
        self.epoch_stats["seconds"] += seconds
        return not interrupted

    def _backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _step(self) -> None:
        """Clip, step the optimizer (through the scaler with fp16), clear the gradients, update the EMA."""
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()

    def _update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update(unwrap(self.model), step=self.num_updates)

    def _stop_requested(self, interrupt: InterruptGuard) -> bool:
        if not self.ctx.is_distributed:
            return interrupt.requested
        flag = torch.tensor([1.0 if interrupt.requested else 0.0], device=self.device)
        return bool(self.ctx.all_reduce_sum(flag).item() > 0)  # every process stops at the same step

    def _lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)

    def _evaluate(self, which: str = "model", interrupt: Optional[InterruptGuard] = None) -> Dict[str, float]:
        """Evaluate the model or its EMA; with ``interrupt``, abandoned on a stop request ({"abandoned": True})."""
        module = self.ema.module if which == "ema" else self.model
        stop = (lambda: self._stop_requested(interrupt)) if interrupt is not None else None
        return evaluate(module, self.data.val, self.device, self.amp_dtype, self.ctx,
                        progress=self.cfg.progress and self.ctx.is_main, desc=f"eval {which}",
                        channels_last=self.cfg.channels_last, stop=stop)

    # ================================================================== the run
    def run(self) -> TrainResult:
        threads = torch.get_num_threads()
        # setup() switches TF32 and cuDNN autotuning on for CUDA; the process gets its own settings back after
        flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
        try:
            if self.ctx is None:
                self.setup()
            if self.device.type == "cpu" and self.cfg.cpu_threads:
                torch.set_num_threads(self.cfg.cpu_threads)
            return self._run()
        finally:
            torch.set_num_threads(threads)
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark) = flags
            if hasattr(self, "logger"):
                self.logger.close()
            if self._lock is not None:
                self._lock.release()
            cleanup_distributed()

    def _run(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        # With a time limit, the epochs are planned at the end of the first epoch after the slow start (the second
        # when the warm-up allows: its wall time then includes every per-epoch cost at steady state).
        plan_at = None
        if cfg.time_limit_min and self.planned_epochs is None:
            plan_at = max(self.epoch + (1 if self.step else 0), min(cfg.warmup_epochs, 2) - 1)  # a whole epoch
        interrupted = False
        final: Dict[str, float] = {}
        final_ema: Dict[str, float] = {}
        epoch_ends: list = []
        with InterruptGuard() as interrupt:
            while self.epoch < (self.planned_epochs or cfg.epochs):
                planning = plan_at is not None and self.epoch == plan_at
                timer = StepTimer(skip=min(10, max(1, self.steps_per_epoch // 4))) if planning else None
                started = time.perf_counter()
                if not self._train_epoch(interrupt, timer):
                    interrupted = True
                    self.save_checkpoint()
                    self._log_stop(interrupt, f"at epoch {self.epoch + 1}, step {self.step}/{self.steps_per_epoch}: "
                                              f"checkpoint {self.checkpoint_path}")
                    break
                epoch_seconds = self.epoch_stats["seconds"]
                record, eval_seconds, save_seconds = self._end_of_epoch(force=planning, interrupt=interrupt)
                if record.get("eval_abandoned"):  # a stop request during the evaluation: saved without it
                    interrupted = True
                    self._log_stop(interrupt, f"during the evaluation after epoch {self.epoch}: the epoch's training "
                                              f"is saved in {self.checkpoint_path} (its evaluation is left out)")
                    break
                if record.get("val_top1") is not None:
                    final = {k[4:]: v for k, v in record.items() if k.startswith("val_")}
                    final_ema = {k[8:]: v for k, v in record.items() if k.startswith("ema_val_")}
                if planning:
                    steady = plan_at > 0  # a whole epoch after the first: its wall time is the per-epoch cost
                    per_step = timer.seconds_per_step or epoch_seconds / self.steps_per_epoch
                    train_s = epoch_seconds if steady else per_step * self.steps_per_epoch
                    other_s = max(time.perf_counter() - started - epoch_seconds - eval_seconds - save_seconds, 0.0)
                    self._plan(train_s + other_s, eval_seconds, save_seconds)
                    plan_at = None
                elif cfg.time_limit_min and self.planned_epochs is not None and len(epoch_ends) >= 1:
                    self._keep_to_budget(epoch_ends[-max(3, cfg.eval_interval):] + [time.perf_counter()])
                epoch_ends.append(time.perf_counter())
        result = TrainResult(run_dir=self.run_dir, epochs_done=self.epoch, planned_epochs=self.planned_epochs or 0,
                             interrupted=interrupted, best_top1=self.best_top1, best_epoch=self.best_epoch,
                             skipped_steps=self.guard.skipped, checkpoint=self.checkpoint_path,
                             unreadable_images=len(self.data.unreadable) + self._stream_unreadable())
        if not interrupted and not final:  # e.g. resumed after the last epoch: nothing evaluated in this process
            final = self._evaluate("model")
            final_ema = self._evaluate("ema") if self.ema is not None else {}
        if not interrupted:
            result.final, result.final_ema = final, final_ema
            result.weights = self.export_weights("final.safetensors", unwrap(self.model))
            if self.ema is not None:
                self.export_weights("final_ema.safetensors", self.ema.module)
        result.minutes = (self.earlier_wall_seconds + time.perf_counter() - self.start_time) / 60
        if ctx.is_main:
            self.logger.plot(self.run_dir / "curves.png", title=f"{cfg.model} on {Path(str(cfg.data)).name}")
            summary = dict(model=cfg.model, data=cfg.data, epochs=self.epoch, planned_epochs=self.planned_epochs,
                           interrupted=interrupted, top1=final.get("top1"), top5=final.get("top5"),
                           ema_top1=final_ema.get("top1"), ema_top5=final_ema.get("top5"),
                           best_top1=self.best_top1, best_epoch=self.best_epoch, minutes=round(result.minutes, 3),
                           train_minutes=round(self.train_seconds / 60, 3), skipped_steps=self.guard.skipped,
                           unreadable_images=result.unreadable_images, img_size=cfg.img_size,
                           world_size=ctx.world_size)
            if self.teacher is not None:
                summary.update(teacher=cfg.teacher, teacher_top1=self.teacher_top1, distill=cfg.distill,
                               distill_alpha=cfg.distill_alpha)
                if cfg.teacher_img_size:
                    summary.update(teacher_img_size=cfg.teacher_img_size)
            write_json(self.run_dir / "results.json", summary)
        return result

    def _stream_unreadable(self) -> int:
        """Unreadable images met by the streaming loaders: the distinct training files each process met (summed
        over processes), and the validation images the last evaluation left out. The device-resident path
        decodes every image once and lists its unreadable ones in ``data.unreadable`` instead."""
        count = torch.tensor([float(getattr(self.data.train, "unreadable", 0))], device=self.device)
        return int(self.ctx.all_reduce_sum(count).item()) + (0 if self.data.resident else self._val_unreadable)

    def _log_stop(self, interrupt: InterruptGuard, where: str) -> None:
        cause = interrupt.signal_name or ("a signal to another process" if self.ctx.is_distributed else "request")
        self.log(f"stopped by {cause} {where}; continue with --resume {self.checkpoint_path}")

    def _end_of_epoch(self, force: bool = False,
                      interrupt: Optional[InterruptGuard] = None) -> Tuple[Dict[str, Any], float, float]:
        """Evaluate (every eval_interval epochs, at the end, or when ``force``), log, checkpoint (likewise).
        Returns the epoch's record and the seconds spent evaluating and saving. A stop request (``interrupt``)
        during the evaluation abandons it: the record then has eval_abandoned, and the checkpoint is written."""
        cfg, ctx = self.cfg, self.ctx
        stats = torch.tensor([self.epoch_stats["loss_sum"], self.epoch_stats["steps"]], dtype=torch.float64,
                             device=self.device)
        loss_sum, steps = ctx.all_reduce_sum(stats).tolist()
        epoch_seconds = self.epoch_stats["seconds"]
        record: Dict[str, Any] = dict(
            epoch=self.epoch + 1, train_loss=loss_sum / max(steps, 1), lr=self._lr(),
            img_per_s=self.steps_per_epoch * cfg.batch_size / max(epoch_seconds, 1e-9),
            epoch_seconds=epoch_seconds, skipped_steps=self.guard.skipped)
        total = self.planned_epochs or cfg.epochs
        last = self.epoch + 1 >= total
        t0 = time.perf_counter()
        eval_seconds = 0.0
        abandoned = False
        if (self.epoch + 1) % cfg.eval_interval == 0 or last or force:
            metrics = self._evaluate("model", interrupt)
            ema = self._evaluate("ema", interrupt) if self.ema is not None and not metrics.get("abandoned") else {}
            abandoned = bool(metrics.get("abandoned") or ema.get("abandoned"))
            if not abandoned:
                self._val_unreadable = int(metrics.get("unreadable", 0))
                record.update(val_loss=metrics["loss"], val_top1=metrics["top1"], val_top5=metrics["top5"],
                              val_images=metrics["images"], val_img_per_s=metrics["img_per_s"])
                if ema:
                    record.update(ema_val_loss=ema["loss"], ema_val_top1=ema["top1"], ema_val_top5=ema["top5"])
                if self.best_top1 is None or metrics["top1"] > self.best_top1:
                    self.best_top1, self.best_epoch = metrics["top1"], self.epoch + 1
                    self.export_weights("best.safetensors", unwrap(self.model))
            eval_seconds = time.perf_counter() - t0
        record["unreadable_images"] = self._stream_unreadable() + len(self.data.unreadable)
        self.logger.log(record)
        self.epoch += 1
        self.step = 0
        self.epoch_stats = dict(loss_sum=0.0, steps=0, seconds=0.0)
        t1 = time.perf_counter()
        if self.epoch % cfg.save_interval == 0 or self.epoch >= total or force or abandoned:
            self.save_checkpoint()
        save_seconds = time.perf_counter() - t1
        if abandoned:
            record["eval_abandoned"] = True
        msg = (f"epoch {record['epoch']}/{total}: train loss {record['train_loss']:.4f}, lr {record['lr']:.2e}, "
               f"{_rate(record['img_per_s'])} img/s")
        if "val_top1" in record:
            top_k = min(5, len(self.data.classes))  # (top-5 of fewer classes is top-k)
            msg += f" | val top-1 {record['val_top1']:.2f}%, top-{top_k} {record['val_top5']:.2f}%"
            if "ema_val_top1" in record:
                msg += f" (EMA {record['ema_val_top1']:.2f}%)"
        if self.guard.skipped:
            msg += f" | {self.guard.skipped} non-finite step(s) skipped so far"
        self.log(msg)
        return record, eval_seconds, save_seconds

    def _keep_to_budget(self, ends: list) -> None:
        """If the epochs left no longer fit (the machine got slower), shorten the schedule: the run ends within
        its budget, with a rebuilt cosine, rather than being stopped from outside. Never lengthens it. ``ends``:
        the times of the last epoch ends (rank 0's decide, so every process follows the same schedule)."""
        cfg = self.cfg
        per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1)
        left = cfg.time_limit_min * 60 - (time.perf_counter() - self.start_time) - self._final_reserve
        remaining = self.planned_epochs - self.epoch
        epochs = self.planned_epochs
        # 2% of the budget of tolerance: the window may hold an evaluation epoch
        if remaining > 1 and remaining * per_epoch > left + 0.02 * cfg.time_limit_min * 60:
            epochs = self.epoch + max(1, int(left // per_epoch))
        epochs = int(self.ctx.broadcast_object(epochs))
        if epochs < self.planned_epochs:
            self.log(f"time limit: epochs now take ~{per_epoch:.1f} s, the {remaining} left would overrun the "
                     f"budget; the schedule is shortened to {epochs} epochs")
            self.planned_epochs = epochs
            self.scheduler = self._make_scheduler(epochs)

    def _plan(self, epoch_s: float, eval_seconds: float, save_seconds: float) -> None:
        """Fix the number of epochs from measured times (rank 0 decides, all follow) and rebuild the schedule."""
        cfg = self.cfg
        self._final_reserve = eval_seconds * (2 if self.ema is not None else 1) + 2 * save_seconds + 3.0
        plan = plan_epochs(
            limit_s=cfg.time_limit_min * 60, elapsed_s=time.perf_counter() - self.start_time,
            epochs_done=self.epoch, epoch_train_s=epoch_s, eval_s=eval_seconds,
            eval_interval=cfg.eval_interval, save_s=save_seconds, save_interval=cfg.save_interval,
            final_s=self._final_reserve,
            min_epochs=max(cfg.warmup_epochs + 1, self.epoch), max_epochs=cfg.epochs)
        epochs = int(self.ctx.broadcast_object(plan.epochs))
        self.planned_epochs = epochs
        self.scheduler = self._make_scheduler(epochs)
        self.log(plan.describe(cfg.time_limit_min))


def _rate(img_per_s: float) -> str:
    """A throughput for the log: whole numbers, except below 10 (a slow CPU run is not "0 img/s")."""
    return f"{img_per_s:.0f}" if img_per_s >= 10 else f"{img_per_s:.2g}"


def _same_file(a: Path, b: "str | Path") -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()
