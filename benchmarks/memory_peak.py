"""Where an eager forward reaches its peak of GPU memory: the ops that raised the peak, with their outputs.

    PYTHONPATH=src python benchmarks/memory_peak.py --models vim_tiny,deit_tiny --res 1248 --batch 16

Runs ``forward_features`` under bf16 autocast and inference mode (as ``vision-mamba bench --mode infer`` does,
fp32 input) inside a TorchDispatchMode that reads ``torch.cuda.memory_allocated`` and ``max_memory_allocated``
after every aten op. Prints the baseline (weights and input), the peak, and the ops at which the peak rose, each
with its output shapes and the memory allocated after it. Kernels launched outside aten (Triton) allocate their
outputs through aten (``torch.empty``), so their buffers show up at that op.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MIB = 2 ** 20


class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.events = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [f"{tuple(t.shape)}:{str(t.dtype).replace('torch.', '')}" for t in tree_leaves(out)
                  if isinstance(t, torch.Tensor)]
        self.events.append((str(func), shapes, torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()))
        return out


def trace(name: str, res: int, batch: int):
    from host_overhead import build  # noqa: E402  (same directory)

    model = build(name, res, check_finite=False)
    x = torch.randn(batch, 3, res, res, device="cuda")

    def fn():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model.forward_features(x)

    fn()  # compile the kernels, create the handles
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    tr = _Trace()
    with tr:
        out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    rises, last = [], base
    for i, (op, shapes, alloc, pk) in enumerate(tr.events):
        if pk > last:
            rises.append(dict(index=i, op=op, outputs=shapes, allocated_mib=alloc / MIB, peak_mib=pk / MIB))
            last = pk
    return dict(model=name, res=res, batch=batch, baseline_mib=base / MIB, peak_mib=peak / MIB,
                peak_gib=peak / 2 ** 30, ops=len(tr.events), rises=rises)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vim_tiny,deit_tiny")
    p.add_argument("--res", type=int, default=1248)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--show", type=int, default=12, help="the last N rises of the peak printed per model")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("memory_peak.py reads CUDA memory statistics: no CUDA device here")
    results = []
    command = " ".join(sys.argv)
    for name in args.models.split(","):
        r = trace(name, args.res, args.batch)
        r["command"] = command
        results.append(r)
        print(f"\n{name} {args.res} px batch {args.batch}: baseline {r['baseline_mib']:.1f} MiB (weights, input), "
              f"peak {r['peak_mib']:.1f} MiB ({r['peak_gib']:.4f} GiB), {r['ops']} aten ops")
        for e in r["rises"][-args.show:]:
            print(f"  op {e['index']:>5} {e['op']:<40} allocated {e['allocated_mib']:8.1f}  peak {e['peak_mib']:8.1f}"
                  f"  {' '.join(e['outputs'])[:100]}")
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
