"""benchmarks/imagenette_results.py: a run outside the main comparison -> a record appended to a results JSON, its
curves copied beside it without overwriting an earlier run's (session 22's publishing had replaced two)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

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


STUB_PYTHON = r"""#!/usr/bin/env bash
# stands in for python: logs each `vision_mamba.cli train` call; the run named in $STUB_INTERRUPT stops (exit 130)
# the first time, as a run stopped by the call's time limit, and finishes the next
out=""; prev=""; for a in "$@"; do [ "$prev" = "--output" ] && out=$a; prev=$a; done
echo "$*" >> "$STUB_LOG"
mkdir -p "$out"
if [ "$(basename "$out")" = "${STUB_INTERRUPT:-}" ] && [ ! -f "$out/.stopped" ]; then
  touch "$out/.stopped"; echo "stopped by SIGINT"; exit 130
fi
echo weights > "$out/final.safetensors"; echo '{}' > "$out/results.json"; echo "final: top-1 50.00%"
"""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_chain_script_continues_runs_over_calls(tmp_path):
    """device_imagenette_chain.sh: each run of the chain in turn, a finished one skipped in later calls, an unfinished
    one ending the call and resumed in the next; the fine-tune finds the earlier run's weights; one tar back without
    the teacher's weights."""
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    log, runs = tmp_path / "calls.log", tmp_path / "runs"
    env = dict(os.environ, PYTHON=str(stub), RUNS=str(runs), DATA=str(tmp_path / "data"), STUB_LOG=str(log),
               STUB_INTERRUPT="deit_kds", BUDGET="500")

    def call(n, **more):
        out = tmp_path / f"out{n}"
        proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_imagenette_chain.sh"), "teacher:2",
                               "deit_kds:3", "deit_kds_ft240:4"], env=dict(env, OUT=str(out), **more),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        with tarfile.open(out / "chain.tar") as tar:
            names = {Path(m).name for m in tar.getnames()}
        return proc.stdout, names

    stdout, names = call(1)
    assert "deit_kds did not finish" in stdout and "deit_kds_ft240 part" not in stdout
    assert "teacher_results.json" in names and "deit_kds_part1.log" in names
    assert not any(n.endswith(".safetensors") for n in names)  # the teacher's weights stay; deit_kds has none yet
    stdout, names = call(2)
    assert "teacher: already done" in stdout
    assert {"deit_kds_part2.log", "deit_kds_ft240_part1.log"} <= names
    # the weights come back beside the tar (two students' weights in one tar would pass the 16 MiB a file may have)
    assert not any(n.endswith(".safetensors") for n in names)
    assert {p.name for p in (tmp_path / "out2").glob("*.safetensors")} == {
        "deit_kds_imagenette_fp16.safetensors", "deit_kds_ft240_imagenette_fp16.safetensors"}
    trains = log.read_text().splitlines()
    assert [t.split("--output ")[1].split()[0] for t in trains] == [
        str(runs / m) for m in ("teacher", "deit_kds", "deit_kds", "deit_kds_ft240")]
    assert all("--resume auto" in t for t in trains)
    assert f"--finetune {runs / 'deit_kds' / 'final.safetensors'}" in trains[-1]
    assert "deit_kds_ft240: already done" in call(3)[0] and len(log.read_text().splitlines()) == 4
    assert not list((tmp_path / "out3").glob("teacher_fp16*"))
    # KEEP_TEACHER=1: the teacher's weights come back in parts that join into the file, with its checksum
    call(4, KEEP_TEACHER="1")
    parts = sorted((tmp_path / "out4").glob("teacher_fp16.safetensors.part*"))
    teacher = (runs / "teacher" / "final.safetensors").read_bytes()
    assert parts and b"".join(p.read_bytes() for p in parts) == teacher
    assert (tmp_path / "out4" / "teacher_fp16.sha256").read_text().strip() == hashlib.sha256(teacher).hexdigest()
    # a later machine: TEACHER=<the joined parts> stands for the teacher's run (checked against its sha256), so
    # no teacher is trained again
    joined = tmp_path / "teacher_fp16.safetensors"
    joined.write_bytes(teacher)
    env["RUNS"] = str(tmp_path / "runs2")
    bad = subprocess.run(["bash", str(REPO / "benchmarks" / "device_imagenette_chain.sh"), "teacher:2"],
                         env=dict(env, OUT=str(tmp_path / "out5"), TEACHER=str(joined), TEACHER_SHA256="0" * 64),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not have the sha256" in bad.stdout
    stdout, _ = call(6, TEACHER=str(joined), TEACHER_SHA256=hashlib.sha256(teacher).hexdigest())
    assert "teacher: already done" in stdout
    assert (tmp_path / "runs2" / "teacher" / "final.safetensors").read_bytes() == teacher
    assert [t.split("--output ")[1].split()[0] for t in log.read_text().splitlines()[4:]] == [
        str(tmp_path / "runs2" / "deit_kds")]  # (the student next, as after a trained teacher)


def test_best_elsewhere_picks_each_students_best(tmp_path):
    # the line on top of docs/imagenette.md: the best final top-1 of each student among the experiments' records
    # (teachers and other models ignored), nothing without the file
    results = load_module()
    assert results.best_elsewhere(tmp_path) == []
    records = [dict(model="resnet50d", img_size=128, epochs=200, top1=92.6),
               dict(model="vim_tiny_patch16_224", img_size=128, epochs=450, top1=88.08),
               dict(model="vim_tiny_patch16_stride8_224", img_size=160, epochs=30, top1=90.5223),
               dict(model="deit_tiny_patch16_224", img_size=304, epochs=30, top1=89.1465),
               dict(model="deit_tiny_patch16_224", img_size=128, epochs=450, top1=83.75)]
    (tmp_path / "imagenette_distill.json").write_text(json.dumps(dict(records=records)))
    lines = results.best_elsewhere(tmp_path)
    assert len(lines) == 2 and lines[1] == ""
    assert ("Vim-Ti 90.52% (`vim_tiny_patch16_stride8_224`, 160 px, its last stage 30 epochs); "
            "DeiT-Ti 89.15% (`deit_tiny_patch16_224`, 304 px") in lines[0]
    assert "92.6" not in lines[0]
