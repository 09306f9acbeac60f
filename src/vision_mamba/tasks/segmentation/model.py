"""The segmentation model (pyramid adapter + UperNet + auxiliary FCN), its loss, and its files.

A trained model is saved as safetensors with the resolved run configuration and the class names in the file's
metadata, so ``seg-eval`` and ``seg-predict`` rebuild it from the file alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import Tensor, nn

from ...models.checkpoint import (SEGMENTATION_FORMAT, CheckpointError, check_fit, read_checkpoint, read_metadata,
                                  save_state_dict)
from .backbone import PyramidAdapter, create_backbone
from .config import ConfigError, SegConfig
from .datasets import ClassList
from .heads import FCNHead, UperNetHead

__all__ = ["SegmentationModel", "segmentation_loss", "build_segmentation_model", "save_segmentation_model",
           "load_segmentation_model"]

METADATA_FORMAT = SEGMENTATION_FORMAT


class SegmentationModel(nn.Module):
    """Images [B, 3, H, W] (H, W multiples of ``size_divisor``) -> {'out': logits [B, K, H/4, W/4]} and, while
    training with an auxiliary head, 'aux': logits [B, K, H/16, W/16] (from pyramid level ``aux_level``)."""

    def __init__(self, backbone: PyramidAdapter, decode_head: UperNetHead, aux_head: Optional[FCNHead] = None,
                 aux_level: int = 2):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.aux_level = aux_level

    @property
    def size_divisor(self) -> int:
        return self.backbone.size_divisor

    @property
    def num_classes(self) -> int:
        return self.decode_head.classifier.out_channels

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.backbone(x)
        out = {"out": self.decode_head(features)}
        if self.aux_head is not None and self.training:
            out["aux"] = self.aux_head(features[self.aux_level])
        return out

    # ---------------------------------------------------------------- what timm.optim needs
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        inner = getattr(self.backbone.model, "no_weight_decay", lambda: set())()
        return {f"backbone.model.{name}" for name in inner}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], Tuple[float, ...]]:
        """Layer ids for layer-wise lr decay: the backbone's own grouping (stem, then one group per block), and
        everything else (the adapter's convs, the heads) after its last group, so it gets the full lr."""
        prefix = "backbone.model."
        inner = self.backbone.model
        layer_of = group_parameters(inner, inner.group_matcher(coarse=coarse), reverse=True) \
            if hasattr(inner, "group_matcher") else {}

        def match(name: str) -> Tuple[float, ...]:
            if name.startswith(prefix) and name[len(prefix):] in layer_of:
                return (float(layer_of[name[len(prefix):]]),)
            return (math.inf,)

        return match

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.backbone.model, "set_grad_checkpointing"):
            self.backbone.model.set_grad_checkpointing(enable)


def segmentation_loss(outputs: Dict[str, Tensor], target: Tensor, ignore_index: int = 255,
                      aux_weight: float = 0.4) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Cross-entropy of the logits upsampled (bilinear) to the target [B, H, W], pixels at ``ignore_index`` left
    out, plus ``aux_weight`` times that of the auxiliary logits. A batch with no labelled pixel gives loss 0 (not
    NaN). Returns (total, {'loss_decode', 'loss_aux'} detached)."""
    def ce(logits: Tensor) -> Tensor:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
        return total / (target != ignore_index).sum().clamp(min=1)

    parts = {"loss_decode": ce(outputs["out"])}
    loss = parts["loss_decode"]
    if "aux" in outputs and aux_weight > 0:
        parts["loss_aux"] = ce(outputs["aux"])
        loss = loss + aux_weight * parts["loss_aux"]
    return loss, {k: v.detach() for k, v in parts.items()}


def build_segmentation_model(config: SegConfig, num_classes: int, load_init: bool = True) -> SegmentationModel:
    """The model a config describes. ``load_init``: load ``config.init_checkpoint`` into the backbone (off when
    the whole model's weights are loaded next)."""
    crop = config.crop_hw
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    if not timm.is_model(config.backbone.split(".")[0]):
        raise ConfigError(f"backbone {config.backbone!r} is not a registered timm model (e.g. vim_tiny_patch16_224, "
                          f"deit_tiny_patch16_224)")
    backbone = create_backbone(config.backbone, crop, init_checkpoint=config.init_checkpoint if load_init else None,
                               drop_path_rate=config.drop_path_rate, **config.backbone_kwargs)
    try:
        adapter = PyramidAdapter(backbone, config.out_indices, config.feature_norm, config.norm)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"backbone {config.backbone} with out_indices {config.out_indices}: {e}") from e
    if crop[0] % adapter.size_divisor or crop[1] % adapter.size_divisor:
        raise ConfigError(f"crop_size {crop[0]}x{crop[1]} must be a multiple of {adapter.size_divisor} for "
                          f"{config.backbone} (twice its patch stride {adapter.patch_stride})")
    decode = UperNetHead(adapter.out_channels, config.head_channels, num_classes, config.pool_scales,
                         config.head_dropout, config.norm)
    aux = None
    if config.aux_weight > 0:
        aux = FCNHead(adapter.out_channels[2], config.aux_channels, num_classes, config.head_dropout, config.norm)
    model = SegmentationModel(adapter, decode, aux)
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def classes_to_dict(classes: ClassList) -> Dict[str, Any]:
    return {"names": list(classes.names), "raw_values": list(classes.raw_values),
            "ignore_values": list(classes.ignore_values), "ignore_index": classes.ignore_index}


