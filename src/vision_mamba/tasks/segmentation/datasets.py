"""Semantic-segmentation datasets: image files paired with class-index masks.

Two layouts:

- folders: an images folder and a masks folder whose files share stems (``0001.jpg`` <-> ``0001.png``), plus a
  class list file that maps raw mask values to names. Raw values listed in ``ignore_values`` become the ignore
  index; every other raw value is mapped to a contiguous train id (0 .. K-1) in ascending raw-value order. The
  COCO-128 semantic masks (COCO panoptic category ids 1..200 with gaps, 0 = unlabelled) are of this kind.
- ADE20K (ADEChallengeData2016): ``images/{training,validation}/*.jpg`` and ``annotations/...*.png`` with values
  0..150 where 0 means 'other' (ignored) and 1..150 are the classes ('reduce zero label').

Masks are checked: a value outside the class list, a mask whose size differs from its image, a colour mask, a
missing image: each is a :class:`DatasetError` naming the file. With ``cache=True`` every pair is decoded and
checked when the dataset is built, so bad data is reported before training starts.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ...data.folder import to_rgb

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")

__all__ = ["DatasetError", "ClassList", "read_class_list", "SegmentationDataset", "ADE20KDataset",
           "find_ade20k_root", "dataset_from_config"]


class DatasetError(ValueError):
    """Data that cannot be used as given; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ClassList:
    """The classes of a dataset: train id i is the class whose masks hold raw value ``raw_values[i]``.

    ``ignore_values``: raw values mapped to ``ignore_index`` (not learned, not scored).
    """

    names: Tuple[str, ...]
    raw_values: Tuple[int, ...]
    ignore_values: Tuple[int, ...] = ()
    ignore_index: int = 255
    source: str = ""

    def __post_init__(self):
        if len(self.names) != len(self.raw_values):
            raise DatasetError(f"class list {self.source}: {len(self.names)} names for {len(self.raw_values)} values")
        if len(set(self.raw_values)) != len(self.raw_values):
            dup = sorted({v for v in self.raw_values if self.raw_values.count(v) > 1})
            raise DatasetError(f"class list {self.source}: raw values {dup} appear more than once")
        if not self.names:
            raise DatasetError(f"class list {self.source}: no classes left (all values ignored?)")
        if 0 <= self.ignore_index < len(self.names):
            raise DatasetError(f"ignore_index {self.ignore_index} collides with train id {self.ignore_index} "
                               f"({self.names[self.ignore_index]!r}); use a value >= {len(self.names)}, e.g. 255")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def mask_dtype(self) -> torch.dtype:
        """uint8 when train ids and the ignore index fit in a byte (saves memory and resizes fast)."""
        return torch.uint8 if max(self.num_classes - 1, self.ignore_index) <= 255 else torch.int64

    def lookup_table(self) -> np.ndarray:
        """raw value -> train id (ignored values -> ignore_index, unknown values -> -1), int64."""
        size = max(list(self.raw_values) + list(self.ignore_values)) + 1
        table = np.full(size, -1, dtype=np.int64)
        for value in self.ignore_values:
            table[value] = self.ignore_index
        for train_id, value in enumerate(self.raw_values):
            table[value] = train_id
        return table

    @cached_property
    def _table(self) -> np.ndarray:
        return self.lookup_table()

    def encode(self, raw: np.ndarray, path: "str | Path" = "<mask>") -> Tensor:
        """Raw mask values [H, W] -> train ids as ``mask_dtype``; a value not in the class list is a
        :class:`DatasetError` naming ``path`` and the values."""
        table = self._table
        raw = np.asarray(raw)
        outside = (raw < 0) | (raw >= len(table))
        mapped = table[np.where(outside, 0, raw).astype(np.int64)]
        unknown = outside | (mapped < 0)
        if unknown.any():
            bad = np.unique(raw[unknown]).tolist()
            raise DatasetError(
                f"{path}: mask values {bad[:20]}{' ...' if len(bad) > 20 else ''} are not in the class list "
                f"{self.source} (known values: {self.known_values()}). Add them to the class list, or to "
                f"ignore_values if they mean 'unlabelled'.")
        return torch.from_numpy(mapped).to(self.mask_dtype)

    def known_values(self) -> str:
        values = sorted(self.raw_values)
        text = _ranges(values)
        if self.ignore_values:
            text += f"; ignored: {_ranges(sorted(self.ignore_values))}"
        return text


