"""From a data source ('synthetic' or an ImageFolder root) to training and evaluation batches on the device.

Two paths with one interface (``loader.epoch(e, start_step)`` yields (images, targets) on the device; iterating
an eval loader yields (images, targets, readable mask or None)):

- streaming: timm's PIL transforms in DataLoader worker processes (any dataset size);
- device-resident (``gpu_resident``): decode once into device memory, augment on the device (small datasets;
  see :mod:`vision_mamba.data.resident`). ``'auto'`` picks it on CUDA when the decoded images take at most
  ``resident_max_gb`` and a third of the free GPU memory, and always for the in-memory synthetic set.
"""
from __future__ import annotations

import atexit
import importlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from .folder import DatasetError, ImageFolderDataset, TensorImageDataset, ignore_stop_signals, scan_image_folder
from .resident import DeviceAugment, ResidentEvalLoader, ResidentTrainLoader, decode_images, resident_bytes
from .sampling import EpochLoaderBase, EpochSampler, ShardSampler
from .synthetic import SYNTHETIC_CLASSES, synthetic_split
from .transforms import eval_resize_size, eval_transform, resize_crop_uint8, train_transform

__all__ = ["AugmentOptions", "ClassificationData", "build_classification_data", "build_eval_data",
           "StreamTrainLoader", "StreamEvalLoader", "check_data_source"]

SYNTHETIC = "synthetic"


@dataclass
class AugmentOptions:
    """Training augmentation (DeiT / Vim recipe by default). ``no_aug`` turns all of it off (centre crops)."""
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.0  # streaming path, only without auto_augment
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    ra_group: int = 8  # device path: images sharing one RandAugment draw
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    no_aug: bool = False


@dataclass
class ClassificationData:
    train: Union["StreamTrainLoader", ResidentTrainLoader, None]
    val: Union["StreamEvalLoader", ResidentEvalLoader, None]
    classes: List[str]
    num_train: int = 0
    num_val: int = 0
    resident: bool = False
    unreadable: List[Tuple[str, str]] = field(default_factory=list)  # found while decoding (resident path)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------- streaming loaders
_PERSISTENT_LOADERS: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()
_exit_hook_registered = False


def _stop_persistent_workers() -> None:
    """At exit: the workers of persistent loaders still alive are stopped as a loader stops them when freed.
    They ignore SIGTERM (``ignore_stop_signals``), so multiprocessing's own exit handler, which terminates and then
    joins them, would wait for ever where a loader outlives the end of a script (a module-level one)."""
    for loader in list(_PERSISTENT_LOADERS):
        _stop_workers(getattr(loader, "_iterator", None))


def _stop_workers(batches) -> None:
    """Stop the worker processes of a DataLoader iterator ``batches`` now, as freeing it would (if it has any)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _track_persistent(loader: DataLoader) -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        # multiprocessing.util registers its exit handler when imported: first, so that ours runs before it
        importlib.import_module("multiprocessing.util")
        atexit.register(_stop_persistent_workers)
        _exit_hook_registered = True
    _PERSISTENT_LOADERS.add(loader)


def _worker_error(error: DatasetError) -> DatasetError:
    """A DatasetError as its own message. One raised in a DataLoader worker (every image of a stretch unreadable)
    reaches the main process as a DatasetError whose message is the worker's whole traceback; its last line is
    the original error."""
    text = str(error)
    if "Original Traceback" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = lines[-1].split(": ", 1)[-1] if lines else text
    return DatasetError(text)


class StreamTrainLoader(EpochLoaderBase):
    """timm transforms in DataLoader workers; batches moved to ``device`` (pinned memory, non-blocking)."""

    def __init__(self, dataset, sampler: EpochSampler, device: torch.device, workers: int = 4):
        self.sampler = sampler
        self.device = device
        self.unreadable_indices: set = set()  # dataset indices found unreadable (each counted once)
        # Its own generator: starting an epoch must not draw from the global RNG (the samples carry their seeds).
        self.loader = DataLoader(
            dataset, batch_size=sampler.local_batch_size, sampler=sampler, num_workers=workers,
            pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None, generator=torch.Generator().manual_seed(sampler.seed),
            worker_init_fn=ignore_stop_signals)
        if workers > 0:
            _track_persistent(self.loader)

    @property
    def unreadable(self) -> int:
        return len(self.unreadable_indices)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        self.sampler.set_epoch(epoch, start_step)
        pairs = self.sampler.epoch_pairs()  # (index, seed) in the order the loader's batches hold them
        size = self.sampler.local_batch_size
        try:
            for step, (images, targets, readable) in enumerate(self.loader):
                for j in (readable == 0).nonzero().flatten().tolist():
                    self.unreadable_indices.add(pairs[step * size + j][0])
                yield (images.to(self.device, non_blocking=True),
                       torch.as_tensor(targets).to(self.device, non_blocking=True))
        except DatasetError as e:
            # The persistent workers stopped now (the next epoch starts new ones): after the error the loader may
            # be freed before the iterator that the traceback keeps, and then nothing stops them before the exit
            # handler of multiprocessing waits for them (they ignore SIGTERM).
            _stop_workers(getattr(self.loader, "_iterator", None))
            self.loader._iterator = None
            raise _worker_error(e) from None


class StreamEvalLoader:
    """Evaluation batches (this process's shard, in order); unreadable images come with readable=False."""

    def __init__(self, dataset, batch_size: int, device: torch.device, workers: int = 4, world_size: int = 1,
                 rank: int = 0):
        self.device = device
        self.unreadable = 0
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), world_size, rank),
                                 num_workers=workers, pin_memory=device.type == "cuda", drop_last=False,
                                 worker_init_fn=ignore_stop_signals)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        self.unreadable = 0
        batches = iter(self.loader)
        try:
            for images, targets, readable in batches:
                self.unreadable += int((readable == 0).sum())
                yield (images.to(self.device, non_blocking=True),
                       torch.as_tensor(targets).to(self.device, non_blocking=True),
                       readable.bool().to(self.device, non_blocking=True))
        except DatasetError as e:
            raise _worker_error(e) from None
        finally:
            # The workers stopped now, not when the iterator is freed: after an error the traceback's frames keep
            # it, and the workers ignore SIGTERM, so the exit handler of multiprocessing, which terminates and then
            # joins them, waited for ever.
            _stop_workers(batches)


