"""How much host (Python and launch) time an eager forward costs, Vim next to DeiT, and where Vim's goes.

    PYTHONPATH=src python benchmarks/host_overhead.py --out host.json
    PYTHONPATH=src python benchmarks/host_overhead.py --cases 224:1,224:128 --profile 40

For each model and case (resolution:batch), an eager ``forward_features`` under bf16 autocast and inference mode:
- ``host_ms``: the host's time to issue one forward (the mean of many forwards issued back to back, with the
  GPU's work waited for only at the end; at batch 1 the GPU's part is small, so this is the Python and launch
  cost a user of the eager model pays per call);
- ``wall_ms``: the same loop's wall time per forward, sync included (the larger of host and GPU time);
- ``gpu_ms`` and ``launches``: the GPU's busy time and the number of kernels per forward (torch.profiler);
- with ``--profile N``, cProfile's N most expensive functions (own time) of Vim's forwards;
- with ``--runner``, also ``runner_ms``: the wall time per call of ``vision_mamba.CUDAGraphInference`` around the same
  forward (a CUDA-graph replay with the input copied in and the output copied out);
- with ``--micro``, the host time of one call of each piece of a Vim block (batch 1 of the first case): the block,
  its add + RMSNorm, in_proj, the mixer's parts, and for scale a bare matrix product and ``torch.empty``.

Vim's input check (``check_finite``, one host sync per forward) is off unless ``--check-finite``.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import io
import json
import pstats
import sys
import time

import torch


def build(name: str, res: int, check_finite: bool):
    import timm

    import vision_mamba  # noqa: F401  (registers the models)

    full = {"vim_tiny": "vim_tiny_patch16_224", "vim_small": "vim_small_patch16_224",
            "deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224"}.get(name, name)
    kw = dict(img_size=res)
    if full.startswith("vim"):
        kw["check_finite"] = check_finite
    model = timm.create_model(full, **kw).cuda().eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    return model


def gpu_profile(fn, steps: int):
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    busy, launches = 0.0, 0
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        dur = getattr(ev, "device_time", None)
        busy += (ev.cuda_time if dur is None else dur)
        launches += 1
    return busy / steps / 1e3, launches / steps


def host_us(fn, iters: int = 300) -> float:
    """Host microseconds per call of ``fn``, calls issued back to back (GPU work small enough to keep up)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters)
        torch.cuda.synchronize()
    return best * 1e6


