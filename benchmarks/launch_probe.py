"""Where a Triton launch's host time goes, for each kernel an eager Vim-Ti forward launches (224 px, batch 1 and 128,
bf16 autocast, inference mode), and a cProfile of whole forwards.

    PYTHONPATH=src python benchmarks/launch_probe.py --out DIR      (on a CUDA machine; writes DIR/probe_launch.json)

Per kernel, host microseconds per call (the best of three loops of 300, the GPU waited for only after each loop):
``full``: ``kernel[grid](...)`` as Triton launches it; ``binder``: Triton's argument binding and specialisation alone;
``cache_key``: its cache-key function; ``direct_run``: the compiled kernel's launcher called directly with the bound
arguments (what vision_mamba.ops.fast_launch does for a known key); ``pykey``: a Python specialisation key over the
bound arguments; ``stream_*`` / ``device``: looking up the current stream and device. The launches are recorded from
one forward through a wrapper of ``JITFunction.run``, with the Triton that is installed (session 14: 3.6).
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import time

import torch
import triton
from triton.runtime import driver
from triton.runtime.jit import JITFunction, compute_cache_key

import timm  # noqa
import vision_mamba  # noqa
from host_overhead import host_us  # (benchmarks/ is on the path when this file runs as a script)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default=".")
opts = parser.parse_args()
print("triton", triton.__version__, "torch", torch.__version__, flush=True)
records = []
orig_run = JITFunction.run


def rec_run(self, *args, grid, warmup, **kwargs):
    k = orig_run(self, *args, grid=grid, warmup=warmup, **kwargs)
    records.append((self, grid, args, dict(kwargs), k))
    return k


out = {}
for batch in (1, 128):
    model = timm.create_model("vim_tiny_patch16_224", check_finite=False).cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.forward_features(x)
        torch.cuda.synchronize()
        records.clear()
        JITFunction.run = rec_run
        model.forward_features(x)
        JITFunction.run = orig_run
        torch.cuda.synchronize()
        seen = {}
        for r in records:
            seen.setdefault(r[0].fn.__name__, r)
        res = {}
        dev = torch.cuda.current_device()
        for name, (kern, grid, args, kwargs, comp) in seen.items():
            kernel_cache, kernel_key_cache, target, backend, binder = kern.device_caches[dev]
            kw = dict(kwargs)
            full = lambda: kern[grid](*args, **kw)
            bound, spec, opts = binder(*args, **kw)
            vals = list(bound.values())
            stream = driver.active.get_current_stream(dev)
            g = tuple(grid) + (1,) * (3 - len(grid))
            run = comp.run
            fnc, pm = comp.function, comp.packed_metadata
            direct = lambda: run(g[0], g[1], g[2], stream, fnc, pm, None, None, None, *vals)

            def pykey(vals=vals):
                k = []
                for a in vals:
                    t = type(a)
                    if t is int:
                        k.append(1 if a == 1 else (a % 16 == 0) + 2 * (a > 2147483647))
                    elif t is torch.Tensor:
                        k.append((a.dtype, a.data_ptr() % 16 == 0))
                    else:
                        k.append(a)
                return tuple(k)

            def stream_torch():
                return torch.cuda.current_stream().cuda_stream

            res[name] = dict(
                n_args=len(vals),
                full=host_us(full),
                binder=host_us(lambda: binder(*args, **kw)),
                cache_key=host_us(lambda: compute_cache_key(kernel_key_cache, spec, opts)),
                direct_run=host_us(direct),
                pykey=host_us(pykey),
                stream_triton=host_us(lambda: driver.active.get_current_stream(dev)),
                stream_torch=host_us(stream_torch),
                device=host_us(lambda: driver.active.get_current_device()),
            )
            print(batch, name, {k: round(v, 1) if isinstance(v, float) else v for k, v in res[name].items()}, flush=True)
        out[f"b{batch}"] = res
        # cProfile of whole forwards
        prof = cProfile.Profile()
        for _ in range(3):
            model.forward_features(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            model.forward_features(x)
        host = (time.perf_counter() - t0) / 20 * 1e3
        torch.cuda.synchronize()
        print(f"batch {batch}: host ms per forward {host:.2f}, launches recorded {len(records)}", flush=True)
        prof.enable()
        for _ in range(10):
            model.forward_features(x)
        prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s).sort_stats("tottime")
        st.print_stats(40)
        st.sort_stats("cumtime").print_stats("vision_mamba", 40)
        print(s.getvalue())
        out[f"b{batch}_profile"] = s.getvalue()
        out[f"b{batch}_host_ms"] = host
os.makedirs(opts.out, exist_ok=True)
with open(os.path.join(opts.out, "probe_launch.json"), "w") as f:
    json.dump(out, f, indent=1)
