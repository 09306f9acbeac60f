"""Object detection and instance segmentation: a ViTDet-style Mask R-CNN on Vim (or DeiT) backbones.

The plain backbone's last block as one stride-16 map, a simple feature pyramid (P2-P6, 256 channels, LayerNorm),
torchvision's Mask R-CNN heads; COCO data through pycocotools, large-scale jitter, COCOeval. See docs/detection.md.
The command modules (train_command, eval_command, predict_command) are imported by the CLI only when used.
"""
from .amp import set_autocast
from .backbone import SimpleFeaturePyramid, ViTDetBackbone, create_trunk
from .config import ConfigError, DetectionConfig, load_config
from .datasets import AnnotationError, CocoInstances, collate_detection
from .evaluation import detections_to_coco, evaluate_coco, evaluate_model
from .model import FixedSizeTransform, build_detector, load_detector, save_detector
from .transforms import LargeScaleJitter

__all__ = [
    "set_autocast", "SimpleFeaturePyramid", "ViTDetBackbone", "create_trunk", "ConfigError", "DetectionConfig",
    "load_config", "AnnotationError", "CocoInstances", "collate_detection", "detections_to_coco", "evaluate_coco",
    "evaluate_model", "FixedSizeTransform", "build_detector", "load_detector", "save_detector", "LargeScaleJitter",
]
