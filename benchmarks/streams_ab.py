"""Does splitting a batch over concurrent CUDA streams pay? Graphed inference of Vim and DeiT (timm), each batch
run whole on one stream, or as ``k`` equal parts on ``k`` streams forked inside one CUDA graph (the parts are
independent, so the GPU may run one part's scan beside another part's matrix products). Every model gets the same
treatment; each split is checked against the whole batch's output.

    PYTHONPATH=src python benchmarks/streams_ab.py --models vim_tiny_patch16_224,deit_tiny_patch16_224 \
        --cases 224:128,1248:16 --splits 1,2 --out results.json

Prints one line per (model, case, split): img/s (median over repeats of timed replays), peak GiB, relative error.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

_SIDE_STREAMS: list = []


def split_forward(fn, x: torch.Tensor, parts: int) -> torch.Tensor:
    """``fn(x)`` as ``parts`` slices of the batch, the first on the current stream, each other on a side stream of
    its own (forked from the current one and joined back), concatenated."""
    if parts <= 1:
        return fn(x)
    current = torch.cuda.current_stream()
    while len(_SIDE_STREAMS) < parts - 1:
        _SIDE_STREAMS.append(torch.cuda.Stream())
    side = _SIDE_STREAMS[:parts - 1]
    slices = x.tensor_split(parts)
    for stream in side:
        stream.wait_stream(current)
    outs = [fn(slices[0])]
    for stream, piece in zip(side, slices[1:]):
        with torch.cuda.stream(stream):
            outs.append(fn(piece))
    for stream in side:
        current.wait_stream(stream)
    return torch.cat(outs)


def build(name: str, res: int, attn: str) -> torch.nn.Module:
    import timm

    import vision_mamba  # noqa: F401  (registers the Vim models)
    from vision_mamba.bench.core import is_vim, set_attention

    model = timm.create_model(name, pretrained=False, img_size=res).cuda().eval()
    if not is_vim(name):
        set_attention(model, attn)
    return model


def capture(fn, x: torch.Tensor, splits: int, warmup: int = 3):
    def call():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return split_forward(fn, x, splits)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    return graph, out


def time_graph(graph, reps: int, per_rep: int) -> list:
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(per_rep):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / per_rep)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vim_tiny_patch16_224,deit_tiny_patch16_224")
    p.add_argument("--cases", default="224:128,1248:16", help="res:batch pairs, comma separated")
    p.add_argument("--splits", default="1,2")
    p.add_argument("--attn", default="flash")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--min-rep-time", type=float, default=0.25, help="seconds of replays a repeat, at least")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    records = []
    for case in args.cases.split(","):
        res, batch = (int(v) for v in case.split(":"))
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = build(name, res, args.attn)
            x = torch.randn(batch, 3, res, res, device="cuda")
            ref = None
            for k in (int(v) for v in args.splits.split(",")):
                if batch % k:
                    continue
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                graph, out = capture(model.forward_features, x, k)
                graph.replay()
                torch.cuda.synchronize()
                probe = time.perf_counter()
                graph.replay()
                torch.cuda.synchronize()
                one = max(time.perf_counter() - probe, 1e-5)
                per_rep = max(3, int(args.min_rep_time / one))
                times = time_graph(graph, args.reps, per_rep)
                peak = (torch.cuda.max_memory_allocated() - base) / 2**30
                res_out = out.float().clone()
                if ref is None:
                    ref = res_out
                err = float((res_out - ref).norm() / ref.norm().clamp_min(1e-30))
                ms = statistics.median(times) * 1e3
                rec = dict(model=name, res=res, batch=batch, splits=k, img_s=batch / (ms / 1e3), ms=ms,
                           ms_min=min(times) * 1e3, ms_max=max(times) * 1e3, peak_gib=peak, rel_err_vs_1=err,
                           setup_s=time.perf_counter() - t0)
                records.append(rec)
                print(f"{name:24s} {res:5d}px b{batch:<4d} streams {k}: {rec['img_s']:9.1f} img/s  "
                      f"({ms:.3f} ms, {rec['ms_min']:.3f}-{rec['ms_max']:.3f})  peak {peak:.3f} GiB  "
                      f"err vs 1 stream {err:.2e}", flush=True)
                del graph, out
            del model, x, ref
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
