"""Patch embedding (a strided conv; stride may be smaller than the patch) and position-embedding resizing with a
class token that sits in the middle of the sequence."""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

Size2 = Union[int, Tuple[int, int]]


def _pair(x: Size2) -> Tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _checked_pair(name: str, value) -> Tuple[int, int]:
    """``value`` (an int, or a pair of ints) as (rows, columns), both at least 1; else a ValueError naming ``name``."""
    pair = (value, value) if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(_is_int(v) for v in pair) or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them (height, width); got {value!r}")
    return int(pair[0]), int(pair[1])


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def grid_size(img_size: Size2, patch_size: Size2, stride: Size2) -> Tuple[int, int]:
    """Tokens per side of a Conv2d(kernel=patch, stride) over the image: (size - patch) // stride + 1."""
    (h, w), (ph, pw), (sh, sw) = _pair(img_size), _pair(patch_size), _pair(stride)
    return (h - ph) // sh + 1, (w - pw) // sw + 1


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, gh * gw, D] through Conv2d(C, D, kernel=patch, stride=stride)."""

    def __init__(self, img_size: Size2 = 224, patch_size: Size2 = 16, stride: Optional[Size2] = None,
                 in_chans: int = 3, embed_dim: int = 192):
        super().__init__()
        self.img_size = _checked_pair("img_size", img_size)
        self.patch_size = _checked_pair("patch_size", patch_size)
        self.stride = _checked_pair("stride", stride if stride is not None else patch_size)
        for name, value in (("in_chans", in_chans), ("embed_dim", embed_dim)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if self.img_size[0] < self.patch_size[0] or self.img_size[1] < self.patch_size[1]:
            # the conv would leave no token (and fail at the first forward)
            raise ValueError(f"img_size {self.img_size[0]}x{self.img_size[1]} is smaller than one "
                             f"{self.patch_size[0]}x{self.patch_size[1]} patch; use at least img_size="
                             f"{self.patch_size[0] if self.patch_size[0] == self.patch_size[1] else self.patch_size}")
        self.in_chans = in_chans
        self.grid_size = grid_size(self.img_size, self.patch_size, self.stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride)

    def dynamic_grid(self, height: int, width: int) -> Tuple[int, int]:
        return grid_size((height, width), self.patch_size, self.stride)

    def tiles_exactly(self, height: int, width: int) -> bool:
        """Whether the patches cover the image with no pixel left over."""
        (ph, pw), (sh, sw) = self.patch_size, self.stride
        return height >= ph and width >= pw and (height - ph) % sh == 0 and (width - pw) % sw == 0

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda and self.stride == self.patch_size:
            return self.patchify_linear(x)
        return self.proj(x).flatten(2).transpose(1, 2)

    def patchify_linear(self, x: Tensor) -> Tensor:
        """The same map as ``proj`` when patches do not overlap (stride == patch): cut the image into patches and
        apply the conv's weight as one matrix product. On CUDA this replaces the implicit-GEMM convolution cuDNN
        picks for bf16 (0.43 ms of a 8.6 ms Vim-Ti forward at 224 px / batch 128 on the H200, docs/kernels.md) by a
        copy and a GEMM. Pixels past the last whole patch are dropped, as the conv drops them."""
        (ph, pw) = self.patch_size
        b, c, h, w = x.shape
        gh, gw = h // ph, w // pw
        x = x[:, :, :gh * ph, :gw * pw]
        # under autocast the patches are gathered straight into the product's dtype: one copy that casts as it
        # moves (the rounding autocast's own cast of them would make), not an fp32 copy and then a cast
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) and x.dtype == torch.float32 \
            else x.dtype
        patches = torch.empty(b, gh, gw, c, ph, pw, device=x.device, dtype=dtype)
        patches.copy_(x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5))
        patches = patches.view(b, gh * gw, c * ph * pw)
        return nn.functional.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


def class_token_index(num_patches: int) -> int:
    """Where the middle class token sits in a sequence of ``num_patches`` patch tokens: N // 2."""
    return num_patches // 2


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: Sequence[int],
    old_grid: Optional[Sequence[int]] = None,
    class_token: Optional[str] = "middle",
    interpolation: str = "bicubic",
) -> Tensor:
    """Resize a [1, T, D] position embedding to another patch grid, keeping the class-token row apart.

    class_token: 'middle' (row N // 2 belongs to the class token, as in Vim), 'first' (row 0, as in ViT/DeiT) or
    None. ``old_grid`` defaults to a square grid. Resizing to the same grid returns the tensor unchanged.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, T, D], got {tuple(pos_embed.shape)}")
    prefix = 0 if class_token is None else 1
    old_patches = pos_embed.shape[1] - prefix
    if old_grid is None:
        side = int(round(old_patches ** 0.5))
        if side * side != old_patches:
            raise ValueError(
                f"pos_embed has {pos_embed.shape[1]} rows ({old_patches} patch rows"
                f"{' + 1 class-token row' if prefix else ''}), which is not a square grid; pass old_grid")
        old_grid = (side, side)
    old_grid, new_grid = _pair(tuple(old_grid)), _pair(tuple(new_grid))
    if old_grid[0] * old_grid[1] != old_patches:
        raise ValueError(f"pos_embed has {old_patches} patch rows, but old_grid {old_grid} has "
                         f"{old_grid[0] * old_grid[1]}")
    if old_grid == new_grid:
        return pos_embed
    if class_token == "middle":
        idx = class_token_index(old_patches)
        cls_row = pos_embed[:, idx:idx + 1]
        patches = torch.cat([pos_embed[:, :idx], pos_embed[:, idx + 1:]], dim=1)
    elif class_token == "first":
        cls_row, patches = pos_embed[:, :1], pos_embed[:, 1:]
    elif class_token is None:
        cls_row, patches = None, pos_embed
    else:
        raise ValueError(f"class_token must be 'middle', 'first' or None, got {class_token!r}")
    patches = resample_abs_pos_embed(patches, list(new_grid), list(old_grid), num_prefix_tokens=0,
                                     interpolation=interpolation, antialias=False)
    if cls_row is None:
        return patches
    if class_token == "first":
        return torch.cat([cls_row, patches], dim=1)
    idx = class_token_index(new_grid[0] * new_grid[1])
    return torch.cat([patches[:, :idx], cls_row, patches[:, idx:]], dim=1)
