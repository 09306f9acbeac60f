"""Decode heads: UperNet (pyramid pooling + FPN fusion) and the auxiliary FCN head.

UperNet ("Unified Perceptual Parsing for Scene Understanding", Xiao et al., ECCV 2018), as used for the paper's
ADE20K numbers:

    top level  x3 -> PPM: x3 and avg-pool to 1/2/3/6 cells, 1x1 conv, upsample back; concat -> 3x3 conv -> p3
    lateral    x_i -> 1x1 conv -> l_i (i = 0, 1, 2); top-down: l_i += upsample(l_{i+1}) from p3 downwards
    output     p_i = 3x3 conv(l_i); upsample p1..p3 to p0's size; concat -> 3x3 conv -> dropout -> 1x1 classifier

Every conv is conv -> norm -> ReLU (torchvision's Conv2dNormActivation) except the classifier. The logits are at
the resolution of the finest level (stride 4); the loss and inference upsample them to the image.
"""
from __future__ import annotations

from functools import partial
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from .backbone import make_norm

__all__ = ["PyramidPooling", "UperNetHead", "FCNHead"]


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Module:
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, norm_layer=partial(make_norm, norm),
                                activation_layer=nn.ReLU)


def _resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _init_classifier(conv: nn.Conv2d) -> None:
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)


class PyramidPooling(nn.Module):
    """[B, C, H, W] -> [B, C + len(scales) * channels, H, W]: the input and its average-pooled summaries at each
    scale (1: global), each through a 1x1 conv and upsampled back."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6), norm: str = "bn"):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), _conv(in_channels, channels, 1, norm)) for scale in pool_scales)
        self.out_channels = in_channels + len(pool_scales) * channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [_resize(stage(x), size) for stage in self.stages], dim=1)


class UperNetHead(nn.Module):
    """Four maps [B, C_i, H_i, W_i] (finest first) -> logits [B, num_classes, H_0, W_0].

    Args:
        in_channels: channels of the four levels.
        channels: the head's width.
        num_classes: output classes.
        pool_scales: PPM cells per side.
        dropout: Dropout2d before the classifier.
        norm: 'bn' or 'gn'.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, norm: str = "bn"):
        super().__init__()
        self.in_channels = list(in_channels)
        self.ppm = PyramidPooling(self.in_channels[-1], channels, pool_scales, norm)
        self.ppm_fuse = _conv(self.ppm.out_channels, channels, 3, norm)
        self.laterals = nn.ModuleList(_conv(c, channels, 1, norm) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv(channels, channels, 3, norm) for _ in self.in_channels[:-1])
        self.fuse = _conv(len(self.in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        _init_classifier(self.classifier)

    def forward(self, features: List[Tensor]) -> Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"UperNetHead expects {len(self.in_channels)} feature maps, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.laterals, features[:-1])]
        laterals.append(self.ppm_fuse(self.ppm(features[-1])))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into fine
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0]] + [_resize(o, size) for o in outs[1:]], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """The auxiliary head: [B, C, H, W] -> 3x3 conv -> dropout -> 1x1 classifier -> [B, num_classes, H, W]."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1, norm: str = "bn"):
        super().__init__()
        self.conv = _conv(in_channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
        _init_classifier(self.classifier)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(x)))
