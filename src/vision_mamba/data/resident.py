"""The device-resident path for small datasets: decode every image once, keep it on the GPU, augment there.

Decoding 10k JPEG / WebP files each epoch costs more than training a small model on them; here each image is
decoded once into a uint8 tensor on the training device (Imagenette-160's 9,469 training images at 160 px are
0.73 GB), and each batch is gathered and augmented on that device:

- random resized crop (torchvision's scale / ratio sampling, drawn per image) through
  ``torchvision.ops.roi_align`` (bilinear with 2x2 samples per output pixel, i.e. anti-aliased when shrinking)
  and a horizontal flip per image;
- RandAugment with torchvision's tensor ops (``transforms.v2.RandAugment``, one op per layer): timm's policy
  string (e.g. ``rand-m9-mstd0.5-inc1``: 2 layers, each applied with p=0.5, magnitude 9 +- 0.5 of 10) is
  followed, but each draw of ops and magnitudes is shared by a group of ``group_size`` images rather than drawn
  per image (one draw per image would launch thousands of small kernels per batch). torchvision's op set
  matches timm's increasing-severity set except Invert and SolarizeAdd, which it lacks;
- normalisation, then timm's RandomErasing on the device.
Mixup / CutMix (timm) are applied to the batch by the training loop, as on the streaming path.

Evaluation images are resized and centre-cropped once at decode time, exactly as timm's eval transform does.
Unreadable files are left out (counted, with a warning).
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .folder import ignore_stop_signals, load_rgb
from .sampling import EpochLoaderBase, EpochSampler

__all__ = ["decode_images", "DeviceAugment", "ResidentTrainLoader", "ResidentEvalLoader", "resident_bytes"]


class _DecodeDataset(Dataset):
    def __init__(self, paths: Sequence[str], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = self.transform(load_rgb(self.paths[index]))
            return image, index, ""
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # corrupt file: reported by the caller, left out
            return None, index, f"{type(e).__name__}: {e}"


def _collate(batch):
    return batch


def decode_images(paths: Sequence[str], transform, size: int, workers: int = 4,
                  progress: bool = True, desc: str = "decoding") -> Tuple[Tensor, List[int], List[Tuple[str, str]]]:
    """Decode ``paths`` through ``transform`` (PIL -> uint8 [3, size, size]) with ``workers`` processes.

    Returns (images uint8 [M, 3, size, size] on the CPU, the indices of the M readable files, and
    (path, error) for each unreadable one).
    """
    from tqdm import tqdm

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    ok = torch.zeros(len(paths), dtype=torch.bool)
    failures: List[Tuple[str, str]] = []
    loader = DataLoader(_DecodeDataset(paths, transform), batch_size=64, num_workers=workers,
                        collate_fn=_collate, shuffle=False, worker_init_fn=ignore_stop_signals)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=None if progress else True,
              mininterval=2.0) as bar:  # (None: no bar where stderr is not a terminal)
        for batch in loader:
            for image, index, error in batch:
                if image is None:
                    failures.append((paths[index], error))
                else:
                    if tuple(image.shape) != (3, size, size):
                        raise RuntimeError(f"decode transform gave {tuple(image.shape)} for {paths[index]}, "
                                           f"expected (3, {size}, {size})")
                    out[index] = image
                    ok[index] = True
            bar.update(len(batch))
    for path, error in failures:
        warnings.warn(f"unreadable image skipped: {path} ({error})", stacklevel=2)
    keep = ok.nonzero().flatten()
    images = out if len(keep) == len(paths) else out[keep]
    return images, keep.tolist(), failures


def resident_bytes(num_images: int, size: int) -> int:
    return num_images * 3 * size * size


def _rand_augment_params(policy: str) -> Tuple[int, float, float, float, float]:
    """timm's policy string -> (layers, probability per layer, magnitude, magnitude std, magnitude max)."""
    if not policy.startswith("rand"):
        raise ValueError(f"the device-resident path supports RandAugment policies ('rand-...'), not {policy!r}; "
                         "set gpu_resident: false to use timm's PIL pipeline")
    from timm.data.auto_augment import rand_augment_transform

    ra = rand_augment_transform(policy, {})
    op = ra.ops[0]
    max_magnitude = op.magnitude_max if op.magnitude_max is not None else 10.0
    return ra.num_layers, float(op.prob), float(op.magnitude), float(op.magnitude_std), float(max_magnitude)


