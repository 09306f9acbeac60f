"""Where the GPU time of a Vim forward goes (eager, bf16 autocast): the CUDA kernels of a few forwards, by total
time. Needs a CUDA device.

    PYTHONPATH=src python benchmarks/infer_profile.py [--model vim_tiny_patch16_224] [--res 224] [--batch 128]
"""
import argparse

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import vision_mamba  # noqa: F401  (registers the models)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vim_tiny_patch16_224")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5, help="profiled forwards (after 3 warm-up ones)")
    parser.add_argument("--rows", type=int, default=22, help="kernels listed")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    m = timm.create_model(args.model, img_size=args.res).cuda().eval()
    x = torch.randn(args.batch, 3, args.res, args.res, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            m.forward_features(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(args.iters):
                m.forward_features(x)
            torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
