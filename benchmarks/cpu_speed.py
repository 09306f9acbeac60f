"""Vim-Ti on the CPU: the `torch` scan backend against the `reference` backend, and DeiT-Ti (timm) in the same run.

    PYTHONPATH=src python benchmarks/cpu_speed.py --threads 1,2 --doc docs/cpu_speed.md

Vim-Ti forward_features at 224x224 (random weights, seed 0; the same weights for both backends), batch 1 and 8,
under torch.inference_mode(); the median of a few repetitions after one warm-up call. The two backends' outputs are
compared (max abs difference, relative L2). DeiT-Ti runs with timm's fused attention (F.scaled_dot_product_attention,
"flash") and the explicit q @ k^T softmax. ``--profile`` adds a breakdown of where the `torch` backend's time goes.
Prints a table, writes JSON (--out) and, with --doc, the markdown page with the table and this command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import timm  # noqa: E402
import torch  # noqa: E402

import vision_mamba  # noqa: E402
from vision_mamba.bench.core import cpu_name, set_attention  # noqa: E402

TARGET_SPEEDUP = 20.0


def _times(fn, reps: int, warmup: int = 1) -> List[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(batches: Sequence[int], threads: int, reps: int, ref_reps: int, log=print) -> List[Dict[str, Any]]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vim = timm.create_model("vim_tiny_patch16_224").eval()
    deit = timm.create_model("deit_tiny_patch16_224").eval()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        outputs = {}
        row: Dict[str, Any] = {"batch": batch, "threads": threads}
        for backend, n in (("torch", reps), ("compiled", reps), ("reference", ref_reps)):
            with torch.inference_mode(), vision_mamba.scan_backend(backend):
                t0 = time.perf_counter()
                try:
                    outputs[backend] = vim.forward_features(x)
                except RuntimeError as e:  # `compiled` without a working torch.compile
                    row[f"vim_{backend}_ms"] = None
                    row[f"vim_{backend}_error"] = str(e)[:300]
                    log(f"  threads {threads} batch {batch}: Vim-Ti {backend}: {e}")
                    continue
                row[f"vim_{backend}_first_call_s"] = time.perf_counter() - t0  # `compiled`: includes compiling
                t = _times(lambda: vim.forward_features(x), n, warmup=0)  # the call above was the warm-up
            row[f"vim_{backend}_ms"] = statistics.median(t) * 1e3
            row[f"vim_{backend}_all_ms"] = [round(v * 1e3, 2) for v in t]
            log(f"  threads {threads} batch {batch}: Vim-Ti {backend:9s} {row[f'vim_{backend}_ms']:9.1f} ms "
                f"(median of {n}: {', '.join(f'{v * 1e3:.0f}' for v in t)})")
        diff = (outputs["torch"] - outputs["reference"]).float()
        row["max_abs_diff"] = float(diff.abs().max())
        row["rel_l2"] = float(diff.norm() / outputs["reference"].float().norm())
        if "compiled" in outputs:
            row["compiled_rel_l2"] = float((outputs["compiled"] - outputs["reference"]).float().norm()
                                           / outputs["reference"].float().norm())
        for attn in ("flash", "explicit"):
            set_attention(deit, attn)
            with torch.inference_mode():
                t = _times(lambda: deit.forward_features(x), reps)
            row[f"deit_{attn}_ms"] = statistics.median(t) * 1e3
            row[f"deit_{attn}_all_ms"] = [round(v * 1e3, 2) for v in t]
            log(f"  threads {threads} batch {batch}: DeiT-Ti {attn:9s} {row[f'deit_{attn}_ms']:9.1f} ms")
        row["speedup_torch_vs_reference"] = row["vim_reference_ms"] / row["vim_torch_ms"]
        row["vim_torch_vs_deit_flash"] = row["vim_torch_ms"] / row["deit_flash_ms"]
        if row.get("vim_compiled_ms"):
            row["speedup_compiled_vs_reference"] = row["vim_reference_ms"] / row["vim_compiled_ms"]
            row["vim_compiled_vs_deit_flash"] = row["vim_compiled_ms"] / row["deit_flash_ms"]
        rows.append(row)
    return rows


def exp_floor(threads: int) -> Dict[str, Any]:
    """A measured lower bound for any scan built on torch.exp: the decays exp(delta * A) of one Vim-Ti image at 224
    (24 blocks x 2 directions x 197 tokens x 384 channels x 16 states), computed on a cache-resident buffer."""
    torch.set_num_threads(threads)
    model = timm.create_model("vim_tiny_patch16_224")
    mixer = model.layers[0].mixer
    tokens = model.patch_embed.num_patches + 1
    elements = len(model.layers) * 2 * tokens * mixer.d_inner * mixer.d_state
    x = torch.randn(mixer.d_inner * mixer.d_state * 8)
    out = torch.empty_like(x)
    calls = max(1, elements // x.numel())
    for _ in range(min(calls, 100)):
        torch.exp(x, out=out)
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.exp(x, out=out)
        samples.append(time.perf_counter() - t0)
    ms = statistics.median(samples) * 1e3 * elements / (calls * x.numel())
    return {"threads": threads, "elements_per_image": elements, "ms_per_image": ms}


def scan_detail(batch: int, threads: int, reps: int) -> Dict[str, Any]:
    """One direction's selective scan at Vim-Ti's shapes ([B, 197, 384], 16 states), alone: the reference loop and
    the chunked `torch` path at several chunk sizes; and softplus (on [B, 197, 384]) against log(1 + exp(x))."""
    from vision_mamba.ops import selective_scan_chunked, selective_scan_ref
    from vision_mamba.ops.selective_scan.chunked import DEFAULT_CHUNK_ELEMENTS

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    length, channels, states = 197, 384, 16
    u, z = (torch.randn(batch, length, channels, generator=g) for _ in range(2))
    delta = torch.randn(batch, length, channels, generator=g) * 0.5
    B, C = (torch.randn(batch, length, states, generator=g) for _ in range(2))
    A = -torch.arange(1, states + 1, dtype=torch.float32).repeat(channels, 1)
    D, bias = torch.ones(channels), torch.zeros(channels)
    out: Dict[str, Any] = {"batch": batch, "threads": threads, "default_chunk_elements": DEFAULT_CHUNK_ELEMENTS}
    with torch.inference_mode():
        out["reference_ms"] = statistics.median(_times(
            lambda: selective_scan_ref(u, delta, A, B, C, D, z, bias, True), reps)) * 1e3
        out["chunked_ms"] = {}
        for elements in (1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22):
            out["chunked_ms"][elements] = statistics.median(_times(
                lambda: selective_scan_chunked(u, delta, A, B, C, D, z, bias, True, False, elements), reps)) * 1e3
        from vision_mamba.ops.selective_scan import chunked

        out["compiled_ms"], default_steps = {}, chunked.COMPILED_STEPS
        try:
            for steps in (8, 16, 32, 64):  # steps per compiled piece (each size compiles once, in the warm-up)
                chunked.COMPILED_STEPS = steps
                out["compiled_ms"][steps] = statistics.median(_times(
                    lambda: selective_scan_chunked(u, delta, A, B, C, D, z, bias, True, False, compiled=True),
                    reps)) * 1e3
        except RuntimeError:
            out["compiled_ms"] = None
        finally:
            chunked.COMPILED_STEPS = default_steps
        out["default_compiled_steps"] = default_steps
        x = delta + 0.5
        out["softplus_ms"] = statistics.median(_times(lambda: torch.nn.functional.softplus(x), reps)) * 1e3
        out["log1p_exp_ms"] = statistics.median(_times(lambda: torch.log(torch.exp(x).add_(1)), reps)) * 1e3
    return out


def scan_table(d: Dict[str, Any]) -> str:
    lines = [f"| one direction's scan, batch {d['batch']}, {d['threads']} thread(s) | ms |", "|---|---|",
             f"| `reference` (loop over time) | {d['reference_ms']:.1f} |"]
    for elements, ms in d["chunked_ms"].items():
        mark = " (the default)" if int(elements) == d["default_chunk_elements"] else ""
        lines.append(f"| `torch` (chunked), chunk_elements = 2^{int(elements).bit_length() - 1}{mark} | {ms:.1f} |")
    for steps, ms in (d.get("compiled_ms") or {}).items():
        mark = " (the default)" if int(steps) == d.get("default_compiled_steps") else ""
        lines.append(f"| `compiled` (torch.compile of the recurrence), pieces of {steps} steps{mark} | {ms:.1f} |")
    lines += [f"| `F.softplus` on the [B, 197, 384] delta | {d['softplus_ms']:.2f} |",
              f"| `torch.log(torch.exp(x) + 1)` on the same | {d['log1p_exp_ms']:.2f} |"]
    return "\n".join(lines)


def profile_torch_backend(batch: int, threads: int) -> Dict[str, Any]:
    """One forward of Vim-Ti on the `torch` backend under torch.profiler: time per component and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vim = timm.create_model("vim_tiny_patch16_224").eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode(), vision_mamba.scan_backend("torch"):
        vim.forward_features(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            vim.forward_features(x)
    events = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in events) / 1e3

    def cpu_total(*names: str) -> float:
        return sum(e.cpu_time_total for e in events if e.key in names) / 1e3

    parts = {
        "selective scan (_SelectiveScanChunked: softplus, exp, state updates, C contraction)":
            cpu_total("_SelectiveScanChunked"),
        "linear layers (in_proj, x_proj, dt_proj, out_proj)": cpu_total("aten::linear"),
        "depthwise conv1d and patch-embedding conv2d": cpu_total("aten::conv1d", "aten::conv2d"),
    }
    parts["everything else (norms, silu, split/cat, adds)"] = max(0.0, total_self - sum(parts.values()))
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {
        "batch": batch, "threads": threads, "total_ms": total_self,
        "parts_ms": parts,
        "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top],
    }