def classes_from_dict(data: Dict[str, Any]) -> ClassList:
    return ClassList(tuple(data["names"]), tuple(int(v) for v in data["raw_values"]),
                     tuple(int(v) for v in data["ignore_values"]), int(data["ignore_index"]), "checkpoint")


def save_segmentation_model(model: SegmentationModel, path: "str | Path", config: SegConfig,
                            classes: ClassList, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Weights as safetensors, with the config and the class list in its metadata (written atomically)."""
    metadata = {"format": METADATA_FORMAT, "config": json.dumps(config.to_dict()),
                "classes": json.dumps(classes_to_dict(classes))}
    if extra:
        metadata["extra"] = json.dumps(extra)
    save_state_dict(model, path, metadata=metadata)
    return Path(path)


# The keys that shape the network (the backbone's position embedding is made for crop_size, and slide inference
# runs windows of that size): a trained model's are what they were.
MODEL_KEYS = ("backbone", "backbone_kwargs", "out_indices", "feature_norm", "norm", "head_channels", "pool_scales",
              "aux_channels", "aux_weight", "crop_size")


def load_segmentation_model(path: "str | Path", overrides: Optional[Dict[str, Any]] = None,
                            ) -> Tuple[SegmentationModel, SegConfig, ClassList]:
    """Rebuild a model from a file written by :func:`save_segmentation_model` (``model.safetensors``), a training
    state (``last.pth``) or a run directory (its model.safetensors). ``overrides``: config keys to change (data
    paths, inference settings). Returns (model on CPU in eval mode, config, class list)."""
    path = Path(path)
    if path.is_dir():  # a run directory: its final weights
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path} holds no model.safetensors (the final weights of a seg-train run)"
                                    + ("; pass its last.pth" if (path / "last.pth").is_file() else ""))
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        meta = read_metadata(path, strict=True)
        if meta.get("format") != METADATA_FORMAT:
            kind = meta.get("format") or ("a classifier exported by train" if meta.get("model") else "")
            hint = ("" if meta.get("format") else
                    "; a classification checkpoint goes to init_checkpoint instead")
            raise CheckpointError(f"{path} is not a segmentation model written by seg-train (no "
                                  f"'{METADATA_FORMAT}' metadata{f'; it is {kind}' if kind else ''}){hint}")
        config_dict, classes = json.loads(meta["config"]), json.loads(meta["classes"])
        state = read_checkpoint(path)
    else:
        from ...engine import load_state

        saved = load_state(path)
        if not isinstance(saved, dict) or not {"config", "model", "classes"} <= set(saved):
            raise CheckpointError(f"{path} is not a seg-train state (expected 'model', 'config' and 'classes')")
        config_dict, classes, state = saved["config"], saved["classes"], saved["model"]
    def same(key: str, value: Any) -> bool:
        saved = config_dict.get(key)
        if key == "crop_size" and isinstance(value, int):
            value = [value, value]
        return value == saved or (isinstance(value, (list, tuple)) and list(value) == list(saved or []))

    fixed = sorted(k for k in (overrides or {}) if k in MODEL_KEYS and not same(k, overrides[k]))
    if fixed:
        raise ConfigError(f"{', '.join(fixed)}: fixed by the trained model in {path} "
                          f"({'; '.join(f'{k}={config_dict.get(k)!r}' for k in fixed)}); evaluation and prediction "
                          f"can change the data and inference settings (test_scale, test_mode, slide_stride, ...)")
    config_dict = dict(config_dict, **(overrides or {}))
    config = SegConfig.from_dict(config_dict, source=f"{path} (+ overrides)")
    classes = classes_from_dict(classes)
    model = build_segmentation_model(config, classes.num_classes, load_init=False)
    missing, unexpected, mismatched = check_fit(model, state)
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path} does not fit the model its config describes: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatches {mismatched[:5]}")
    model.load_state_dict(state)
    return model.eval(), config, classes