def micro(res: int, batch: int):
    """Host time of the pieces of one Vim-Ti block, in us per call (the fastest of three loops)."""
    import vision_mamba.ops.selective_scan.triton_scan as ts
    from vision_mamba.ops.rms_norm import add_rms_norm

    model = build("vim_tiny", res, False)
    x = torch.randn(batch, 3, res, res, device="cuda")
    out = {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        hidden, _ = model.embed(x)
        layer = model.layers[3]
        residual = hidden.float()
        normed, _ = add_rms_norm(hidden, residual, layer.norm.weight, layer.norm.eps, layer.residual_in_fp32)
        mixer = layer.mixer
        xz = mixer.in_proj(normed)
        fwd, bwd = mixer.direction_params(False), mixer.direction_params(True)
        E = xz.shape[-1] // 2
        xpart = xz[..., :E]
        cfg = ts._config()
        R = fwd.dt_proj_weight.shape[1]
        rank_cols = ts._rank_cols(R, cfg["rows_pad"], fwd.A_log.shape[1])
        pieces = {
            "whole forward_features": lambda: model.forward_features(x),
            "block": lambda: layer(hidden, residual),
            "add + RMSNorm": lambda: add_rms_norm(hidden, residual, layer.norm.weight, layer.norm.eps,
                                                  layer.residual_in_fp32),
            "mixer": lambda: mixer(normed),
            "in_proj (F.linear, autocast)": lambda: mixer.in_proj(normed),
            "bimamba_inner_triton": lambda: ts.bimamba_inner_triton(xz, fwd, bwd, mixer.out_proj.weight, None),
            "direction_params x2": lambda: (mixer.direction_params(False), mixer.direction_params(True)),
            "_config": ts._config,
            "conv_forward (Triton)": lambda: ts.conv_forward(xpart, fwd.conv_weight, bwd.conv_weight, fwd.conv_bias,
                                                             bwd.conv_bias, cfg),
            "conv + x_proj rows": lambda: ts._conv_and_rows(xpart, (fwd.x_proj_weight, fwd.conv_weight, fwd.conv_bias),
                                                            (bwd.x_proj_weight, bwd.conv_weight, bwd.conv_bias),
                                                            R, True, cfg),
            "torch.mm [M,E]x[E,48]": lambda: torch.mm(xpart.reshape(-1, E), fwd.x_proj_weight.to(xz.dtype)[:48].t()),
            "weight .to(bf16)": lambda: fwd.x_proj_weight.to(xz.dtype),
            "torch.empty": lambda: torch.empty(64, device="cuda"),
        }
        made = ts._conv_and_rows(xpart, (fwd.x_proj_weight, fwd.conv_weight, fwd.conv_bias),
                                 (bwd.x_proj_weight, bwd.conv_weight, bwd.conv_bias), R, True, cfg)
        xs = made[0]
        # (xs, rows of both directions, weights) since session 13; (xs, rows_f, rows_b) before
        dbl_f, dbl_b = (made[1][0], made[1][1]) if made[1].dim() == 4 else (made[1], made[2])
        pieces["scan (Gluon / Triton launch)"] = lambda: ts._bi_scan_inplace(xs, xpart, dbl_f, dbl_b, fwd, bwd, cfg)
        pieces["out_proj of both directions"] = lambda: ts._out_proj_directions(xs, mixer.out_proj.weight, None)
        N = fwd.A_log.shape[1]
        bi = (xs, xpart, dbl_f, dbl_b, fwd.dt_proj_weight, bwd.dt_proj_weight, fwd.dt_proj_bias, bwd.dt_proj_bias,
              fwd.A_log, bwd.A_log, fwd.D, bwd.D, R, N)
        args = ts._bi_args(*bi)
        B_, L_ = xpart.shape[:2]
        pieces["  _bi_args"] = lambda: ts._bi_args(*bi)
        pieces["  _forward_plan"] = lambda: ts._forward_plan(cfg, B_, L_, E, 2, xs.device)
        pieces["  rows_in_fp32"] = lambda: ts.rows_in_fp32(cfg, xs.device, xs.dtype, B_, L_, E, N, training=False)
        if hasattr(ts, "mixer_weights"):
            pieces["  mixer_weights (one Triton launch)"] = lambda: ts.mixer_weights(
                fwd.x_proj_weight, bwd.x_proj_weight, mixer.out_proj.weight, R, rank_cols, xz.dtype)
        pieces["  xproj_weight_pair + _half_weight"] = lambda: (
            ts.xproj_weight_pair(fwd.x_proj_weight, bwd.x_proj_weight, R, rank_cols, xz.dtype),
            ts._half_weight(mixer.out_proj.weight, xz.dtype))
        if hasattr(ts, "_launch_gluon_onepass"):
            yv = xs.permute(1, 2, 0, 3)
            pieces["  Gluon one-pass launch alone"] = lambda: ts._launch_gluon_onepass(args, yv)
        try:
            from vision_mamba.ops.rms_norm_triton import add_rms_norm_triton
            pieces["add_rms_norm_triton"] = lambda: add_rms_norm_triton(hidden, residual, layer.norm.weight,
                                                                        layer.norm.eps, True, torch.bfloat16)
        except ImportError:
            pass

        class _Nothing(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t):
                return t

            @staticmethod
            def backward(ctx, g):
                return g

        pieces["autograd.Function.apply (identity)"] = lambda: _Nothing.apply(hidden)
        import gc
        gc.collect()
        gc.disable()
        try:
            for name, fn in pieces.items():
                out[name] = round(host_us(fn, 20 if name.startswith("whole") else 300), 1)
                print(f"  {name:<36} {out[name]:10.1f} us", flush=True)
        finally:
            gc.enable()
        if os.environ.get("HOST_OVERHEAD_CALLERS"):
            prof = cProfile.Profile()
            fn = pieces["scan (Gluon / Triton launch)"]
            prof.enable()
            for _ in range(200):
                fn()
            prof.disable()
            torch.cuda.synchronize()
            st = pstats.Stats(prof).sort_stats("tottime")
            st.print_stats(25)
            st.print_callers("__call__")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vim_tiny,deit_tiny")
    p.add_argument("--cases", default="224:1,224:128", help="comma-separated res:batch")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--profile", type=int, default=0, help="cProfile's top N functions of Vim's forwards")
    p.add_argument("--check-finite", action="store_true")
    p.add_argument("--micro", action="store_true", help="host time of each piece of a Vim block")
    p.add_argument("--runner", action="store_true", help="also time CUDAGraphInference around the forward")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_overhead.py measures CUDA launches: no CUDA device here")
    records, micro_us = [], None
    if args.micro:
        res, _ = (int(v) for v in args.cases.split(",")[0].split(":"))
        print(f"host time per call, Vim-Ti block pieces ({res} px, batch 1):")
        micro_us = micro(res, 1)
    # every host timing first, the profiles after: a torch.profiler session slows later launches in its process
    runs = []
    for case in args.cases.split(","):
        res, batch = (int(v) for v in case.split(":"))
        for name in args.models.split(","):
            model = build(name, res, args.check_finite)
            x = torch.randn(batch, 3, res, res, device="cuda")

            def fn(model=model, x=x):
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                    return model.forward_features(x)

            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                fn()
            host = (time.perf_counter() - t0) / args.iters
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / args.iters
            runner_ms = None
            if args.runner:
                from vision_mamba import CUDAGraphInference

                runner = CUDAGraphInference(model.forward_features)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    for _ in range(3):
                        runner(x)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(args.iters):
                        runner(x)
                    torch.cuda.synchronize()
                runner_ms = (time.perf_counter() - t0) / args.iters * 1e3
                del runner
            runs.append((name, res, batch, fn, host, wall, runner_ms))
            print(f"{name} {res} px batch {batch}: host {host * 1e3:.3f} ms, wall {wall * 1e3:.3f} ms"
                  + (f", CUDAGraphInference {runner_ms:.3f} ms" if runner_ms else ""), flush=True)
    for name, res, batch, fn, host, wall, runner_ms in runs:
        gpu_ms, launches = gpu_profile(fn, 5)
        rec = dict(model=name, res=res, batch=batch, host_ms=round(host * 1e3, 3), wall_ms=round(wall * 1e3, 3),
                   gpu_ms=round(gpu_ms, 3), launches=launches, check_finite=args.check_finite,
                   runner_ms=round(runner_ms, 3) if runner_ms else None)
        if args.profile and name.startswith("vim"):
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile)
            rec["profile"] = buf.getvalue()
            print(rec["profile"][-6000:])
        records.append(rec)
    del runs
    print(f"\n{'model':<10} {'res':>5} {'batch':>5} {'host ms':>8} {'wall ms':>8} {'gpu ms':>8} {'launches':>8}"
          f" {'graph ms':>8}")
    for r in records:
        graph = f"{r['runner_ms']:>8.3f}" if r["runner_ms"] else f"{'-':>8}"
        print(f"{r['model']:<10} {r['res']:>5} {r['batch']:>5} {r['host_ms']:>8.3f} {r['wall_ms']:>8.3f} "
              f"{r['gpu_ms']:>8.3f} {r['launches']:>8.0f} {graph}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(records=records, micro_us=micro_us, command=" ".join(sys.argv), torch=torch.__version__,
                           device=torch.cuda.get_device_name()), f, indent=1)


if __name__ == "__main__":
    main()
