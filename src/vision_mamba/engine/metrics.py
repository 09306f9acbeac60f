"""Per-epoch (or per-iteration) metrics to CSV, JSON lines and TensorBoard, and a PNG of the curves."""
from __future__ import annotations

import csv
import importlib
import json
import math
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence


class MetricLogger:
    """Appends records to ``run_dir/metrics.jsonl`` and ``metrics.csv`` (and TensorBoard under ``run_dir/tb``).

    ``resume_step``: on resume, records logged after that step are dropped, so the files match the run that
    continues. Only the main process should log (``enabled=False`` elsewhere).
    """

    def __init__(self, run_dir: "str | Path", enabled: bool = True, tensorboard: bool = True,
                 step_key: str = "epoch", resume_step: Optional[int] = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.step_key = step_key
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.records: List[Dict] = []
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.jsonl.exists():
            self.records = [r for r in self.read(self.jsonl) if r.get(step_key, -1) <= resume_step]
        self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # on resume, TensorBoard's points after resume_step are dropped too (a later event file would
                # otherwise add a second point for each step logged before the interruption)
                self._tb = SummaryWriter(str(self.run_dir / "tb"),
                                         purge_step=resume_step + 1 if resume_step is not None else None)
            except Exception:  # tensorboard not installed: CSV / JSON still written
                self._tb = None

    @staticmethod
    def read(path: "str | Path") -> List[Dict]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def _columns(self) -> List[str]:
        cols: List[str] = []
        for r in self.records:
            cols += [k for k in r if k not in cols]
        return cols

    def _rewrite(self) -> None:
        with open(self.jsonl, "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        with open(self.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns())
            writer.writeheader()
            writer.writerows(self.records)

    def log(self, record: Dict) -> None:
        if not self.enabled:
            return
        record = {k: (float(v) if hasattr(v, "item") else v) for k, v in record.items()}
        new_columns = any(k not in self._columns() for k in record) if self.records else True
        self.records.append(record)
        if new_columns:
            self._rewrite()
        else:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")
            with open(self.csv, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns()).writerow(record)
        if self._tb is not None:
            step = int(record.get(self.step_key, len(self.records)))
            for k, v in record.items():
                if k != self.step_key and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def plot(self, path: "str | Path", groups: Optional[Sequence[Iterable[str]]] = None, title: str = "") -> Optional[Path]:
        """One panel per group of keys (default: losses, accuracies, learning rate), x = the step key. Without
        matplotlib, a warning and no plot: a finished run's results matter more than its picture."""
        if not self.enabled or not self.records:
            return None
        try:
            importlib.import_module("matplotlib")
        except ImportError as e:
            warnings.warn(f"no {Path(path).name}: matplotlib is not installed ({e})", stacklevel=2)
            return None
        return plot_curves(self.records, path, self.step_key, groups, title)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def plot_curves(records: List[Dict], path: "str | Path", x: str = "epoch",
                groups: Optional[Sequence[Iterable[str]]] = None, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in records[0] if k != x]
    for r in records[1:]:
        keys += [k for k in r if k != x and k not in keys]
    numeric = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    if groups is None:
        groups = [[k for k in numeric if "loss" in k],
                  [k for k in numeric if any(t in k for t in ("acc", "top", "miou", "ap", "iou"))],
                  [k for k in numeric if k == "lr" or k.endswith("_lr")]]
    groups = [[k for k in g if k in numeric] for g in groups]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(5 * max(1, len(groups)), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for k in group:
            pts = [(r[x], r[k]) for r in records if isinstance(r.get(k), (int, float)) and x in r]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if len(pts) < 40 else None)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], path: "str | Path",
                   title: str = "") -> Path:
    """A PNG of a confusion matrix (rows: true class, columns: predicted), each row as a share of its images, with
    the percentages written in the cells where there are at most 20 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float64)
    shares = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    k = len(names)
    side = min(max(4.0, 0.45 * k + 2.0), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=100.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class's images")
    ax.set_xticks(range(k), labels=names, rotation=90, fontsize=8 if k <= 40 else 5)
    ax.set_yticks(range(k), labels=names, fontsize=8 if k <= 40 else 5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, f"{shares[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if shares[i, j] > 60 else "black")
    if title:
        ax.set_title(title, fontsize=10)
    return _save_figure(fig, path)


def _save_figure(fig, path: "str | Path") -> Path:
    """Lay ``fig`` out, write it as a PNG at ``path`` (folders made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
