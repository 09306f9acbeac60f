"""Imagenette results: collect them on the device, publish them into docs/ on the development machine.

    # on the device (benchmarks/device_imagenette.sh calls this):
    python benchmarks/imagenette_results.py collect --runs runs/device_imagenette --out $OUT/imagenette.json
    # here, after fetching the device outputs into FOLDER:
    python benchmarks/imagenette_results.py publish --from FOLDER [--note "what was tried"]

``publish`` writes docs/results/imagenette.json (the records), docs/results/imagenette_*.{png,csv} (curves and
per-epoch metrics) and docs/imagenette.md (a table, the curves and the verdict on the target: Vim-Ti >= 90% top-1
and >= DeiT-Ti + 3 points).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

NAMES = {"vim": ("Vim-Ti", "vim_tiny_patch16_224"), "deit": ("DeiT-Ti", "deit_tiny_patch16_224")}
TARGET_TOP1 = 90.0
TARGET_MARGIN = 3.0
REPO = Path(__file__).resolve().parents[1]


def _read_text(path: Path) -> Optional[str]:
    return path.read_text().strip() if path.is_file() else None


def _metrics(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        out.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return out


def _device() -> Optional[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        return f"cpu, torch {torch.__version__}"
    except Exception:
        return None


def collect(runs: Path, out: Path) -> Dict[str, Any]:
    """One record per run directory under ``runs`` (vim/, deit/) from its results.json and metrics.csv."""
    records = []
    for key, (name, arch) in NAMES.items():
        run = runs / key
        if not run.is_dir():
            continue
        results_path = run / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        metrics = _metrics(run / "metrics.csv")
        rates = [r["img_per_s"] for r in metrics if r.get("img_per_s")]
        eval_rates = [r["val_img_per_s"] for r in metrics if r.get("val_img_per_s")]
        wall = _read_text(run / "wall_seconds.txt")
        status = _read_text(run / "exit_status.txt")
        records.append(dict(
            model=name, arch=results.get("model", arch), img_size=results.get("img_size"),
            epochs=results.get("epochs"), top1=results.get("top1"), top5=results.get("top5"),
            minutes=round(int(wall) / 60, 2) if wall else results.get("minutes"),
            train_minutes=results.get("train_minutes"), best_top1=results.get("best_top1"),
            best_epoch=results.get("best_epoch"),
            train_img_per_s=round(statistics.median(rates[1:] or rates)) if rates else None,
            eval_img_per_s=round(statistics.median(eval_rates[1:] or eval_rates)) if eval_rates else None,
            skipped_steps=results.get("skipped_steps"), interrupted=results.get("interrupted"),
            exit_status=int(status) if status not in (None, "") else None,
            command=_read_text(run / "command.txt"),
        ))
    summary = verdict(records)
    report = dict(dataset="Imagenette-160 (fast.ai; train 9,469 / val 3,925 images, 10 classes), from scratch",
                  device=_device(), target=dict(vim_top1=TARGET_TOP1, margin_over_deit=TARGET_MARGIN),
                  records=records, summary=summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in records:
        print(f"{r['model']:8s} epochs {r['epochs']}  top-1 {r['top1']}  top-5 {r['top5']}  {r['minutes']} min")
    print(f"summary: {summary}")
    return report


def verdict(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    by = {r["model"]: r for r in records}
    vim, deit = by.get("Vim-Ti", {}).get("top1"), by.get("DeiT-Ti", {}).get("top1")
    if vim is None or deit is None:
        return dict(vim_minus_deit=None, target_met=None)
    gap = round(vim - deit, 2)
    return dict(vim_minus_deit=gap, target_met=bool(vim >= TARGET_TOP1 and gap >= TARGET_MARGIN))


def experiment(folders: List[Path], key: str, out: Path, what: str,
               evals: Sequence[Path] = ()) -> Dict[str, Any]:
    """A record of one run outside the main comparison (device_imagenette_long.sh MODEL=<key>), from the files
    its calls copied out (``<key>_results.json``, ``_metrics.csv``, ``_command.txt``, ``_wall_seconds.txt``; the
    newest of each across ``folders``). Appended to ``out`` (a JSON with a list of records), curves copied
    beside it as ``<out stem>_<key>_curves.png``, or ``<out stem>_<key>_<n>_curves.png`` (n = 2, 3, ...) where an
    earlier run's curves have that name (they are never overwritten; the record's ``curves`` names the file).
    ``evals``: JSONs written by ``vision-mamba eval --json`` for the run's weights (e.g. at other test
    resolutions), kept in the record as ``evals``."""
    def newest(name: str) -> Optional[Path]:
        found = [f / f"{key}_{name}" for f in folders if (f / f"{key}_{name}").is_file()]
        return found[-1] if found else None

    res_path = newest("results.json")
    if res_path is None:
        raise FileNotFoundError(f"no {key}_results.json in {', '.join(map(str, folders))}: the run has not finished")
    results = json.loads(res_path.read_text())
    metrics_path = newest("metrics.csv")
    metrics = _metrics(metrics_path) if metrics_path else []
    rates = [r["img_per_s"] for r in metrics if r.get("img_per_s")]
    wall = newest("wall_seconds.txt")
    cmd = newest("command.txt")
    if not evals and newest("evals.json"):
        evals = [newest("evals.json")]
    record = dict(
        model=results.get("model"), img_size=results.get("img_size"), epochs=results.get("epochs"),
        top1=results.get("top1"), top5=results.get("top5"), ema_top1=results.get("ema_top1"),
        ema_top5=results.get("ema_top5"), best_top1=results.get("best_top1"), best_epoch=results.get("best_epoch"),
        minutes=round(int(_read_text(wall)) / 60, 2) if wall else results.get("minutes"),
        train_minutes=results.get("train_minutes"),
        train_img_per_s=round(statistics.median(rates[1:] or rates)) if rates else None,
        skipped_steps=results.get("skipped_steps"), interrupted=results.get("interrupted"),
        val_top1=[[int(r["epoch"]), round(r["val_top1"], 3)] for r in metrics if r.get("val_top1") is not None],
        ema_val_top1=[[int(r["epoch"]), round(r["ema_val_top1"], 3)] for r in metrics
                      if r.get("ema_val_top1") is not None],
        what=what, command=_read_text(cmd) if cmd else None)
    if evals:
        record["evals"] = []
        for path in evals:  # one evaluation each, or a list of them (device_imagenette_long.sh's <key>_evals.json)
            found = json.loads(Path(path).read_text())
            for ev in found if isinstance(found, list) else [found]:
                record["evals"].append({k: ev.get(k) for k in ("img_size", "crop_pct", "ema", "tta", "top1", "top5",
                                                               "images")})
    curves = newest("curves.png")
    target = None
    if curves:
        target, n = out.with_name(f"{out.stem}_{key}_curves.png"), 2
        while target.exists() and target.read_bytes() != curves.read_bytes():
            target, n = out.with_name(f"{out.stem}_{key}_{n}_curves.png"), n + 1
        record["curves"] = target.name
    report = json.loads(out.read_text()) if out.is_file() else dict(
        dataset="Imagenette-160 (train 9,469 / val 3,925)", device=None, records=[])
    report["records"].append(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if target is not None:
        shutil.copyfile(curves, target)
    print(f"{record['model']}: {record['epochs']} epochs, top-1 {record['top1']} (EMA {record['ema_top1']}), "
          f"{record['train_img_per_s']} img/s, {record['minutes']} min -> {out}")
    return record


# ---------------------------------------------------------------------- publishing into docs/
def _combined_plot(folder: Path, path: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {key: _metrics(folder / f"{key}_metrics.csv") for key in NAMES}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, rows in series.items():
        name = NAMES[key][0]
        axes[0].plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], label=name)
        val = [(r["epoch"], r["val_top1"]) for r in rows if r.get("val_top1") is not None]
        if val:
            axes[1].plot(*zip(*val), marker=".", label=name)
    axes[0].set(xlabel="epoch", ylabel="train loss (mixup / cutmix targets)")
    axes[1].set(xlabel="epoch", ylabel="val top-1 (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Imagenette-160 from scratch, same recipe and epochs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def merge(folders: List[Path], into: Path) -> Path:
    """One folder from the outputs of several device calls (e.g. Vim-Ti in one, DeiT-Ti in the next): records
    concatenated, the verdict recomputed, curves and metrics copied; returns ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    report: Optional[Dict[str, Any]] = None
    for folder in folders:
        part = json.loads((folder / "imagenette.json").read_text())
        if report is None:
            report = part
        else:
            report["records"] += part["records"]
        for src in folder.iterdir():
            if src.suffix in (".png", ".csv") and src.name != "imagenette_curves.png":
                shutil.copyfile(src, into / src.name)
    assert report is not None
    report["summary"] = verdict(report["records"])
    (into / "imagenette.json").write_text(json.dumps(report, indent=2) + "\n")
    return into


