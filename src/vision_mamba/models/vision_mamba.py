"""Vision Mamba (Vim)

"Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
Lianghui Zhu, Bencheng Liao, Qian Zhang, Xinlong Wang, Wenyu Liu, Xinggang Wang (ICML 2024), arXiv:2401.09417.

A plain, isotropic backbone: patch embedding, a class token in the middle of the sequence, absolute position
embedding, then ``depth`` blocks of Add -> RMSNorm -> bidirectional Mamba mixer with an fp32 residual stream, and a
final RMSNorm. Parameter names follow the official code, so its checkpoints load with ``strict=True``.

Written from the paper and the facts of the official code; no code of the official repository is used.
"""
from __future__ import annotations

import contextvars
import math
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, lecun_normal_, trunc_normal_
from timm.models import (adapt_input_conv, build_model_with_cfg, generate_default_cfgs, register_model,
                         register_model_deprecations)
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import PatchEmbed, RMSNorm, VimBlock, class_token_index, resample_pos_embed
from ..ops.rms_norm import add_rms_norm

__all__ = ["VisionMamba", "checkpoint_filter_fn"]


class VisionMamba(nn.Module):
    """Vision Mamba. Images [B, C, H, W] -> logits [B, num_classes].

    Args:
        img_size: the input size the position embedding is made for.
        patch_size / stride: the patch-embedding conv (stride 8 with patch 16 gives the long-sequence variants).
        class_token: 'middle' (Vim: inserted at index N // 2), or None / False / 'none' for no class token (dense
            tasks; through timm.create_model use False or 'none', since timm drops keyword arguments set to None).
        global_pool: 'token' (the class token) or 'avg' (mean of the patch tokens).
        dynamic_img_size: accept other input sizes, resizing the position embedding at run time.
        check_finite: refuse inputs with NaN / Inf (skipped while compiling or capturing a CUDA graph).
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        stride: Optional[int] = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: Optional[int] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
        class_token: Union[str, bool, None] = "middle",
        global_pool: str = "token",
        dynamic_img_size: bool = False,
        check_finite: bool = True,
    ):
        super().__init__()
        if class_token in (None, False, "none"):
            class_token = None
        elif class_token not in ("middle", True):
            raise ValueError(f"class_token must be 'middle' or None / False / 'none', got {class_token!r}")
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and class_token is None:
            raise ValueError("global_pool='token' needs a class token; use global_pool='avg'")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.has_class_token = class_token is not None
        self.num_prefix_tokens = 1 if self.has_class_token else 0
        self.dynamic_img_size = dynamic_img_size
        self.check_finite = check_finite
        self.grad_checkpointing = False

        # Parameters first, then modules in the official order: state_dict() lists keys as the official model.
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if self.has_class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # Block i applies the drop-path rate of block i - 1 to its incoming hidden state; the last add uses the max.
        rates = [0.0] + torch.linspace(0, drop_path_rate, depth).tolist()
        mixer_kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank)
        self.layers = nn.ModuleList(
            [VimBlock(embed_dim, drop_path=rates[i], norm_eps=norm_eps, **mixer_kwargs) for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        reduction = self.patch_embed.stride[0]
        self.feature_info = [dict(module=f"layers.{i}", num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.init_weights()

    # ------------------------------------------------------------------ initialisation
    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        depth = len(self.layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None and name != "head":
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
        for layer in self.layers:
            weight = layer.mixer.out_proj.weight
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            with torch.no_grad():
                weight.div_(math.sqrt(depth))

    # ------------------------------------------------------------------ timm model API
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        names = {"pos_embed", "cls_token"}
        names |= {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}
        return {n for n in names if n in dict(self.named_parameters())}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == "token" and not self.has_class_token:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def set_input_size(self, img_size: Union[int, Tuple[int, int]]) -> None:
        """Make the model for another input size, resizing the position embedding in place."""
        old_grid = self.patch_embed.grid_size
        self.patch_embed = _with_img_size(self.patch_embed, img_size)
        new = resample_pos_embed(self.pos_embed.data, self.patch_embed.grid_size, old_grid, self._cls_mode)
        self.pos_embed = nn.Parameter(new)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = "") -> None:
        """What ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` calls; strict
        unless that call says ``pretrained_strict=False`` (then what does not fit is left as initialised, with a
        warning that names it)."""
        from .checkpoint import load_checkpoint

        load_checkpoint(self, checkpoint_path, strict=_PRETRAINED_STRICT.get(), adapt_head=True)

    # ------------------------------------------------------------------ forward
    @property
    def _cls_mode(self) -> Optional[str]:
        return "middle" if self.has_class_token else None

    def _check_input(self, x: Tensor) -> Tuple[int, int]:
        if not isinstance(x, Tensor):
            raise TypeError(f"VisionMamba expects a torch.Tensor of images [B, C, H, W]; got a "
                            f"{type(x).__module__}.{type(x).__name__} (torch.as_tensor converts an array, "
                            f"torch.stack a list of [C, H, W] images)")
        if x.ndim != 4:
            raise ValueError(f"VisionMamba expects images [B, C, H, W]; got a tensor of shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"VisionMamba expects floating-point images (normalised, as the model's pretrained_cfg "
                            f"mean / std say); got {x.dtype}. Convert with x.float() and normalise first.")
        _, channels, height, width = x.shape
        pe = self.patch_embed
        weight = pe.proj.weight
        if x.device != weight.device and x.device.type != "meta" and weight.device.type != "meta":
            raise ValueError(f"the images are on {x.device} but the model is on {weight.device}; move one to the "
                             f"other (x.to({str(weight.device)!r}) or model.to({str(x.device)!r}))")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"the images are {x.dtype} but the model's weights are {weight.dtype}; convert the "
                            f"images (x.to({weight.dtype})) or run under torch.autocast({x.device.type!r})")
        if channels != pe.in_chans:
            raise ValueError(f"VisionMamba was built for {pe.in_chans}-channel images; got {channels} channels "
                             f"(input shape {tuple(x.shape)})")
        if self.dynamic_img_size:
            if not pe.tiles_exactly(height, width):
                raise ValueError(
                    f"a {height}x{width} image does not divide into {pe.patch_size[0]}x{pe.patch_size[1]} patches "
                    f"at stride {pe.stride[0]}: (size - {pe.patch_size[0]}) must be a multiple of {pe.stride[0]}")
        elif (height, width) != pe.img_size:
            raise ValueError(
                f"VisionMamba was built for {pe.img_size[0]}x{pe.img_size[1]} images; got {height}x{width}. "
                f"Create it with img_size=({height}, {width}) (checkpoints are resized on load), or with "
                f"dynamic_img_size=True to resize the position embedding at run time.")
        if (self.check_finite and not _tracing() and x.device.type != "meta"
                and not bool(torch.isfinite(x).all())):
            raise ValueError("the input images contain NaN or Inf values")
        return pe.dynamic_grid(height, width)

    def _pos_embed(self, grid: Tuple[int, int]) -> Tensor:
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, self._cls_mode)

    def embed(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Images -> token sequence [B, N (+1), D] with the position embedding added, and the patch grid."""
        grid = self._check_input(x)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            idx = class_token_index(x.shape[1])
            x = torch.cat([x[:, :idx], self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x[:, idx:]], dim=1)
        x = x + self._pos_embed(grid)
        return self.pos_drop(x), grid

    def _run_layer(self, layer: nn.Module, hidden: Tensor, residual: Optional[Tensor]):
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint(layer, hidden, residual, use_reentrant=False)
        return layer(hidden, residual)

    def _final(self, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        if residual is not None:
            hidden = self.drop_path(hidden)
        if isinstance(self.norm_f, RMSNorm):
            # (the features leave in the weight's dtype, fp32, on every backend)
            return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps,
                                out_dtype=self.norm_f.weight.dtype)[0]
        residual = hidden if residual is None else residual + hidden
        return self.norm_f(residual.float())

    def _inference_weights(self, device: torch.device) -> Optional[list]:
        """Inference on the Triton backend: every layer's mixer weights made in one launch (``prep_weights``;
        ``triton_scan.prepare_inference_weights``), or None (each layer makes its own)."""
        if torch.is_grad_enabled() or self.training:
            return None
        from ..ops import resolve_backend

        if resolve_backend(device) != "triton":
            return None
        from ..ops.selective_scan.triton_scan import prepare_inference_weights

        autocast = torch.is_autocast_enabled(device.type)
        return prepare_inference_weights([layer.mixer for layer in self.layers],
                                         torch.get_autocast_dtype(device.type) if autocast else None)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] -> normalised tokens [B, L, D] (the class token at index (L - 1) // 2)."""
        hidden, _ = self.embed(x)
        residual = None
        prepared = self._inference_weights(hidden.device)
        for i, layer in enumerate(self.layers):
            if prepared is not None:
                hidden, residual = layer(hidden, residual, prepared=prepared[i])
            else:
                hidden, residual = self._run_layer(layer, hidden, residual)
        return self._final(hidden, residual)

    def pool(self, x: Tensor) -> Tensor:
        if self.global_pool == "token":
            return x[:, class_token_index(x.shape[1] - 1)]
        if self.global_pool == "avg":
            return self._patch_tokens(x).mean(dim=1)
        return x

    def _patch_tokens(self, x: Tensor) -> Tensor:
        if not self.has_class_token:
            return x
        idx = class_token_index(x.shape[1] - 1)
        return torch.cat([x[:, :idx], x[:, idx + 1:]], dim=1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Features of chosen blocks, for dense heads.

        The feature of block i is the residual stream after it (residual + hidden, fp32), optionally through
        norm_f; the class token is taken out. indices: an int (the last n blocks) or a list of block indices.
        output_fmt 'NCHW' gives [B, D, gh, gw] maps, 'NLC' [B, gh * gw, D]. Returns (final tokens, features), or
        only the features; with return_prefix_tokens each feature is (map, class token [B, 1, D]).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        hidden, grid = self.embed(x)
        residual = None
        layers = self.layers if not stop_early else self.layers[: max_index + 1]
        features = []
        for i, layer in enumerate(layers):
            hidden, residual = self._run_layer(layer, hidden, residual)
            if i in take:
                feat = residual + hidden
                feat = self.norm_f(feat) if norm else feat
                features.append(feat)
        prefix = []
        if self.has_class_token:
            idx = class_token_index(features[0].shape[1] - 1) if features else 0
            prefix = [f[:, idx:idx + 1] for f in features]
            features = [torch.cat([f[:, :idx], f[:, idx + 1:]], dim=1) for f in features]
        if output_fmt == "NCHW":
            batch = x.shape[0]
            features = [f.reshape(batch, grid[0], grid[1], f.shape[-1]).permute(0, 3, 1, 2).contiguous()
                        for f in features]
        if return_prefix_tokens and prefix:
            features = list(zip(features, prefix))
        if intermediates_only:
            return features
        if len(layers) < len(self.layers):
            return None, features
        return self._final(hidden, residual), features

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last one asked for (and the head / final norm): for feature extractors."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "" if not self.has_class_token else self.global_pool)
        return take


def _tracing() -> bool:
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)()
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    return bool(compiling or capturing or torch.jit.is_tracing())


def _with_img_size(pe: PatchEmbed, img_size) -> PatchEmbed:
    new = PatchEmbed(img_size, pe.patch_size, pe.stride, pe.in_chans, pe.proj.out_channels)
    new.proj = pe.proj
    return new


# ---------------------------------------------------------------------- checkpoints
def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: VisionMamba,
                         grid: Optional[Tuple[int, int]] = None) -> Dict[str, Tensor]:
    """Make a Vim state dict fit ``model``: unwrap training checkpoints, strip DDP / compile prefixes, resize
    pos_embed to the model's patch grid (class-token row kept apart), drop the class token for models without
    one. ``grid``: the checkpoint's patch grid (rows, columns), which :func:`save_state_dict` stores with a model's
    weights; without it the grid must be square. Shape problems that cannot be fixed are left for the strict load
    to report."""
    from .checkpoint import CheckpointError, extract_state_dict

    state_dict = extract_state_dict(state_dict)
    out = dict(state_dict)
    ckpt_has_cls = "cls_token" in state_dict
    weight = out.get("patch_embed.proj.weight")
    want = model.patch_embed.proj.weight
    if (isinstance(weight, Tensor) and weight.ndim == 4 and weight.shape[1] == 3 != want.shape[1]
            and weight.shape[0] == want.shape[0] and weight.shape[2:] == want.shape[2:]):
        # Pretrained RGB weights into a model for other channels, as timm does for its own models (other
        # mismatches are left for the strict load to report).
        out["patch_embed.proj.weight"] = adapt_input_conv(want.shape[1], weight)
    # A pos_embed of another width belongs to another variant: it is left for the strict load, which lists it
    # with every other mismatch (or skips it, when not strict).
    other_width = "pos_embed" in out and out["pos_embed"].shape[-1] != model.pos_embed.shape[-1]
    target = tuple(model.patch_embed.grid_size)
    other_grid = grid is not None and tuple(grid) != target  # e.g. 4x6 into 6x4: as many rows, other places
    if "pos_embed" in out and not other_width and (out["pos_embed"].shape != model.pos_embed.shape or other_grid):
        pos = out["pos_embed"]
        rows = pos.shape[1]
        patches = rows - (1 if ckpt_has_cls else 0)
        extra = " plus a class-token row" if ckpt_has_cls else ""
        if grid is not None:
            source = (int(grid[0]), int(grid[1]))
            if pos.ndim != 3 or source[0] * source[1] != patches:
                raise CheckpointError(f"pos_embed: the checkpoint's {tuple(pos.shape)} is not the {source[0]}x"
                                      f"{source[1]} patch grid{extra} its metadata names")
        else:
            side = int(round(math.sqrt(max(patches, 0))))
            if pos.ndim != 3 or side * side != patches:
                raise CheckpointError(
                    f"pos_embed: the checkpoint's {tuple(pos.shape)} is not a square patch grid{extra}, and the "
                    f"file does not say its grid, so it cannot be resized to the model's {target[0]}x{target[1]} "
                    f"grid {tuple(model.pos_embed.shape)} (save_state_dict(model, 'weights.safetensors') stores a model's grid)")
            source = (side, side)
        pos = resample_pos_embed(pos, target, source, "middle" if ckpt_has_cls else None)
        if ckpt_has_cls and not model.has_class_token:
            idx = class_token_index(pos.shape[1] - 1)
            pos = torch.cat([pos[:, :idx], pos[:, idx + 1:]], dim=1)
        out["pos_embed"] = pos
    elif ckpt_has_cls and not model.has_class_token and "pos_embed" in out:
        pos = out["pos_embed"]
        if pos.shape[1] == model.pos_embed.shape[1] + 1:
            idx = class_token_index(pos.shape[1] - 1)
            out["pos_embed"] = torch.cat([pos[:, :idx], pos[:, idx + 1:]], dim=1)
    if ckpt_has_cls and not model.has_class_token:
        out.pop("cls_token")
    return out


# ---------------------------------------------------------------------- configs and registration
def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "custom_load": True,  # a local file goes through VisionMamba.load_pretrained (weights-only, 'model' first)
        "license": "apache-2.0",
        "paper_ids": "arXiv:2401.09417",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vim_tiny_patch16_224.in1k": _cfg(hf_hub_id="hustvl/Vim-tiny-midclstok",
                                      hf_hub_filename="vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224.in1k": _cfg(hf_hub_id="hustvl/Vim-tiny-midclstok",
                                              hf_hub_filename="vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224.in1k": _cfg(hf_hub_id="hustvl/Vim-small-midclstok",
                                       hf_hub_filename="vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224.in1k": _cfg(hf_hub_id="hustvl/Vim-small-midclstok",
                                               hf_hub_filename="vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224.untrained": _cfg(),
    "test_vim.untrained": _cfg(input_size=(3, 64, 64), num_classes=10),
    "test_vim_stride8.untrained": _cfg(input_size=(3, 64, 64), num_classes=10),
})


# timm calls a model's own load_pretrained (a local file) without its pretrained_strict: _create passes it this way
_PRETRAINED_STRICT: "contextvars.ContextVar[bool]" = contextvars.ContextVar("vim_pretrained_strict", default=True)


def _create(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    # timm's features_only default (the last 4 blocks), or every block of a shallower model
    out_indices = kwargs.pop("out_indices", min(4, int(kwargs.get("depth", 4))))
    overlay = kwargs.get("pretrained_cfg_overlay")
    if overlay and overlay.get("file") and "custom_load" not in overlay:
        # A local file goes through load_pretrained: weights-only, official 'model' weights rather than the
        # 'model_ema' that timm's generic loader would pick, pos_embed resized. (Recent timm resets custom_load
        # for file overlays.)
        kwargs["pretrained_cfg_overlay"] = dict(overlay, custom_load=True)
    token = _PRETRAINED_STRICT.set(bool(kwargs.get("pretrained_strict", True)))
    try:
        return build_model_with_cfg(
            VisionMamba, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
            **kwargs,
        )
    finally:
        _PRETRAINED_STRICT.reset(token)


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: 192 wide, 24 blocks, 7.15 M parameters (76.1% ImageNet-1k top-1 released)."""
    return _create("vim_tiny_patch16_224", pretrained, **dict(dict(embed_dim=192, depth=24), **kwargs))


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti at stride 8 (27x27 + 1 tokens), the long-sequence fine-tune (78.3% released)."""
    return _create("vim_tiny_patch16_stride8_224", pretrained,
                   **dict(dict(embed_dim=192, depth=24, stride=8), **kwargs))


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: 384 wide, 24 blocks, 25.8 M parameters (80.5% released)."""
    return _create("vim_small_patch16_224", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S at stride 8 (81.6% released)."""
    return _create("vim_small_patch16_stride8_224", pretrained,
                   **dict(dict(embed_dim=384, depth=24, stride=8), **kwargs))


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: 768 wide, 24 blocks, 97.6 M parameters."""
    return _create("vim_base_patch16_224", pretrained, **dict(dict(embed_dim=768, depth=24), **kwargs))


@register_model
def test_vim(pretrained: bool = False, **kwargs) -> VisionMamba:
    """A tiny Vim for tests: 32 wide, 2 blocks, 64x64 input (4x4 patches)."""
    return _create("test_vim", pretrained,
                   **dict(dict(img_size=64, embed_dim=32, depth=2, num_classes=10), **kwargs))


@register_model
def test_vim_stride8(pretrained: bool = False, **kwargs) -> VisionMamba:
    """A tiny stride-8 Vim for tests: 64x64 input, 7x7 tokens."""
    return _create("test_vim_stride8", pretrained,
                   **dict(dict(img_size=64, embed_dim=32, depth=2, stride=8, num_classes=10), **kwargs))


# The official code's names for the released variants (its --model values, which its checkpoints' 'args' keep) map
# to these models through timm's alias mechanism: they work, with a warning naming the model they map to, and stay
# out of timm.list_models().
OFFICIAL_NAMES = {
    "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2": "vim_tiny_patch16_224",
    "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2":
        "vim_tiny_patch16_stride8_224",
    "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2": "vim_small_patch16_224",
    "vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2":
        "vim_small_patch16_stride8_224",
    "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2": "vim_base_patch16_224",
}
register_model_deprecations(__name__, OFFICIAL_NAMES)
