"""Inference at any image size, whole-image or sliding-window, and dataset evaluation (mIoU).

Both modes work on the device: the uint8 image is normalised, resized to the test scale (aspect kept), then
- whole: padded right / bottom to a multiple of the model's size divisor (with 0, the mean after normalising),
  run once; the backbone resizes its position embedding to the grid (dynamic_img_size);
- slide: covered by crop-sized windows at the given stride (the last row / column aligned with the edge), the
  windows run in batches and their logits averaged where they overlap.
The logits are then cropped to the unpadded image and upsampled (bilinear) to the original size, so the metrics
are measured against the original masks.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...engine import autocast
from .metrics import ConfusionMatrix
from .transforms import rescaled_size

__all__ = ["InferenceSettings", "Predictor", "evaluate"]


@dataclass
class InferenceSettings:
    mode: str = "whole"  # 'whole' or 'slide'
    scale: Optional[Tuple[int, int]] = None  # (long, short) bound; None: keep the image size
    crop_size: Tuple[int, int] = (512, 512)  # slide windows
    stride: Tuple[int, int] = (341, 341)
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    windows_per_batch: int = 8

    def __post_init__(self):
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {self.mode!r}")
        for name in ("crop_size", "stride") + (("scale",) if self.scale is not None else ()):
            value = getattr(self, name)
            if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
                raise ValueError(f"inference {name} must be two whole numbers > 0, got {value!r}")
        if self.windows_per_batch < 1:
            raise ValueError(f"windows_per_batch must be >= 1, got {self.windows_per_batch}")

    @classmethod
    def from_config(cls, config, mode: Optional[str] = None) -> "InferenceSettings":
        return cls(mode or config.test_mode, config.test_scale_lh, config.crop_hw, config.slide_stride_hw,
                   tuple(config.mean), tuple(config.std))


class Predictor:
    """``model`` (a SegmentationModel) with its inference settings on ``device`` under autocast ``dtype``. The model
    is moved to ``device`` (``Module.to``, in place) and put in eval mode."""

    def __init__(self, model: nn.Module, settings: InferenceSettings, device: "torch.device | str" = "cpu",
                 dtype: Optional[torch.dtype] = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.settings = settings
        self.dtype = dtype
        self.size_divisor = int(model.size_divisor)
        self._mean = torch.tensor(settings.mean, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(settings.std, device=self.device).view(3, 1, 1)

    def _prepare(self, image: Tensor) -> Tensor:
        """uint8 [3, H, W] -> normalised float [1, 3, h, w] at the test scale, on the device."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB image [3, H, W], got shape {tuple(image.shape)}")
        x = image.to(self.device, non_blocking=True).float().div_(255)
        x = ((x - self._mean) / self._std).unsqueeze(0)
        if self.settings.scale is not None:
            size = rescaled_size(tuple(image.shape[-2:]), self.settings.scale)
            if size != tuple(image.shape[-2:]):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def _run(self, x: Tensor) -> Tensor:
        """Normalised [N, 3, h, w] (multiples of the divisor) -> fp32 logits [N, K, h, w]."""
        with autocast(self.device, self.dtype):
            logits = self.model(x)["out"]
        return F.interpolate(logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def _whole(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        d = self.size_divisor
        pad_h, pad_w = (-h) % d, (-w) % d
        x = F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        return self._run(x)[..., :h, :w]

    def _slide(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ch, cw = self.settings.crop_size
        sh, sw = self.settings.stride
        d = self.size_divisor
        if ch % d or cw % d:
            raise ValueError(f"slide crop {ch}x{cw} must be a multiple of {d}")
        ph, pw = max(h, ch), max(w, cw)  # an image smaller than a window is padded to one
        x = F.pad(x, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else x
        rows = max(math.ceil((ph - ch) / sh), 0) + 1
        cols = max(math.ceil((pw - cw) / sw), 0) + 1
        boxes = [(min(r * sh, ph - ch), min(c * sw, pw - cw)) for r in range(rows) for c in range(cols)]
        total: Optional[Tensor] = None
        count = torch.zeros(1, 1, ph, pw, device=x.device)
        step = max(1, self.settings.windows_per_batch)
        for start in range(0, len(boxes), step):
            chunk = boxes[start:start + step]
            windows = torch.cat([x[..., t:t + ch, l:l + cw] for t, l in chunk], dim=0)
            logits = self._run(windows)
            if total is None:
                total = torch.zeros(1, logits.shape[1], ph, pw, device=x.device)
            for (t, l), window_logits in zip(chunk, logits):
                total[0, :, t:t + ch, l:l + cw] += window_logits
                count[0, :, t:t + ch, l:l + cw] += 1
        return (total / count)[..., :h, :w]

    @torch.no_grad()
    def logits(self, image: "Tensor | Any", mode: Optional[str] = None) -> Tensor:
        """uint8 image [3, H, W] (or a PIL image, or a numpy uint8 array [H, W, 3]) -> fp32 logits [K, H, W] at
        the image's own size."""
        image = as_image_tensor(image)
        if image.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image (values 0 - 255), got {image.dtype}; e.g. "
                            f"(image * 255).round().to(torch.uint8) for one in [0, 1]")
        mode = mode or self.settings.mode
        if mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
        x = self._prepare(image)
        out = self._whole(x) if mode == "whole" else self._slide(x)
        if tuple(out.shape[-2:]) != tuple(image.shape[-2:]):
            out = F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return out[0]

    @torch.no_grad()
    def predict(self, image: "Tensor | Any", mode: Optional[str] = None) -> Tensor:
        """uint8 image [3, H, W] (or a PIL image, or a numpy uint8 array [H, W, 3]) -> train ids [H, W] (int64,
        on the device)."""
        return self.logits(image, mode).argmax(dim=0)


def as_image_tensor(image: Any) -> Tensor:
    """A uint8 RGB tensor [3, H, W] from what a user may hold: such a tensor, a PIL image (any mode: converted as
    the datasets convert files), or a numpy uint8 array [H, W, 3] (or [H, W] grey)."""
    if isinstance(image, Tensor):
        return image
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover (Pillow comes with torchvision)
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        import numpy as np

        from ...data.folder import to_rgb

        return torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).contiguous()
    import numpy as np

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got {image.dtype} (scale it to 0-255 and convert)")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an image array [H, W, 3], got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    raise TypeError(f"expected an image (uint8 tensor [3, H, W], PIL image or numpy array [H, W, 3]), got "
                    f"{type(image).__name__}")


def evaluate(predictor: Predictor, dataset, num_classes: int, ignore_index: int = 255, ctx=None,
             desc: str = "eval", num_workers: int = 0, progress: bool = True,
             class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """mIoU etc. of ``predictor`` on ``dataset`` (its ``load(i)`` gives the untransformed uint8 image and the
    train-id mask). Under DDP (``ctx``) each process takes every world_size-th image and the confusion matrices
    are summed."""
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    indices = list(range(rank, len(dataset), world))
    matrix = ConfusionMatrix(num_classes, ignore_index, predictor.device)
    loader = _PairLoader(dataset, indices, num_workers)
    interactive = sys.stderr.isatty()
    for image, mask in tqdm(loader, total=len(indices), desc=desc, disable=not progress or rank != 0,
                            leave=False, mininterval=1.0 if interactive else 30.0):
        prediction = predictor.predict(image)
        matrix.update(prediction, mask.to(predictor.device, non_blocking=True))
    matrix.all_reduce(ctx)
    return matrix.compute(class_names)


class _PairLoader:
    """Untransformed (image, mask) pairs in ``indices`` order; decoding in worker processes if asked."""

    def __init__(self, dataset, indices, num_workers: int):
        self.dataset, self.indices, self.num_workers = dataset, indices, num_workers

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        cached = getattr(self.dataset, "_cache", None) is not None
        if self.num_workers <= 0 or cached:
            for i in self.indices:
                yield self.dataset.load(i)
            return
        loader = torch.utils.data.DataLoader(_Loads(self.dataset, self.indices), batch_size=None,
                                             num_workers=self.num_workers)
        yield from loader


class _Loads(torch.utils.data.Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset.load(self.indices[i])