def publish(folder: Path, docs: Path, note: Optional[str] = None, earlier: Optional[Path] = None) -> Path:
    report = json.loads((folder / "imagenette.json").read_text())
    results = docs / "results"
    results.mkdir(parents=True, exist_ok=True)
    if note:
        report["note"] = note
    if earlier is not None:  # an earlier published imagenette.json: its runs are kept, listed under the new ones
        old = json.loads(Path(earlier).read_text())
        report["earlier_records"] = old.get("records", []) + old.get("earlier_records", [])
    (results / "imagenette.json").write_text(json.dumps(report, indent=2) + "\n")
    for key in NAMES:
        for suffix in ("curves.png", "metrics.csv"):
            src = folder / f"{key}_{suffix}"
            if src.is_file():
                shutil.copyfile(src, results / f"imagenette_{key}_{suffix}")
    combined = _combined_plot(folder, results / "imagenette_curves.png")

    lines = ["# Imagenette-160 from scratch: Vim-Ti vs DeiT-Ti", "",
             f"{report['dataset']}. Device: {report.get('device') or 'see log'}. Same recipe "
             "(configs/imagenette/vim_tiny.yaml; deit_tiny.yaml changes only the model), same number of epochs, "
             "same wall-clock budget; the reasoning behind the recipe is in [training.md](training.md). "
             "Produced by `benchmarks/device_imagenette.sh` (one call) or `benchmarks/device_imagenette_long.sh` "
             "(a schedule over several calls), published by `benchmarks/imagenette_results.py`.", "",
             "| model | img size | epochs | top-1 (%) | top-5 (%) | best top-1 (epoch) | train img/s | eval img/s "
             "| minutes | skipped steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines[2:2] = best_elsewhere(results)
    for r in report["records"]:
        lines.append(f"| {r['model']} (`{r['arch']}`) | {_fmt(r['img_size'])} | {_fmt(r['epochs'])} | "
                     f"{_fmt(r['top1'])} | {_fmt(r['top5'])} | {_fmt(r['best_top1'])} ({_fmt(r['best_epoch'])}) | "
                     f"{_fmt(r['train_img_per_s'])} | {_fmt(r['eval_img_per_s'])} | {_fmt(r['minutes'])} | "
                     f"{_fmt(r['skipped_steps'])} |")
    if report.get("earlier_records"):
        lines += ["", "Earlier runs (shorter schedules, kept for comparison):", "",
                  "| model | img size | epochs | top-1 (%) | top-5 (%) | train img/s | minutes | command |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report["earlier_records"]:
            lines.append(f"| {r['model']} | {_fmt(r.get('img_size'))} | {_fmt(r.get('epochs'))} | "
                         f"{_fmt(r.get('top1'))} | {_fmt(r.get('top5'))} | {_fmt(r.get('train_img_per_s'))} | "
                         f"{_fmt(r.get('minutes'))} | `{r.get('command') or ''}` |")
    s = report["summary"]
    target = report["target"]
    lines += ["", f"Target: Vim-Ti >= {target['vim_top1']:g}% top-1 and >= DeiT-Ti + {target['margin_over_deit']:g} "
              f"points (the paper's ImageNet-1k gap is +3.9). Vim-Ti minus DeiT-Ti: {_fmt(s['vim_minus_deit'])} "
              f"points; target {'met' if s['target_met'] else 'not met' if s['target_met'] is False else 'unknown'}.",
              "", "Top-1 / top-5 are of the final weights (last epoch), not the best epoch."]
    if report.get("note"):
        lines += ["", "## Notes", "", report["note"]]
    if combined:
        lines += ["", "![Vim-Ti vs DeiT-Ti](results/imagenette_curves.png)"]
    for key, (name, _) in NAMES.items():
        if (results / f"imagenette_{key}_curves.png").is_file():
            lines += ["", f"{name}: ![{name} curves](results/imagenette_{key}_curves.png)"]
    lines += ["", "Commands:", ""]
    lines += [f"    {r['command']}" for r in report["records"] if r.get("command")]
    if (docs / "imagenette_experiments.md").is_file():  # written by hand: runs outside this comparison
        lines += ["", "Other experiments on this dataset (recipes tried toward the target): "
                  "[imagenette_experiments.md](imagenette_experiments.md)."]
    page = docs / "imagenette.md"
    page.write_text("\n".join(lines) + "\n")
    print(f"wrote {page}, {results / 'imagenette.json'}" + (f", {combined}" if combined else ""))
    return page


def best_elsewhere(results: Path) -> List[str]:
    """Lines for the top of docs/imagenette.md: the best final top-1 of each student model among the runs of
    ``results/imagenette_distill.json`` (the recipes of imagenette_experiments.md), or nothing without that file."""
    path = results / "imagenette_distill.json"
    if not path.is_file():
        return []
    best = {}
    for r in json.loads(path.read_text()).get("records", []):
        name = r.get("model", "")
        family = "Vim-Ti" if name.startswith("vim_tiny") else "DeiT-Ti" if name.startswith("deit_tiny") else None
        if family and r.get("top1") is not None and r["top1"] > best.get(family, {}).get("top1", -1):
            best[family] = r
    if not best:
        return []
    parts = [f"{family} {_fmt(r['top1'])}% (`{r['model']}`, {_fmt(r.get('img_size'))} px, its last stage "
             f"{_fmt(r.get('epochs'))} epochs)" for family, r in sorted(best.items(), reverse=True)]
    return ["**Best so far** (the recipes of [imagenette_experiments.md](imagenette_experiments.md): each student "
            "trained from random weights with soft targets from a ResNet-50-D trained on the same images, then "
            "fine-tuned with more tokens; records in `results/imagenette_distill.json`): " + "; ".join(parts) + ". "
            "How the margin over DeiT-Ti reads stage by stage is on that page. The table below is the plain recipe, "
            "without a teacher.", ""]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="(device) gather the runs into imagenette.json")
    c.add_argument("--runs", type=Path, default=Path("runs/device_imagenette"))
    c.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("publish", help="(here) write docs/results/imagenette.json and docs/imagenette.md")
    p.add_argument("--from", dest="folder", type=Path, required=True, action="append",
                   help="the fetched device outputs (repeat for runs fetched from several calls)")
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    p.add_argument("--note", help="what was tried (printed under Notes), e.g. when the target is not met")
    p.add_argument("--earlier", type=Path, help="a previously published imagenette.json whose runs are kept")
    e = sub.add_parser("experiment", help="(here) one run outside the main comparison into a results JSON")
    e.add_argument("--from", dest="folder", type=Path, required=True, action="append",
                   help="the fetched outputs of the run's calls (repeat; the newest files win)")
    e.add_argument("--key", required=True, help="the MODEL of device_imagenette_long.sh, e.g. vim_s8")
    e.add_argument("--out", type=Path, required=True, help="the JSON to append the record to")
    e.add_argument("--what", default="", help="what the run tried")
    e.add_argument("--evals", type=Path, nargs="*", default=[],
                   help="JSONs from `vision-mamba eval --json` of the run's weights, kept in the record")
    args = parser.parse_args(argv)
    if args.command == "experiment":
        try:
            experiment(args.folder, args.key, args.out, args.what, args.evals)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "collect":
        if not args.runs.is_dir():
            print(f"error: no run directories under {args.runs}", file=sys.stderr)
            return 2
        collect(args.runs, args.out)
        return 0
    for folder in args.folder:
        if not (folder / "imagenette.json").is_file():
            print(f"error: {folder / 'imagenette.json'} not found (fetch the device outputs first)", file=sys.stderr)
            return 2
    folder = args.folder[0]
    if len(args.folder) > 1:
        import tempfile

        folder = merge(args.folder, Path(tempfile.mkdtemp(prefix="imagenette_merged_")))
    publish(folder, args.docs, args.note, args.earlier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
