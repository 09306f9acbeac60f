"""`vision-mamba bench` on tiny models (test_vim, timm's test_vit) on the CPU: records, files, table, errors."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import timm
import vision_mamba
from vision_mamba import cli
from vision_mamba.bench import command, core
from vision_mamba.bench.core import BenchConfigError, Case, Settings

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--iters", "2", "--warmup", "1", "--min-time", "0", "--threads", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    # Other test runs share this 2-core machine: two OpenMP threads against busy cores are far slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fast_settings(**kw) -> Settings:
    return Settings(device=torch.device("cpu"), warmup=1, iters=2, min_time=0.0, **kw)


def test_names_and_grid():
    assert core.resolve_model_name("vim_tiny") == "vim_tiny_patch16_224"
    assert core.resolve_model_name("deit_small") == "deit_small_patch16_224"
    assert core.resolve_model_name("test_vit") == "test_vit"
    assert core.display_name("vim_small_patch16_224") == "Vim-S"
    assert core.display_name("deit_tiny_patch16_224") == "DeiT-Ti"
    cases = core.make_cases(["test_vim", "test_vit"], [64, 96], [4, 2], ["bf16", "fp32"], ["flash", "explicit"])
    # per dtype and (res, batch): Vim once, the ViT once per attention kind
    assert len(cases) == 2 * 2 * 3
    assert cases[0] == Case("test_vim", 64, 4, "bf16", None, "infer", False)
    assert {c.attn for c in cases if c.model == "test_vit"} == {"flash", "explicit"}
    assert {(c.res, c.batch) for c in cases} == {(64, 4), (96, 2)}
    assert cases[-1].dtype == "fp32"  # the first dtype is measured first
    both = core.make_cases(["test_vim"], [64], [1], graph="both")
    assert [c.graph for c in both] == [False, True]


@pytest.mark.parametrize("kwargs, message", [
    (dict(models=["nope"]), "unknown model 'nope'"),
    (dict(res=[64, 96], batch=[1, 2, 3]), "one per resolution"),
    (dict(res=["abc"]), "positive integer"),
    (dict(res=[0]), "positive integer"),
    (dict(batch=[-1]), "positive integer"),
    (dict(dtypes=["fp8"]), "unknown dtype 'fp8'"),
    (dict(attns=["sparse"]), "unknown attention 'sparse'"),
    (dict(modes=["serve"]), "unknown mode 'serve'"),
    (dict(graph="maybe"), "off, on or both"),
])
def test_grid_errors(kwargs, message):
    args = dict(models=["test_vim", "test_vit"], res=[64], batch=[1])
    args.update(kwargs)
    with pytest.raises(BenchConfigError, match=message):
        core.make_cases(**args)


def test_attention_switch(monkeypatch):
    model = timm.create_model("test_vit", img_size=64).eval()
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert core.set_attention(model, "explicit") == len(model.blocks)
        explicit = model.forward_features(x)
        assert not calls
        core.set_attention(model, "flash")
        flash = model.forward_features(x)
        assert len(calls) == len(model.blocks)
    torch.testing.assert_close(flash, explicit, rtol=1e-4, atol=1e-4)
    with pytest.raises(BenchConfigError, match="no timm attention"):
        core.set_attention(vision_mamba.VisionMamba(img_size=32, embed_dim=16, depth=1), "flash")


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--models", "test_vim,test_vit", "--res", "64", "--batch", "2", "--dtype", "fp32,bf16",
            "--out", str(out), *FAST]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    records = json.loads((out / "bench.json").read_text())
    assert len(records) == 2 * 3
    for r in records:
        assert r["status"] == "ok", r
        assert r["img_s"] > 0 and r["iters"] >= 2 and r["ms_min"] <= r["ms"] <= r["ms_max"]
        assert r["peak_gib"] is None  # CPU: not measurable
        assert r["device"].startswith("CPU") and r["torch"] == torch.__version__ and r["timm"] == timm.__version__
        assert r["threads"] == 1 and "bench" in r["command"] and "--models" in r["command"]
    vim = [r for r in records if r["model"] == "test_vim"]
    assert {r["attn"] for r in vim} == {None} and {r["backend"] for r in vim} == {"torch"}
    assert all(r["check_finite"] is True for r in vim)
    assert {r["attn"] for r in records if r["model"] == "test_vit"} == {"flash", "explicit"}
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the table: one line per dtype with Vim, the ViT's two attention kinds and the ratios
    assert "Vim/flash" in printed and "Vim/explicit" in printed
    table_lines = [line for line in printed.splitlines() if line.strip().startswith("infer")]
    assert len(table_lines) == 2 and all("test_vim" in line and "x" in line.split()[-1] for line in table_lines)
    # --append keeps the earlier rows
    assert cli.main(["bench", "--models", "test_vim", "--res", "64", "--batch", "1", "--out", str(out),
                     "--append", "--no-plot", *FAST]) == 0
    assert len(json.loads((out / "bench.json").read_text())) == 7


def test_training_rows():
    cases = core.make_cases(["test_vim", "test_vit"], [64], [2], ["fp32"], ["flash"], modes=["train"])
    records = core.run_cases(cases, _fast_settings(), log=None)
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(r["mode"] == "train" and r["img_s"] > 0 for r in records)
    assert all("AdamW" in r["note"] for r in records)


def test_oom_and_errors_are_recorded(monkeypatch):
    class Failing(torch.nn.Module):
        def __init__(self, err):
            super().__init__()
            self.err = err

        def forward_features(self, x):
            raise self.err

    errors = iter([torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB"),
                   RuntimeError("kernel exploded")])
    monkeypatch.setattr(core._Models, "build", lambda self, name, res: Failing(next(errors)))
    records = core.run_cases([Case("test_vim", 64, 1), Case("test_vim", 96, 1)], _fast_settings(), log=None)
    assert records[0]["status"] == "oom" and records[0]["img_s"] is None
    assert records[1]["status"] == "error: RuntimeError: kernel exploded"
    table = core.format_table(records)
    assert "OOM" in table and "error" in table


def test_time_budget_skips_rows():
    records = core.run_cases([Case("test_vim", 64, 1)] * 2, _fast_settings(total_time=0.0), log=None)
    assert all(r["status"].startswith("skipped: time budget") for r in records)


def test_verify_backend_agrees():
    model = timm.create_model("test_vim").eval()
    err, problem = core._verify_backend(model, Case("test_vim", 64, 1), _fast_settings(), "reference")
    assert problem is None and err < 1e-5


def test_verify_backend_runs_the_timed_batch():
    # the kernel a fast backend runs depends on the batch (chunk-parallel at batch 1, one pass at large batches):
    # the check must run the batch the row times
    model = timm.create_model("test_vim").eval()
    seen = []
    original = model.forward_features
    model.forward_features = lambda x: (seen.append(x.shape[0]), original(x))[1]
    err, problem = core._verify_backend(model, Case("test_vim", 64, 3), _fast_settings(), "reference")
    assert problem is None and seen == [3, 3]


def test_table_pairs_by_size_and_markdown():
    def rec(model, attn, img_s, peak, status="ok", dtype="bf16", res=1248, batch=16, graph=True):
        return dict(model=model, name=core.display_name(model), res=res, batch=batch, dtype=dtype, attn=attn,
                    mode="infer", graph=graph, compile=None, img_s=img_s, peak_gib=peak, status=status)

    records = [rec("vim_tiny_patch16_224", None, 300.0, 0.5), rec("deit_tiny_patch16_224", "flash", 100.0, 0.6),
               rec("deit_tiny_patch16_224", "explicit", 50.0, 17.0), rec("vim_small_patch16_224", None, 80.0, 1.0),
               rec("deit_small_patch16_224", "flash", 40.0, 1.2),
               rec("deit_small_patch16_224", "explicit", None, None, status="oom")]
    header, rows = core.comparison_rows(records)
    assert header[:8] == ["mode", "dtype", "res", "batch", "exec", "Vim", "img/s", "GiB"]
    by_vim = {row[5]: row for row in rows}
    assert by_vim["Vim-Ti"][8] == "DeiT-Ti" and by_vim["Vim-Ti"][-2:] == ["3.00x", "6.00x"]
    assert by_vim["Vim-S"][8] == "DeiT-S" and by_vim["Vim-S"][-2:] == ["2.00x", ""]
    assert "OOM" in by_vim["Vim-S"]
    md = core.format_table(records, markdown=True).splitlines()
    assert md[0].startswith("| mode |") and md[1].startswith("|---|") and len(md) == 4


@pytest.mark.parametrize("argv, message", [
    (["--models", "nope"], "unknown model"),
    (["--device", "tpu"], "unknown device"),
    (["--plan", "figure1", "--models", "vim_tiny"], "--plan cannot be combined with --models"),
    (["--models", "test_vim", "--graph"], "--graph needs a CUDA device"),
    (["--models", "test_vim", "--res", "64,96", "--batch", "1,2,3"], "one per resolution"),
    (["--models", "test_vim", "--iters", "0"], "iters >= 1"),
    (["--models", "test_vim", "--threads", "0"], "--threads must be at least 1"),
])
def test_cli_errors(argv, message, capsys, tmp_path):
    assert cli.main(["bench", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "vision-mamba bench: error:" in err and message in err
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cli_cuda_missing(capsys):
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_argparse_choices(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--backend", "fastest"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_plans():
    small = command.plan_cases("cpu-small")
    assert {(c.model, c.batch) for c in small} >= {("vim_tiny_patch16_224", 1), ("deit_tiny_patch16_224", 4)}
    assert {c.dtype for c in small} == {"fp32"}
    fig = command.plan_cases("figure1")
    infer_tiny = [c for c in fig if c.mode == "infer" and c.graph and "tiny" in c.model]
    assert len(infer_tiny) == 7 * 2 * 3  # 7 (res, batch), bf16 + fp32, Vim + DeiT flash + DeiT explicit
    assert (1248, 1) in {(c.res, c.batch) for c in infer_tiny}
    train = {(c.model, c.attn, c.graph) for c in fig if c.mode == "train"}
    assert train == {("vim_tiny_patch16_224", None, False), ("deit_tiny_patch16_224", "flash", False),
                     ("vim_tiny_patch16_224", None, True), ("deit_tiny_patch16_224", "flash", True),
                     ("vim_small_patch16_224", None, True), ("deit_small_patch16_224", "flash", True)}
    assert {c.res for c in fig if "small" in c.model} == {224, 1248}
    assert fig[0].dtype == "bf16" and fig[-1].dtype == "fp32"  # bf16 first, so a time budget cuts fp32


def _load_results_module():
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "benchmarks" / "bench_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_results(tmp_path):
    results = _load_results_module()

    def rec(model, attn, img_s, peak, mode="infer", res=1248, batch=16):
        return dict(model=model, name=core.display_name(model), res=res, batch=batch, dtype="bf16", attn=attn,
                    mode=mode, graph=mode == "infer", compile=None, backend="triton" if attn is None else None,
                    img_s=img_s, ms=1.0, iters=20, peak_gib=peak, status="ok", note=None, device="NVIDIA H200",
                    torch="2.11.0", timm="1.0.29", triton="3.6.0", cuda="12.8",
                    command="vision-mamba bench --plan figure1 --device cuda")

    raw = [rec("vim_tiny_patch16_224", None, 2000.0, 0.5), rec("deit_tiny_patch16_224", "flash", 630.0, 0.56),
           rec("deit_tiny_patch16_224", "explicit", 65.0, 16.9),
           rec("vim_tiny_patch16_224", None, 900.0, 3.0, mode="train", res=224, batch=128),
           rec("deit_tiny_patch16_224", "flash", 4400.0, 2.3, mode="train", res=224, batch=128)]
    raw_path = tmp_path / "raw.json"
    raw_path.write_text(json.dumps(raw))
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written intro\n")
    args = [str(raw_path), "--out-json", str(tmp_path / "r.json"), "--out-png", str(tmp_path / "r.png"),
            "--doc", str(doc)]
    assert results.main(args) == 0
    committed = json.loads((tmp_path / "r.json").read_text())
    assert {"model", "res", "batch", "dtype", "attn", "img_s", "peak_gib", "command"} <= set(committed[0])
    text = doc.read_text()
    assert "hand-written intro" in text and results.BEGIN in text and "r.png" in text
    assert "| Vim-Ti vs DeiT-Ti flash, 1248 px, batch 16 | bf16 | graph | 2000 | 630 | 3.17x" in text
    assert "met |" in text and "not met |" in text  # 1248 met (memory too); training 0.20x not met
    # running it again replaces the section instead of adding a second one
    assert results.main(args) == 0
    assert doc.read_text().count(results.BEGIN) == 1
    # a later run's rows replace the ones they re-measure (and keep their own command); a row matching none is an error
    later = [dict(rec("vim_tiny_patch16_224", None, 2100.0, 0.5), command="vision-mamba bench --res 1248")]
    later_path = tmp_path / "later.json"
    later_path.write_text(json.dumps(later))
    assert results.main(args + ["--replace", str(later_path)]) == 0
    merged = json.loads((tmp_path / "r.json").read_text())
    assert len(merged) == len(raw) and merged[0]["img_s"] == 2100.0 and merged[1]["img_s"] == 630.0
    assert "vision-mamba bench --res 1248" in doc.read_text()
    later_path.write_text(json.dumps([rec("vim_tiny_patch16_224", None, 1.0, 0.5, res=512)]))
    with pytest.raises(SystemExit):
        results.main(args + ["--replace", str(later_path)])


def test_time_steps_iteration_budget():
    import time

    calls = []

    def step():
        calls.append(1)
        time.sleep(0.01)

    cpu = torch.device("cpu")
    times = core.time_steps(step, cpu, iters=3, min_time=0.1, max_iters=100)
    assert len(times) == len(calls) >= 3 and all(t >= 0.009 for t in times)
    assert len(times) <= 12  # about min_time / 10 ms, plus the probe
    calls.clear()
    assert len(core.time_steps(step, cpu, iters=50, min_time=0.0, max_iters=100, max_time=0.02)) == 3


def test_cpu_speed_report(tmp_path):
    spec = importlib.util.spec_from_file_location("cpu_speed", ROOT / "benchmarks" / "cpu_speed.py")
    cpu_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_speed)
    row = dict(threads=1, batch=8, vim_reference_ms=4000.0, vim_torch_ms=100.0, deit_flash_ms=80.0,
               deit_explicit_ms=90.0, max_abs_diff=1e-6, rel_l2=1e-8, speedup_torch_vs_reference=40.0,
               vim_torch_vs_deit_flash=1.25, vim_compiled_ms=40.0, vim_compiled_first_call_s=6.5,
               speedup_compiled_vs_reference=100.0, vim_compiled_vs_deit_flash=0.5, compiled_rel_l2=2e-8)
    info = dict(cpu="CPU", cores=2, python="Python 3", torch="2", timm="1", load_start=0.1, load_end=0.2, wall_s=9.0)
    floor = dict(threads=1, elements_per_image=58_097_664, ms_per_image=20.0)
    doc = tmp_path / "cpu_speed.md"
    cpu_speed.write_doc(doc, "PYTHONPATH=src python benchmarks/cpu_speed.py", info, [row], None, floor)
    text = doc.read_text()
    assert "| 1 | 8 | 4000 | 100 | 40.00x | 40 (6.5) | 100.00x | 80.0 | 90.0 | 1.2x slower | 2.0x faster |" in text
    assert "**met**" in text and "58.1 M" in text and "benchmarks/cpu_speed.py" in text
    assert "`compiled` backend" in text and "100.00x to 100.00x" in text
    # a machine where the compiled backend could not compile: its columns say so, the rest stands
    failed = {k: v for k, v in row.items() if "compiled" not in k}
    cpu_speed.write_doc(doc, "PYTHONPATH=src python benchmarks/cpu_speed.py", info, [dict(failed, vim_compiled_ms=None)],
                        None, floor)
    assert "| 1 | 8 | 4000 | 100 | 40.00x | failed | - |" in doc.read_text()


def test_graph_case_off_cuda_runs_eagerly_with_a_note():
    record = core.run_case(Case("test_vim", 64, 1, graph=True), _fast_settings())
    assert record["status"] == "ok" and record["graph"] is False
    assert "not on CUDA" in record["note"]


def test_command_records_kernel_settings(monkeypatch):
    # the VISION_MAMBA_* variables change what is measured, so a record's command carries them
    for key in [k for k in os.environ if k.startswith("VISION_MAMBA_")]:
        monkeypatch.delenv(key)
    args = command.parse(["--models", "test_vim", "--res", "64"])
    assert command.command_line(args).startswith("vision-mamba bench ")
    monkeypatch.setenv("VISION_MAMBA_TRITON_AHEAD", "1")
    monkeypatch.setenv("VISION_MAMBA_SCAN", "triton")
    assert command.command_line(args).startswith("VISION_MAMBA_SCAN=triton VISION_MAMBA_TRITON_AHEAD=1 vision-mamba bench ")
