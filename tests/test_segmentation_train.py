"""Segmentation training end to end on synthetic data: the config system, a tiny model overfitting a few
images, checkpoints, interruption and exact resume, the time budget, and the seg-train / seg-eval / seg-predict
commands."""
from __future__ import annotations

import json
import os
import re
import signal

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from test_segmentation_fixtures import tiny_config, write_folder_dataset
from vision_mamba import cli
from vision_mamba.engine import MetricLogger, load_state
from vision_mamba.tasks.segmentation import ConfigError, SegConfig, build_config
from vision_mamba.tasks.segmentation import trainer as trainer_module
from vision_mamba.tasks.segmentation.config import parse_overrides
from vision_mamba.tasks.segmentation.trainer import InfiniteSampler, TimeBudget, train


@pytest.fixture
def data(tmp_path):
    return write_folder_dataset(tmp_path / "data", n_train=4, n_val=2)


def write_config(path, config: SegConfig):
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


# ---------------------------------------------------------------------------------------------- config
def test_config_layers_and_unknown_keys(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("backbone: test_vim\nlr: 1e-3\ncrop_size: 128\n")  # YAML reads 1e-3 as a string
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nbatch_size: 4\n")
    config = build_config(child, {"iters": 7, "warmup_iters": 2}, parse_overrides(["lr=2e-4", "ratio_range=[1, 1.5]"]))
    assert config.backbone == "test_vim" and config.batch_size == 4 and config.iters == 7
    assert config.lr == 2e-4 and isinstance(config.lr, float)  # --set wins over the file
    assert config.crop_size == [128, 128] and config.ratio_range == [1.0, 1.5]

    (tmp_path / "typo.yaml").write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown config key 'learning_rate'"):
        build_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match=r"unknown config key 'crop'.*did you mean crop_size"):
        parse_overrides(["crop=256"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="'iters' must be an integer"):
        build_config(None, {"iters": "many"})
    with pytest.raises(ConfigError, match="'test_mode': must be one of whole, slide"):
        build_config(None, {"test_mode": "tiles"})
    with pytest.raises(ConfigError, match="'warmup_iters': must be smaller than iters"):
        build_config(None, {"iters": 10, "warmup_iters": 10})
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "missing.yaml")


def test_shipped_configs_resolve():
    from vision_mamba.engine.config import BUILTIN_CONFIGS

    folder = BUILTIN_CONFIGS / "segmentation"
    configs = {p.stem: build_config(p) for p in sorted(folder.glob("*.yaml"))}
    assert {"coco128_vim_tiny", "coco128_deit_tiny", "ade20k_vim_tiny", "ade20k_deit_tiny"} <= set(configs)
    vim, deit = configs["coco128_vim_tiny"], configs["coco128_deit_tiny"]
    differ = {k for k, v in vim.to_dict().items() if deit.to_dict()[k] != v}
    assert differ == {"backbone", "backbone_kwargs", "output"}  # same data, heads, schedule: like for like
    assert vim.backbone_kwargs == {"class_token": None, "global_pool": "avg"} and deit.backbone_kwargs == {}
    assert configs["ade20k_vim_tiny"].out_indices == [5, 11, 17, 23] and configs["ade20k_vim_tiny"].layer_decay == 0.92


# ---------------------------------------------------------------------------------------------- pieces
def test_infinite_sampler_covers_and_resumes():
    full = InfiniteSampler(5, seed=3)
    stream = iter(full)
    first = [next(stream) for _ in range(10)]
    assert sorted(first[:5]) == list(range(5)) and sorted(first[5:]) == list(range(5))
    resumed = iter(InfiniteSampler(5, seed=3, start=4))
    assert [next(resumed) for _ in range(6)] == first[4:]
    ranks = [iter(InfiniteSampler(5, seed=3, rank=r, world_size=2)) for r in range(2)]
    per_rank = [[next(s) for _ in range(3)] for s in ranks]
    assert sorted(per_rank[0] + per_rank[1][:2]) == list(range(5))


