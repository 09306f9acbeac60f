"""seg-train and det-train under torchrun with two gloo processes on the CPU: each process takes its slice of every
global batch, the run finishes, and it reports the global batch (tests/test_train_ddp.py does the same for train);
the processes evaluate the same model, only process 0 prints, and a resumed run gives each process its own RNG."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import yaml
from PIL import Image

from test_detection import make_coco
from test_detection_train import _write_config as write_det_config
from test_segmentation_fixtures import tiny_config, write_folder_dataset
from test_train_ddp import torchrun
from vision_mamba import cli
from vision_mamba.engine import load_state
from vision_mamba.tasks.segmentation import ConfigError
from vision_mamba.tasks.segmentation.trainer import train as seg_train

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

# Runs ``vision-mamba ARGS`` and records, per process, what the tests compare: the RNG state det-train's loop starts
# from, the buffers seg-train evaluates with, and (process 1) what would be printed.
PROBE = """
import os, sys
import torch
from vision_mamba import cli
from vision_mamba.tasks.detection import trainer as det
from vision_mamba.tasks.segmentation import trainer as seg

out, rank = os.environ["PROBE_DIR"], os.environ["RANK"]
if rank != "0":
    sys.stderr = open(os.path.join(out, f"stderr_{rank}.txt"), "w")


class Guard(det.InterruptGuard):
    def __enter__(self):
        torch.save(torch.get_rng_state(), os.path.join(out, f"det_rng_{rank}.pt"))
        return super().__enter__()


det.InterruptGuard = Guard
evaluate = seg.evaluate


def probe_evaluate(predictor, *args, **kwargs):
    torch.save([b.clone() for b in predictor.model.buffers()], os.path.join(out, f"seg_buffers_{rank}.pt"))
    return evaluate(predictor, *args, **kwargs)


seg.evaluate = probe_evaluate
code = cli.main(sys.argv[1:])
sys.stderr.flush()
sys.exit(code)
"""


def torchrun_probe(args, tmp_path):
    """``vision-mamba ARGS`` in two processes under torchrun through PROBE (files in tmp_path/probe)."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_DIR": str(probe_dir)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, probe_dir


