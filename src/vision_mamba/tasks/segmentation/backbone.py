"""A plain backbone (Vim, or any timm ViT / DeiT) as a 4-level feature pyramid for dense heads.

The backbone gives maps at one stride s (its patch stride, 16) through ``forward_intermediates``: the outputs of
four blocks (5, 11, 17, 23 for 24 blocks), class token removed, [B, D, H/s, W/s]. As in the paper (after BEiT),
they become strides s/4, s/2, s, 2s by

    level 0: ConvTranspose2d(k2, s2) -> norm -> GELU -> ConvTranspose2d(k2, s2)     (x4)
    level 1: ConvTranspose2d(k2, s2)                                                (x2)
    level 2: identity
    level 3: MaxPool2d(2)                                                           (x1/2)

The same adapter serves Vim and DeiT, so the two are compared with identical necks and heads.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import timm
from torch import Tensor, nn

from ...engine.config import constructed
from ...models.checkpoint import CheckpointError, load_checkpoint, whole_model_error

__all__ = ["default_out_indices", "make_norm", "PyramidAdapter", "create_backbone"]


def default_out_indices(depth: int, levels: int = 4) -> List[int]:
    """Evenly spaced blocks ending with the last: [5, 11, 17, 23] for 24 blocks, [2, 5, 8, 11] for 12."""
    return [max(0, (i + 1) * depth // levels - 1) for i in range(levels)]


def make_norm(kind: str, channels: int) -> nn.Module:
    """'bn': BatchNorm2d (converted to SyncBatchNorm under DDP); 'gn': GroupNorm with up to 32 groups of at least
    2 channels (the 1x1 pooled map of the PPM needs more than one value per group)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = max(g for g in range(1, max(1, min(32, channels // 2)) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")


class PyramidAdapter(nn.Module):
    """Images [B, 3, H, W] -> four maps [B, D, H/4, W/4], [B, D, H/8, W/8], [B, D, H/16, W/16], [B, D, H/32, W/32]
    (for patch stride 16; in general s/4, s/2, s, 2s).

    Args:
        backbone: a timm model with ``forward_intermediates`` and ``feature_info`` (VisionMamba, VisionTransformer),
            created with ``dynamic_img_size=True`` to accept sizes other than its ``img_size``.
        out_indices: the four blocks to take (negative counts from the end); None: :func:`default_out_indices`.
        feature_norm: pass each block output through the backbone's final norm.
        norm: the norm between the two transposed convs ('bn' or 'gn').

    Blocks after the last one taken, the classifier and (without ``feature_norm``) the final norm are pruned, so
    every remaining parameter gets a gradient (DDP needs no unused-parameter search).
    """

    def __init__(self, backbone: nn.Module, out_indices: Optional[Sequence[int]] = None, feature_norm: bool = False,
                 norm: str = "bn"):
        super().__init__()
        if not hasattr(backbone, "forward_intermediates"):
            raise TypeError(f"{type(backbone).__name__} has no forward_intermediates(); use a Vim or timm ViT model")
        info = getattr(backbone, "feature_info", None)
        if not isinstance(info, list) or not info:
            raise TypeError(f"{type(backbone).__name__} has no per-block feature_info to count its blocks")
        depth = len(info)
        indices = list(out_indices) if out_indices is not None else default_out_indices(depth)
        if len(indices) != 4:
            raise ValueError(f"out_indices must name 4 blocks (one per pyramid level), got {indices}")
        normalised = [i + depth if i < 0 else i for i in indices]
        if any(not 0 <= i < depth for i in normalised):
            raise ValueError(f"out_indices {indices} out of range for a backbone of {depth} blocks")
        if normalised != sorted(normalised):
            raise ValueError(f"out_indices must be in block order (shallow to deep), got {indices}")
        self.out_indices = normalised
        self._unique = sorted(set(normalised))  # forward_intermediates returns each block once, in block order
        self.feature_norm = feature_norm
        self.embed_dim = int(getattr(backbone, "embed_dim", info[-1]["num_chs"]))
        self.patch_stride = int(info[-1]["reduction"])
        # Max-pooling halves the stride-s map exactly only if H / s is even.
        self.size_divisor = 2 * self.patch_stride
        if hasattr(backbone, "prune_intermediate_layers"):
            backbone.prune_intermediate_layers(self._unique, prune_norm=not feature_norm, prune_head=True)
        self.model = backbone
        d = self.embed_dim
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(d, d, kernel_size=2, stride=2), make_norm(norm, d), nn.GELU(),
            nn.ConvTranspose2d(d, d, kernel_size=2, stride=2))
        self.up2 = nn.ConvTranspose2d(d, d, kernel_size=2, stride=2)
        self.keep = nn.Identity()
        self.down2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_channels = [d, d, d, d]
        s = self.patch_stride
        self.out_strides = [s / 4, s / 2, s, 2 * s]

    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"image size {h}x{w} is not a multiple of {self.size_divisor} (twice the patch stride); "
                             f"pad it (the inference helpers do)")

    def forward(self, x: Tensor) -> List[Tensor]:
        self.check_input(x)
        feats = self.model.forward_intermediates(x, indices=self._unique, norm=self.feature_norm,
                                                 output_fmt="NCHW", intermediates_only=True)
        by_block = dict(zip(self._unique, feats))
        f0, f1, f2, f3 = (by_block[i] for i in self.out_indices)
        return [self.up4(f0), self.up2(f1), self.keep(f2), self.down2(f3)]


def create_backbone(name: str, img_size, *, init_checkpoint: Optional[str] = None, drop_path_rate: float = 0.0,
                    **kwargs) -> nn.Module:
    """A timm backbone for dense prediction: no classifier, built for ``img_size`` (the training crop) with
    ``dynamic_img_size`` so other sizes work at inference. ``kwargs`` go to the model's constructor, e.g.
    ``class_token=None, global_pool='avg'`` for a Vim without class token (the official segmentation setup).

    ``init_checkpoint``: a classification checkpoint (safetensors / .pth) whose backbone weights are loaded; its
    head is dropped and pos_embed resized to the crop's patch grid (e.g. 10x10 at 160 -> 16x16 at 256). Every
    backbone weight must be in it (a :class:`CheckpointError` lists what is missing).
    """
    args = dict(pretrained=False, img_size=img_size, num_classes=0, drop_path_rate=drop_path_rate,
                dynamic_img_size=True, **kwargs)
    if any(v is None for v in kwargs.values()):
        # timm.create_model drops None-valued arguments (class_token=None would give a Vim *with* a class
        # token), so such a model is built through its registered constructor.
        model = constructed(lambda: timm.models.model_entrypoint(name.split(".")[0])(**args), name, kwargs)
        wanted_no_token = "class_token" in kwargs and kwargs["class_token"] is None
        if wanted_no_token and getattr(model, "has_class_token", False):
            raise ValueError(f"{name}: asked for class_token=None but the model has a class token")
    else:
        model = constructed(lambda: timm.create_model(name, **args), name, kwargs)
    if init_checkpoint is not None:
        try:
            load_checkpoint(model, init_checkpoint, strict=True, adapt_head=True)
        except CheckpointError as e:
            # a whole segmentation model or detector: one line, not its lists of keys
            error = whole_model_error(init_checkpoint, "init_checkpoint (--init-checkpoint)", "seg-train",
                                      "with --iters N")
            if error:
                raise error from None
            raise CheckpointError(f"cannot initialise the {name} backbone from {init_checkpoint}:\n{e}") from e
    return model
