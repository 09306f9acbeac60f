"""Training and evaluation on the CPU: end to end through the CLI, learning, exact resumption, the non-finite
guard, the time budget, fine-tuning at another resolution, a timm baseline, and a slice of Imagenette."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vision_mamba import cli
from vision_mamba.engine import NonFiniteLossError, load_state
from vision_mamba.train import TrainConfig, Trainer
from vision_mamba.train.budget import plan_epochs

TINY = dict(
    model="test_vim", model_kwargs={"patch_size": 8}, data="synthetic", synthetic_train=96, synthetic_val=40,
    synthetic_size=32, img_size=32, crop_pct=1.0, batch_size=16, eval_batch_size=64, epochs=2, warmup_epochs=1,
    lr=2e-3, weight_decay=0.05, scale=[0.5, 1.0], auto_augment=None, reprob=0.0, mixup=0.0, cutmix=0.0,
    smoothing=0.1, repeated_aug=1, ema=False, workers=0, progress=False, device="cpu", log_interval=1, cpu_threads=1,
)


def tiny_config(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    values = {**TrainConfig().to_dict(), **TINY, "output": str(tmp_path / name), **overrides}
    return TrainConfig.from_dict(values)


class Recorder:
    """A step hook that records (epoch, step, loss) and can send this process a signal after a given step."""

    def __init__(self, signal_after=None, signum=signal.SIGINT):
        self.losses = []
        self.signal_after, self.signum = signal_after, signum

    def __call__(self, trainer, epoch, step, loss):
        self.losses.append((epoch, step, float(loss)))
        if self.signal_after == (epoch, step):
            os.kill(os.getpid(), self.signum)


def params(path: Path):
    return load_file(str(path))


# ---------------------------------------------------------------------- end to end
def test_train_then_eval_through_the_cli(tmp_path, capsys):
    run = tmp_path / "cli"
    argv = ["train", "--epochs", "2", "--batch-size", "16", "--output", str(run), "--device", "cpu",
            "--set", "synthetic_train=64", "--set", "synthetic_val=32", "--set", "progress=false",
            "--set", "model_kwargs={embed_dim: 32, depth: 2, patch_size: 8}", "--set", "eval_batch_size=32",
            "--set", "resident_size=32"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "final: top-1" in out
    for name in ("config.yaml", "last.pth", "final.safetensors", "best.safetensors", "metrics.csv",
                 "metrics.jsonl", "curves.png", "results.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["epochs"] == 2 and 0 <= results["top1"] <= 100 and results["top5"] >= results["top1"]
    # eval of the exported weights with the run's own config reproduces the final evaluation
    report = tmp_path / "eval.json"
    assert cli.main(["eval", "--checkpoint", str(run / "final.safetensors"), "--json", str(report),
                     "--no-progress", "--plot", str(tmp_path / "confusion.png")]) == 0
    evaluated = json.loads(report.read_text())
    assert evaluated["images"] == 32
    assert evaluated["top1"] == pytest.approx(results["top1"]) and evaluated["top5"] == pytest.approx(results["top5"])
    assert evaluated["img_per_s"] > 0
    out = capsys.readouterr().out
    assert "top-1" in out and "lowest per-class top-1: " in out and "confusion matrix: " in out
    # per class: the confusion matrix's rows are the classes' images, its diagonal their top-1 hits
    matrix, per_class = evaluated["confusion"], evaluated["per_class"]
    assert [c["name"] for c in per_class] == evaluated["classes"] and len(matrix) == len(per_class)
    assert sum(map(sum, matrix)) == 32 and [c["images"] for c in per_class] == [sum(row) for row in matrix]
    hits = sum(matrix[i][i] for i in range(len(matrix)))
    assert 100.0 * hits / 32 == pytest.approx(evaluated["top1"])
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    # at a larger test size (pos_embed resized; the run's resident_size, a training setting, does not object)
    assert cli.main(["eval", "--checkpoint", str(run / "final.safetensors"), "--img-size", "48", "--json",
                     str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["img_size"] == 48
    assert cli.main(["eval", "--checkpoint", str(run / "final.safetensors"), "--tta", "hflip", "--json",
                     str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["tta"] == "hflip" and "(hflip TTA)" in capsys.readouterr().out
    # the training checkpoint evaluates the same (with and without CUDA graphs: on the CPU they do not apply)
    assert cli.main(["eval", "--checkpoint", str(run / "last.pth"), "--json", str(report), "--no-progress"]) == 0
    assert json.loads(report.read_text())["top1"] == pytest.approx(results["top1"])
    assert json.loads(report.read_text())["cuda_graph"] is False
    assert cli.main(["eval", "--checkpoint", str(run / "last.pth"), "--json", str(report), "--no-progress",
                     "--cuda-graph", "on"]) == 0
    assert json.loads(report.read_text())["top1"] == pytest.approx(results["top1"])


def test_eval_and_predict_take_a_run_directory(tmp_path, capsys):
    """A run directory means its final.safetensors (with --ema its last.pth); used to be "checkpoint not found"."""
    import yaml
    from PIL import Image

    from vision_mamba.models.checkpoint import save_state_dict
    from vision_mamba.train.model import create_classifier

    cfg = tiny_config(tmp_path, "run", synthetic_val=10, model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    model = create_classifier(cfg.model, num_classes=10, img_size=cfg.img_size, model_kwargs=cfg.model_kwargs)
    save_state_dict(model, run / "final.safetensors")  # (untrained: these commands only need to find it)
    torch.save({"model": model.state_dict(), "model_ema": model.state_dict(), "config": cfg.to_dict()},
               run / "last.pth")
    report, image = tmp_path / "out.json", tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(image)
    for command, weights in ((["eval", "--no-progress"], run / "final.safetensors"),
                             (["eval", "--no-progress", "--ema"], run / "last.pth"),
                             (["predict", str(image)], run / "final.safetensors")):
        assert cli.main(command + ["--checkpoint", str(run), "--json", str(report)]) == 0
        assert json.loads(report.read_text())["checkpoint"] == str(weights), command
    capsys.readouterr()
    # a directory without final weights (a run stopped before its end): what is missing, and what to pass instead
    (run / "final.safetensors").unlink()
    for command in (["eval", "--no-progress"], ["predict", str(image)]):
        assert cli.main(command + ["--checkpoint", str(run)]) == 2
        assert f"{run} holds no final.safetensors (the final weights of a train run); pass its last.pth" \
            in capsys.readouterr().err, command


def test_loss_goes_down_when_overfitting_a_tiny_set(tmp_path):
    cfg = tiny_config(tmp_path, synthetic_train=32, batch_size=32, epochs=30, warmup_epochs=2, lr=4e-3,
                      no_aug=True, smoothing=0.0, weight_decay=0.0, eval_interval=30, save_interval=30,
                      model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2})
    rec = Recorder()
    threads = torch.get_num_threads()
    result = Trainer(cfg, step_hook=rec).run()
    assert torch.get_num_threads() == threads  # cpu_threads applies to the run only
    first = sum(l for *_, l in rec.losses[:3]) / 3
    last = sum(l for *_, l in rec.losses[-3:]) / 3
    assert len(rec.losses) == 30 and last < 0.5 * first, (first, last)  # from chance level (ln 10) to < half
    assert result.final["top1"] >= 0 and not result.interrupted


# ---------------------------------------------------------------------- resumption
@pytest.mark.parametrize("resident", [True, False], ids=["device-resident", "streaming"])
def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tmp_path, resident):
    """Full augmentation (crop, flip, RandAugment, erasing, mixup / cutmix, drop path): the resumed run repeats
    the uninterrupted run's next steps bit for bit, and ends with the same weights."""
    recipe = dict(gpu_resident=resident, auto_augment="rand-m9-mstd0.5-inc1", ra_group=4, reprob=0.25, mixup=0.8,
                  cutmix=1.0, drop_path=0.1, ema=True, ema_decay=0.9, synthetic_train=64, epochs=2, batch_size=16,
                  eval_interval=2, model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2})
    full = Recorder()
    Trainer(tiny_config(tmp_path, "full", **recipe), step_hook=full).run()

    stopped = Recorder(signal_after=(0, 1))  # interrupted after the 2nd of 4 steps of epoch 1
    result = Trainer(tiny_config(tmp_path, "cut", **recipe), step_hook=stopped).run()
    assert result.interrupted and result.weights is None
    state = load_state(tmp_path / "cut" / "last.pth")
    assert (state["epoch"], state["step"]) == (0, 2)

    resumed = Recorder()
    cfg = tiny_config(tmp_path, "cut", resume=str(tmp_path / "cut" / "last.pth"), **recipe)
    again = Trainer(cfg, step_hook=resumed).run()
    assert state["wall_seconds"] > 0 and again.minutes * 60 > state["wall_seconds"]  # the whole run's wall time
    assert stopped.losses == full.losses[:2]
    assert resumed.losses[0] == full.losses[2]  # the next step, exactly
    assert resumed.losses == full.losses[2:]
    a, b = params(tmp_path / "full" / "final.safetensors"), params(tmp_path / "cut" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = params(tmp_path / "full" / "final_ema.safetensors"), params(tmp_path / "cut" / "final_ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    rows = (tmp_path / "cut" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + two epochs, nothing duplicated


def test_sigterm_saves_and_resume_auto_continues(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "term", synthetic_train=48, epochs=2)
    assert Trainer(cfg, step_hook=Recorder(signal_after=(1, 0), signum=signal.SIGTERM)).run().interrupted
    assert "stopped by SIGTERM" in capsys.readouterr().out
    argv = ["train", "--resume", "auto", "--output", str(tmp_path / "term"), "--set", "progress=false"]
    assert cli.main(argv) == 0  # the saved configuration is the base: no --config needed
    state = load_state(tmp_path / "term" / "last.pth")
    assert (state["epoch"], state["step"]) == (2, 0)
    assert "resumed from" in capsys.readouterr().out


def test_run_directories_are_not_overwritten_and_refused_resumes_change_nothing(tmp_path, capsys):
    base = ["--epochs", "2", "--batch-size", "16", "--device", "cpu", "--set", "synthetic_train=32",
            "--set", "synthetic_val=16", "--set", "progress=false",
            "--set", "model_kwargs={embed_dim: 32, depth: 2, patch_size: 8}"]
    run = tmp_path / "run"
    assert cli.main(["train", *base, "--output", str(run)]) == 0
    capsys.readouterr()
    saved = {name: (run / name).read_bytes() for name in ("config.yaml", "last.pth", "metrics.csv")}
    # the same --output again, without --resume: refused before any work
    assert cli.main(["train", *base, "--output", str(run), "--lr", "0.01"]) == 2
    assert "already holds a run (last.pth): continue it with --resume" in capsys.readouterr().err
    # a resume whose configuration builds another model: a one-line error, and the run left as it was
    assert cli.main(["train", "--resume", str(run), "--set", "model_kwargs.depth=1", "--epochs", "3"]) == 2
    assert "its weights do not fit the model built from this configuration" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in saved} == saved
    # a file that is not a checkpoint, a file as the output, and EMA weights the run does not have
    (tmp_path / "notes.pth").write_text("hello")
    assert cli.main(["train", "--resume", str(tmp_path / "notes.pth")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert cli.main(["train", *base, "--output", str(tmp_path / "notes.pth")]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(run / "last.pth"), "--ema", "--no-progress"]) == 2
    assert "no EMA weights in the checkpoint" in capsys.readouterr().err
    # eval with another model than the run's: the run's model_kwargs are not applied to it
    assert cli.main(["eval", "--checkpoint", str(run / "last.pth"), "--model", "test_vim_stride8",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not the run's model (test_vim)" in err and "does not fit" in err
    # a resume written into another run's directory: refused, that run left as it was
    other = tmp_path / "other"
    assert cli.main(["train", *base, "--output", str(other)]) == 0
    other_saved = {name: (other / name).read_bytes() for name in saved}
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--output", str(other), "--epochs", "3"]) == 2
    assert "already holds another run (last.pth); resuming" in capsys.readouterr().err
    assert {name: (other / name).read_bytes() for name in saved} == other_saved
    # a directory another process is writing (held here by a lock of this process): refused
    from vision_mamba.engine import RunDirLock

    with RunDirLock(run):
        assert cli.main(["train", "--resume", str(run), "--epochs", "3"]) == 2
        assert f"{run} is in use by another run (process {os.getpid()})" in capsys.readouterr().err
        assert cli.main(["train", *base, "--output", str(tmp_path / "fresh")]) == 0  # other directories are free
    assert {name: (run / name).read_bytes() for name in saved} == saved
    # a finished run resumed as it is: said so, then evaluated and exported again
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert "all 2 epochs are trained; evaluating and exporting" in capsys.readouterr().out
    # a bare --resume: the run in --output (as seg-train and det-train take it); without --output, refused
    assert cli.main(["train", "--resume", "--output", str(run)]) == 0
    assert "all 2 epochs are trained; evaluating and exporting" in capsys.readouterr().out
    assert cli.main(["train", "--resume"]) == 2
    assert "pass --resume PATH or --output DIR" in capsys.readouterr().err


def test_runs_and_checkpoints_of_seg_train_and_det_train_are_refused(tmp_path, capsys):
    """A seg-train or det-train run directory as --output is not written over (det-train's, with no last.pth, used to
    get train's config.yaml, metrics and curves), and resuming their checkpoints is refused in one line (it used to
    list every key of their configuration as unknown)."""
    from vision_mamba.tasks.segmentation import SegConfig

    seg_run, det_run = tmp_path / "seg_run", tmp_path / "det_run"
    seg_run.mkdir()
    det_run.mkdir()
    torch.save({"model": {}, "config": SegConfig().to_dict(), "classes": {"names": ["a"]}}, seg_run / "last.pth")
    torch.save({"model": {}, "config": {"model": {"backbone": "test_vim"}}, "categories": [{"id": 1, "name": "a"}]},
               det_run / "checkpoint.pt")
    for run in (seg_run, det_run):
        (run / "config.yaml").write_text("the other command's\n")
    base = ["--epochs", "2", "--batch-size", "16", "--device", "cpu", "--set", "synthetic_train=32",
            "--set", "synthetic_val=16", "--set", "progress=false",
            "--set", "model_kwargs={embed_dim: 32, depth: 2, patch_size: 8}"]
    for run, message in ((seg_run, "holds the run of another command (last.pth: seg-train's training checkpoint"),
                         (det_run, "holds the run of another command (checkpoint.pt: det-train's training checkpoint")):
        assert cli.main(["train", *base, "--output", str(run)]) == 2
        assert message in capsys.readouterr().err
        assert (run / "config.yaml").read_text() == "the other command's\n"
        assert not (run / "metrics.csv").exists() and not (run / "results.json").exists()
    assert not (det_run / "last.pth").exists()
    assert cli.main(["train", "--resume", str(seg_run)]) == 2
    err = capsys.readouterr().err
    assert ("last.pth is seg-train's training checkpoint (a whole segmentation model), not a checkpoint of train; "
            f"continue that run with vision-mamba seg-train --resume {seg_run}") in err
    assert len(err.strip().splitlines()) == 1
    # a train run resumed into det-train's directory: refused as well
    run = tmp_path / "run"
    assert cli.main(["train", *base, "--output", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--output", str(det_run), "--epochs", "3"]) == 2
    assert "holds the run of another command (checkpoint.pt" in capsys.readouterr().err
    assert not (det_run / "last.pth").exists()


def test_tensorboard_points_after_the_resumed_step_are_dropped(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vision_mamba.engine import MetricLogger

    logger = MetricLogger(tmp_path, step_key="epoch")
    for epoch in (1, 2, 3):
        logger.log(dict(epoch=epoch, train_loss=float(epoch)))
    logger.close()
    logger = MetricLogger(tmp_path, step_key="epoch", resume_step=1)  # the checkpoint was epoch 1's
    for epoch in (2, 3):
        logger.log(dict(epoch=epoch, train_loss=10.0 + epoch))
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(1, 1.0), (2, 12.0), (3, 13.0)]
    assert [r["train_loss"] for r in MetricLogger.read(tmp_path / "metrics.jsonl")] == [1.0, 12.0, 13.0]


# ---------------------------------------------------------------------- robustness
class NaNAt:
    """Wraps a loss: returns NaN at the given calls."""

    def __init__(self, criterion, bad):
        self.criterion, self.bad, self.calls = criterion, set(bad), 0

    def __call__(self, output, target):
        loss = self.criterion(output, target)
        self.calls += 1
        return loss * float("nan") if self.calls - 1 in self.bad else loss


def test_non_finite_losses_are_skipped_counted_and_stop_the_run(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "nan", synthetic_train=64, epochs=2))
    trainer.setup()
    trainer.criterion = NaNAt(trainer.criterion, bad={1, 2})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.run()
    assert result.skipped_steps == 2 and not result.interrupted
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    results = json.loads((tmp_path / "nan" / "results.json").read_text())
    assert results["skipped_steps"] == 2

    trainer = Trainer(tiny_config(tmp_path, "nan2", synthetic_train=64, epochs=2, max_nonfinite=2))
    trainer.setup()
    trainer.criterion = NaNAt(trainer.criterion, bad=range(100))
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.run()


def test_time_budget_plan():
    plan = plan_epochs(limit_s=100, elapsed_s=10, epochs_done=1, epoch_train_s=8, eval_s=2, eval_interval=2,
                       save_s=1, save_interval=1, final_s=5, min_epochs=2, max_epochs=50, margin=0.0)
    assert plan.epochs == 1 + (100 - 10 - 5) // 10 and plan.fits
    capped = plan_epochs(limit_s=1e6, elapsed_s=0, epochs_done=1, epoch_train_s=1, eval_s=0, eval_interval=1,
                         save_s=0, save_interval=1, final_s=0, min_epochs=2, max_epochs=7)
    assert capped.epochs == 7
    short = plan_epochs(limit_s=10, elapsed_s=9, epochs_done=1, epoch_train_s=5, eval_s=0, eval_interval=1,
                        save_s=0, save_interval=1, final_s=0, min_epochs=3, max_epochs=7)
    assert short.epochs == 3 and not short.fits


def test_time_limit_fixes_the_epochs_after_the_first(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "budget", synthetic_train=48, epochs=50, warmup_epochs=1, time_limit_min=0.12)
    result = Trainer(cfg).run()
    assert 2 <= result.planned_epochs <= 50 and result.epochs_done == result.planned_epochs
    assert "time limit 0.12 min" in capsys.readouterr().out
    assert result.minutes < 0.12 * 1.5  # the plan holds (generously: a busy CI machine)
    assert load_state(tmp_path / "budget" / "last.pth")["planned_epochs"] == result.planned_epochs


class SlowAfter:
    """A step hook that makes every step from epoch ``epoch`` on take ``seconds`` longer (a machine that slows)."""

    def __init__(self, epoch: int, seconds: float):
        self.epoch, self.seconds = epoch, seconds

    def __call__(self, trainer, epoch, step, loss):
        if epoch >= self.epoch:
            import time

            time.sleep(self.seconds)


def test_time_limit_shortens_the_schedule_when_the_machine_slows_down(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "slow", synthetic_train=48, epochs=200, warmup_epochs=1, time_limit_min=0.15,
                      eval_interval=50)
    result = Trainer(cfg, step_hook=SlowAfter(epoch=3, seconds=0.2)).run()
    out = capsys.readouterr().out
    planned = int(out.split("epochs planned")[0].rsplit(":", 1)[1])
    assert "the schedule is shortened" in out
    assert result.epochs_done == result.planned_epochs < planned
    assert result.minutes < 0.15 * 1.3 and result.final["images"] == 40


def test_stop_signals_reaching_the_data_workers_do_not_crash_the_run(tmp_path):
    """SIGTERM to the whole process group (timeout, a cluster): the workers ignore it, the run saves and stops."""
    import multiprocessing

    def hook(trainer, epoch, step, loss):
        if (epoch, step) == (0, 0):  # the signal reaches the workers first ...
            import time

            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGTERM)
            time.sleep(0.5)
        if (epoch, step) == (0, 1):  # ... the main process one batch later (it still needs its workers)
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_config(tmp_path, "workers", synthetic_train=64, gpu_resident=False, workers=2)
    result = Trainer(cfg, step_hook=hook).run()
    assert result.interrupted and load_state(tmp_path / "workers" / "last.pth")["step"] == 2


def test_a_stop_signal_delivered_twice_still_stops_cleanly(tmp_path, capsys):
    """GNU timeout signals the command and then its process group; Ctrl-C under torchrun reaches a worker from the
    terminal and again from torchrun. The echo must not turn the clean stop into a KeyboardInterrupt."""

    def hook(trainer, epoch, step, loss):
        if (epoch, step) == (0, 1):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the Python handler runs between the two deliveries
            os.kill(os.getpid(), signal.SIGINT)

    result = Trainer(tiny_config(tmp_path, "twice", synthetic_train=64), step_hook=hook).run()
    assert result.interrupted and load_state(tmp_path / "twice" / "last.pth")["step"] == 2
    assert "stopped by SIGINT" in capsys.readouterr().out


def test_interrupt_guard_ignores_an_echo_but_not_a_later_second_signal():
    import time

    from vision_mamba.engine.interrupt import InterruptGuard

    previous = signal.getsignal(signal.SIGINT)
    with InterruptGuard(repeat_window=0.3) as guard:
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))
        os.kill(os.getpid(), signal.SIGINT)  # an echo: ignored
        sum(range(1000))
        assert guard.requested and guard.signal_name == "SIGINT" and guard.repeats == 1
        time.sleep(0.4)
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C later on: stop now
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))
    assert signal.getsignal(signal.SIGINT) is previous


