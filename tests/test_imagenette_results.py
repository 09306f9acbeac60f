"""benchmarks/imagenette_results.py: a run outside the main comparison -> a record appended to a results JSON, its
curves copied beside it without overwriting an earlier run's (session 22's publishing had replaced two)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_module():
    spec = importlib.util.spec_from_file_location("imagenette_results", REPO / "benchmarks" / "imagenette_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_call(folder: Path, key: str, top1: float, curves: bytes) -> Path:
    """The files a device call of device_imagenette_long.sh copies out for MODEL=key (values are inputs here)."""
    folder.mkdir(parents=True)
    (folder / f"{key}_results.json").write_text(json.dumps(dict(model="vim_tiny_patch16_224", epochs=3, top1=top1)))
    (folder / f"{key}_metrics.csv").write_text("epoch,img_per_s,val_top1\n1,100,\n2,110,\n3,120,50.0\n")
    (folder / f"{key}_command.txt").write_text(f"train MODEL={key}\n")
    (folder / f"{key}_curves.png").write_bytes(curves)
    return folder


def test_experiment_records_and_keeps_earlier_curves(tmp_path):
    results = load_module()
    out = tmp_path / "docs" / "results" / "distill.json"
    first = fake_call(tmp_path / "call1", "vim_kds", 60.0, b"first run's curves")
    second = fake_call(tmp_path / "call2", "vim_kds", 70.0, b"second run's curves")
    rec1 = results.experiment([first], "vim_kds", out, "first")
    rec_again = results.experiment([first], "vim_kds", out, "the same run published again")
    rec2 = results.experiment([second], "vim_kds", out, "second")
    records = json.loads(out.read_text())["records"]
    assert [r["what"] for r in records] == ["first", "the same run published again", "second"]
    assert [r["top1"] for r in records] == [60.0, 60.0, 70.0]
    assert records[0]["val_top1"] == [[3, 50.0]] and records[0]["train_img_per_s"] == 115
    # the first run's curves stay; the same curves again reuse their file; other curves get a numbered name
    assert rec1["curves"] == rec_again["curves"] == "distill_vim_kds_curves.png"
    assert rec2["curves"] == "distill_vim_kds_2_curves.png"
    assert (out.parent / "distill_vim_kds_curves.png").read_bytes() == b"first run's curves"
    assert (out.parent / "distill_vim_kds_2_curves.png").read_bytes() == b"second run's curves"