def test_time_budget_fits_the_schedule():
    budget = TimeBudget(10.0, skip=2, measure=4, every=4, margin=1.0)
    assert budget.replan(2, 1.0, 2, planned=1000) is None  # start-up (compilation) is not measured
    assert budget.replan(5, 2.5, 5, planned=1000) is None  # still measuring
    # iterations 3..6 take 0.5 s each: 2 s measured, 3 s elapsed -> 7 s left fit 14 more
    assert budget.replan(6, 3.0, 6, planned=1000) == 6 + 14 and budget.sec_per_iter == 0.5
    assert budget.replan(8, 4.5, 8, planned=20) is None  # not a check point
    # the run slowed down: 8 iterations since the start of measuring in 5 s -> 0.625 s each, 4 s left fit 6 more
    assert budget.replan(10, 6.0, 10, planned=20) == 16
    roomy = TimeBudget(1000.0, skip=2, measure=4)
    roomy.replan(2, 1.0, 2, planned=50)
    assert roomy.replan(6, 3.0, 6, planned=50) == 50  # never longer than planned
    assert budget.over(10.0) and not budget.over(9.9)


# ---------------------------------------------------------------------------------------------- training
def test_tiny_model_overfits_a_few_images(tmp_path):
    data = write_folder_dataset(tmp_path / "data", n_train=2, n_val=1)
    config = tiny_config(data, tmp_path / "run", iters=30, batch_size=2, lr=5e-3, layer_decay=1.0,
                         ratio_range=[1.0, 1.0], flip_prob=0.0, cat_max_ratio=1.0, head_dropout=0.0,
                         eval_train=True, log_every=1, checkpoint_every=1000, seed=0)
    torch.manual_seed(0)
    summary = train(config)
    losses = [r["loss_decode"] for r in MetricLogger.read(tmp_path / "run" / "metrics.jsonl") if "loss_decode" in r]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert summary["train_miou"] > 0.8  # 3 classes told apart by colour on the 2 training images (chance ~0.2)
    assert summary["iters"] == 30 and summary["init"] == "scratch"


def _interrupt_during_batch(monkeypatch, at_sample: int):
    """Send SIGINT to this process while the loader prepares sample ``at_sample`` (num_workers=0: in-process)."""
    original = trainer_module.TrainTransform.from_config
    calls = {"n": 0}

    def from_config(config):
        transform = original(config)

        def call(image, mask):
            calls["n"] += 1
            if calls["n"] == at_sample:
                os.kill(os.getpid(), signal.SIGINT)
            return transform(image, mask)
        return call

    monkeypatch.setattr(trainer_module.TrainTransform, "from_config", staticmethod(from_config))


def test_interrupt_saves_and_resume_continues_exactly(data, tmp_path, monkeypatch):
    """A run stopped by SIGINT after 3 of 4 iterations and resumed ends with the same weights as one that ran
    straight through (same data order, RNG, optimizer state)."""
    straight = train(tiny_config(data, tmp_path / "straight", iters=4, checkpoint_every=2))
    assert straight["iters"] == 4
    _interrupt_during_batch(monkeypatch, at_sample=5)  # batch size 2: the third batch
    stopped = train(tiny_config(data, tmp_path / "resumed", iters=4, checkpoint_every=2))
    assert stopped == {"interrupted": True, "iters": 3, "checkpoint": str(tmp_path / "resumed" / "last.pth")}
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="continue it with --resume"):
        train(tiny_config(data, tmp_path / "resumed", iters=4))
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.002"):
        train(tiny_config(data, tmp_path / "resumed", iters=4, lr=2e-3), resume=True)
    resumed = train(tiny_config(data, tmp_path / "resumed", iters=4, checkpoint_every=2), resume=True)
    assert resumed["iters"] == 4
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    logged = [r["iter"] for r in MetricLogger.read(tmp_path / "resumed" / "metrics.jsonl") if "loss" in r]
    assert logged == [1, 2, 3, 4]  # the resumed log continues the first one
    assert resumed["val_miou"] == pytest.approx(straight["val_miou"])


