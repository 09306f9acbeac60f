"""Semantic segmentation with a Vim (or timm ViT / DeiT) backbone: the paper's UperNet setup.

    backbone.py   PyramidAdapter: blocks 5/11/17/23 of a plain backbone -> strides 4/8/16/32
    heads.py      UperNetHead (pyramid pooling + FPN fusion), FCNHead (auxiliary, loss weight 0.4)
    model.py      SegmentationModel, the loss, saving / loading a trained model with its config
    datasets.py   images + class-index masks (class list, ignore values), ADE20K
    transforms.py random rescale / crop / flip / colour jitter on image + mask pairs
    metrics.py    confusion matrix -> mIoU, per-class IoU, pixel accuracy
    inference.py  whole-image and sliding-window inference, evaluate()
    trainer.py    the iteration-based training loop
    config.py     SegConfig: defaults <- YAML <- command line

Commands: ``vision-mamba seg-train``, ``seg-eval``, ``seg-predict`` (docs/segmentation.md).
"""
from .backbone import PyramidAdapter, create_backbone, default_out_indices
from .config import ConfigError, SegConfig, build_config
from .datasets import ADE20KDataset, ClassList, DatasetError, SegmentationDataset, read_class_list
from .heads import FCNHead, UperNetHead
from .inference import InferenceSettings, Predictor, evaluate
from .metrics import ConfusionMatrix, metrics_from_confusion
from .model import (SegmentationModel, build_segmentation_model, load_segmentation_model, save_segmentation_model,
                    segmentation_loss)
from .transforms import TrainTransform

__all__ = [
    "PyramidAdapter", "create_backbone", "default_out_indices", "ConfigError", "SegConfig", "build_config",
    "ADE20KDataset", "ClassList", "DatasetError", "SegmentationDataset", "read_class_list", "FCNHead",
    "UperNetHead", "InferenceSettings", "Predictor", "evaluate", "ConfusionMatrix", "metrics_from_confusion",
    "SegmentationModel", "build_segmentation_model", "load_segmentation_model", "save_segmentation_model",
    "segmentation_loss", "TrainTransform",
]
