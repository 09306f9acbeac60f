"""Where the GPU time of a forward (inference) and of a training step goes, by kind of kernel, Vim next to DeiT.

    PYTHONPATH=src python benchmarks/step_breakdown.py --out breakdown.json
    PYTHONPATH=src python benchmarks/step_breakdown.py --models vim_tiny --cases infer:1248:16
    PYTHONPATH=src python benchmarks/step_breakdown.py --models vim_tiny --cases train:224:128 --ops 40

Each case runs eagerly under torch.profiler (CUDA activity only) for --steps iterations after warm-up; the CUDA time
of every kernel is summed and divided by the number of iterations, then grouped into categories by kernel name
(scan forward / backward, conv, matrix products, norms, attention, optimizer, elementwise and the rest). The sum
is the GPU's busy time per iteration: what a CUDA-graph replay of the same work takes, less the gaps between
kernels. A training step is forward, loss, backward, gradient clipping and fused AdamW in bf16 autocast, as
``vision-mamba bench --mode train`` runs it.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch
import torch.nn.functional as F

CATEGORIES = [  # first match wins
    ("scan backward", r"scan_bwd|adjoint_chunk"),
    ("scan forward", r"scan_fwd|chunk_carry"),
    ("conv1d (Triton)", r"conv_bwd|conv_fwd"),
    ("add + RMSNorm (Triton)", r"rms_norm"),
    ("glue (Triton)", r"pair_sum"),
    ("attention", r"flash|fmha|attention|softmax"),
    ("optimizer", r"adam|Adam|multi_tensor|foreach"),
    ("matrix products", r"gemm|nvjet|cutlass|sm90_xmma|sm80_xmma|cublas|splitK|Kernel2|ampere|hopper"),
    ("layer norm", r"layer_norm|LayerNorm"),
    ("reductions", r"reduce|Reduce|norm_kernel"),
    ("copies / casts", r"copy|Copy|cat|Cat|to_copy|fill|Fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|Elementwise"),
]


def category(name: str) -> str:
    for cat, pat in CATEGORIES:
        if re.search(pat, name):
            return cat
    return "other"


def kernel_times(fn, steps: int):
    """{kernel name: (us per iteration, launches per iteration)} of ``fn`` over ``steps`` iterations."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    out = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        dur = getattr(ev, "device_time", None)
        if dur is None:
            dur = ev.cuda_time
        out[ev.name][0] += dur / steps
        out[ev.name][1] += 1
    return {k: (v[0], v[1] / steps) for k, v in out.items()}


def op_table(fn, steps: int, rows: int) -> str:
    """The aten ops (with their input shapes) that launched the most GPU time, per iteration: which call site a
    kernel of the category table comes from."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    averages = prof.key_averages(group_by_input_shape=True)
    for sort in ("self_device_time_total", "self_cuda_time_total"):
        try:
            return averages.table(sort_by=sort, row_limit=rows, max_name_column_width=40,
                                  max_shapes_column_width=90)
        except (AttributeError, KeyError, ValueError):
            continue
    return averages.table(row_limit=rows)


def build(name: str, res: int):
    import timm

    import vision_mamba  # noqa: F401  (registers the models)

    full = {"vim_tiny": "vim_tiny_patch16_224", "vim_small": "vim_small_patch16_224",
            "deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224"}.get(name, name)
    kw = dict(img_size=res)
    model = timm.create_model(full, **kw).cuda()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    return model


def case_fn(model, mode: str, res: int, batch: int):
    x = torch.randn(batch, 3, res, res, device="cuda")
    if mode == "infer":
        model.eval()

        def fn():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                model.forward_features(x)
        return fn
    model.train()
    y = torch.randint(0, model.num_classes, (batch,), device="cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

    def fn():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return fn


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vim_tiny,deit_tiny")
    p.add_argument("--cases", default="infer:224:128,train:224:128,infer:1248:16",
                   help="comma-separated mode:res:batch (mode: infer or train)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=25, help="kernels listed per model and case")
    p.add_argument("--ops", type=int, default=0, help="also list the N aten ops (with shapes) that launched the most")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (it profiles CUDA kernels)")
    torch.backends.cuda.matmul.allow_tf32 = True
    records = []
    for spec in args.cases.split(","):
        mode, res, batch = spec.split(":")
        res, batch = int(res), int(batch)
        for name in args.models.split(","):
            model = build(name, res)
            times = kernel_times(case_fn(model, mode, res, batch), args.steps)
            cats = defaultdict(lambda: [0.0, 0.0])
            for k, (us, n) in times.items():
                c = category(k)
                cats[c][0] += us
                cats[c][1] += n
            total = sum(us for us, _ in times.values())
            rec = dict(model=name, mode=mode, res=res, batch=batch, busy_ms=total / 1e3,
                       launches=sum(n for _, n in times.values()),
                       categories={c: dict(ms=v[0] / 1e3, launches=v[1]) for c, v in cats.items()},
                       kernels={k: dict(us=us, launches=n) for k, (us, n) in times.items()},
                       device=torch.cuda.get_device_name(), torch=torch.__version__)
            records.append(rec)
            print(f"\n== {name} {mode} {res} px batch {batch}: GPU busy {total / 1e3:.3f} ms per iteration, "
                  f"{rec['launches']:.0f} kernels")
            for c, v in sorted(cats.items(), key=lambda kv: -kv[1][0]):
                print(f"  {c:<26} {v[0] / 1e3:8.3f} ms  {100 * v[0] / total:5.1f}%  {v[1]:6.0f} launches")
            print("  top kernels (us per iteration, launches):")
            for k, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0])[:args.top]:
                print(f"    {us:9.1f} {n:5.0f}  [{category(k)}] {k[:110]}")
            if args.ops:
                print(op_table(case_fn(model, mode, res, batch), args.steps, args.ops))
            del model
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
