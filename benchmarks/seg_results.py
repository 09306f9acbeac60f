"""COCO-128 semantic segmentation results: from seg-train run directories to records, and from records to the docs.

    # on the device, after the runs (benchmarks/device_coco128_seg.sh does this):
    python benchmarks/seg_results.py collect --init scratch --output OUT/seg/coco128_semantic.json RUN_DIR...
    # on the development machine, after fetching OUT:
    python benchmarks/seg_results.py publish FETCHED/seg

``publish`` writes docs/results/coco128_semantic.json, copies the overlays lying next to the json
(overlay_*.png) to docs/images/segmentation/, draws the training curves of the records into
docs/images/segmentation/coco128_curves.png, and replaces the results section of docs/segmentation.md (between
the ``<!-- seg-results:start -->`` and ``<!-- seg-results:end -->`` markers). mIoU and accuracies are percent.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- seg-results:start -->", "<!-- seg-results:end -->"
CURVE_POINTS = 60


def _pct(value: Optional[float]) -> Optional[float]:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(100.0 * value, 2)


def _curve(run_dir: Path) -> List[List[float]]:
    """[[iter, loss, lr], ...] from metrics.jsonl, thinned to about CURVE_POINTS points."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    step = max(1, math.ceil(len(rows) / CURVE_POINTS))
    keep = rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])
    return [[r["iter"], round(r["loss"], 4), r.get("lr")] for r in keep]


