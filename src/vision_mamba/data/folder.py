"""ImageFolder datasets that check their folders before training starts and survive unreadable images.

``root/<class>/<image>`` as torchvision's ImageFolder (classes sorted by folder name). Checked when built: a
missing path, a file where a folder is expected, no class folders, or a class folder without images is a
:class:`DatasetError` naming the path. While training, an image that cannot be decoded (truncated, corrupt, not an
image) is replaced by the next readable one, counted, and reported with a warning; evaluation leaves it out.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = ["DatasetError", "UnreadableImageWarning", "IgnoredFilesWarning", "scan_image_folder", "ImageFolderDataset",
           "TensorImageDataset", "load_rgb", "to_rgb", "ignore_stop_signals"]

# Substitutes tried for an unreadable training image before giving up (a folder of mostly broken files).
MAX_SUBSTITUTES = 16


class DatasetError(ValueError):
    """A dataset that cannot be used (missing path, empty class folder, ...); the message names the path."""


class UnreadableImageWarning(UserWarning):
    """An image file that could not be decoded and was skipped."""


class IgnoredFilesWarning(UserWarning):
    """Files in an image folder that were skipped because their endings are not those of images."""


def scan_image_folder(root: "str | Path") -> Tuple[List[Tuple[str, int]], List[str]]:
    """List ``root/<class>/<image>``: (samples [(path, class index)], class names). Raises :class:`DatasetError`
    for a missing path, no class folders, or class folders without images."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a folder: {root}")
    # torchvision's find_classes, less hidden folders (.ipynb_checkpoints, .git, ...), which are not classes
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise DatasetError(f"cannot list the dataset folder {root}: {e.strerror or e}") from None
    if not classes:
        raise DatasetError(f"{root}: no class folders found; expected the ImageFolder layout root/<class>/<image> "
                           f"with images ending in {', '.join(IMG_EXTENSIONS)}")
    samples, other = _walk_classes(root, classes)
    _warn_other_files(root, other)
    counts = [0] * len(classes)
    for _, target in samples:
        counts[target] += 1
    empty = [classes[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        shown = ", ".join(str(root / c) for c in empty[:5]) + (f" ... ({len(empty)} in all)" if len(empty) > 5 else "")
        raise DatasetError(f"{root}: class folder{'s' if len(empty) > 1 else ''} without images: {shown} "
                           f"(image files must end in {', '.join(IMG_EXTENSIONS)})")
    return samples, classes


def _walk_classes(root: Path, classes: Sequence[str]) -> Tuple[List[Tuple[str, int]], List[str]]:
    """One walk of the class folders: (samples in torchvision's ImageFolder order, other files). Hidden files and
    folders are neither; files with image endings (IMG_EXTENSIONS, any case) are samples."""
    samples: List[Tuple[str, int]] = []
    other: List[str] = []

    def unreadable(error: OSError) -> None:  # (os.walk would skip a folder it cannot list, and its images with it)
        if not any(part.startswith(".") for part in Path(error.filename).relative_to(root).parts):
            raise DatasetError(f"cannot list {error.filename}: {error.strerror or error}")

    for target, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(os.path.join(str(root), name), onerror=unreadable, followlinks=True)):
            if any(part.startswith(".") for part in Path(folder).relative_to(root).parts):
                continue
            for file in sorted(files):
                if file.startswith("."):
                    continue
                path = os.path.join(folder, file)
                if file.lower().endswith(IMG_EXTENSIONS):
                    samples.append((path, target))
                else:
                    other.append(path)
    return samples, other


def _warn_other_files(root: Path, other: Sequence[str]) -> None:
    """Warn once about files in the class folders that are skipped for their ending (hidden files aside), so that a
    folder of .jfif or .gif images does not shrink the dataset unnoticed."""
    if other:
        endings = sorted({os.path.splitext(f)[1].lower() or "(none)" for f in other})
        many = len(other) > 1
        warnings.warn(f"{root}: {len(other)} file{'s' if many else ''} skipped for {'their' if many else 'its'} "
                      f"ending ({', '.join(endings[:8])}{' ...' if len(endings) > 8 else ''}; e.g. {other[0]}); "
                      f"images must end in {', '.join(IMG_EXTENSIONS)}", IgnoredFilesWarning, stacklevel=3)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT / SIGTERM. A Ctrl-C, ``timeout`` or a cluster's stop
    signal reaches the whole process group; the main process then finishes its step, saves and shuts the workers
    down, instead of dying on "DataLoader worker is killed by signal"."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(img: Image.Image, exif: bool = False) -> Image.Image:
    """``img`` as an 8-bit RGB image.

    Pillow's own ``convert("RGB")`` clips high-depth grey images at 255 (a 16-bit PNG turns white), so those are
    scaled first: 16-bit modes by 255 / 65535; 32-bit integer ones (mode I, which older Pillow gives 16-bit PNGs)
    the same when a value exceeds 255, else as they are; float images (mode F) from [0, 1] when they fit it,
    else clipped to [0, 255]. ``exif``: turned as the EXIF orientation tag says, i.e. as a viewer shows the photo
    (for images a user hands in; datasets keep the stored pixels, which their annotations refer to, as
    torchvision and timm do)."""
    if exif:
        img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        import numpy as np

        array = np.asarray(img, dtype=np.float64)
        if img.mode in _SIXTEEN_BIT_MODES or (img.mode == "I" and array.size and array.max() > 255):
            array = array * (255.0 / 65535.0)
        elif img.mode == "F" and array.size and array.min() >= 0.0 and array.max() <= 1.0:
            array = array * 255.0
        img = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def load_rgb(path: str, exif: bool = False) -> Image.Image:
    """Decode an image file fully (``Image.open`` is lazy: the conversion forces the decode) as 8-bit RGB
    (:func:`to_rgb`: high-depth grey scaled; ``exif``: turned as its EXIF orientation says)."""
    with open(path, "rb") as f:
        return to_rgb(Image.open(f), exif=exif)


def _warn_unreadable(path: str, error: BaseException) -> None:
    warnings.warn(f"unreadable image skipped: {path} ({type(error).__name__}: {error})", UnreadableImageWarning,
                  stacklevel=3)


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` -> (transform(image), class index, readable).

    ``readable`` is 1, or 0 when the image at that index could not be decoded. With ``substitute=True``
    (training) the sample is then the next readable image, so a batch keeps its size; with ``substitute=False``
    (evaluation) it is a placeholder the caller leaves out. An index may be a pair (index, seed): the random
    augmentations of that sample then draw from ``seed``, so a sample looks the same whichever worker loads it
    (exact resumption, any number of workers).
    """

    def __init__(self, root: "str | Path", transform: Optional[Callable] = None, substitute: bool = True,
                 loader: Callable[[str], Any] = load_rgb):
        self.root = Path(root)
        self.samples, self.classes = scan_image_folder(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.substitute = substitute
        self.loader = loader
        # The unreadable images already reported, in shared memory: the DataLoader workers (forked or spawned, and
        # new ones for each evaluation) each keep their own warnings registry, so each used to repeat a warning;
        # this way a file is reported once per dataset. (Two workers failing on one file at the same instant may
        # both report it.) The count of unreadable images does not come from here but from the items' flag.
        self._reported = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int):
        path, target = self.samples[index]
        try:
            return self.loader(path), target, 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            if not self._reported[index]:
                self._reported[index] = 1
                _warn_unreadable(path, e)
            return None, target, 0

    def __getitem__(self, item):
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        image, target, readable = self._load(index)
        if image is None:
            tries = 0
            substitute = index
            others = min(MAX_SUBSTITUTES, len(self.samples) - 1)  # (each image tried once)
            while image is None and tries < others:
                substitute = (substitute + 1) % len(self.samples)
                image, sub_target, _ = self._load(substitute)
                tries += 1
            if image is None:
                what = (f"none of its {len(self.samples)} image(s) could be read" if others < MAX_SUBSTITUTES else
                        f"{MAX_SUBSTITUTES + 1} images in a row could not be read")
                raise DatasetError(f"{self.root}: {what}, starting at {self.samples[index][0]}; is the dataset "
                                   f"intact?")
            if self.substitute:
                target = sub_target
        return _transformed(self.transform, image, seed), target, readable


class TensorImageDataset(Dataset):
    """In-memory uint8 images [N, 3, H, W] (e.g. the synthetic set) served as PIL images through ``transform``,
    with the same (image, target, readable) items and (index, seed) indices as :class:`ImageFolderDataset`."""

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], transform: Optional[Callable] = None):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.classes = list(classes)
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        image = Image.fromarray(self.images[index].permute(1, 2, 0).numpy())
        return _transformed(self.transform, image, seed), int(self.labels[index]), 1


class _seeded:
    """Seed python's, numpy's and torch's RNGs (what torchvision / timm transforms draw from; timm's RandAugment
    picks its ops with numpy) for one sample, then put the previous states back."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def __enter__(self):
        import random

        import numpy as np

        self._py = random.getstate()
        self._np = np.random.get_state()
        self._torch = torch.get_rng_state()
        random.seed(self.seed)
        np.random.seed(self.seed % 2 ** 32)
        torch.default_generator.manual_seed(self.seed)  # the CPU generator only (CUDA's is left alone)

    def __exit__(self, *exc):
        import random

        import numpy as np

        random.setstate(self._py)
        np.random.set_state(self._np)
        torch.set_rng_state(self._torch)


def _transformed(transform: Optional[Callable], image, seed: Optional[int]):
    """``transform(image)``, under the sample's own seed when it has one."""
    if transform is None:
        return image
    if seed is None:
        return transform(image)
    with _seeded(seed):
        return transform(image)