def test_seg_train_on_two_gloo_processes(tmp_path):
    data = write_folder_dataset(tmp_path / "data", n_train=4, n_val=2)
    Image.new("RGB", (64, 64)).save(data / "images" / "train" / "unpaired.png")  # an image without a mask
    run = tmp_path / "run"
    config = tiny_config(data, run, iters=2, checkpoint_every=1)
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    proc, probe = torchrun_probe(["seg-train", "--config", str(path)], tmp_path)
    assert "2 x 2" in proc.stdout  # per-process batch x processes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iters"] == 2 and summary["batch_size"] == 4
    assert summary["val_miou"] is not None  # the evaluation ran (sharded or on process 0) and was reported once
    assert (run / "model.safetensors").is_file()
    # both processes evaluate their shares with process 0's batch-norm statistics: the model that is saved
    buffers = [torch.load(probe / f"seg_buffers_{rank}.pt") for rank in (0, 1)]
    assert len(buffers[0]) > 0
    for a, b in zip(*buffers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # data warnings and progress bars once, from process 0
    assert proc.stderr.count("1 images without a mask are left out") == 1
    other = (probe / "stderr_1.txt").read_text()
    assert "without a mask" not in other and "reading" not in other, other

    # seg-eval under torchrun: each process evaluates its share, the matrices are summed, process 0 reports
    # what one process finds on its own
    single = run / "eval_1.json"
    assert cli.main(["seg-eval", "--checkpoint", str(run / "model.safetensors"), "--output", str(single)]) == 0
    proc = torchrun(["seg-eval", "--checkpoint", str(run / "model.safetensors"), "--output",
                     str(run / "eval_2.json")], tmp_path)
    assert proc.stdout.count("mIoU") == 1, proc.stdout
    one, two = (json.loads(p.read_text()) for p in (single, run / "eval_2.json"))
    assert two["images"] == one["images"] == 2
    assert two["num_pixels"] == one["num_pixels"] > 0  # every pixel counted once: the processes share the images
    assert two["miou"] == pytest.approx(one["miou"]) and two["per_class_iou"] == pytest.approx(one["per_class_iou"],
                                                                                               nan_ok=True)

    # the checkpoint records the number of processes; another number is refused (the batch is per process)
    assert load_state(run / "last.pth")["world_size"] == 2
    with pytest.raises(ConfigError, match=r"trained on 2 process\(es\) and this run has 1; resume with the same "
                                          r"number \(torchrun --nproc_per_node 2\)"):
        seg_train(tiny_config(data, run, iters=3, checkpoint_every=1), resume=True)


def test_det_train_on_two_gloo_processes(tmp_path):
    data = tmp_path / "data"
    make_coco(data, num_images=4)
    config = write_det_config(tmp_path, data, iters=2, device="cpu")
    run = tmp_path / "run"
    torchrun(["det-train", "--config", str(config), "--output", str(run), "--no-progress"], tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["iters"] == 2 and results["batch_size"] == 4  # 2 per process x 2 processes
    assert 0.0 <= results["val"]["bbox_AP"] <= 1.0
    # det-eval under torchrun: each process predicts its share, process 0 gathers and scores them all, as one
    # process does alone (the final evaluation of det-train was sharded the same way)
    single = tmp_path / "eval_1.json"
    assert cli.main(["det-eval", "--checkpoint", str(run / "model.safetensors"), "--device", "cpu",
                     "--no-progress", "--batch-size", "1", "--output", str(single)]) == 0
    proc = torchrun(["det-eval", "--checkpoint", str(run / "model.safetensors"), "--device", "cpu", "--no-progress",
                     "--batch-size", "1", "--output", str(tmp_path / "eval_2.json")], tmp_path)
    assert proc.stdout.count("det-eval:") == 1, proc.stdout
    one, two = (json.loads(p.read_text()) for p in (single, tmp_path / "eval_2.json"))
    assert two["num_images"] == one["num_images"] == 4 and one["num_detections"] > 0, one
    assert two["num_detections"] == one["num_detections"]
    for key in ("bbox_AP", "bbox_AP50", "segm_AP"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert results["val"]["num_detections"] == one["num_detections"]


def test_det_train_resumed_on_two_processes_reseeds_each(tmp_path):
    """Only process 0's RNG state is saved: on resume each process is re-seeded (seed, iteration, rank), so the
    processes do not draw the same augmentations."""
    data = tmp_path / "data"
    make_coco(data, num_images=4)
    config = write_det_config(tmp_path, data, iters=1, device="cpu")
    run = tmp_path / "run"
    assert cli.main(["det-train", "--config", str(config), "--output", str(run), "--no-progress"]) == 0
    state = load_state(run / "checkpoint.pt")
    state["world_size"] = 2  # as a two-process run saves it
    torch.save(state, run / "checkpoint.pt")
    torchrun_probe(["det-train", "--resume", str(run), "--set", "train.iters=2", "--no-progress"], tmp_path)
    assert json.loads((run / "results.json").read_text())["iters"] == 2
    rng = [torch.load(tmp_path / "probe" / f"det_rng_{rank}.pt") for rank in (0, 1)]
    assert not torch.equal(rng[0], rng[1])


def test_errors_are_printed_by_process_0_only(tmp_path, monkeypatch, capsys):
    """Under torchrun every process meets the same error: the others exit with the same code, silently."""
    missing = str(tmp_path / "missing.safetensors")
    commands = [["seg-train", "--set", "weight_decy=0.1"], ["seg-eval", "--checkpoint", missing],
                ["det-train", "--set", "train.itres=3"], ["det-eval", "--checkpoint", missing, "--no-progress"]]
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        for args in commands:
            assert cli.main(args) == 2, args
            err = capsys.readouterr().err
            assert (f"{args[0]}: error:" in err) == printed, (rank, args, err)
    monkeypatch.delenv("RANK")
    assert cli.main(commands[0]) == 2 and "did you mean" in capsys.readouterr().err  # a single process: as before
