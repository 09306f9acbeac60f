"""The ViTDet recipe around a plain backbone (Li et al., "Exploring Plain Vision Transformer Backbones for Object
Detection", ECCV 2022), as the Vim paper uses it for detection.

A plain backbone (Vim without class token, or a timm ViT / DeiT whose class token is dropped from the map) runs at
one fixed square size; the output of its last block (for Vim the residual stream, residual + hidden, without the
final norm) is one stride-16 map. The simple feature pyramid turns it into P2-P6:

    [B, D, S/16, S/16] --(ConvT 2x2 s2, LN, GELU, ConvT 2x2 s2)--> [B, D/4, S/4,  S/4 ]  -> P2
                       --(ConvT 2x2 s2)------------------------> [B, D/2, S/8,  S/8 ]  -> P3
                       --(identity)----------------------------> [B, D,   S/16, S/16]  -> P4
                       --(MaxPool 2x2)-------------------------> [B, D,   S/32, S/32]  -> P5 -> MaxPool(1, s2) -> P6

each level through 1x1 conv -> LayerNorm -> 3x3 conv -> LayerNorm to ``out_channels`` (256).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Optional

import timm
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from ...engine.config import ConfigError, constructed
from .amp import AutocastMixin

__all__ = ["SimpleFeaturePyramid", "ViTDetBackbone", "create_trunk", "is_vim_model"]

_logger = logging.getLogger(__name__)

LEVEL_NAMES = ("p2", "p3", "p4", "p5", "p6")


def is_vim_model(name: str) -> bool:
    """Whether the timm model ``name`` is one of this package's Vim models."""
    import vision_mamba  # noqa: F401  (registers the Vim models)

    try:
        entry = timm.models.model_entrypoint(name)
    except Exception:
        return False
    return getattr(entry, "__module__", "").startswith("vision_mamba.")


def create_trunk(name: str, img_size: int, drop_path_rate: float = 0.0, init: Optional[str] = None,
                 **kwargs: Any) -> nn.Module:
    """A timm backbone for a fixed ``img_size`` square, without classifier head and final norm.

    Vim is built without class token (``class_token=None``), as in the paper's detection setup; a ViT / DeiT keeps
    its class token inside (its checkpoints need it) and it is dropped from the feature map. ``init``: a
    classification checkpoint (safetensors / .pth): its position embedding is resized to the detection grid, its
    head and (for Vim) its class token are dropped.
    """
    import vision_mamba  # noqa: F401
    from vision_mamba.models.checkpoint import CheckpointError, load_checkpoint, whole_model_error

    common = dict(pretrained=False, img_size=img_size, num_classes=0, drop_path_rate=drop_path_rate)
    if is_vim_model(name):
        # Through the registered constructor: timm.create_model drops keyword arguments that are None, and
        # class_token=None would silently give a model *with* the class token.
        trunk = constructed(lambda: timm.models.model_entrypoint(name)(**common, **{"class_token": None,
                                                                               "global_pool": "avg", **kwargs}),
                       name, kwargs)
        if trunk.has_class_token:
            raise ValueError(f"{name}: asked for a Vim without class token but got one")
    else:
        trunk = constructed(lambda: timm.create_model(name, **common, **kwargs), name, kwargs)
    if not hasattr(trunk, "forward_intermediates"):
        raise ValueError(f"timm model {name!r} has no forward_intermediates(); a plain ViT-like backbone is needed")
    if init:
        try:
            report = load_checkpoint(trunk, init, strict=True, adapt_head=True)
        except CheckpointError:
            # a whole detector or segmentation model: one line, not its lists of keys
            error = whole_model_error(init, "model.init (--init)", "det-train", "with --set train.iters=N")
            if error:
                raise error from None
            raise
        _logger.info("backbone initialised from %s (left out: %s)", init, report.get("skipped"))
    depth = len(trunk.feature_info) if isinstance(getattr(trunk, "feature_info", None), list) else None
    if hasattr(trunk, "prune_intermediate_layers") and depth:
        # The last block's output is used without the final norm (ViTDet): drop norm and head so that no
        # parameter goes without a gradient.
        trunk.prune_intermediate_layers(indices=[depth - 1], prune_norm=True, prune_head=True)
    return trunk


def _level_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        LayerNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_channels),
    )


class SimpleFeaturePyramid(nn.Module):
    """One stride-16 map [B, D, h, w] -> OrderedDict p2..p6 of [B, out_channels, 4h / 2**(k-2)...]:
    p2 [B, C, 4h, 4w], p3 [B, C, 2h, 2w], p4 [B, C, h, w], p5 [B, C, h/2, w/2], p6 [B, C, h/4, w/4]."""

    def __init__(self, in_channels: int, out_channels: int = 256):
        super().__init__()
        d = in_channels
        self.scale4 = nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, kernel_size=2, stride=2),
            LayerNorm2d(d // 2),
            nn.GELU(),
            nn.ConvTranspose2d(d // 2, d // 4, kernel_size=2, stride=2),
        )
        self.scale2 = nn.ConvTranspose2d(d, d // 2, kernel_size=2, stride=2)
        self.scale05 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_p2 = _level_block(d // 4, out_channels)
        self.out_p3 = _level_block(d // 2, out_channels)
        self.out_p4 = _level_block(d, out_channels)
        self.out_p5 = _level_block(d, out_channels)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        p2 = self.out_p2(self.scale4(x))
        p3 = self.out_p3(self.scale2(x))
        p4 = self.out_p4(x)
        p5 = self.out_p5(self.scale05(x))
        p6 = F.max_pool2d(p5, kernel_size=1, stride=2)  # ViTDet's extra level: subsample P5
        return OrderedDict(zip(LEVEL_NAMES, (p2, p3, p4, p5, p6)))


class ViTDetBackbone(AutocastMixin, nn.Module):
    """Plain backbone + simple feature pyramid, in the form torchvision's MaskRCNN takes (``out_channels``).

    Images [B, 3, S, S] (S = ``img_size``, exactly) -> OrderedDict p2..p6 of [B, out_channels, S/4 .. S/64].
    """

    def __init__(self, trunk: nn.Module, img_size: int, out_channels: int = 256):
        super().__init__()
        info = trunk.feature_info[-1] if isinstance(getattr(trunk, "feature_info", None), list) else {}
        stride = info.get("reduction", 16)
        if stride != 16:
            raise ConfigError(f"model.backbone: the simple feature pyramid expects a stride-16 backbone; this one has "
                              f"stride {stride}")
        self.trunk = trunk
        self.img_size = int(img_size)
        self.embed_dim = int(info.get("num_chs", getattr(trunk, "embed_dim", 0)))
        self.block_index = len(trunk.feature_info) - 1
        self.pyramid = SimpleFeaturePyramid(self.embed_dim, out_channels)
        self.out_channels = out_channels

    def forward_map(self, images: Tensor) -> Tensor:
        """Images [B, 3, S, S] -> the last block's output [B, D, S/16, S/16] (no class token, no final norm)."""
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"the detection backbone takes {self.img_size}x{self.img_size} inputs; got "
                             f"{tuple(images.shape[-2:])} (the model's transform pads to that size)")
        return self.trunk.forward_intermediates(images, indices=[self.block_index], norm=False,
                                                output_fmt="NCHW", intermediates_only=True)[0]

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        return self.pyramid(self.forward_map(images))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.trunk, "set_grad_checkpointing"):
            self.trunk.set_grad_checkpointing(enable)
