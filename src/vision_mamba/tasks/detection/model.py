"""torchvision's Mask R-CNN around the ViTDet backbone, and detector checkpoints.

Everything after the backbone is torchvision's: AnchorGenerator over P2-P6 (one size per level, 3 aspect ratios),
RPN with a 2-conv head, MultiScaleRoIAlign over P2-P5, the "4conv1fc" box head and the 4-conv mask head with
LayerNorm (as ViTDet), FastRCNNPredictor and MaskRCNNPredictor. Only the image batching differs:
:class:`FixedSizeTransform` pads every image to the backbone's fixed square.

A detector checkpoint is either a training state (``checkpoint.pt``, see trainer.py) or the final weights as
safetensors whose metadata carries the resolved config and the category list, so it rebuilds its own model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from .amp import AutocastMixin
from .backbone import LEVEL_NAMES, ViTDetBackbone, create_trunk
from .config import DetectionConfig, ModelConfig

__all__ = [
    "FixedSizeTransform", "build_detector", "default_anchor_sizes", "save_detector", "load_detector",
    "read_detector_checkpoint",
]


class AutocastRPNHead(AutocastMixin, RPNHead):
    """RPNHead whose convs may run in bf16 (objectness and deltas come back as fp32)."""


class AutocastBoxHead(AutocastMixin, FastRCNNConvFCHead):
    """The 4conv1fc box head, bf16-capable; the predictor after it stays fp32."""


class AutocastMaskHead(AutocastMixin, MaskRCNNHeads):
    """The 4-conv mask head, bf16-capable; the predictor after it stays fp32."""


class FixedSizeTransform(GeneralizedRCNNTransform):
    """Normalise, fit into a ``size`` x ``size`` square, pad (with zeros, after normalisation) to exactly it.

    Training images already cut by LargeScaleJitter (at most size x size) are not resized; anything larger, and
    every image at evaluation, is resized so that its longer side is ``size`` (ViTDet's test-time resize).
    ``image_sizes`` keep the unpadded sizes, so proposals are clipped to the real image and predictions map back
    to the original image by torchvision's postprocess.
    """

    def __init__(self, size: int, image_mean: Sequence[float], image_std: Sequence[float]):
        super().__init__(min_size=size, max_size=size, image_mean=list(image_mean), image_std=list(image_std),
                         size_divisible=size)
        self.size = int(size)

    def forward(self, images, targets=None):
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError(f"the detector takes a non-empty list of images, got {type(images).__name__}"
                             f"{' (empty)' if isinstance(images, (list, tuple)) else ''}")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.ndim != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 1:
                shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"image {i}: expected an RGB tensor [3, H, W] with H, W >= 1, got {shape}")
            if not img.is_floating_point():
                raise TypeError(f"image {i}: expected floats in [0, 1], got {img.dtype} (divide uint8 images by 255)")
        return super().forward(images, targets)

    def resize(self, image: Tensor, target: Optional[Dict[str, Tensor]] = None):
        h, w = image.shape[-2:]
        if self.training and h <= self.size and w <= self.size:
            return image, target
        return super().resize(image, target)

    def batch_images(self, images: List[Tensor], size_divisible: int = 32) -> Tensor:
        batch = images[0].new_zeros((len(images), images[0].shape[0], self.size, self.size))
        for img, slot in zip(images, batch):
            if img.shape[-2] > self.size or img.shape[-1] > self.size:
                raise ValueError(f"image of {tuple(img.shape[-2:])} does not fit the {self.size}x{self.size} input")
            slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch


def default_anchor_sizes(img_size: int) -> List[int]:
    """ViTDet's anchors 32, 64, 128, 256, 512 (P2..P6) at 1024 px, scaled with the input size."""
    return [max(4, round(s * img_size / 1024)) for s in (32, 64, 128, 256, 512)]


def build_detector(cfg: ModelConfig, num_classes: int, init: Optional[str] = None) -> MaskRCNN:
    """Mask R-CNN for ``num_classes`` object categories (plus background) on a plain timm backbone.

    ``init`` (default ``cfg.init``): classification checkpoint for the backbone. Images go in as a list of float
    tensors [3, H, W] in [0, 1]; the model normalises them with the backbone's mean / std.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes (object categories, background not counted) must be a whole number >= 1, "
                         f"got {num_classes!r}")
    if not hasattr(cfg, "backbone_args"):
        raise TypeError(f"build_detector takes the model section of a config (config.model), got "
                        f"{type(cfg).__name__}")
    init = cfg.init if init is None else init
    trunk = create_trunk(cfg.backbone, cfg.img_size, drop_path_rate=cfg.drop_path_rate, init=init or None,
                         **cfg.backbone_args)
    backbone = ViTDetBackbone(trunk, cfg.img_size, out_channels=cfg.pyramid_channels)
    if cfg.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    channels = cfg.pyramid_channels
    sizes = cfg.anchor_sizes or default_anchor_sizes(cfg.img_size)
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in sizes),
                              aspect_ratios=(tuple(float(r) for r in cfg.aspect_ratios),) * len(LEVEL_NAMES))
    rpn_head = AutocastRPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=cfg.rpn_conv_depth)
    roi_levels = list(LEVEL_NAMES[:4])
    box_head = AutocastBoxHead((channels, 7, 7), [channels] * cfg.box_head_convs, [cfg.box_head_fc],
                               norm_layer=LayerNorm2d)
    mask_head = AutocastMaskHead(channels, [channels] * cfg.mask_head_convs, 1, norm_layer=LayerNorm2d)
    pretrained_cfg = getattr(trunk, "pretrained_cfg", None) or {}
    mean = pretrained_cfg.get("mean", (0.485, 0.456, 0.406))
    std = pretrained_cfg.get("std", (0.229, 0.224, 0.225))
    model = MaskRCNN(
        backbone,
        num_classes=None,  # given through the predictors below
        min_size=cfg.img_size,
        max_size=cfg.img_size,
        image_mean=list(mean),
        image_std=list(std),
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_roi_pool=MultiScaleRoIAlign(roi_levels, output_size=7, sampling_ratio=2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(cfg.box_head_fc, num_classes + 1),
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        mask_roi_pool=MultiScaleRoIAlign(roi_levels, output_size=14, sampling_ratio=2),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes + 1),
    )
    model.transform = FixedSizeTransform(cfg.img_size, mean, std)
    return model


# ---------------------------------------------------------------------- checkpoints
def save_detector(model: nn.Module, path: "str | Path", config: DetectionConfig,
                  categories: Sequence[Dict[str, Any]]) -> Path:
    """Final weights as safetensors, with the resolved config and the categories (label i+1 = categories[i])
    in the metadata; written atomically."""
    from vision_mamba.models.checkpoint import DETECTION_FORMAT, save_state_dict

    path = Path(path)
    metadata = {"config": json.dumps(config.to_dict()), "categories": json.dumps(list(categories)),
                "format": DETECTION_FORMAT}
    save_state_dict(model, path, metadata=metadata)
    return path


def read_detector_checkpoint(path: "str | Path") -> Tuple[Dict[str, Tensor], Dict[str, Any], List[Dict[str, Any]]]:
    """(state dict, config dict, categories) from a detector safetensors file or a training state (a run directory:
    its model.safetensors)."""
    from vision_mamba.engine import load_state
    from vision_mamba.models.checkpoint import CheckpointError, read_checkpoint, read_metadata

    path = Path(path)
    if path.is_dir():  # a run directory: its final weights
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"{path} holds no model.safetensors (the final weights of a det-train run)"
                                    + ("; pass its checkpoint.pt" if (path / "checkpoint.pt").is_file() else ""))
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        metadata = read_metadata(path, strict=True)
        if "config" not in metadata or "categories" not in metadata:
            raise CheckpointError(f"{path} is not a detector checkpoint (no config / categories in its metadata); "
                                  "use the model.safetensors or checkpoint.pt that det-train writes")
        return read_checkpoint(path), json.loads(metadata["config"]), json.loads(metadata["categories"])
    state = load_state(path)
    if not isinstance(state, dict) or not {"model", "config", "categories"} <= set(state):
        raise CheckpointError(f"{path} is not a det-train checkpoint (needs 'model', 'config', 'categories')")
    return state["model"], state["config"], state["categories"]


def load_detector(path: "str | Path", device: "str | torch.device" = "cpu",
                  ) -> Tuple[MaskRCNN, DetectionConfig, List[Dict[str, Any]]]:
    """Rebuild a trained detector from its checkpoint: (model in eval mode on ``device``, config, categories)."""
    from .config import load_config

    state_dict, config_dict, categories = read_detector_checkpoint(path)
    config = load_config(base=config_dict)
    model = build_detector(config.model, num_classes=len(categories), init="")  # weights come from the file
    from vision_mamba.models.checkpoint import CheckpointError, check_fit

    missing, unexpected, mismatched = check_fit(model, state_dict)
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path} does not fit the detector it describes ({len(categories)} categories): "
                              f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatches "
                              f"{mismatched[:4]}")
    model.load_state_dict(state_dict, strict=False)
    return model.to(device).eval(), config, list(categories)