def _vs(ratio: Optional[float]) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.1f}x slower" if ratio >= 1 else f"{1 / ratio:.1f}x faster"


def table(rows: Sequence[Dict[str, Any]]) -> str:
    header = ["threads", "batch", "Vim-Ti reference ms", "Vim-Ti torch ms", "torch vs reference",
              "Vim-Ti compiled ms (first call s)", "compiled vs reference", "DeiT-Ti flash ms", "DeiT-Ti explicit ms",
              "Vim-Ti torch / DeiT-Ti flash", "Vim-Ti compiled / DeiT-Ti flash", "rel L2 torch", "rel L2 compiled"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        compiled = r.get("vim_compiled_ms")
        lines.append("| " + " | ".join([
            str(r["threads"]), str(r["batch"]), f"{r['vim_reference_ms']:.0f}", f"{r['vim_torch_ms']:.0f}",
            f"{r['speedup_torch_vs_reference']:.2f}x",
            f"{compiled:.0f} ({r['vim_compiled_first_call_s']:.1f})" if compiled else "failed",
            f"{r['speedup_compiled_vs_reference']:.2f}x" if compiled else "-",
            f"{r['deit_flash_ms']:.1f}", f"{r['deit_explicit_ms']:.1f}",
            _vs(r["vim_torch_vs_deit_flash"]), _vs(r.get("vim_compiled_vs_deit_flash")),
            f"{r['rel_l2']:.2e}", f"{r['compiled_rel_l2']:.2e}" if compiled else "-"]) + " |")
    return "\n".join(lines)


def profile_table(prof: Dict[str, Any]) -> str:
    lines = ["| component | ms (profiled) | share |", "|---|---|---|"]
    for name, ms in prof["parts_ms"].items():
        lines.append(f"| {name} | {ms:.0f} | {100 * ms / prof['total_ms']:.0f}% |")
    lines += ["", "| op (self time) | ms | calls |", "|---|---|---|"]
    lines += [f"| {o['op']} | {o['self_ms']:.0f} | {o['calls']} |" for o in prof["top_ops"]]
    return "\n".join(lines)


def write_doc(path: Path, command: str, info: Dict[str, Any], rows, prof: Optional[Dict[str, Any]],
              floor: Dict[str, Any], detail: Optional[Dict[str, Any]] = None) -> None:
    met = all(r["speedup_torch_vs_reference"] >= TARGET_SPEEDUP for r in rows)
    best = max(r["speedup_torch_vs_reference"] for r in rows)
    worst = min(r["speedup_torch_vs_reference"] for r in rows)
    compiled = [r["speedup_compiled_vs_reference"] for r in rows if r.get("speedup_compiled_vs_reference")]
    text = [
        "# Vim-Ti on the CPU: `torch` and `compiled` vs `reference` scan backend, next to DeiT-Ti",
        "",
        "Generated by `benchmarks/cpu_speed.py` (figures from the run below; nothing typed in by hand).",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- machine: {info['cpu']} ({info['cores']} cores), {info['python']}, torch {info['torch']}, "
        f"timm {info['timm']}",
        f"- load average (1 min) at start {info['load_start']:.2f}, at end {info['load_end']:.2f}; medians are "
        "reported; every repetition is in the JSON that --out names",
        f"- wall time of the run: {info['wall_s']:.0f} s",
    ]
    if max(info["load_start"], info["load_end"]) > 0.75 * (info["cores"] or 1):
        text += [
            "- other work kept the cores busy during the run, so the times are noisy and slower than on an idle "
            "machine; with other processes on both cores, several OpenMP threads per op wait on each other, so one "
            "thread gives the steadiest numbers (`--threads 1,2` compares both)",
        ]
    text += [
        "",
        "Vim-Ti `forward_features` at 224x224 (random weights, seed 0, the same weights for both backends), "
        "`torch.inference_mode()`, median of the repetitions after a warm-up call; ms per batch. DeiT-Ti is "
        "timm's `deit_tiny_patch16_224`: flash = fused attention (`F.scaled_dot_product_attention`), explicit = "
        "q @ k^T and softmax.",
        "",
        table(rows),
        "",
        f"Requirement: the `torch` backend at least {TARGET_SPEEDUP:g}x faster than `reference`: "
        f"**{'met' if met else 'not met'}** (measured {worst:.2f}x to {best:.2f}x)."
        + (f" The opt-in `compiled` backend (the same chunked scan with its forward recurrence compiled by "
           f"torch.compile, pieces of 32 steps; its first call compiles) reached {min(compiled):.2f}x to "
           f"{max(compiled):.2f}x." if compiled else ""),
        "",
        "rel L2: each fast backend's `forward_features` output against the `reference` backend's on the same input. "
        "first call s: the `compiled` backend's warm-up call, which compiles its pieces for this batch size, or "
        "loads them from inductor's on-disk cache when an earlier process compiled them.",
        "",
        "## A floor",
        "",
        f"Any scan that computes its decays with `torch.exp` must evaluate {floor['elements_per_image'] / 1e6:.1f} M "
        f"exponentials per Vim-Ti image at 224 (24 blocks x 2 directions x 197 tokens x 384 channels x 16 states). "
        f"On a cache-resident buffer, with {floor['threads']} thread(s), that alone took "
        f"**{floor['ms_per_image']:.0f} ms per image** in this run. The `reference` backend is already vectorised "
        "over batch, channels and states (one step of the loop works on a [B, E, 16] slice that stays in cache), so "
        "it is not the slow yardstick the requirement assumed (the issue quotes ~1.3 s per 224 image for the official "
        "code's reference path); a backend 20x faster than it would need "
        f"{min(r['vim_reference_ms'] / r['batch'] for r in rows) / TARGET_SPEEDUP:.0f} ms per image or less "
        "for the whole model.",
    ]
    if prof is not None:
        text += [
            "",
            f"## Where the `torch` backend's time goes (batch {prof['batch']}, {prof['threads']} thread(s), "
            "one forward under torch.profiler)",
            "",
            profile_table(prof),
        ]
    if detail is not None:
        text += [
            "",
            "## The scan alone",
            "",
            "One direction's selective scan at Vim-Ti's shapes (24 blocks x 2 directions make 48 such calls per "
            "forward), timed alone, with the chunk size of the `torch` path varied (`chunk_elements`: elements of "
            "one [B, T, 384, 16] chunk buffer) and the piece size of the `compiled` one; and the softplus of delta, "
            "which every backend computes.",
            "",
            scan_table(detail),
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")


def _ints(text: str) -> List[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=_ints, default=[1, 8], help="comma list of batch sizes (default 1,8)")
    parser.add_argument("--threads", type=_ints, default=None,
                        help="comma list of CPU thread counts, each a full run (default: torch's default)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of the torch backend and DeiT")
    parser.add_argument("--ref-reps", type=int, default=3, help="timed repetitions of the (slow) reference backend")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the torch backend at the largest batch, and time the scan alone")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/cpu_speed.json")
    parser.add_argument("--doc", type=Path, default=None, help="write the markdown page here (docs/cpu_speed.md)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.ref_reps < 1:
        parser.error("--reps and --ref-reps must be at least 1")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "PYTHONPATH=src python benchmarks/cpu_speed.py " + shlex.join(argv_list)
    threads_list = args.threads or [torch.get_num_threads()]
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": f"Python {platform.python_version()}",
            "torch": torch.__version__, "timm": timm.__version__, "load_start": os.getloadavg()[0]}
    start = time.perf_counter()
    rows = []
    for threads in threads_list:
        rows += measure(args.batch, threads, args.reps, args.ref_reps)
    prof = profile_torch_backend(max(args.batch), min(threads_list)) if args.profile else None
    detail = scan_detail(max(args.batch), min(threads_list), args.reps) if args.profile else None
    floor = exp_floor(min(threads_list))
    info.update(load_end=os.getloadavg()[0], wall_s=time.perf_counter() - start)
    print()
    print(table(rows))
    if prof is not None:
        print()
        print(profile_table(prof))
        print()
        print(scan_table(detail))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "info": info, "rows": rows, "profile": prof,
                                    "scan_detail": detail, "exp_floor": floor}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    if args.doc is not None:
        write_doc(args.doc, command, info, rows, prof, floor, detail)
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
