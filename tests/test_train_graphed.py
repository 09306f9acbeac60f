"""The training step replayed from a CUDA graph (train.graphed.TrainStep): its eager form on the CPU (the same
body: forward, backward, clipping, a fused update that a non-finite loss skips on the device), the reasons it
falls back, and on a GPU the captured step against plain eager steps."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from vision_mamba.train import TrainConfig, Trainer
from vision_mamba.train.graphed import TrainStep, graph_unsupported_reason, supports_found_inf


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_vim", num_classes=5, img_size=32, patch_size=8)


def _batches(n: int, batch: int = 6, device: str = "cpu", seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 5, (batch,), generator=g).to(device)) for _ in range(n)]


def _plain_steps(model, batches, lr=1e-2, clip=None, device="cpu", amp=None, lrs=None):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, fused=True)
    losses = []
    for i, (x, y) in enumerate(batches):
        if lrs is not None:
            for g in opt.param_groups:
                g["lr"] = lrs[i]
        with torch.autocast(device_type=torch.device(device).type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def test_eager_step_matches_a_plain_loop():
    a, b = _model(), _model()
    batches = _batches(4)
    ref = _plain_steps(a, batches, clip=0.5)
    opt = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
    step = TrainStep(b, F.cross_entropy, opt, device=torch.device("cpu"), graph=False, clip_grad=0.5)
    got = [float(step(x, y)) for x, y in batches]
    assert got == pytest.approx(ref, rel=1e-6)
    assert _max_diff(a, b) < 1e-6


def test_non_finite_loss_skips_the_update_on_the_device():
    model = _model()
    model.check_finite = False  # as the trainer sets it: the loss guard covers NaN input
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
    step = TrainStep(model, F.cross_entropy, opt, device=torch.device("cpu"), graph=False)
    (x0, y0), (x1, y1) = _batches(2)
    step(x0, y0)
    weights = copy.deepcopy(model.state_dict())
    moments = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    bad = x1.clone()
    bad[0, 0, 0, 0] = float("nan")
    loss = step(bad, y1)
    assert not torch.isfinite(loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for k, v in opt.state[next(model.parameters())].items():
        assert torch.equal(v, moments[k]), k  # moments and the step count are unchanged too
    assert torch.isfinite(step(x1, y1))  # and training goes on
    assert any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_needs_a_fused_optimizer_and_says_why_a_graph_cannot_be_used():
    model = _model()
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fused = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    assert not supports_found_inf(plain) and supports_found_inf(fused)
    with pytest.raises(ValueError, match="fused"):
        TrainStep(model, F.cross_entropy, plain, device=torch.device("cpu"), graph=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert "not CUDA" in graph_unsupported_reason(fused, cpu)
    assert "DDP" in graph_unsupported_reason(fused, cuda, distributed=True)
    assert "compile" in graph_unsupported_reason(fused, cuda, compiled=True)
    assert "bf16" in graph_unsupported_reason(fused, cuda, grad_scaler=True)
    assert "fused" in graph_unsupported_reason(plain, cuda)
    assert graph_unsupported_reason(fused, cuda) is None
    with pytest.raises(ValueError, match="not CUDA"):
        TrainStep(model, F.cross_entropy, fused, device=cpu, graph=True)


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_graph_replay_matches_eager_steps(amp):
    device = torch.device("cuda")
    a, b = _model().to(device), _model().to(device)
    batches = _batches(9, device="cuda")
    lrs = [1e-2 * (0.8 ** i) for i in range(len(batches))]  # a schedule: the replay must read each new lr
    ref = _plain_steps(a, batches, clip=1.0, device="cuda", amp=amp, lrs=lrs)
    opt = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
    step = TrainStep(b, F.cross_entropy, opt, device=device, amp_dtype=amp, graph=True, clip_grad=1.0,
                     warmup_steps=2)
    got = []
    for i, (x, y) in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = lrs[i]
        got.append(float(step(x, y)))
        assert step.captured == (i >= 2)
    assert all(isinstance(g["lr"], float) for g in opt.param_groups)  # the schedule's floats are left in place
    tol = 1e-4 if amp is None else 2e-2
    assert got == pytest.approx(ref, rel=tol, abs=tol)
    assert _max_diff(a, b) < (1e-4 if amp is None else 5e-3)
    with pytest.raises(ValueError, match="one shape"):
        step(batches[0][0][:2], batches[0][1][:2])


@pytest.mark.gpu
def test_graph_replay_skips_a_non_finite_loss():
    device = torch.device("cuda")
    model = _model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, fused=True)
    step = TrainStep(model, F.cross_entropy, opt, device=device, graph=True, warmup_steps=1)
    batches = _batches(4, device="cuda")
    for x, y in batches[:2]:
        step(x, y)
    assert step.captured
    weights = copy.deepcopy(model.state_dict())
    bad = batches[2][0].clone()
    bad[0, 0, 0, 0] = float("inf")
    assert not torch.isfinite(step(bad, batches[2][1]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert torch.isfinite(step(*batches[3]))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.gpu
def test_trainer_graphed_steps_learn_like_eager_ones(tmp_path):
    from test_train import tiny_config

    runs = {}
    tf32 = torch.backends.cuda.matmul.allow_tf32
    for graph in (False, True):
        losses = []
        cfg = tiny_config(tmp_path, name=f"graph_{graph}", device="cuda", epochs=8, ema=True, cpu_threads=None,
                          synthetic_train=192, cuda_graph=graph)
        trainer = Trainer(cfg, step_hook=lambda t, e, s, loss: losses.append(float(loss)))
        result = trainer.run()
        assert (trainer.graph_step is not None) == graph
        assert graph is False or trainer.graph_step.captured
        assert len(losses) == 8 * 12 and all(map(torch.isfinite, torch.tensor(losses)))
        runs[graph] = losses, result
        assert torch.backends.cuda.matmul.allow_tf32 == tf32  # the run's TF32 setting does not outlive it
    eager, graphed = runs[False][0], runs[True][0]
    # same data and seeds, no drop path: the runs differ by rounding (atomics sum in another order) only
    assert sum(graphed[-12:]) == pytest.approx(sum(eager[-12:]), rel=0.05)
    assert sum(graphed[-12:]) < sum(graphed[:12])
    assert runs[True][1].final["top1"] == pytest.approx(runs[False][1].final["top1"], abs=10.0)
