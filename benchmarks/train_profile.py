"""Where a training step's time goes on the GPU: the device-resident augmentation, Mixup / CutMix, and the model
step (forward, loss, backward, clipping, AdamW), each timed alone, then together as the trainer runs them.

    PYTHONPATH=src python benchmarks/train_profile.py --img-size 128 --batch 256 --out profile.json

The augmentation runs on random uint8 images of the resident size (the content does not change its cost); the
recipe is configs/imagenette/vim_tiny.yaml's. Times are medians over --steps steps after warm-up, synchronised
around each part (so "together" is the sum as the trainer sees it, including the per-step host sync of the
non-finite-loss check). On CUDA the model step is also timed replayed from a CUDA graph (train/graphed.py), alone
and with the augmentation, as the trainer runs it."""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, steps, warmup=3):
    for _ in range(warmup):
        fn()
    _sync()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2

    from vision_mamba.data.resident import DeviceAugment
    from vision_mamba.train.graphed import TrainStep
    from vision_mamba.train.model import create_classifier

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--resident-size", type=int, default=160)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--models", default="vim_tiny_patch16_224,deit_tiny_patch16_224")
    p.add_argument("--out", default=None)
    p.add_argument("--trace", type=int, default=0, help="print the N most expensive GPU kernels of a model step")
    args = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # (cpu: a smoke test only)
    torch.backends.cuda.matmul.allow_tf32 = True
    images = torch.randint(0, 256, (2048, 3, args.resident_size, args.resident_size), dtype=torch.uint8, device=dev)
    targets = torch.randint(0, 10, (2048,), device=dev)
    aug = DeviceAugment(args.img_size, scale=(0.25, 1.0), auto_augment="rand-m9-mstd0.5-inc1", group_size=16,
                        re_prob=0.25, device=dev)
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)

    def batch():
        idx = torch.randint(0, images.shape[0], (args.batch,), device=dev)
        return images.index_select(0, idx), targets.index_select(0, idx)

    raw, tgt = batch()
    rec = dict(img_size=args.img_size, batch=args.batch,
               device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
               torch=torch.__version__)
    rec["augment_ms"] = 1e3 * timed(lambda: aug(raw), args.steps)
    x = aug(raw)
    rec["mixup_ms"] = 1e3 * timed(lambda: mix(x.clone(), tgt), args.steps)
    rec["models"] = {}
    for name in args.models.split(","):
        model = create_classifier(name, num_classes=10, img_size=args.img_size, drop_path=0.1).to(dev)
        opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, filter_bias_and_bn=True)
        crit = SoftTargetCrossEntropy()
        xm, ym = mix(x.clone(), tgt)
        params = [q for q in model.parameters() if q.requires_grad]

        def step(inp=xm, lab=ym, sync_check=False):
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = crit(model(inp), lab)
            if sync_check:
                bool(torch.isfinite(loss).item())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def forward_only():
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                model(xm)

        def full():
            r, t = batch()
            inp, lab = mix(aug(r), t)
            step(inp, lab, sync_check=True)

        m = dict(step_ms=1e3 * timed(step, args.steps), forward_ms=1e3 * timed(forward_only, args.steps),
                 full_ms=1e3 * timed(full, args.steps))
        if dev.type == "cuda":  # the same step (fused AdamW) replayed from a CUDA graph, as the trainer runs it
            gopt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, filter_bias_and_bn=True,
                                       fused=True)
            gstep = TrainStep(model, crit, gopt, device=dev, amp_dtype=torch.bfloat16, graph=True, clip_grad=1.0)

            def graph_full():
                r, t = batch()
                inp, lab = mix(aug(r), t)
                bool(torch.isfinite(gstep(inp, lab)).item())

            m["graph_step_ms"] = 1e3 * timed(lambda: gstep(xm, ym), args.steps, warmup=5)
            m["graph_full_ms"] = 1e3 * timed(graph_full, args.steps)
            m["graph_step_img_s"] = args.batch / m["graph_step_ms"] * 1e3
            m["graph_full_img_s"] = args.batch / m["graph_full_ms"] * 1e3
        if args.trace and dev.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
            print(f"== {name}: GPU time per kernel over 3 steps")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.trace, max_name_column_width=70))
        m["step_img_s"] = args.batch / m["step_ms"] * 1e3
        m["full_img_s"] = args.batch / m["full_ms"] * 1e3
        rec["models"][name] = m
        print(name, json.dumps(m), flush=True)
        del model, opt
        torch.cuda.empty_cache()
    print(json.dumps(rec, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