# ---------------------------------------------------------------------- building
def check_data_source(source: str, train_split: Optional[str] = "train",
                      val_split: Optional[str] = "val") -> List[str]:
    """Fail early (before any model is built) on a missing folder, a missing split, an empty class folder or
    splits with different classes. Returns the class names."""
    if source == SYNTHETIC:
        return list(SYNTHETIC_CLASSES)
    root = Path(source)
    if not root.exists():
        splits = " and ".join(f"{s}/" for s in (train_split, val_split) if s)
        where = "" if root.is_absolute() else f", relative to {Path.cwd()}"
        raise DatasetError(f"dataset folder not found: {root}{where} (give an ImageFolder root with {splits} "
                           f"inside, or 'synthetic' for the built-in dataset)")
    found = {}
    for split in (train_split, val_split):
        if split is None:
            continue
        if not (root / split).is_dir():
            raise DatasetError(f"{root}: no '{split}' folder (expected {root / split}/<class>/<image>)")
        found[split] = scan_image_folder(root / split)[1]
    if train_split and val_split:
        _check_same_classes(root, train_split, found[train_split], val_split, found[val_split])
    return found[train_split] if train_split else found[val_split]


def _check_same_classes(root: Path, train_split: str, train_classes: List[str], val_split: str,
                        val_classes: List[str]) -> None:
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(train_classes))[:5]
        raise DatasetError(f"{root}: the class folders of '{train_split}' and '{val_split}' differ "
                           f"(only in {train_split}: {only_train}; only in {val_split}: {only_val})")


def _use_resident(choice: Union[bool, str], source: str, device: torch.device, num_images: int, size: int,
                  max_gb: float) -> bool:
    if isinstance(choice, bool):
        return choice
    if choice != "auto":
        raise ValueError(f"gpu_resident must be true, false or 'auto', got {choice!r}")
    if source == SYNTHETIC:
        return True
    if device.type != "cuda":
        return False
    need = resident_bytes(num_images, size)
    free, _ = torch.cuda.mem_get_info(device)
    return need <= max_gb * 2 ** 30 and need <= free / 3


