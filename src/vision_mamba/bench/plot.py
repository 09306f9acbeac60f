"""The paper's Figure 1 from bench records: img/s and peak memory against resolution, one line per
model / attention / dtype / execution (inference rows only; at each resolution the largest batch measured)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .core import _exec_kind, is_vim

_LINESTYLES = {None: "-", "flash": "--", "explicit": ":"}
_MARKERS = {"fp32": "o", "bf16": "s", "bf16-weights": "^"}


def _label(record: Dict[str, Any]) -> str:
    parts = [record["name"]]
    if record.get("attn"):
        parts.append(record["attn"])
    parts.append(record["dtype"])
    kind = _exec_kind(record)
    if kind != "eager":
        parts.append(kind)
    return " ".join(parts)


def _series(records: Sequence[Dict[str, Any]]) -> Dict[Tuple, Dict[int, Dict[str, Any]]]:
    """(model, attn, dtype, exec) -> {res: the record with the largest batch at that resolution}."""
    lines: Dict[Tuple, Dict[int, Dict[str, Any]]] = {}
    for r in records:
        if r.get("mode") != "infer":
            continue
        key = (r["model"], r.get("attn"), r["dtype"], _exec_kind(r))
        points = lines.setdefault(key, {})
        if r["res"] not in points or r["batch"] > points[r["res"]]["batch"]:
            points[r["res"]] = r
    return lines


def plot_records(records: Sequence[Dict[str, Any]], path: Path, title: str = "") -> Path:
    """Write the two-panel PNG; returns its path. Out-of-memory points are drawn as x on the bottom axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    lines = _series(records)
    has_memory = any(r.get("peak_gib") is not None for pts in lines.values() for r in pts.values())
    if has_memory:
        fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(13, 5.2))
        axes = (ax_speed, ax_mem)
    else:  # CPU: memory is not measured
        fig, ax_speed = plt.subplots(1, 1, figsize=(7.5, 5.2))
        ax_mem, axes = None, (ax_speed,)
    models = sorted({k[0] for k in lines}, key=lambda m: (not is_vim(m), m))
    # one hue per model; the darker shade for bf16, the lighter for fp32 (tab20 holds dark/light pairs)
    palette = plt.get_cmap("tab20")

    def colour(model: str, dtype: str):
        return palette((2 * models.index(model) + (dtype == "fp32")) % 20)

    oom_labels: List[str] = []
    for key in sorted(lines, key=lambda k: (not is_vim(k[0]), k[0], str(k[1]), k[2], k[3])):
        points = lines[key]
        ok = [points[res] for res in sorted(points) if points[res].get("status") == "ok"]
        if not ok:
            continue
        label = _label(ok[0])
        style = dict(color=colour(key[0], key[2]), linestyle=_LINESTYLES.get(key[1], "-."),
                     marker=_MARKERS.get(key[2], "d"), label=label, linewidth=2 if is_vim(key[0]) else 1.3)
        xs = [r["res"] for r in ok]
        ax_speed.plot(xs, [r["img_s"] for r in ok], **style)
        mem = [(r["res"], r["peak_gib"]) for r in ok if r.get("peak_gib") is not None]
        if mem and ax_mem is not None:
            ax_mem.plot([m[0] for m in mem], [max(m[1], 1e-3) for m in mem], **style)
        for res in sorted(points):
            if points[res].get("status") == "oom":
                oom_labels.append(f"{label} @ {res}")
                for ax in axes:
                    ax.plot([res], [0], marker="x", color=colour(key[0], key[2]), markersize=10, clip_on=False,
                            transform=ax.get_xaxis_transform())
    resolutions = sorted({r for pts in lines.values() for r in pts})
    ylabels = ("images / s (log)", "peak memory above the model, GiB (log)")
    for ax, ylabel in zip(axes, ylabels):
        ax.set_xlabel("resolution (px)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if resolutions:
            ax.set_xticks(resolutions)
            ax.set_xticklabels([str(r) for r in resolutions], rotation=45 if len(resolutions) > 6 else 0)
        ax.grid(True, which="both", alpha=0.3)
    ax_speed.set_title("feature extraction speed" + ("" if has_memory else " (memory: CUDA only)"))
    if ax_mem is not None:
        ax_mem.set_title("peak memory")
    handles, labels = ax_speed.get_legend_handles_labels()
    if handles:
        ax_speed.legend(handles, labels, fontsize=7, loc="best")
    env = next(iter(records), {})
    subtitle = f"{env.get('device', '')}, torch {env.get('torch', '?')}, timm {env.get('timm', '?')}"
    fig.suptitle((title + "\n" if title else "") + subtitle, fontsize=10)
    if oom_labels:
        fig.text(0.01, 0.01, "out of memory (x): " + "; ".join(oom_labels), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
