"""benchmarks/seg_results.py: seg-train run directories -> records -> docs (on a temporary copy of docs/)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def seg_results(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("seg_results", REPO / "benchmarks" / "seg_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "repo" / "docs").mkdir(parents=True)
    shutil.copyfile(REPO / "docs" / "segmentation.md", tmp_path / "repo" / "docs" / "segmentation.md")
    monkeypatch.setattr(module, "REPO", tmp_path / "repo")
    return module


def fake_run(folder: Path, backbone: str, miou: float) -> Path:
    """The two files of a seg-train run that the results script reads (values here are inputs, not results)."""
    folder.mkdir(parents=True)
    summary = dict(backbone=backbone, init="scratch", iters=40, planned_iters=40, warmup_iters=5, val_miou=miou,
                   train_miou=2 * miou, val_pixel_acc=0.5, train_pixel_acc=0.6, val_mean_acc=0.2,
                   val_classes_scored=3, val_per_class_iou={"sky": miou, "tree": None}, batch_size=16,
                   crop_size=[256, 256], lr=1e-4, layer_decay=1.0, test_mode="whole", train_seconds=12.3,
                   sec_per_iter=0.3, time_budget_s=60.0, stopped_by_time_budget=False, skipped_steps=0,
                   device="cpu", precision="fp32", torch="x", timm="y", command=f"vision-mamba seg-train {backbone}")
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("\n".join(
        json.dumps({"iter": i, "loss": 5.0 - i / 10, "lr": 1e-4}) for i in range(1, 41)) + "\n")
    return folder


def test_collect_and_publish(seg_results, tmp_path):
    runs = [fake_run(tmp_path / "vim", "vim_tiny_patch16_224", 0.125),
            fake_run(tmp_path / "deit", "deit_tiny_patch16_224", 0.25), tmp_path / "failed"]
    (tmp_path / "failed").mkdir()
    out = tmp_path / "seg" / "coco128_semantic.json"
    rc = seg_results.main(["collect", "--init", "scratch", "--output", str(out)] + [str(r) for r in runs])
    assert rc == 1  # one run failed, and says so
    records = json.loads(out.read_text())["records"]
    assert [r["backbone"] for r in records] == ["vim_tiny_patch16_224", "deit_tiny_patch16_224", "failed"]
    vim = records[0]
    assert (vim["val_miou"], vim["train_miou"], vim["iters"]) == (12.5, 25.0, 40)  # fractions -> percent
    assert vim["val_per_class_iou"] == {"sky": 12.5} and vim["command"] == "vision-mamba seg-train vim_tiny_patch16_224"
    assert vim["loss_curve"][0] == [1, 4.9, 1e-4] and vim["loss_curve"][-1][0] == 40
    assert "error" in records[2]

    (out.parent / "overlay_vim_tiny.png").write_bytes(b"png")
    assert seg_results.main(["publish", str(out.parent)]) == 0
    docs = seg_results.REPO / "docs"
    assert json.loads((docs / "results" / "coco128_semantic.json").read_text())["records"] == records
    assert (docs / "images" / "segmentation" / "coco128_overlay_vim_tiny.png").is_file()
    assert (docs / "images" / "segmentation" / "coco128_curves.png").is_file()
    text = (docs / "segmentation.md").read_text()
    section = text.split("<!-- seg-results:start -->")[1].split("<!-- seg-results:end -->")[0]
    assert "| vim_tiny_patch16_224 | scratch | 40 | 16 x 256 | 12 s | 0.300 | 12.50 | 25.00 | 50.0 |" in section
    assert "failed" in section and "Not measured yet" not in section
    assert text.count("<!-- seg-results:start -->") == 1 and "## Differences from the paper" in text
    assert seg_results.main(["publish", str(out.parent)]) == 0  # idempotent: the section is replaced
    assert (docs / "segmentation.md").read_text() == text