def _pil_resize_all(images: Tensor, resize: int, crop: int, interpolation: str) -> Tensor:
    transform = resize_crop_uint8(resize, crop, interpolation)
    return torch.stack([transform(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images])


def build_classification_data(
    source: str,
    *,
    img_size: int,
    batch_size: int,
    eval_batch_size: Optional[int] = None,
    device: "torch.device | str" = "cpu",
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    workers: int = 4,
    gpu_resident: Union[bool, str] = "auto",
    resident_size: Optional[int] = None,
    resident_max_gb: float = 8.0,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    augment: Optional[AugmentOptions] = None,
    repeats: int = 1,
    train_split: Optional[str] = "train",
    val_split: Optional[str] = "val",
    synthetic_train: int = 6000,
    synthetic_val: int = 1000,
    synthetic_size: int = 32,
    progress: bool = True,
) -> ClassificationData:
    """Datasets and loaders for training (``train_split``) and evaluation (``val_split``; None skips one).

    ``source``: 'synthetic' (the built-in shapes, generated in memory) or an ImageFolder root holding
    ``<train_split>/<class>/*`` and ``<val_split>/<class>/*``. ``batch_size`` is the global training batch.
    ``resident_size``: side of the stored training images on the device path (default: img_size * 1.25, so the
    random crops have room; the synthetic set's own size for it).
    """
    device = torch.device(device)
    augment = augment or AugmentOptions()
    eval_batch_size = eval_batch_size or batch_size
    synthetic = source == SYNTHETIC
    if synthetic:
        classes = list(SYNTHETIC_CLASSES)
        train_items = synthetic_split("train", synthetic_train, synthetic_size, seed) if train_split else None
        val_items = synthetic_split("val", synthetic_val, synthetic_size, seed) if val_split else None
        num_train = synthetic_train if train_split else 0
        num_val = synthetic_val if val_split else 0
    else:
        root = Path(source)
        for split in (train_split, val_split):
            if split is not None and not (root / split).is_dir():
                raise DatasetError(f"{root}: no '{split}' folder (expected {root / split}/<class>/<image>)")
        train_set = ImageFolderDataset(root / train_split, substitute=True) if train_split else None
        val_set = ImageFolderDataset(root / val_split, substitute=False) if val_split else None
        if train_set is not None and val_set is not None:
            _check_same_classes(root, train_split, train_set.classes, val_split, val_set.classes)
        classes = (train_set or val_set).classes
        num_train = len(train_set) if train_set else 0
        num_val = len(val_set) if val_set else 0

    if resident_size:
        store = resident_size
    else:  # the synthetic set at its native size; photos with room for the random crops
        store = synthetic_size if synthetic else int(round(img_size * 1.25))
    resident = _use_resident(gpu_resident, source, device, num_train + num_val, store, resident_max_gb)
    data = ClassificationData(train=None, val=None, classes=classes, num_train=num_train, num_val=num_val,
                              resident=resident)
    resize = eval_resize_size(img_size, crop_pct)

    if resident:
        # ---------------- decode once, keep on the device
        if train_split:
            if augment.no_aug:  # no random crops: store exactly what evaluation sees
                train_store, train_resize = img_size, resize
            else:
                train_store, train_resize = store, store
            if synthetic:
                images, targets = train_items
                images = _pil_resize_all(images, train_resize, train_store, interpolation) \
                    if images.shape[-1] != train_store or augment.no_aug else images
            else:
                paths = [p for p, _ in train_set.samples]
                images, keep, failures = decode_images(
                    paths, resize_crop_uint8(train_resize, train_store, interpolation), train_store, workers,
                    progress, desc=f"decoding {train_split}")
                targets = torch.tensor(train_set.targets)[keep]
                data.unreadable += failures
                data.num_train = len(keep)
            sampler = EpochSampler(images.shape[0], batch_size, world_size, rank, shuffle=True, seed=seed,
                                   repeats=repeats)
            aug = DeviceAugment(img_size, scale=augment.scale, ratio=augment.ratio, hflip=augment.hflip,
                                auto_augment=augment.auto_augment, group_size=augment.ra_group, mean=mean, std=std,
                                re_prob=augment.re_prob, re_mode=augment.re_mode, re_count=augment.re_count,
                                no_aug=augment.no_aug, device=device)
            data.train = ResidentTrainLoader(_to_device(images, device), targets, sampler, aug)
        if val_split:
            if synthetic:
                images, targets = val_items
                images = _pil_resize_all(images, resize, img_size, interpolation)
            else:
                paths = [p for p, _ in val_set.samples]
                images, keep, failures = decode_images(
                    paths, resize_crop_uint8(resize, img_size, interpolation), img_size, workers, progress,
                    desc=f"decoding {val_split}")
                targets = torch.tensor(val_set.targets)[keep]
                data.unreadable += failures
                data.num_val = len(keep)
            data.val = ResidentEvalLoader(_to_device(images, device), targets, eval_batch_size, mean, std,
                                          world_size, rank)
        return data

    # ---------------- streaming: timm's PIL pipeline in worker processes
    if train_split:
        transform = train_transform(
            img_size, scale=augment.scale, ratio=augment.ratio, hflip=augment.hflip,
            color_jitter=augment.color_jitter, auto_augment=augment.auto_augment, interpolation=interpolation,
            mean=mean, std=std, re_prob=augment.re_prob, re_mode=augment.re_mode, re_count=augment.re_count,
            no_aug=augment.no_aug)
        if synthetic:
            train_set = TensorImageDataset(*train_items, classes=classes)
        train_set.transform = transform
        sampler = EpochSampler(len(train_set), batch_size, world_size, rank, shuffle=True, seed=seed,
                               repeats=repeats)
        data.train = StreamTrainLoader(train_set, sampler, device, workers)
    if val_split:
        transform = eval_transform(img_size, crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std)
        if synthetic:
            val_set = TensorImageDataset(*val_items, classes=classes)
        val_set.transform = transform
        data.val = StreamEvalLoader(val_set, eval_batch_size, device, workers, world_size, rank)
    return data


def build_eval_data(source: str, *, split: str = "val", **kwargs) -> ClassificationData:
    """Only the evaluation side of :func:`build_classification_data` (for ``vision-mamba eval``)."""
    return build_classification_data(source, train_split=None, val_split=split, **kwargs)


def _to_device(images: Tensor, device: torch.device) -> Tensor:
    if device.type == "cuda":
        images = images.pin_memory()
    return images.to(device, non_blocking=True)