class DeviceAugment:
    """Training augmentation of a uint8 batch [B, 3, H, W] on its own device -> normalised float
    [B, 3, img_size, img_size]. Random numbers come from torch's CPU generator (parameters) and the batch's
    device generator (erasing noise), so a seeded step is reproducible and nothing waits for the GPU."""

    def __init__(self, img_size: int, *, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1", group_size: int = 8,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 re_prob: float = 0.25, re_mode: str = "pixel", re_count: int = 1, no_aug: bool = False,
                 device: "torch.device | str" = "cpu"):
        self.img_size = img_size
        self.scale = (float(scale[0]), float(scale[1]))
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.hflip = hflip
        self.no_aug = no_aug
        self.group_size = max(1, group_size)
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.fill = [float(m) for m in mean]
        self.rand_augment = _rand_augment_params(auto_augment) if auto_augment and not no_aug else None
        self.erase = None
        if re_prob > 0 and not no_aug:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(probability=re_prob, mode=re_mode, max_count=re_count, device=self.device)

    # ------------------------------------------------------------------ random resized crop + flip
    def crop_boxes(self, batch: int, height: int, width: int) -> Tensor:
        """Per-image crop boxes [B, 4] (x1, y1, x2, y2) in pixels: torchvision's RandomResizedCrop sampling
        (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``, 10 tries, then a centre crop)."""
        tries = 10
        area = height * width
        target = area * torch.empty(batch, tries).uniform_(*self.scale)
        aspect = torch.exp(torch.empty(batch, tries).uniform_(*self.log_ratio))
        w = torch.sqrt(target * aspect)
        h = torch.sqrt(target / aspect)
        fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
        first = torch.argmax(fits.int(), dim=1)
        any_fit = fits.any(dim=1)
        rows = torch.arange(batch)
        w, h = w[rows, first], h[rows, first]
        # fallback: the largest centred crop with the aspect ratio clamped to the allowed range
        in_ratio = width / height
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if in_ratio < lo:
            fw, fh = float(width), width / lo
        elif in_ratio > hi:
            fw, fh = height * hi, float(height)
        else:
            fw, fh = float(width), float(height)
        w = torch.where(any_fit, w, torch.full_like(w, fw))
        h = torch.where(any_fit, h, torch.full_like(h, fh))
        x1 = torch.rand(batch) * (width - w)
        y1 = torch.rand(batch) * (height - h)
        x1 = torch.where(any_fit, x1, (width - w) / 2)
        y1 = torch.where(any_fit, y1, (height - h) / 2)
        return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)

    def _crop_flip(self, images: Tensor) -> Tensor:
        from torchvision.ops import roi_align

        batch, _, height, width = images.shape
        boxes = self.crop_boxes(batch, height, width)
        rois = torch.cat([torch.arange(batch, dtype=torch.float32)[:, None], boxes], dim=1)
        out = roi_align(images, rois.to(images.device, non_blocking=True), output_size=self.img_size,
                        spatial_scale=1.0, sampling_ratio=2, aligned=True)
        if self.hflip > 0:
            flip = (torch.rand(batch) < self.hflip).to(images.device, non_blocking=True)
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return out

    # ------------------------------------------------------------------ RandAugment per group
    def _rand_augment(self, images: Tensor) -> Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2

        layers, prob, magnitude, magnitude_std, magnitude_max = self.rand_augment
        groups = []
        for group in images.split(self.group_size):
            for _ in range(layers):
                if float(torch.rand(())) >= prob:
                    continue
                m = magnitude
                if magnitude_std == float("inf"):
                    m = float(torch.rand(())) * magnitude
                elif magnitude_std > 0:
                    m = magnitude + magnitude_std * float(torch.randn(()))
                m = min(max(m, 0.0), magnitude_max)
                op = v2.RandAugment(num_ops=1, magnitude=int(round(100 * m / magnitude_max)), num_magnitude_bins=101,
                                    interpolation=InterpolationMode.BILINEAR, fill=self.fill)
                group = op(group)
            groups.append(group)
        return torch.cat(groups) if len(groups) > 1 else groups[0]

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"DeviceAugment expects a uint8 batch [B, 3, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = images.float().div_(255)
        if not self.no_aug:
            x = self._crop_flip(x)
            if self.rand_augment is not None:
                x = self._rand_augment(x.clamp_(0, 1))
        elif x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(f"without augmentation the stored images must already be {self.img_size} px, "
                             f"got {tuple(x.shape[-2:])}")
        x = (x - self.mean) / self.std
        if self.erase is not None:
            x = self.erase(x)
        return x


class ResidentTrainLoader(EpochLoaderBase):
    """Batches of the device-resident training set: gather by the sampler's indices, augment on the device.

    ``epoch(e, start_step)`` yields (images float [b, 3, R, R], targets int64 [b]) on ``device`` for the
    remaining steps of epoch ``e``; b is the per-process batch. Batches are made lazily, so what a step draws
    from torch's RNG is drawn right before that step.
    """

    def __init__(self, images: Tensor, targets: Tensor, sampler: EpochSampler, augment: DeviceAugment):
        self.images = images
        self.targets = targets.to(images.device)
        self.sampler = sampler
        self.augment = augment
        self.unreadable = 0

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        self.sampler.set_epoch(epoch, start_step)
        pairs = self.sampler.epoch_pairs()
        b = self.sampler.local_batch_size
        index = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        if self.images.device.type == "cuda":
            index = index.pin_memory()
        index = index.to(self.images.device, non_blocking=True)
        for step in range(len(pairs) // b):
            idx = index[step * b:(step + 1) * b]
            yield self.augment(self.images.index_select(0, idx)), self.targets.index_select(0, idx)


class ResidentEvalLoader:
    """Evaluation batches of pre-cropped uint8 images on the device: (float images normalised, targets)."""

    def __init__(self, images: Tensor, targets: Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], world_size: int = 1, rank: int = 0):
        self.images = images[rank::world_size]
        self.targets = targets.to(images.device)[rank::world_size]
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
        self.unreadable = 0

    def __len__(self) -> int:
        return math.ceil(self.images.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        for start in range(0, self.images.shape[0], self.batch_size):
            x = self.images[start:start + self.batch_size].float().div_(255)
            yield (x - self.mean) / self.std, self.targets[start:start + self.batch_size], None
