"""seg-train and det-train under torchrun with two gloo processes on the CPU: each process takes its slice of every
global batch, the run finishes, and it reports the global batch (tests/test_train_ddp.py does the same for train)."""
from __future__ import annotations

import json

import pytest
import torch.distributed as dist
import yaml

from test_detection import make_coco
from test_detection_train import _write_config as write_det_config
from test_segmentation_fixtures import tiny_config, write_folder_dataset
from test_train_ddp import torchrun

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def test_seg_train_on_two_gloo_processes(tmp_path):
    data = write_folder_dataset(tmp_path / "data", n_train=4, n_val=2)
    run = tmp_path / "run"
    config = tiny_config(data, run, iters=2, checkpoint_every=1)
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    proc = torchrun(["seg-train", "--config", str(path)], tmp_path)
    assert "2 x 2" in proc.stdout  # per-process batch x processes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iters"] == 2 and summary["batch_size"] == 4
    assert summary["val_miou"] is not None  # the evaluation ran (sharded or on process 0) and was reported once
    assert (run / "model.safetensors").is_file()


def test_det_train_on_two_gloo_processes(tmp_path):
    data = tmp_path / "data"
    make_coco(data, num_images=4)
    config = write_det_config(tmp_path, data, iters=2, device="cpu")
    run = tmp_path / "run"
    torchrun(["det-train", "--config", str(config), "--output", str(run), "--no-progress"], tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["iters"] == 2 and results["batch_size"] == 4  # 2 per process x 2 processes
    assert 0.0 <= results["val"]["bbox_AP"] <= 1.0