def _ranges(values: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    parts, start, prev = [], None, None
    for v in list(values) + [None]:
        if start is None:
            start = prev = v
        elif v is not None and v == prev + 1:
            prev = v
        else:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = v
    return ", ".join(parts)


def read_class_list(path: "str | Path", ignore_values: Sequence[int] = (), ignore_index: int = 255) -> ClassList:
    """Read a class list file that maps raw mask values to class names.

    Accepted forms: JSON or YAML holding a list of {id, name} records (the COCO panoptic 'categories' style, also
    under a 'categories' key), a mapping {value: name}, or a list of names (value = position); a text file with
    one name per line (value = line number from 0) or 'VALUE NAME' lines. Values in ``ignore_values`` are dropped
    from the classes and mapped to the ignore index.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class list file not found: {path}")
    text = path.read_text()
    entries: List[Tuple[int, str]]
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise DatasetError(f"class list {path}: cannot be parsed ({e})") from e
        if isinstance(data, dict) and "categories" in data:
            data = data["categories"]
        entries = _entries_from_data(data, path)
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        split = [ln.split(None, 1) for ln in lines]
        if split and all(len(p) == 2 and _is_int(p[0]) for p in split):
            entries = [(int(p[0]), p[1].strip()) for p in split]
        else:
            entries = list(enumerate(lines))
    ignore = tuple(int(v) for v in ignore_values)
    kept = sorted((v, n) for v, n in entries if v not in ignore)
    if any(v < 0 for v, _ in kept):
        raise DatasetError(f"class list {path}: negative mask values {[v for v, _ in kept if v < 0]}")
    return ClassList(tuple(n for _, n in kept), tuple(v for v, _ in kept), ignore, ignore_index, str(path))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _entries_from_data(data, path: Path) -> List[Tuple[int, str]]:
    if isinstance(data, dict):
        try:
            return [(int(k), str(v)) for k, v in data.items()]
        except (TypeError, ValueError):
            raise DatasetError(f"class list {path}: a mapping must have integer keys (mask values)") from None
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return list(enumerate(data))
    if isinstance(data, list) and all(isinstance(x, dict) and "id" in x and "name" in x for x in data):
        return [(int(x["id"]), str(x["name"])) for x in data]
    raise DatasetError(f"class list {path}: expected a list of {{id, name}} records, a mapping {{value: name}} "
                       f"or a list of names")


def _list_files(folder: Path, suffixes: Sequence[str]) -> Dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"folder not found: {folder}")
    files: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in files:
                raise DatasetError(f"{folder}: two files share the stem {p.stem!r} ({files[p.stem].name}, {p.name})")
            files[p.stem] = p
    return files


def read_image(path: "str | Path", exif: bool = False) -> Tensor:
    """An image file -> uint8 RGB tensor [3, H, W] (grey, 16-bit and RGBA images are converted: ``to_rgb``;
    ``exif``: turned as its EXIF orientation says, for a user's photo; dataset images keep their stored pixels,
    which their masks match)."""
    try:
        with Image.open(path) as im:
            array = np.asarray(to_rgb(im, exif=exif))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot be read as an image ({e})") from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_raw_mask(path: "str | Path") -> np.ndarray:
    """A class-index mask file -> integer array [H, W] of raw values (palette PNGs give their indices)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise DatasetError(
                    f"{path}: mask has mode {im.mode} ({len(im.getbands())} channels); expected a single-channel "
                    f"class-index image (PNG mode L, P or I) whose pixel values are class ids")
            array = np.asarray(im)
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read as a mask ({e})") from e
    return array.astype(np.int64) if array.dtype == bool else array


class SegmentationDataset(torch.utils.data.Dataset):
    """Images with class-index masks (the 'folders' layout).

    Items: ``transform(image, mask)`` where image is uint8 [3, H, W] and mask [H, W] holds train ids (0..K-1, and
    ``classes.ignore_index``) as ``classes.mask_dtype``; without a transform the pair itself.

    Args:
        images_dir / masks_dir: the two folders; pairs are matched by file stem. Images without a mask are left
            out (logged); a mask without an image is an error.
        classes: the class list (raw value -> train id).
        transform: a callable (image, mask) -> anything, applied on every access.
        cache: decode all pairs now (checked now, fast later); else decode on access (sizes still checked now).
        verbose: log left-out images and show the reading progress bar (off on all but one DDP process).
        progress: False turns the reading progress bar off (--no-progress) but not the log.
    """

    def __init__(self, images_dir: "str | Path", masks_dir: "str | Path", classes: ClassList,
                 transform: Optional[Callable] = None, cache: bool = True, num_threads: Optional[int] = None,
                 verbose: bool = True, progress: bool = True):
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        self.classes = classes
        self.transform = transform
        images = _list_files(self.images_dir, IMAGE_SUFFIXES)
        masks = _list_files(self.masks_dir, MASK_SUFFIXES)
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise DatasetError(f"{len(orphans)} masks in {self.masks_dir} have no image in {self.images_dir} "
                               f"(e.g. {', '.join(orphans[:5])})")
        if not masks:
            raise DatasetError(f"no masks ({'/'.join(MASK_SUFFIXES)}) in {self.masks_dir}")
        skipped = len(images) - len(masks)
        if skipped and verbose:
            _logger.warning("%s: %d images without a mask are left out", self.images_dir, skipped)
        self.samples: List[Tuple[Path, Path]] = [(images[s], masks[s]) for s in sorted(masks)]
        self._cache: Optional[List[Tuple[Tensor, Tensor]]] = None
        threads = num_threads or min(8, os.cpu_count() or 1)
        if cache:
            with ThreadPoolExecutor(threads) as pool:  # PIL decodes outside the GIL
                self._cache = list(tqdm(pool.map(self._load, range(len(self.samples))), total=len(self.samples),
                                        desc=f"reading {self.masks_dir.name}", leave=False, mininterval=2.0,
                                        disable=not (verbose and progress)))
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(self._check_size, range(len(self.samples))))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def stems(self) -> List[str]:
        return [m.stem for _, m in self.samples]

    def _check_size(self, index: int) -> Tuple[int, int]:
        image_path, mask_path = self.samples[index]
        try:
            with Image.open(image_path) as im, Image.open(mask_path) as m:
                image_size, mask_size = im.size, m.size
        except OSError as e:
            raise DatasetError(f"cannot read {image_path} or {mask_path} ({e})") from e
        if image_size != mask_size:
            raise DatasetError(f"image and mask sizes differ: {image_path} is {image_size[0]}x{image_size[1]} "
                               f"(w x h) but {mask_path} is {mask_size[0]}x{mask_size[1]}")
        return image_size

    def _load(self, index: int) -> Tuple[Tensor, Tensor]:
        self._check_size(index)
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = self.classes.encode(read_raw_mask(mask_path), mask_path)
        if tuple(image.shape[-2:]) != tuple(mask.shape):  # e.g. an EXIF-rotated JPEG
            raise DatasetError(f"image and mask sizes differ after decoding: {image_path} is "
                               f"{image.shape[-1]}x{image.shape[-2]}, {mask_path} is {mask.shape[1]}x{mask.shape[0]}")
        return image, mask

    def load(self, index: int) -> Tuple[Tensor, Tensor]:
        """The untransformed pair: image uint8 [3, H, W], mask train ids [H, W]."""
        if self._cache is not None:
            return self._cache[index]
        return self._load(index)

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is None:
            return image, mask
        return self.transform(image, mask)


