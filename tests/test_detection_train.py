"""Detection training (issue 6): a two-image overfit, and det-train / det-eval / det-predict end to end with
checkpoints, time limit, interruption and resume, on the synthetic COCO set of test_detection.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from test_detection import TINY_MODEL, _float_batch, make_coco, single_thread, tiny_detector  # noqa: F401
from vision_mamba.cli import main as cli
from vision_mamba.engine import load_state
from vision_mamba.tasks.detection import trainer
from vision_mamba.tasks.detection.datasets import CocoInstances
from vision_mamba.tasks.detection.evaluation import evaluate_model
from vision_mamba.tasks.detection.trainer import param_groups


def test_two_image_overfit_losses_go_down_and_ap_rises(tmp_path):
    image_dir, ann = make_coco(tmp_path, num_images=2)
    ds = CocoInstances(image_dir, ann, progress=False)
    model = tiny_detector()
    model.train()
    images, targets = _float_batch(ds, [0, 1])
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.0, layer_decay=1.0), lr=2e-3)
    history = []
    for _ in range(30):
        losses = model(images, targets)
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()} | {"total": float(loss.detach())})
    first = sum(h["total"] for h in history[:3]) / 3
    last = sum(h["total"] for h in history[-3:]) / 3
    assert last < 0.5 * first, [round(h["total"], 3) for h in history]
    for key in ("loss_classifier", "loss_mask", "loss_objectness"):
        assert history[-1][key] < history[0][key], key
    # the memorised images are found again through the whole eval path (postprocess, RLE, COCOeval)
    metrics = evaluate_model(model, ds, "cpu", progress=False)
    assert metrics["bbox_AP50"] >= 0.75 and metrics["segm_AP50"] >= 0.75, metrics


def _write_config(tmp_path: Path, root: Path, **train) -> Path:
    config = {
        "model": {**TINY_MODEL},
        "data": {"root": str(root), "train_images": "images", "train_annotations": "instances.json",
                 "val_images": "images", "val_annotations": "instances.json", "scale_range": [0.5, 1.5],
                 "workers": 0},
        "train": {"iters": 4, "batch_size": 2, "lr": 1e-3, "warmup_iters": 1, "log_every": 1,
                  "checkpoint_every": 2, **train},
        "eval": {"batch_size": 2, "train_set": True},
    }
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_det_train_time_limit_resume_eval_predict(tmp_path, capsys):
    data = tmp_path / "data"
    make_coco(data, num_images=3)
    config = _write_config(tmp_path, data)
    run = tmp_path / "run"
    # A zero time limit stops after the first iteration, saves, and still evaluates.
    assert cli(["det-train", "--config", str(config), "--output", str(run), "--no-progress",
                "--set", "train.time_limit_minutes=0"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["iters"] == 1 and results["stopped"] == "time limit" and results["iters_planned"] == 4
    assert 0.0 <= results["val"]["bbox_AP"] <= 1.0 and results["train"]["num_images"] == 3
    for name in ("config.yaml", "checkpoint.pt", "model.safetensors", "metrics.jsonl", "curves.png"):
        assert (run / name).is_file(), name
    assert load_state(run / "checkpoint.pt")["iter"] == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["time_limit_minutes"] == 0 and saved["model"]["backbone"] == "test_vim"

    # Resume: the stored config is the base, the time limit lifted on the command line.
    assert cli(["det-train", "--resume", str(run), "--no-progress", "--set", "train.time_limit_minutes=null"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["iters"] == 4 and results["stopped"] == "completed"
    logged = [json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 1, 2, 3, 4, 4]  # iteration 1 and its evaluation, resumed: 2, 3, 4 and the evaluation
    assert load_state(run / "checkpoint.pt")["iter"] == 4
    # resuming the finished run: nothing trained, evaluated or rewritten (no second final row)
    files = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "results.json", "checkpoint.pt")}
    capsys.readouterr()
    assert cli(["det-train", "--resume", str(run), "--no-progress"]) == 0
    assert "already complete (4/4 iterations); nothing to do" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in files} == files

    out = tmp_path / "ap.json"
    assert cli(["det-eval", "--checkpoint", str(run / "model.safetensors"), "--output", str(out),
                "--no-progress", "--device", "cpu"]) == 0
    metrics = json.loads(out.read_text())
    # the same weights and images as the evaluation at the end of training give the same AP
    assert metrics["bbox_AP"] == pytest.approx(results["val"]["bbox_AP"])
    assert metrics["segm_AP"] == pytest.approx(results["val"]["segm_AP"])

    png = tmp_path / "pred.png"
    assert cli(["det-predict", "--checkpoint", str(run / "checkpoint.pt"), "--image",
                str(data / "images" / "img_000.png"), "--output", str(png), "--score-thresh", "0.0",
                "--device", "cpu"]) == 0
    with Image.open(png) as img:
        assert img.size == (64, 48) and img.mode == "RGB"
    assert "drawn into" in capsys.readouterr().out


def _det_results_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "det_results.py"
    spec = importlib.util.spec_from_file_location("det_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_det_results_collect_and_publish(tmp_path, monkeypatch):
    det_results = _det_results_module()
    data = tmp_path / "data"
    make_coco(data, num_images=2)
    run = tmp_path / "runs" / "vim"
    assert cli(["det-train", "--config", str(_write_config(tmp_path, data, iters=2)), "--output", str(run),
                "--no-progress"]) == 0
    (tmp_path / "runs" / "deit").mkdir()  # a run that failed before writing results
    out = tmp_path / "out" / "det" / "coco128_detection.json"
    assert det_results.main(["collect", "--init", "scratch", "--output", str(out), str(run),
                             str(tmp_path / "runs" / "deit")]) == 1  # one run has no results
    records = json.loads(out.read_text())["records"]
    vim = records[0]
    assert vim["backbone"] == "test_vim" and vim["iters"] == 2 and vim["init"] == "scratch"
    summary = json.loads((run / "results.json").read_text())
    assert vim["box_ap"] == pytest.approx(100 * summary["val"]["bbox_AP"], abs=0.01)
    assert vim["train_box_ap"] == pytest.approx(100 * summary["train"]["bbox_AP"], abs=0.01)
    assert "error" in records[1]
    Image.new("RGB", (8, 8)).save(out.parent / "pred_vim_tiny.png")
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "detection.md").write_text(f"intro\n{det_results.START}\nold\n{det_results.END}\nrest\n")
    monkeypatch.setattr(det_results, "REPO", repo)
    assert det_results.main(["publish", str(out)]) == 0
    doc = (repo / "docs" / "detection.md").read_text()
    assert "| test_vim | scratch | 2 |" in doc and "old" not in doc and doc.endswith("rest\n")
    assert "images/detection/pred_vim_tiny.png" in doc
    assert (repo / "docs" / "images" / "detection" / "pred_vim_tiny.png").is_file()
    assert json.loads((repo / "docs" / "results" / "coco128_detection.json").read_text())["records"] == records


def test_interrupt_saves_checkpoint_and_skips_eval(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_coco(data, num_images=2)
    config = _write_config(tmp_path, data, checkpoint_every=100)

    class SignalledGuard(trainer.InterruptGuard):
        """As if SIGTERM arrived during the first iteration."""

        def __enter__(self):
            super().__enter__()
            self.requested, self.signal_name = True, "SIGTERM"
            return self

    monkeypatch.setattr(trainer, "InterruptGuard", SignalledGuard)
    run = tmp_path / "run"
    assert cli(["det-train", "--config", str(config), "--output", str(run), "--no-progress"]) == 130  # as train
    assert load_state(run / "checkpoint.pt")["iter"] == 1
    assert not (run / "results.json").exists() and not (run / "model.safetensors").exists()


def test_ctrl_c_during_the_final_evaluation_says_how_to_finish(tmp_path, monkeypatch, capsys):
    # (was the bare "vision-mamba det-train: interrupted" of the command line, with no word on the saved weights)
    data = tmp_path / "data"
    make_coco(data, num_images=2)
    config = _write_config(tmp_path, data, iters=1)
    evaluate = trainer.evaluate_model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "evaluate_model", interrupted)
    run = tmp_path / "run"
    assert cli(["det-train", "--config", str(config), "--output", str(run), "--no-progress"]) == 130
    out = capsys.readouterr().out
    assert (f"interrupted during the evaluation after iteration 1; the trained weights are saved in "
            f"{run / 'model.safetensors'}. Evaluate them with --resume {run}") in out
    assert (run / "model.safetensors").is_file() and not (run / "results.json").exists()
    monkeypatch.setattr(trainer, "evaluate_model", evaluate)
    assert cli(["det-train", "--resume", str(run), "--no-progress"]) == 0  # evaluates, trains nothing more
    results = json.loads((run / "results.json").read_text())
    assert results["iters"] == 1 and 0.0 <= results["val"]["bbox_AP"] <= 1.0


def test_det_train_reports_bad_data_before_training(tmp_path, capsys):
    data = tmp_path / "data"
    _, ann = make_coco(data, num_images=2)
    content = json.loads(ann.read_text())
    content["annotations"][0]["bbox"] = [3, 4, -10, 5]
    ann.write_text(json.dumps(content))
    config = _write_config(tmp_path, data)
    assert cli(["det-train", "--config", str(config), "--output", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "annotation 1 (image 100) bbox [3, 4, -10, 5] has a non-positive width or height" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert cli(["det-train", "--config", str(config), "--set", "train.itres=3"]) == 2
    assert "did you mean 'train.iters'" in capsys.readouterr().err


@pytest.mark.parametrize("keep", ["none", "crowd"])
def test_det_train_refuses_training_data_without_objects(tmp_path, capsys, keep):
    # (images only, or only a crowd region: used to be a ValueError traceback, or with data.keep_empty a run that
    # trained on nothing at all)
    data = tmp_path / "data"
    _, ann = make_coco(data, num_images=2)
    content = json.loads(ann.read_text())
    content["annotations"] = [a for a in content["annotations"] if keep == "crowd" and a["iscrowd"]]
    ann.write_text(json.dumps(content))
    for keep_empty in ("true", "false"):
        assert cli(["det-train", "--config", str(_write_config(tmp_path, data)), "--output", str(tmp_path / "run"),
                    "--no-progress", "--set", f"data.keep_empty={keep_empty}"]) == 2
        assert "no objects to train on: none of its" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()


def test_det_commands_refuse_bad_runs_checkpoints_images_and_settings(tmp_path, capsys):
    data = tmp_path / "data"
    image_dir, ann = make_coco(data, num_images=2)
    config = _write_config(tmp_path, data, iters=1)
    run = tmp_path / "run"
    assert cli(["det-train", "--config", str(config), "--output", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    saved = (run / "checkpoint.pt").read_bytes()
    # the same --output without --resume: refused, the run's checkpoint untouched
    assert cli(["det-train", "--config", str(config), "--output", str(run), "--no-progress"]) == 2
    assert "already holds a run (checkpoint.pt): continue it with --resume" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == saved
    # settings that used to fail deep inside (or mid-run)
    for override, message in (("train.precision=fp8", "train.precision must be"),
                              ("train.log_every=0", "train.log_every must be positive"),
                              ("model.backbone=test_vimm", "unknown timm model 'test_vimm' (did you mean test_vim"),
                              ("model.anchor_sizes=[1,", "is not valid YAML")):
        assert cli(["det-train", "--config", str(config), "--set", override, "--print-config"]) == 2, override
        assert message in capsys.readouterr().err, override
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [\n")
    assert cli(["det-train", "--config", str(broken), "--print-config"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    # truncated or foreign checkpoints, a detector with other categories, a device this machine lacks
    weights = (run / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(weights[: len(weights) // 2])
    (tmp_path / "cut.pt").write_bytes(saved[: len(saved) // 2])
    for bad in ("cut.safetensors", "cut.pt"):
        assert cli(["det-eval", "--checkpoint", str(tmp_path / bad), "--no-progress", "--device", "cpu"]) == 2
        assert "det-eval: error:" in capsys.readouterr().err, bad
    state = load_state(run / "checkpoint.pt")
    state["categories"] = state["categories"][:-1]
    torch.save(state, tmp_path / "fewer.pt")
    assert cli(["det-eval", "--checkpoint", str(tmp_path / "fewer.pt"), "--no-progress", "--device", "cpu"]) == 2
    assert "does not fit the detector it describes" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli(["det-eval", "--checkpoint", str(run / "model.safetensors"), "--device", "cuda"]) == 2
        assert "usable CUDA device" in capsys.readouterr().err
    # a checkpoint of another number of processes: refused, naming both and what to do
    state = load_state(run / "checkpoint.pt")
    assert state["world_size"] == 1
    torch.save(dict(state, world_size=2), run / "checkpoint.pt")
    assert cli(["det-train", "--resume", str(run), "--set", "train.iters=2", "--no-progress"]) == 2
    assert ("trained on 2 process(es) and this run has 1; resume with the same number (torchrun --nproc_per_node 2)"
            in capsys.readouterr().err)
    # a bare --resume is the run in --output (the same refusal shows it found the run); into another directory, or
    # with neither, refused
    assert cli(["det-train", "--resume", "--output", str(run), "--set", "train.iters=2", "--no-progress"]) == 2
    assert "trained on 2 process(es)" in capsys.readouterr().err
    assert cli(["det-train", "--resume", str(run), "--output", str(tmp_path / "elsewhere"), "--no-progress"]) == 2
    assert "a run resumes in its own directory" in capsys.readouterr().err
    assert cli(["det-train", "--resume", "--no-progress"]) == 2
    assert "pass --resume DIR or --output DIR" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")  # a state dict, not a det-train checkpoint
    assert cli(["det-train", "--resume", str(tmp_path / "plain.pt"), "--no-progress"]) == 2
    assert "plain.pt is not a det-train checkpoint.pt (it holds no detection config)" in capsys.readouterr().err
    assert cli(["det-train", "--config", str(config), "--device", "cpu", "--print-config"]) == 0
    assert "device: cpu" in capsys.readouterr().out
    # an image that does not decode: one line naming it, before any training
    first = sorted(image_dir.iterdir())[0]
    first.write_bytes(first.read_bytes()[:60])
    assert cli(["det-train", "--config", str(config), "--output", str(tmp_path / "run2"), "--no-progress"]) == 2
    assert f"cannot decode image {first}" in capsys.readouterr().err


def _untrained_detector_run(tmp_path: Path) -> Path:
    """A run directory holding only model.safetensors (a tiny untrained detector on make_coco's data): enough
    for the commands that read a detector, without training one."""
    from vision_mamba.tasks.detection.config import load_config
    from vision_mamba.tasks.detection.model import save_detector

    data = tmp_path / "data"
    image_dir, ann = make_coco(data, num_images=2)
    run = tmp_path / "det_run"
    config = load_config(str(_write_config(tmp_path, data)), [f"output={run}"])
    run.mkdir()
    save_detector(tiny_detector(), run / "model.safetensors", config,
                  CocoInstances(image_dir, ann, progress=False).categories)
    return run


def test_det_eval_and_predict_take_a_run_directory(tmp_path, capsys):
    run = _untrained_detector_run(tmp_path)
    image = str(tmp_path / "data" / "images" / "img_000.png")
    assert cli(["det-eval", "--checkpoint", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert "det-eval: 2 images" in capsys.readouterr().out
    assert cli(["det-predict", "--checkpoint", str(run), "--image", image, "--output", str(tmp_path / "p.png"),
                "--device", "cpu"]) == 0
    # a directory without final weights (a run stopped before its end): what is missing, and what to pass instead
    (run / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (run / "checkpoint.pt").write_bytes(b"")
    predict = ["det-predict", "--image", image, "--output", str(tmp_path / "q.png")]
    for command in (["det-eval", "--no-progress"], predict):
        assert cli(command + ["--checkpoint", str(run), "--device", "cpu"]) == 2
        assert f"{run} holds no model.safetensors (the final weights of a det-train run); pass its checkpoint.pt" \
            in capsys.readouterr().err, command


def test_det_train_resume_says_which_command_wrote_a_foreign_checkpoint(tmp_path, capsys):
    from vision_mamba.tasks.segmentation import SegConfig
    from vision_mamba.train.config import TrainConfig
    from vision_mamba.train.trainer import CHECKPOINT_FORMAT

    run = _untrained_detector_run(tmp_path)
    # --resume with another command's training state (the entries that tell them apart) or a detector's final weights
    # (used to be "base config: unknown config key 'model_kwargs'" and the like)
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "config": TrainConfig().to_dict(), "classes": ["a"]},
               tmp_path / "last.pth")
    seg_run = tmp_path / "seg_run"
    seg_run.mkdir()
    torch.save({"model": {}, "config": SegConfig().to_dict(), "classes": {"names": ["a"]}}, seg_run / "last.pth")
    for resume, message in (
            (tmp_path / "last.pth", "last.pth is not a det-train checkpoint.pt; it is train's training checkpoint"),
            (seg_run / "last.pth", "last.pth is not a det-train checkpoint.pt; it is seg-train's training checkpoint"),
            (seg_run, "seg_run is not a det-train run (no checkpoint.pt); its last.pth is seg-train's training "
                      "checkpoint"),
            (run / "model.safetensors", "model.safetensors is not a det-train checkpoint.pt; it is det-train's final "
                                        "weights (a whole detector); pass the run directory")):
        assert cli(["det-train", "--resume", str(resume), "--print-config"]) == 2
        assert message in capsys.readouterr().err, resume


def test_det_train_does_not_write_over_a_train_or_seg_train_run(tmp_path, capsys):
    """An --output holding train's or seg-train's run (their last.pth, no checkpoint.pt) is refused before any work;
    det-train used to write its config.yaml, metrics and curves (and results.json) there."""
    from vision_mamba.tasks.segmentation import SegConfig
    from vision_mamba.train.config import TrainConfig
    from vision_mamba.train.trainer import CHECKPOINT_FORMAT

    data = tmp_path / "data"
    make_coco(data, num_images=2)
    config = _write_config(tmp_path, data, iters=1)
    train_run, seg_run = tmp_path / "train_run", tmp_path / "seg_run"
    train_run.mkdir()
    seg_run.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "config": TrainConfig().to_dict(), "classes": ["a"]},
               train_run / "last.pth")
    torch.save({"model": {}, "config": SegConfig().to_dict(), "classes": {"names": ["a"]}}, seg_run / "last.pth")
    for run, kind in ((train_run, "train's training checkpoint"), (seg_run, "seg-train's training checkpoint")):
        (run / "config.yaml").write_text("the other command's\n")
        assert cli(["det-train", "--config", str(config), "--output", str(run), "--no-progress"]) == 2
        assert f"holds the run of another command (last.pth: {kind}" in capsys.readouterr().err
        assert (run / "config.yaml").read_text() == "the other command's\n"
        assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == ["config.yaml", "last.pth"]


def test_det_train_init_refuses_a_whole_detector_in_one_line(tmp_path, capsys):
    run = _untrained_detector_run(tmp_path)
    config = tmp_path / "det.yaml"
    # --init with a whole detector: one line naming it and how to train it further (used to be lists of the keys
    # that do not fit the backbone)
    assert cli(["det-train", "--config", str(config), "--output", str(tmp_path / "new"), "--no-progress",
                "--init", str(run / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert (f"model.init (--init): {run / 'model.safetensors'} is det-train's final weights (a whole detector), not a "
            f"classification checkpoint for the backbone; to train that detector further, resume its run: --resume "
            f"{run}") in err and "missing keys" not in err and len(err.strip().splitlines()) == 1, err