def test_hflip_tta_averages_the_logits_of_each_image_and_its_mirror():
    import torch.nn.functional as F
    from torch import nn

    from vision_mamba.train.evaluate import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))  # not mirror-invariant
    images, targets = torch.randn(6, 3, 4, 4), torch.randint(0, 5, (6,))
    loader = [(images, targets, None)]
    with torch.no_grad():
        plain, mirrored = model(images), model(images.flip(-1))
    for tta, logits in ((False, plain), (True, (plain + mirrored) / 2)):
        got = evaluate(model, loader, torch.device("cpu"), hflip_tta=tta)
        assert got["loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)
        assert got["top1"] == pytest.approx(100 * float((logits.argmax(1) == targets).float().mean()))
    assert evaluate(model, loader, torch.device("cpu"), hflip_tta=True)["loss"] != pytest.approx(
        evaluate(model, loader, torch.device("cpu"))["loss"])


# ---------------------------------------------------------------------- models
def test_finetune_at_another_resolution_resizes_pos_embed(tmp_path):
    source = Trainer(tiny_config(tmp_path, "src", synthetic_train=32, epochs=2, model_kwargs={})).run()
    cfg = tiny_config(tmp_path, "ft", finetune=str(source.weights), img_size=48, synthetic_size=48, epochs=2,
                      synthetic_train=32, model="test_vim_stride8", model_kwargs={})
    trainer = Trainer(cfg)
    trainer.setup()
    loaded = trainer.model.state_dict()
    weights = params(source.weights)
    assert loaded["pos_embed"].shape[1] == 5 * 5 + 1 != weights["pos_embed"].shape[1]
    assert torch.equal(loaded["layers.1.mixer.in_proj.weight"], weights["layers.1.mixer.in_proj.weight"])
    assert not trainer.run().interrupted


def test_finetune_drops_a_classifier_of_other_classes_even_of_the_same_count(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vision_mamba.data import SYNTHETIC_CLASSES

    source = Trainer(tiny_config(tmp_path, "src", synthetic_train=32, epochs=2, model_kwargs={})).run()
    with safe_open(str(source.weights), framework="pt") as f:
        metadata = dict(f.metadata())
    weights = params(source.weights)
    renamed = tmp_path / "renamed.safetensors"
    save_file(weights, str(renamed), metadata={**metadata, "classes": json.dumps(
        [f"other_{c}" for c in SYNTHETIC_CLASSES])})
    for path, kept in ((source.weights, True), (renamed, False)):
        capsys.readouterr()
        trainer = Trainer(tiny_config(tmp_path, f"ft_{kept}", finetune=str(path), synthetic_train=32, epochs=2,
                                      model_kwargs={}))
        trainer.setup()
        loaded = trainer.model.state_dict()
        assert torch.equal(loaded["head.weight"], weights["head.weight"]) is kept
        assert torch.equal(loaded["pos_embed"], weights["pos_embed"])
        assert ("trained on other classes (" in capsys.readouterr().out) is not kept


def test_a_timm_baseline_trains_through_the_same_loop(tmp_path):
    cfg = tiny_config(tmp_path, "deit", model="deit_tiny_patch16_224", synthetic_train=32, epochs=2,
                      model_kwargs=dict(patch_size=8, depth=2, embed_dim=32, num_heads=2), mixup=0.8, cutmix=1.0)
    result = Trainer(cfg).run()
    assert result.final["images"] == 40 and (tmp_path / "deit" / "final.safetensors").is_file()


def test_channels_last_trains_a_convnet_like_the_default_layout(tmp_path):
    runs = {}
    for cl in (False, True):
        rec = Recorder()
        cfg = tiny_config(tmp_path, f"cl{cl}", model="resnet10t", model_kwargs={}, synthetic_train=32, epochs=2,
                          channels_last=cl)
        trainer = Trainer(cfg, step_hook=rec)
        result = trainer.run()
        conv = trainer.model.conv1[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == cl and conv.dim() == 4
        runs[cl] = ([l for *_, l in rec.losses], result.final["top1"])
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-3)  # same math, another memory layout
    assert runs[True][1] == pytest.approx(runs[False][1], abs=5.0)  # (2 of 40 val images may flip)


# ---------------------------------------------------------------------- real data
@pytest.mark.data
def test_a_slice_of_imagenette(shared_data, tmp_path):
    """A few steps on 12 images per class of Imagenette-160, both data paths, then eval of the result."""
    root = tmp_path / "slice"
    for split, per_class in (("train", 12), ("val", 4)):
        for folder in sorted((shared_data / "imagenette-160" / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:per_class]:
                (root / split / folder.name / f.name).symlink_to(f)
    for resident in (True, False):
        cfg = tiny_config(tmp_path, f"inette{resident}", data=str(root), img_size=64, crop_pct=0.875,
                          gpu_resident=resident, epochs=2, batch_size=20, auto_augment="rand-m9-mstd0.5-inc1",
                          mixup=0.8, cutmix=1.0, reprob=0.25, model_kwargs={})
        result = Trainer(cfg).run()
        assert result.final["images"] == 40 and result.unreadable_images == 0
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "inetteTrue" / "final.safetensors"),
                     "--no-progress"]) == 0


