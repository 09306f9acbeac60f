"""Vision Mamba (Vim) for PyTorch.

    import timm, vision_mamba
    model = timm.create_model("vim_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file="vim_t_midclstok_76p1acc.pth"))

Importing the package registers the models in timm's registry.
"""
__version__ = "0.1.0"

from .models import (  # noqa: F401  (registers the models with timm)
    MODEL_NAMES,
    CheckpointError,
    VisionMamba,
    load_checkpoint,
    read_checkpoint,
    save_state_dict,
)
from .inference import CUDAGraphInference  # noqa: F401
from .ops import get_scan_backend, scan_backend, set_scan_backend  # noqa: F401

__all__ = [
    "MODEL_NAMES", "CheckpointError", "VisionMamba", "load_checkpoint", "read_checkpoint", "save_state_dict",
    "get_scan_backend", "scan_backend", "set_scan_backend", "CUDAGraphInference",
]
