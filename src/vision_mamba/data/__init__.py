"""Data for classification: ImageFolder datasets that fail early and survive corrupt files, the built-in
synthetic shapes, timm's transforms, resumable sharded sampling, and a device-resident path for small datasets."""
from .builder import (
    AugmentOptions,
    ClassificationData,
    StreamEvalLoader,
    StreamTrainLoader,
    build_classification_data,
    build_eval_data,
    check_data_source,
)
from .folder import (DatasetError, IgnoredFilesWarning, ImageFolderDataset, TensorImageDataset, UnreadableImageWarning,
                     scan_image_folder)
from .resident import DeviceAugment, ResidentEvalLoader, ResidentTrainLoader, decode_images
from .sampling import EpochSampler, ShardSampler, mix_seed
from .synthetic import SYNTHETIC_CLASSES, export_image_folder, generate_shapes, synthetic_split
from .transforms import eval_transform, train_transform

__all__ = [
    "AugmentOptions", "ClassificationData", "StreamEvalLoader", "StreamTrainLoader", "build_classification_data",
    "build_eval_data", "check_data_source", "DatasetError", "ImageFolderDataset", "TensorImageDataset",
    "UnreadableImageWarning", "IgnoredFilesWarning", "scan_image_folder", "DeviceAugment", "ResidentEvalLoader",
    "ResidentTrainLoader", "decode_images", "EpochSampler", "ShardSampler", "mix_seed", "SYNTHETIC_CLASSES",
    "export_image_folder", "generate_shapes", "synthetic_split", "eval_transform", "train_transform",
]