def test_no_weight_decay_on_1d_params_pos_embed_cls_token_a_log_and_d(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "groups", synthetic_train=32, epochs=2))
    trainer.setup()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed and plain and decayed | plain == set(names.values())
    for name in plain:
        assert name in ("pos_embed", "cls_token") or name.split(".")[-1] in ("A_log", "A_b_log", "D", "D_b") \
            or trainer.model.get_parameter(name).ndim <= 1, name
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.0.mixer.D"} <= plain
    assert "layers.0.mixer.in_proj.weight" in decayed and "head.weight" in decayed
    trainer.logger.close()


def test_progress_in_a_log_file_is_plain_lines(tmp_path, capsys, monkeypatch):
    """Where stderr is not a terminal (pytest captures it, as a log file would), no bar with carriage returns:
    plain lines every PROGRESS_LINE_SECONDS (0 here), whole or small throughputs written readably."""
    from vision_mamba.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PROGRESS_LINE_SECONDS", 0.0)
    cfg = tiny_config(tmp_path, "log", synthetic_train=64, epochs=2, progress=True, log_interval=1)
    Trainer(cfg).run()
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("epoch 1/2, step ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2, step 1/4", "epoch 1/2, step 2/4",
                                                      "epoch 1/2, step 3/4"], captured.out
    assert all(line.endswith(" img/s") and "loss " in line for line in lines)
    assert trainer_module._rate(0.1509) == "0.15" and trainer_module._rate(1234.4) == "1234"


