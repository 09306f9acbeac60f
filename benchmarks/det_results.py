"""COCO-128 detection results: from det-train run directories to records, and from records to the docs.

    # on the device, after the runs (benchmarks/device_coco128_det.sh does this):
    python benchmarks/det_results.py collect --init scratch --output OUT/det/coco128_detection.json RUN_DIR...
    # on the development machine, after fetching OUT:
    python benchmarks/det_results.py publish FETCHED/det/coco128_detection.json

``publish`` writes docs/results/coco128_detection.json, copies the drawn predictions lying next to the json
(pred_*.png) to docs/images/detection/, and replaces the results table in docs/detection.md (between the
``<!-- det-results:start -->`` and ``<!-- det-results:end -->`` markers). AP values are percent (COCO AP x 100).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- det-results:start -->", "<!-- det-results:end -->"


def _pct(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(100.0 * value, 2)


def record_from_run(run_dir: Path, init: str) -> Dict[str, Any]:
    """One record from a det-train run directory (its results.json, or what is left of a failed run)."""
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        backbone = None
        config_path = run_dir / "config.yaml"
        if config_path.is_file():
            import yaml

            backbone = (yaml.safe_load(config_path.read_text()) or {}).get("model", {}).get("backbone")
        return dict(backbone=backbone or run_dir.name, init=init, error=f"no results.json in {run_dir}: the run "
                    "failed or was interrupted (see its log)")
    r = json.loads(results_path.read_text())
    val, train = r.get("val", {}), r.get("train", {})
    curve = r.get("loss_curve") or []
    return dict(
        backbone=r["backbone"], init=init, init_checkpoint=Path(r["init"]).name if r.get("init") else None,
        iters=r["iters"], iters_planned=r["iters_planned"], stopped=r["stopped"], batch_size=r["batch_size"],
        img_size=r["img_size"], train_seconds=r["train_seconds"],
        box_ap=_pct(val.get("bbox_AP")), box_ap50=_pct(val.get("bbox_AP50")), box_ap75=_pct(val.get("bbox_AP75")),
        mask_ap=_pct(val.get("segm_AP")), mask_ap50=_pct(val.get("segm_AP50")),
        train_box_ap=_pct(train.get("bbox_AP")), train_box_ap50=_pct(train.get("bbox_AP50")),
        train_mask_ap=_pct(train.get("segm_AP")),
        val_images=val.get("num_images"), train_images=r.get("train_images"),
        loss_first=curve[0][1] if curve else None, loss_last=curve[-1][1] if curve else None,
        loss_curve=curve, skipped_steps=r.get("skipped_steps"), command=r.get("command"),
    )


def collect(args: argparse.Namespace) -> int:
    records = [record_from_run(Path(d), args.init) for d in args.runs]
    payload = dict(
        description="Vim-Ti vs DeiT-Ti in a ViTDet-style Mask R-CNN (simple feature pyramid, torchvision heads) "
                    "on COCO-128: trained on train2017 (128 images), evaluated on val2017 (100 images, masks "
                    "from the panoptic annotations) and on the training images. Same iterations, batch, input "
                    "size, recipe and initialisation for both backbones.",
        units="AP in percent (COCO AP x 100); train_seconds is wall time of the training loop",
        benchmark="bash benchmarks/device_coco128_det.sh" + ("" if args.init == "scratch" else " VIM_INIT DEIT_INIT"),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host=platform.node(), device=_device_name(),
        records=records,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(table(records))
    return 0 if all("error" not in r for r in records) else 1


def _device_name() -> Optional[str]:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        return None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def table(records: List[Dict[str, Any]]) -> str:
    """A markdown table of the records."""
    head = ("| backbone | init | iterations | batch x px | train time | val box AP | val box AP50 | val mask AP "
            "| train box AP | train mask AP | loss first -> last |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['init']} | failed: {r['error']} |" + " |" * 8)
            continue
        iters = f"{r['iters']}" + ("" if r["iters"] == r["iters_planned"] else f" of {r['iters_planned']} "
                                   f"({r['stopped']})")
        lines.append(
            f"| {r['backbone']} | {r['init']} | {iters} | {r['batch_size']} x {r['img_size']} | "
            f"{r['train_seconds']:.0f} s | {_fmt(r['box_ap'])} | {_fmt(r['box_ap50'])} | {_fmt(r['mask_ap'])} | "
            f"{_fmt(r['train_box_ap'])} | {_fmt(r['train_mask_ap'])} | "
            f"{_fmt(r['loss_first'])} -> {_fmt(r['loss_last'])} |")
    return "\n".join(lines)


def publish(args: argparse.Namespace) -> int:
    source = Path(args.results)
    payload = json.loads(source.read_text())
    results_dir = REPO / "docs" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "coco128_detection.json").write_text(json.dumps(payload, indent=2) + "\n")
    image_dir = REPO / "docs" / "images" / "detection"
    images = sorted(source.parent.glob("pred_*.png"))
    if images:
        image_dir.mkdir(parents=True, exist_ok=True)
    for png in images:
        shutil.copyfile(png, image_dir / png.name)
    block = [table(payload["records"]), "",
             f"{payload.get('units', '')}. Device: {payload.get('device') or 'unknown'}, {payload.get('created', '')}. "
             f"Reproduce: `{payload.get('benchmark', '')}`; the exact det-train commands are in "
             "[results/coco128_detection.json](results/coco128_detection.json)."]
    for png in images:
        block += ["", f"![{png.stem}](images/detection/{png.name})"]
    doc = REPO / "docs" / "detection.md"
    text = doc.read_text()
    if START not in text or END not in text:
        print(f"{doc} has no {START} ... {END} markers; the table is:\n{block[0]}", file=sys.stderr)
        return 1
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    doc.write_text(before + START + "\n" + "\n".join(block) + "\n" + END + after)
    print(f"wrote {results_dir / 'coco128_detection.json'}, {len(images)} image(s), and the table in {doc}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="det-train run directories -> coco128_detection.json")
    c.add_argument("runs", nargs="+", help="run directories (each with results.json)")
    c.add_argument("--init", required=True, help="what the backbones started from (scratch | imagenette | ...)")
    c.add_argument("--output", required=True)
    p = sub.add_parser("publish", help="coco128_detection.json -> docs/results, docs/images, docs/detection.md")
    p.add_argument("results", help="the fetched coco128_detection.json (pred_*.png next to it are copied)")
    args = parser.parse_args(argv)
    return collect(args) if args.command == "collect" else publish(args)


if __name__ == "__main__":
    sys.exit(main())
