"""Vim models in the timm template, registered in timm's registry on import."""
from .checkpoint import (CheckpointError, check_fit, checkpoint_classes, extract_state_dict, load_checkpoint,
                         read_checkpoint, save_state_dict)
from .vision_mamba import (
    VisionMamba,
    checkpoint_filter_fn,
    test_vim,
    test_vim_stride8,
    vim_base_patch16_224,
    vim_small_patch16_224,
    vim_small_patch16_stride8_224,
    vim_tiny_patch16_224,
    vim_tiny_patch16_stride8_224,
)

MODEL_NAMES = (
    "vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224", "vim_small_patch16_224",
    "vim_small_patch16_stride8_224", "vim_base_patch16_224", "test_vim", "test_vim_stride8",
)
