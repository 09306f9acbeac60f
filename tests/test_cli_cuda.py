"""The commands end to end on CUDA, where the CPU tests cannot reach: eval's confusion matrix (a bincount on the
device), the segmentation Predictor given a CPU model and a GPU device, seg-eval and det-eval through
init_distributed on one GPU, det-train's final evaluation through evaluate_model(ctx=...). ``run_commands("cpu",
tmp)`` runs the same on the CPU (slow: a tiny detector trains)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from test_detection import TINY_MODEL, make_coco
from test_segmentation_fixtures import tiny_config, write_folder_dataset
from vision_mamba import cli
from vision_mamba.tasks.segmentation.inference import InferenceSettings, Predictor
from vision_mamba.tasks.segmentation.model import load_segmentation_model
from vision_mamba.tasks.segmentation.trainer import train as seg_train


def run_commands(device: str, tmp: Path) -> dict:
    report = {}
    # classification: train (synthetic data, test_vim), then eval with the confusion matrix and its plot
    run = tmp / "cls"
    assert cli.main(["train", "--epochs", "2", "--batch-size", "64", "--device", device, "--output", str(run),
                     "--set", "synthetic_train=512", "--set", "progress=false"]) == 0
    assert cli.main(["eval", "--checkpoint", str(run / "final.safetensors"), "--device", device, "--json",
                     str(tmp / "cls.json"), "--plot", str(tmp / "cm.png"), "--no-progress"]) == 0
    r = json.loads((tmp / "cls.json").read_text())
    hits = sum(r["confusion"][i][i] for i in range(len(r["confusion"])))
    assert sum(map(sum, r["confusion"])) == r["images"] and 100 * hits / r["images"] == pytest.approx(r["top1"])
    report["eval"] = dict(top1=r["top1"], images=r["images"], device=r["device"])

    # segmentation: a tiny run; the Predictor given a CPU model and the device; seg-eval on the device
    data = write_folder_dataset(tmp / "segdata", n_train=4, n_val=2)
    summary = seg_train(tiny_config(data, tmp / "seg", iters=4, device=device,
                                    precision="bf16" if device != "cpu" else "fp32"))
    model, config, _ = load_segmentation_model(tmp / "seg" / "model.safetensors")
    predictor = Predictor(model.cpu(), InferenceSettings.from_config(config), device)
    labels = predictor.predict(torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8))
    assert next(model.parameters()).device.type == torch.device(device).type and labels.shape == (64, 80)
    assert cli.main(["seg-eval", "--checkpoint", str(tmp / "seg" / "model.safetensors"), "--device", device,
                     "--output", str(tmp / "seg.json")]) == 0
    s = json.loads((tmp / "seg.json").read_text())
    assert s["miou"] == pytest.approx(summary["val_miou"], abs=1e-4)
    report["seg"] = dict(train_val_miou=summary["val_miou"], seg_eval_miou=s["miou"], pixels=s["num_pixels"])

    # detection: a tiny run (its final evaluation through evaluate_model with the context), then det-eval
    make_coco(tmp / "detdata", num_images=4)
    cfg = {"model": dict(TINY_MODEL),
           "data": {"root": str(tmp / "detdata"), "train_images": "images", "train_annotations": "instances.json",
                    "val_images": "images", "val_annotations": "instances.json", "workers": 0},
           "train": {"iters": 2, "batch_size": 2, "lr": 1e-3, "warmup_iters": 1, "device": device},
           "eval": {"batch_size": 2}}
    (tmp / "det.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["det-train", "--config", str(tmp / "det.yaml"), "--output", str(tmp / "det"),
                     "--no-progress"]) == 0
    assert cli.main(["det-eval", "--checkpoint", str(tmp / "det" / "model.safetensors"), "--device", device,
                     "--no-progress", "--output", str(tmp / "det.json")]) == 0
    d = json.loads((tmp / "det.json").read_text())
    t = json.loads((tmp / "det" / "results.json").read_text())
    assert d["num_detections"] == t["val"]["num_detections"] and d["bbox_AP"] == pytest.approx(t["val"]["bbox_AP"])
    report["det"] = dict(train_final=t["val"]["bbox_AP"], det_eval=d["bbox_AP"], detections=d["num_detections"])
    return report


@pytest.mark.gpu
def test_commands_on_cuda(tmp_path):
    print(json.dumps(run_commands("cuda", tmp_path)))
