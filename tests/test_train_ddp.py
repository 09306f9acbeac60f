"""DDP: two processes under torchrun (gloo on the CPU; NCCL where two GPUs are present) match one process on the same
global batch, and a checkpoint written by one process resumes on two (and ends where the uninterrupted
single-process run ends)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import torch.distributed as dist
from vision_mamba.train import TrainConfig, Trainer

# No augmentation and no dropout: the only randomness left would be per-process, so both runs see the same batches.
DETERMINISTIC = dict(
    model="test_vim", model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2}, data="synthetic",
    synthetic_train=64, synthetic_val=30, synthetic_size=32, img_size=32, crop_pct=1.0, batch_size=16,
    eval_batch_size=16, epochs=2, warmup_epochs=1, lr=3e-3, no_aug=True, smoothing=0.1, drop_path=0.0,
    mixup=0.0, cutmix=0.0, reprob=0.0, auto_augment=None, repeated_aug=1, ema=True, ema_decay=0.9, workers=0,
    progress=False, device="cpu", clip_grad=1.0, cpu_threads=1,
)


def torchrun(args, cwd=None):
    """``vision-mamba ARGS`` in two processes under torchrun (one thread each); asserts it succeeded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vision_mamba.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class _StopAfter:
    """Step hook: SIGTERM to this process after (epoch, step)."""

    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def __call__(self, trainer, epoch, step, loss):
        if (epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_checkpoint_of_one_process_resumes_on_two(tmp_path):
    base = {**TrainConfig().to_dict(), **DETERMINISTIC}
    reference = Trainer(TrainConfig.from_dict({**base, "output": str(tmp_path / "ref")})).run()
    stopped = Trainer(TrainConfig.from_dict({**base, "output": str(tmp_path / "run")}), step_hook=_StopAfter(0, 1)).run()
    assert stopped.interrupted and (tmp_path / "run" / "last.pth").is_file()

    proc = torchrun(["train", "--resume", str(tmp_path / "run"), "--set", "progress=false"], tmp_path)
    assert "resuming on 2 process(es) (saved with 1)" in proc.stdout
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert resumed["world_size"] == 2 and resumed["epochs"] == 2
    one, two = load_file(str(reference.weights)), load_file(str(tmp_path / "run" / "final.safetensors"))
    for key in one:  # same global batches in the same order: the same weights, whatever the number of processes
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)

    # and back: the two-process checkpoint continues in one process (one more epoch, the schedule rebuilt)
    cfg = TrainConfig.from_dict({**base, "output": str(tmp_path / "run"), "resume": str(tmp_path / "run"),
                                 "epochs": 3})
    again = Trainer(cfg).run()
    assert not again.interrupted
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs"] == 3


# On GPUs: NCCL, the Triton kernels, fp32 for a close comparison, eager steps in both runs (a CUDA graph is not
# used under DDP); atomics in the kernels' backward make the sums' order vary, hence the same tolerances.
ON_CUDA = dict(device="cuda", precision="fp32", cuda_graph=False)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("backend", [
    "gloo",
    pytest.param("nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="needs two CUDA devices")]),
])
def test_two_processes_match_one_process(tmp_path, backend):
    settings = {**DETERMINISTIC, **(ON_CUDA if backend == "nccl" else {})}
    single_cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **settings, "output": str(tmp_path / "one")})
    single = Trainer(single_cfg).run()

    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({**settings, "output": str(tmp_path / "two")}))
    proc = torchrun(["train", "--config", str(config)])
    assert "2 process(es)" in proc.stdout
    assert f"2 process(es) on {'cuda' if backend == 'nccl' else 'cpu'}" in proc.stdout

    one, two = load_file(str(single.weights)), load_file(str(tmp_path / "two" / "final.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    ema_one = load_file(str(tmp_path / "one" / "final_ema.safetensors"))
    ema_two = load_file(str(tmp_path / "two" / "final_ema.safetensors"))
    for key in ema_one:
        torch.testing.assert_close(ema_two[key], ema_one[key], rtol=1e-4, atol=1e-5, msg=key)
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r2["top1"] == pytest.approx(r1["top1"]) and r2["top5"] == pytest.approx(r1["top5"])
    m1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in m2] == pytest.approx([r["train_loss"] for r in m1], rel=1e-4)
    assert [r["val_images"] for r in m2] == [30, 30]  # the sharded evaluation counts every image once


_EVAL_STOP_SCRIPT = """
import json, os, signal, sys
from vision_mamba.train import TrainConfig, Trainer

values = json.loads(sys.argv[1])
trainer = Trainer(TrainConfig.from_dict(values))
trainer.setup()
sent = []

def signal_in_eval(module, args, output):  # process 1 alone gets the signal, at its first evaluation batch
    if not module.training and not sent and int(os.environ["RANK"]) == 1:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

trainer.model.register_forward_hook(signal_in_eval)
result = trainer.run()
print(f"rank {os.environ['RANK']} interrupted={result.interrupted} epoch={trainer.epoch}", flush=True)
"""


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_a_signal_to_one_process_during_the_evaluation_stops_both(tmp_path):
    """Shards of 17 and 16 images (5 and 4 batches of 4): the processes agree to abandon the evaluation within the
    batches both have, save the epoch and stop, instead of one waiting for the other until torchrun kills them."""
    values = {**TrainConfig().to_dict(), **DETERMINISTIC, "synthetic_val": 33, "eval_batch_size": 4,
              "output": str(tmp_path / "run")}
    script = tmp_path / "eval_stop.py"
    script.write_text(_EVAL_STOP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), json.dumps(values)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 interrupted=True epoch=1" in proc.stdout and "rank 1 interrupted=True epoch=1" in proc.stdout
    assert "stopped by a signal to another process during the evaluation after epoch 1" in proc.stdout
    state = torch.load(tmp_path / "run" / "last.pth", weights_only=False)
    assert (state["epoch"], state["step"]) == (1, 0)