def test_resume_of_a_complete_run_and_on_another_number_of_processes(data, tmp_path, capsys):
    """A finished, evaluated run resumed: nothing is done or rewritten (no second final row). A checkpoint saved
    by another number of processes is refused; one from before the count was saved resumes as before."""
    run = tmp_path / "run"
    config_path = write_config(tmp_path / "tiny.yaml", tiny_config(data, run, iters=2, checkpoint_every=1))
    assert cli.main(["seg-train", "--config", str(config_path)]) == 0
    files = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "metrics.csv", "summary.json")}
    capsys.readouterr()
    assert cli.main(["seg-train", "--config", str(config_path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already complete (2/2 iterations" in out and "more --iters" in out, out
    assert {name: (run / name).read_bytes() for name in files} == files

    state = load_state(run / "last.pth")
    assert state["world_size"] == 1
    torch.save(dict(state, world_size=2), run / "last.pth")
    assert cli.main(["seg-train", "--config", str(config_path), "--resume", "--iters", "3"]) == 2
    err = capsys.readouterr().err
    assert "trained on 2 process(es) and this run has 1; resume with the same number (torchrun --nproc_per_node 2)" \
        in err, err
    del state["world_size"]  # a checkpoint of an earlier version
    torch.save(state, run / "last.pth")
    # --resume RUN: the saved config is the base (no --config repeated), the flags apply on top
    assert cli.main(["seg-train", "--resume", str(run), "--output", str(tmp_path / "other")]) == 2
    assert "a run resumes in its own directory" in capsys.readouterr().err
    assert cli.main(["seg-train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no run directory or checkpoint at" in capsys.readouterr().err
    assert cli.main(["seg-train", "--resume", str(run / "last.pth"), "--set", "lr=0.5"]) == 2
    assert "the config differs from the saved run in lr" in capsys.readouterr().err
    assert cli.main(["seg-train", "--resume", str(run), "--iters", "3"]) == 0
    evaluated = [r["iter"] for r in MetricLogger.read(run / "metrics.jsonl") if "val_miou" in r]
    assert evaluated == [2, 3]  # extended: the evaluation at 2 and the final one at 3, once each
    # a bare --resume: the run in --output, whose saved config is the base (the defaults' warmup_iters, 1500, would
    # not fit --iters 3); without any output named, refused
    capsys.readouterr()
    assert cli.main(["seg-train", "--resume", "--output", str(run), "--iters", "3"]) == 0
    assert "already complete (3/3 iterations" in capsys.readouterr().out
    assert cli.main(["seg-train", "--resume"]) == 2
    assert "pass --resume DIR or --output DIR" in capsys.readouterr().err


def test_time_budget_ends_training_and_still_evaluates(data, tmp_path):
    summary = train(tiny_config(data, tmp_path / "run", iters=50, warmup_iters=5, time_budget_s=1e-3))
    assert summary["stopped_by_time_budget"] and summary["iters"] < 50
    assert 0.0 <= summary["val_miou"] <= 1.0 and (tmp_path / "run" / "model.safetensors").is_file()


def test_stop_iter_cuts_a_longer_schedule(data, tmp_path):
    """stop_iter replays a run that was cut short: the lr follows the full schedule, training ends early."""
    summary = train(tiny_config(data, tmp_path / "run", iters=6, warmup_iters=1, stop_iter=3, lr=1e-3))
    assert (summary["iters"], summary["planned_iters"]) == (3, 6)
    lrs = {r["iter"]: r["lr"] for r in MetricLogger.read(tmp_path / "run" / "metrics.jsonl") if "lr" in r}
    # the third iteration (index 2) of a 6-iteration poly schedule (power 1) after 1 warm-up iteration
    assert lrs[3] == pytest.approx(1e-3 * (1 - 2 / 6))


def test_bad_setup_is_refused_before_training(data, tmp_path):
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        train(tiny_config(data, tmp_path / "run", batch_size=1))
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(tiny_config(data, tmp_path / "run"), resume=True)


# ---------------------------------------------------------------------------------------------- commands
def test_commands_end_to_end(data, tmp_path, capsys):
    """seg-train with a tiny DeiT (the same adapter and heads as Vim), then seg-eval and seg-predict."""
    config = tiny_config(data, tmp_path / "unused", backbone="deit_tiny_patch16_224",
                         backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2), iters=2)
    config_path = write_config(tmp_path / "tiny.yaml", config)
    run = tmp_path / "run"
    rc = cli.main(["seg-train", "--config", str(config_path), "--output", str(run), "--set", "eval_train=true",
                   "--set", "test_mode=slide"])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["backbone"] == "deit_tiny_patch16_224" and summary["iters"] == 2
    assert summary["train_miou"] is not None and summary["test_mode"] == "slide"
    assert summary["command"].startswith("vision-mamba seg-train --config") and "eval_train=true" in summary["command"]
    assert yaml.safe_load((run / "config.yaml").read_text())["output"] == str(run)
    assert (run / "curves.png").is_file()

    metrics_path = tmp_path / "eval.json"
    rc = cli.main(["seg-eval", "--checkpoint", str(run / "model.safetensors"), "--mode", "slide",
                   "--device", "cpu", "--output", str(metrics_path)])
    assert rc == 0
    result = json.loads(metrics_path.read_text())
    assert result["miou"] == pytest.approx(summary["val_miou"]) and set(result["per_class_iou"]) == {
        "red", "green", "blue"}
    out = capsys.readouterr().out
    # seg-train's last line, in percent as seg-eval prints (the files hold fractions)
    assert re.search(r"val mIoU \d+\.\d\d% \(pixel acc \d+\.\d%\), train mIoU \d+\.\d\d%\.", out), out

    overlay = tmp_path / "overlay.png"
    image = data / "images" / "val" / "val_000.png"
    mask = data / "masks" / "val" / "val_000.png"
    rc = cli.main(["seg-predict", "--checkpoint", str(run / "model.safetensors"), "--image", str(image),
                   "--mask", str(mask), "--output", str(overlay), "--device", "cpu", "--width", "128"])
    assert rc == 0
    with Image.open(overlay) as im:
        assert im.mode == "RGB" and im.width > 3 * 128  # image, ground truth, prediction, legend

    rc = cli.main(["seg-predict", "--checkpoint", str(run / "model.safetensors"), "--image",
                   str(tmp_path / "nope.jpg"), "--output", str(overlay)])
    assert rc == 2 and "not found" in capsys.readouterr().err
    rc = cli.main(["seg-train", "--config", str(config_path), "--set", "weight_decy=0.1"])
    assert rc == 2 and "did you mean" in capsys.readouterr().err


def test_no_progress_draws_no_bar_in_seg_train_its_resume_and_seg_eval(data, tmp_path, monkeypatch):
    """--no-progress, as train, eval and det-train have it: no bar from seg-train (training, reading the images,
    evaluating), nor from a run resumed from its saved config, nor from seg-eval, even on a terminal."""
    import sys

    from tqdm.auto import tqdm as real_tqdm

    from vision_mamba.tasks.segmentation import datasets as datasets_module
    from vision_mamba.tasks.segmentation import inference as inference_module

    drawn = []  # one entry per bar made: would it have been drawn?

    def recording_tqdm(*args, **kwargs):
        drawn.append(not kwargs.get("disable"))
        return real_tqdm(*args, **dict(kwargs, disable=True))

    for module in (trainer_module, datasets_module, inference_module):
        monkeypatch.setattr(module, "tqdm", recording_tqdm)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: bars unless told otherwise
    run = tmp_path / "run"
    config_path = write_config(tmp_path / "tiny.yaml", tiny_config(data, run, iters=2, checkpoint_every=1))

    def bars(argv):
        drawn.clear()
        assert cli.main(argv) == 0
        assert drawn, argv  # (the bars were made, and are seen here)
        return any(drawn)

    assert not bars(["seg-train", "--config", str(config_path), "--no-progress"])
    assert not bars(["seg-train", "--resume", str(run), "--iters", "3", "--no-progress"])
    evaluate = ["seg-eval", "--checkpoint", str(run / "model.safetensors"), "--device", "cpu"]
    assert not bars(evaluate + ["--no-progress"])
    assert bars(evaluate)  # without it, the bar of a terminal


def test_user_errors_are_one_line_and_name_what_differs():
    from vision_mamba.tasks.segmentation.datasets import DatasetError
    from vision_mamba.tasks.segmentation.eval_command import check_same_classes
    from vision_mamba.tasks.segmentation.train_command import error_message

    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in f\nvision_mamba.tasks.segmentation.datasets."
                           "DatasetError: img/3.jpg: cannot be read as an image (truncated)\n")
    assert error_message(wrapped) == "img/3.jpg: cannot be read as an image (truncated)"
    assert error_message(DatasetError("plain: message")) == "plain: message"
    check_same_classes(["sky", "road"], ("sky", "road"))
    with pytest.raises(DatasetError, match="class 1 is 'street' in the dataset and 'road' in the model"):
        check_same_classes(["sky", "street"], ["sky", "road"])
    with pytest.raises(DatasetError, match=r"\(3 classes\) .* \(2\): the lists agree for 2 classes"):
        check_same_classes(["sky", "road", "car"], ["sky", "road"])


def test_seg_eval_and_predict_take_a_run_directory(data, tmp_path, capsys):
    from vision_mamba.tasks.segmentation.datasets import read_class_list
    from vision_mamba.tasks.segmentation.model import build_segmentation_model, save_segmentation_model

    run = tmp_path / "run"
    run.mkdir()
    config = tiny_config(data, run)
    classes = read_class_list(data / "classes.json", config.ignore_values, config.ignore_index)
    torch.manual_seed(0)
    save_segmentation_model(build_segmentation_model(config, classes.num_classes), run / "model.safetensors", config,
                            classes)  # (untrained: these commands only need to find it)
    image = str(data / "images" / "val" / "val_000.png")
    assert cli.main(["seg-eval", "--checkpoint", str(run), "--device", "cpu", "--no-progress"]) == 0
    assert cli.main(["seg-predict", "--checkpoint", str(run), "--image", image, "--output", str(tmp_path / "o.png"),
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    # a directory without final weights (a run stopped before its end): what is missing, and what to pass instead
    (run / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (run / "last.pth").write_bytes(b"")
    assert cli.main(["seg-eval", "--checkpoint", str(run), "--device", "cpu"]) == 2
    assert f"{run} holds no model.safetensors (the final weights of a seg-train run); pass its last.pth" \
        in capsys.readouterr().err


def _runs_of_the_other_commands(tmp_path):
    """(a train run's directory, a det-train run's directory), each with its training state (a stand-in)."""
    from vision_mamba.train.config import TrainConfig
    from vision_mamba.train.trainer import CHECKPOINT_FORMAT

    train_run, det_run = tmp_path / "train_run", tmp_path / "det_run"
    train_run.mkdir()
    det_run.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "config": TrainConfig().to_dict(), "classes": ["a"]},
               train_run / "last.pth")
    torch.save({"model": {}, "config": {"model": {"backbone": "test_vim"}}, "categories": [{"id": 1, "name": "a"}]},
               det_run / "checkpoint.pt")
    return train_run, det_run


def test_seg_train_does_not_write_over_a_det_train_or_train_run(data, tmp_path, capsys):
    """An --output holding det-train's run (checkpoint.pt, no last.pth) used to get seg-train's config.yaml, metrics
    and curves; train's (its last.pth) was refused with the advice to resume it. Both are refused, naming the run."""
    train_run, det_run = _runs_of_the_other_commands(tmp_path)
    for run, message in ((det_run, "(checkpoint.pt: det-train's training checkpoint"),
                         (train_run, "(last.pth: train's training checkpoint)")):
        (run / "config.yaml").write_text("the other command's\n")
        config = write_config(tmp_path / "seg.yaml", tiny_config(data, run, iters=1, warmup_iters=0))
        assert cli.main(["seg-train", "--config", str(config), "--no-progress"]) == 2
        assert f"holds the run of another command {message}" in capsys.readouterr().err
        assert (run / "config.yaml").read_text() == "the other command's\n"
        assert not (run / "metrics.jsonl").exists() and not (run / "curves.png").exists()


def test_seg_train_resume_says_which_command_wrote_a_foreign_checkpoint(tmp_path, capsys):
    # a train run's last.pth (used to be "config key 'color_jitter': must be null or [...]"), a det-train run and
    # its checkpoint.pt (used to be "not a run's last.pth; pass the run directory", then "no checkpoint ... at
    # RUN/last.pth")
    train_run, det_run = _runs_of_the_other_commands(tmp_path)
    for resume, message in (
            (train_run, "last.pth is not a seg-train checkpoint; it is train's training checkpoint"),
            (det_run / "checkpoint.pt", "checkpoint.pt is not a seg-train last.pth; it is det-train's training "
                                        "checkpoint"),
            (det_run, "det_run is not a seg-train run (no last.pth); its checkpoint.pt is det-train's training "
                      "checkpoint")):
        assert cli.main(["seg-train", "--resume", str(resume), "--print-config"]) == 2
        assert message in capsys.readouterr().err, resume
