"""Where the GPU time of a Vim-Ti forward goes (224 px, batch 128, bf16 autocast, eager): the CUDA kernels of five
forwards, by total time.

    PYTHONPATH=src python benchmarks/infer_profile.py
"""
import torch, timm, vision_mamba  # noqa
from torch.profiler import profile, ProfilerActivity
m = timm.create_model("vim_tiny_patch16_224").cuda().eval()
x = torch.randn(128, 3, 224, 224, device="cuda")
with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
    for _ in range(3):
        m.forward_features(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5):
            m.forward_features(x)
        torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60))
