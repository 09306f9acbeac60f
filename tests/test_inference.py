"""CUDAGraphInference: replayed forwards equal eager ones, a graph per shape and setting, clear errors; on the CPU
it runs the function eagerly."""
from __future__ import annotations

import pytest
import timm
import torch

from vision_mamba import CUDAGraphInference


def test_cpu_runs_eagerly_in_inference_mode():
    model = timm.create_model("test_vim").eval()
    runner = CUDAGraphInference(model.forward_features)
    x = torch.randn(2, 3, 64, 64)
    out = runner(x)
    assert torch.is_inference(out) and runner.num_graphs == 0
    with torch.no_grad():
        assert torch.equal(out, model.forward_features(x))


def test_bad_arguments():
    model = timm.create_model("test_vim")
    with pytest.raises(ValueError, match="warmup"):
        CUDAGraphInference(model, warmup=0)
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphInference(model, max_graphs=0)
    with pytest.raises(TypeError, match="one tensor"):
        CUDAGraphInference(model)([torch.randn(1, 3, 64, 64)])


@pytest.mark.gpu
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_replay_matches_eager(autocast):
    torch.manual_seed(0)
    model = timm.create_model("test_vim").cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    runner = CUDAGraphInference(model.forward_features, max_graphs=2)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast)
    for batch in (2, 2, 3):  # the second call replays with new data; batch 3 gets a graph of its own
        x = torch.randn(batch, 3, 64, 64, device="cuda")
        with ctx:
            out = runner(x)
            with torch.inference_mode():
                ref = model.forward_features(x)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        tol = 2e-2 if autocast else 1e-5
        assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < tol
    assert runner.num_graphs == 2
    # weights updated in place are seen by the next replay
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        model.norm_f.weight.mul_(2.0)
    with ctx:
        out = runner(x)
        with torch.inference_mode():
            ref = model.forward_features(x)
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < (2e-2 if autocast else 1e-5)
    # a third shape evicts the oldest graph (max_graphs=2)
    with ctx:
        runner(torch.randn(1, 3, 64, 64, device="cuda"))
    assert runner.num_graphs == 2
    runner.reset()
    assert runner.num_graphs == 0


@pytest.mark.gpu
def test_output_buffer_and_input_checks():
    model = timm.create_model("test_vim").cuda().eval()
    shared = CUDAGraphInference(model, clone=False)
    a = shared(torch.randn(2, 3, 64, 64, device="cuda"))
    b = shared(torch.randn(2, 3, 64, 64, device="cuda"))
    assert a.data_ptr() == b.data_ptr()  # the graph's own buffer, overwritten
    runner = CUDAGraphInference(model)
    with pytest.raises(ValueError, match="built for 64x64"):
        runner(torch.randn(2, 3, 32, 32, device="cuda"))
    bad = torch.randn(2, 3, 64, 64, device="cuda")
    bad[0, 0, 0, 0] = float("nan")
    runner(torch.randn(2, 3, 64, 64, device="cuda"))  # captured
    with pytest.raises(ValueError, match="NaN"):
        runner(bad)  # checked before the replay, as in eager mode


@pytest.mark.gpu
def test_evaluate_with_graphs_matches_eager():
    # vision-mamba eval's loop with a graph per batch shape (the last batch is smaller) gives the eager figures
    from vision_mamba.train.evaluate import evaluate

    torch.manual_seed(0)
    model = timm.create_model("test_vim").cuda()
    device = torch.device("cuda")
    loader = [(torch.randn(n, 3, 64, 64, device=device), torch.randint(0, 10, (n,), device=device), None)
              for n in (8, 8, 5)]
    eager = evaluate(model, loader, device, torch.bfloat16, cuda_graph=False)
    graphed = evaluate(model, loader, device, torch.bfloat16, cuda_graph=True)
    assert graphed["images"] == eager["images"] == 21
    assert graphed["top1"] == pytest.approx(eager["top1"]) and graphed["top5"] == pytest.approx(eager["top5"])
    assert graphed["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    assert model.training  # evaluate restores the mode