def find_ade20k_root(root: "str | Path") -> Path:
    """``root`` itself or ``root/ADEChallengeData2016``: the folder holding images/ and annotations/."""
    root = Path(root)
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise DatasetError(f"no ADE20K layout under {root}: expected images/ and annotations/ (in it or in "
                       f"{root / 'ADEChallengeData2016'})")


def ade20k_classes(root: Path, ignore_index: int = 255) -> ClassList:
    """The 150 ADE20K classes (raw values 1..150; 0 = 'other', ignored). Names come from objectInfo150 if the
    release's file is there, else 'class_1' .. 'class_150'."""
    names = [f"class_{i}" for i in range(1, 151)]
    for name in ("objectInfo150.txt", "objectInfo150.csv"):
        info = root / name
        if info.is_file():
            rows = [ln for ln in info.read_text(errors="replace").splitlines() if ln.strip()]
            sep = "\t" if "\t" in rows[0] else ","
            parsed = {}
            for row in rows[1:]:
                cols = [c.strip() for c in row.split(sep)]
                if cols and _is_int(cols[0]):
                    parsed[int(cols[0])] = cols[-1].split(";")[0]
            if len(parsed) == 150:
                names = [parsed[i] for i in range(1, 151)]
            break
    return ClassList(tuple(names), tuple(range(1, 151)), (0,), ignore_index, f"ADE20K ({root})")


class ADE20KDataset(SegmentationDataset):
    """ADEChallengeData2016, split 'training' or 'validation'; 0 -> ignore, 1..150 -> 0..149."""

    SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

    def __init__(self, root: "str | Path", split: str = "training", transform: Optional[Callable] = None,
                 cache: bool = False, ignore_index: int = 255, verbose: bool = True, progress: bool = True):
        if split not in self.SPLITS:
            raise DatasetError(f"ADE20K split must be one of {sorted(self.SPLITS)}, got {split!r}")
        root = find_ade20k_root(root)
        folder = self.SPLITS[split]
        super().__init__(root / "images" / folder, root / "annotations" / folder,
                         ade20k_classes(root, ignore_index), transform=transform, cache=cache, verbose=verbose,
                         progress=progress)


def dataset_from_config(config, split: str, transform: Optional[Callable] = None,
                        verbose: bool = True, progress: bool = True) -> SegmentationDataset:
    """The 'train' or 'val' dataset a :class:`~.config.SegConfig` describes (``verbose``: warnings and progress
    bar; only the main process of a DDP run passes True; ``progress``: False turns the bar off alone)."""
    if config.data_root is None:
        raise DatasetError("data_root is not set: pass --data-root (or set data_root in the config)")
    root = Path(config.data_root)
    if not root.is_dir():
        raise DatasetError(f"data_root not found: {root}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if config.dataset == "ade20k":
        return ADE20KDataset(root, split, transform=transform, cache=config.cache_images,
                             ignore_index=config.ignore_index, verbose=verbose, progress=progress)
    if config.classes_file is None:
        raise DatasetError("classes_file is not set: the folders layout needs a class list (json / yaml / txt)")
    classes = read_class_list(root / config.classes_file, config.ignore_values, config.ignore_index)
    images = config.train_images if split == "train" else config.val_images
    masks = config.train_masks if split == "train" else config.val_masks
    return SegmentationDataset(root / images, root / masks, classes, transform=transform, cache=config.cache_images,
                               verbose=verbose, progress=progress)
