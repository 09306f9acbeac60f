"""Fitting a run into a wall-clock budget: the number of epochs is fixed once, from measured times, before the
warm-up ends, so the cosine schedule still runs to its end.

During the warm-up the learning rate does not depend on the total number of epochs (linear from warmup_lr), so
the schedule can be rebuilt with the planned length at the end of the first (or second) epoch without any jump.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["StepTimer", "plan_epochs", "seconds_since_process_start"]


def seconds_since_process_start() -> float:
    """How long this process has been running (Linux: from /proc; elsewhere 0), so that a budget also covers
    the interpreter start and the imports that happen before any of our code runs."""
    try:
        import os

        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of proc(5): starttime, in clock ticks since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class StepTimer:
    """Wall time per training step, ignoring the first ``skip`` steps (compilation, autotuning, warm caches).

    The caller marks step ends after a device sync (the loop's non-finite check reads the loss every step)."""

    def __init__(self, skip: int):
        self.skip = skip
        self.marks: List[float] = []

    def mark(self) -> None:
        self.marks.append(time.perf_counter())

    @property
    def seconds_per_step(self) -> Optional[float]:
        usable = self.marks[self.skip:]
        if len(usable) < 2:
            return None
        return (usable[-1] - usable[0]) / (len(usable) - 1)


@dataclass
class Plan:
    epochs: int
    seconds_per_epoch: float
    seconds_left: float
    fits: bool

    def describe(self, limit_min: float) -> str:
        note = "" if self.fits else " (the budget is smaller than the warm-up: the run will overrun it)"
        return (f"time limit {limit_min:g} min: {self.epochs} epochs planned at ~{self.seconds_per_epoch:.1f} s per "
                f"epoch, {self.seconds_left:.0f} s left for training{note}")


def plan_epochs(*, limit_s: float, elapsed_s: float, epochs_done: int, epoch_train_s: float, eval_s: float,
                eval_interval: int, save_s: float, save_interval: int, final_s: float, min_epochs: int,
                max_epochs: int, margin: float = 0.04) -> Plan:
    """The number of epochs (counting those done) that fits into ``limit_s``.

    ``epoch_train_s``: the steady-state time of one epoch (training and per-epoch bookkeeping); evaluation and
    checkpoint writing are charged
    at their intervals; ``final_s`` (the last evaluation, exports, plots) is reserved; ``margin`` of the budget is
    kept free for jitter. The result is clamped to [min_epochs, max_epochs].
    """
    per_epoch = epoch_train_s + eval_s / eval_interval + save_s / save_interval
    left = limit_s * (1 - margin) - elapsed_s - final_s
    more = math.floor(left / per_epoch) if per_epoch > 0 else max_epochs
    epochs = epochs_done + max(more, 0)
    fits = epochs >= min_epochs
    return Plan(epochs=int(min(max(epochs, min_epochs), max_epochs)), seconds_per_epoch=per_epoch,
                seconds_left=max(left, 0.0), fits=fits)