def record_from_run(run_dir: Path, init: str) -> Dict[str, Any]:
    """One record from a seg-train run directory (its summary.json, or what is left of a failed run)."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        backbone = None
        config_path = run_dir / "config.yaml"
        if config_path.is_file():
            import yaml

            backbone = (yaml.safe_load(config_path.read_text()) or {}).get("backbone")
        return dict(backbone=backbone or run_dir.name, init=init, error=f"no summary.json in {run_dir}: the run "
                    "failed or was interrupted (see its log)")
    s = json.loads(summary_path.read_text())
    per_class = {k: _pct(v) for k, v in (s.get("val_per_class_iou") or {}).items() if v is not None}
    curve = _curve(run_dir)
    return dict(
        backbone=s["backbone"], init=init, init_checkpoint=None if s.get("init") == "scratch" else s.get("init"),
        iters=s["iters"], planned_iters=s.get("planned_iters"), configured_iters=s.get("configured_iters"),
        warmup_iters=s.get("warmup_iters"),
        val_miou=_pct(s.get("val_miou")), train_miou=_pct(s.get("train_miou")),
        val_pixel_acc=_pct(s.get("val_pixel_acc")), train_pixel_acc=_pct(s.get("train_pixel_acc")),
        val_mean_acc=_pct(s.get("val_mean_acc")), val_classes_scored=s.get("val_classes_scored"),
        batch_size=s.get("batch_size"), crop_size=s.get("crop_size"), lr=s.get("lr"),
        layer_decay=s.get("layer_decay"), test_mode=s.get("test_mode"), train_seconds=s.get("train_seconds"),
        sec_per_iter=s.get("sec_per_iter"), time_budget_s=s.get("time_budget_s"),
        stopped_by_time_budget=s.get("stopped_by_time_budget"), stop_iter=s.get("stop_iter"),
        skipped_steps=s.get("skipped_steps"),
        params_m=s.get("params_m"), precision=s.get("precision"), device=s.get("device"),
        torch=s.get("torch"), timm=s.get("timm"),
        loss_first=curve[0][1] if curve else None, loss_last=curve[-1][1] if curve else None, loss_curve=curve,
        val_per_class_iou=per_class, command=s.get("command"),
    )


def collect(args: argparse.Namespace) -> int:
    records = [record_from_run(Path(run), args.init) for run in args.runs]
    out = {
        "benchmark": "COCO-128 semantic segmentation, UperNet on a plain backbone (Vim-Ti vs DeiT-Ti)",
        "dataset": "COCO-128 semantic: 100 train / 100 val images, 133 classes (COCO panoptic ids), 0 ignored",
        "units": "mIoU and accuracies in percent; train_miou on the training images without augmentation",
        "protocol": "Same adapter, heads, data, crop, batch and schedule; DeiT-Ti runs the iterations and warm-up "
                    "that Vim-Ti fitted into its time budget; images resized to short side 256 for inference "
                    "(test_mode: sliding 256x256 windows or the whole image)",
        "records": records,
        "host": platform.node(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2))
    print(markdown_table(records))
    return 1 if any("error" in r for r in records) else 0


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(records: List[Dict[str, Any]]) -> str:
    lines = ["| backbone | init | iterations | batch x crop | train time | s / iter | val mIoU | train mIoU | "
             "val pixel acc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['init']} | failed: {r['error']} | | | | | | |")
            continue
        crop = r.get("crop_size") or ["?"]
        if r.get("stopped_by_time_budget"):
            stopped = f" of {r.get('planned_iters')} planned (stopped at the time limit)"
        elif r.get("stop_iter") and r["iters"] == r["stop_iter"] and r["iters"] < (r.get("planned_iters") or 0):
            stopped = f" of {r['planned_iters']} planned (stopped where the first run stopped)"
        elif r.get("configured_iters") and r["iters"] < r["configured_iters"]:
            stopped = " (fitted to the time budget)"
        else:
            stopped = ""
        lines.append(
            f"| {r['backbone']} | {r['init']} | {r['iters']}{stopped} | {r.get('batch_size')} x {crop[0]} | "
            f"{_fmt(r.get('train_seconds'), 0)} s | {_fmt(r.get('sec_per_iter'), 3)} | {_fmt(r['val_miou'], 2)} | "
            f"{_fmt(r['train_miou'], 2)} | {_fmt(r.get('val_pixel_acc'), 1)} |")
    return "\n".join(lines)


def _top_classes(records: List[Dict[str, Any]], k: int = 8) -> List[str]:
    """Val IoU of the classes the first record segments best, side by side."""
    ok = [r for r in records if "error" not in r and r.get("val_per_class_iou")]
    if not ok:
        return []
    first = ok[0]["val_per_class_iou"]
    names = sorted(first, key=lambda n: -first[n])[:k]
    lines = ["| class | " + " | ".join(r["backbone"] for r in ok) + " |", "|---|" + "---|" * len(ok)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_fmt(r["val_per_class_iou"].get(n), 1) for r in ok) + " |")
    return lines


def plot_curves(records: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    ok = [r for r in records if r.get("loss_curve")]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in ok:
        its, losses = zip(*[(p[0], p[1]) for p in r["loss_curve"]])
        ax.plot(its, losses, label=f"{r['backbone']} ({r['init']})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (decode + 0.4 aux)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def publish(args: argparse.Namespace) -> int:
    source = Path(args.source)
    json_path = source / "coco128_semantic.json" if source.is_dir() else source
    if not json_path.is_file():
        print(f"not found: {json_path}", file=sys.stderr)
        return 2
    data = json.loads(json_path.read_text())
    records = data["records"]
    results_dir, images_dir = REPO / "docs" / "results", REPO / "docs" / "images" / "segmentation"
    results_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(json_path, results_dir / "coco128_semantic.json")
    overlays = []
    for png in sorted(json_path.parent.glob("overlay_*.png"), key=lambda p: ("vim" not in p.name, p.name)):
        target = images_dir / f"coco128_{png.name}"
        shutil.copyfile(png, target)
        overlays.append(target)
    curves = plot_curves(records, images_dir / "coco128_curves.png")

    ok = [r for r in records if "error" not in r]
    lines = [START, "", f"Measured on {ok[0].get('device', '?') if ok else '?'} ({data.get('created', '?')}), "
             f"torch {ok[0].get('torch', '?') if ok else '?'}, precision {ok[0].get('precision', '?') if ok else '?'}. "
             f"{data.get('protocol', '')}. Records: [results/coco128_semantic.json](results/coco128_semantic.json).",
             "", markdown_table(records), ""]
    top = _top_classes(records)
    if top:
        lines += ["Val IoU (%) of the classes segmented best by the first model:", ""] + top + [""]
    if curves is not None:
        lines += [f"![training loss](images/segmentation/{curves.name})", ""]
    for png in overlays:
        lines += [f"![{png.stem}](images/segmentation/{png.name})", ""]
    lines += ["Commands:", ""] + [f"- `{r['command']}`" for r in ok if r.get("command")] + ["", END]
    doc = REPO / "docs" / "segmentation.md"
    text = doc.read_text() if doc.is_file() else f"# Semantic segmentation\n\n## Results\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + "\n".join(lines) + tail)
    print(f"wrote {results_dir / 'coco128_semantic.json'}, {len(overlays)} overlays, "
          f"{'a curve plot, ' if curves else ''}and the table in {doc}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    c = sub.add_parser("collect", help="run directories -> one JSON of records")
    c.add_argument("--init", required=True, help="'scratch' or 'imagenette' (how both backbones started)")
    c.add_argument("--output", required=True)
    c.add_argument("runs", nargs="+", help="seg-train run directories")
    p = sub.add_parser("publish", help="fetched results -> docs/results, docs/images/segmentation, "
                                       "docs/segmentation.md")
    p.add_argument("source", help="the fetched seg/ folder (or its coco128_semantic.json)")
    args = parser.parse_args(argv)
    return collect(args) if args.action == "collect" else publish(args)


if __name__ == "__main__":
    sys.exit(main())