def test_a_stop_during_the_evaluation_saves_the_epoch_and_resume_finishes(tmp_path, capsys):
    """torchrun kills its workers 30 s after passing a signal on: an evaluation is abandoned on a stop request
    (asked every few batches), the epoch's training is saved, and the resumed run evaluates at its end."""
    from vision_mamba.train.evaluate import STOP_CHECK_BATCHES

    cfg = tiny_config(tmp_path, "evalstop", synthetic_train=32, synthetic_val=40, eval_batch_size=4, epochs=2)
    trainer = Trainer(cfg)
    trainer.setup()
    sent = []

    def signal_in_eval(module, args, output):
        if not module.training and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.model.register_forward_hook(signal_in_eval)
    result = trainer.run()
    assert result.interrupted and sent
    out = capsys.readouterr().out
    assert "stopped by SIGTERM during the evaluation after epoch 1" in out
    state = load_state(tmp_path / "evalstop" / "last.pth")
    assert (state["epoch"], state["step"]) == (1, 0)
    records = [json.loads(line) for line in (tmp_path / "evalstop" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and "val_top1" not in records[0]
    assert STOP_CHECK_BATCHES < 10  # (the evaluation has 10 batches: the request was seen within them)
    assert cli.main(["train", "--resume", str(tmp_path / "evalstop"), "--set", "progress=false"]) == 0
    records = [json.loads(line) for line in (tmp_path / "evalstop" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "val_top1" in records[1]


def test_a_file_system_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch):
    import errno
    import fcntl

    from vision_mamba.engine import RunDirBusy, RunDirLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match="cannot lock the run directory"):
        RunDirLock(tmp_path).acquire()

    def busy(fd, op):
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(fcntl, "flock", busy)
    with pytest.raises(RunDirBusy, match="is in use by another run"):
        RunDirLock(tmp_path).acquire()


def test_a_run_on_a_relative_data_path_resumes_from_another_directory(tmp_path, monkeypatch, capsys):
    """The data path a run was started with relative to its working directory is recorded absolute, so --resume
    from elsewhere finds the data."""
    from vision_mamba.data import export_image_folder, synthetic_split

    for split, count in (("train", 32), ("val", 32)):
        images, labels = synthetic_split(split, count, 32, seed=0)
        export_image_folder(images, labels, tmp_path / "work" / "imgs" / split)
    monkeypatch.chdir(tmp_path / "work")
    argv = ["--model", "test_vim", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--workers", "0",
            "--set", "model_kwargs={patch_size: 8, embed_dim: 32, depth: 2}", "--set", "progress=false",
            "--set", "crop_pct=1.0", "--set", "warmup_epochs=0"]
    assert cli.main(["train", *argv, "--data", "imgs", "--epochs", "1", "--output", str(tmp_path / "run")]) == 0
    state = load_state(tmp_path / "run" / "last.pth")
    assert state["config"]["data"] == str(tmp_path / "work" / "imgs")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 0
    assert load_state(tmp_path / "run" / "last.pth")["epoch"] == 2


def test_a_run_finishes_without_matplotlib_and_python_m_runs_the_cli(tmp_path, monkeypatch, capsys):
    """Without matplotlib a run still finishes and writes its results (only curves.png is missing, with a warning);
    `python -m vision_mamba` is the vision-mamba command."""
    import subprocess
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # (an import of it raises ImportError)
    cfg = tiny_config(tmp_path, "nomp", epochs=1, warmup_epochs=0)
    with pytest.warns(UserWarning, match="no curves.png: matplotlib is not installed"):
        result = Trainer(cfg).run()
    assert result.final["top1"] >= 0 and (tmp_path / "nomp" / "results.json").is_file()
    assert not (tmp_path / "nomp" / "curves.png").exists()
    proc = subprocess.run([sys.executable, "-m", "vision_mamba", "--version"], capture_output=True, text=True,
                          timeout=120)
    import vision_mamba

    assert proc.returncode == 0 and proc.stdout.strip() == vision_mamba.__version__, proc.stderr


def test_top5_of_fewer_than_five_classes_is_reported_as_top_k():
    # (top-5 of 3 classes is always 100%: the result says which k it counted, and the messages print top-3)
    from vision_mamba.train.evaluate import evaluate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(4, 3, 2, 2, generator=g), torch.tensor([0, 1, 2, 1]), None) for _ in range(2)]
    result = evaluate(model, loader, torch.device("cpu"))
    assert result["top5_k"] == 3 and result["top5"] == 100.0 and result["images"] == 8
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7))
    assert evaluate(wide, loader, torch.device("cpu"))["top5_k"] == 5
