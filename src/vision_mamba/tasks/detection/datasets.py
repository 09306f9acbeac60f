"""COCO-format instance datasets through pycocotools, checked up front and held in memory.

Every problem is found before training starts: missing image files, images whose size differs from the json,
boxes with a negative corner or a non-positive width / height, segmentations that are neither polygons nor RLE,
unknown category or image ids. Each is reported with the annotation and image id. With
``on_bad_annotation='skip'`` malformed annotations are dropped and counted instead.

Category ids map to contiguous labels 1..K in the order of the json's category list (0 is torchvision's
background). Crowd regions (``iscrowd=1``) never become training targets; COCOeval uses them as ignore regions.
Images are decoded once and kept as uint8 tensors; masks are kept as compressed RLE and decoded per sample.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ...data.folder import to_rgb

__all__ = ["AnnotationError", "CocoInstances", "collate_detection", "load_image"]

_logger = logging.getLogger(__name__)

Target = Dict[str, Tensor]


class AnnotationError(ValueError):
    """Malformed annotations; the message lists them by annotation and image id."""


def load_image(path: "str | Path", exif: bool = False) -> Tensor:
    """An image file as a uint8 RGB tensor [3, H, W] (``to_rgb``: grey and 16-bit images converted; ``exif``:
    turned as its EXIF orientation says, for a user's photo; annotated images keep their stored pixels, which the
    annotations' coordinates refer to)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            array = np.asarray(to_rgb(img, exif=exif))
    except Exception as e:  # PIL raises several types for unreadable files
        raise OSError(f"cannot decode image {path}: {e}") from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _finite_numbers(values: Any) -> bool:
    return isinstance(values, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _segmentation_problem(seg: Any, height: int, width: int, crowd: bool) -> Optional[str]:
    """Why ``seg`` is not a usable COCO segmentation (None if it is)."""
    if seg is None or (isinstance(seg, (list, dict)) and len(seg) == 0):
        return "has no segmentation (Mask R-CNN needs a mask for every object)"
    if isinstance(seg, list):
        if crowd:
            return "is a crowd region with polygons (COCO crowd regions are RLE)"
        for i, poly in enumerate(seg):
            if not _finite_numbers(poly):
                return f"polygon {i} is not a list of finite numbers"
            if len(poly) < 6 or len(poly) % 2:
                return f"polygon {i} has {len(poly)} coordinates (needs an even number, at least 6)"
        return None
    if isinstance(seg, dict):
        if set(seg) != {"counts", "size"}:
            return f"segmentation dict has keys {sorted(seg)} (RLE needs exactly 'counts' and 'size')"
        size = seg["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and list(size) == [height, width]):
            return f"RLE size {size} differs from the image size [{height}, {width}]"
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                return f"uncompressed RLE counts do not add up to {height}x{width} pixels"
        elif not isinstance(counts, (str, bytes)):
            return f"RLE counts of type {type(counts).__name__} (needs a string or a list of ints)"
        return None
    return f"segmentation of unknown format {type(seg).__name__} (needs polygons or RLE)"


def _annotation_problem(ann: Dict[str, Any], image: Optional[Dict[str, Any]], category_ids: set) -> Optional[str]:
    if image is None:
        return f"refers to image id {ann.get('image_id')!r}, which is not in 'images'"
    if ann.get("category_id") not in category_ids:
        return f"has unknown category_id {ann.get('category_id')!r}"
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):
        return f"has iscrowd={crowd!r} (must be 0 or 1)"
    box = ann.get("bbox")
    if not _finite_numbers(box) or len(box) != 4:
        return f"bbox {box!r} is not 4 finite numbers [x, y, width, height]"
    x, y, w, h = box
    height, width = image["height"], image["width"]
    if w <= 0 or h <= 0:
        return f"bbox {box} has a non-positive width or height"
    if x < 0 or y < 0:
        return f"bbox {box} has a negative coordinate"
    if x + w > width + 1 or y + h > height + 1:  # COCO boxes may overrun the border by rounding, not more
        return f"bbox {box} extends beyond the {width}x{height} image"
    return _segmentation_problem(ann.get("segmentation"), height, width, bool(crowd))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_structure(data: Any, path: Path) -> None:
    """The parts of a COCO instances file that the per-annotation checks rely on, else AnnotationError: a mapping
    of 'images', 'annotations' and 'categories' lists of mappings; images with a unique integer id, a file name and
    a positive integer height and width; categories and annotations with unique integer ids (pycocotools indexes
    by id: a repeated one would drop or double an object, a category or an image)."""
    if not isinstance(data, dict):
        raise AnnotationError(f"{path} holds a {type(data).__name__}, not a COCO instances file (a mapping with "
                              "'images', 'annotations' and 'categories')")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path} has no '{key}' list: not a COCO instances file")
        odd = [entry for entry in data[key] if not isinstance(entry, dict)]
        if odd:
            raise AnnotationError(f"{path}: {len(odd)} entries of '{key}' are not mappings, e.g. {odd[0]!r}")
    bad_images = [img for img in data["images"] if not (
        _is_id(img.get("id")) and isinstance(img.get("file_name"), str) and img["file_name"]
        and all(_is_id(img.get(k)) and img[k] > 0 for k in ("height", "width")))]
    if bad_images:
        raise AnnotationError(f"{path}: {len(bad_images)} image entries lack an integer id, a file_name, or a "
                              f"positive integer height and width, e.g. {bad_images[0]}")
    for key, what in (("images", "image"), ("categories", "category"), ("annotations", "annotation")):
        ids = [entry.get("id") for entry in data[key]]
        unnamed = [n for n, i in enumerate(ids) if not _is_id(i)]
        if unnamed:
            raise AnnotationError(f"{path}: {len(unnamed)} {what} entries have no integer id, e.g. entry "
                                  f"{unnamed[0]} of '{key}'")
        repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if repeated:
            raise AnnotationError(f"{path}: {what} ids {repeated[:10]} occur more than once (ids must be unique)")


class CocoInstances(torch.utils.data.Dataset):
    """Images and instance targets from a COCO json.

    ``dataset[i]`` -> (image uint8 [3, H, W], target) with target ``boxes`` float32 [N, 4] (x1, y1, x2, y2,
    pixels), ``labels`` int64 [N] in 1..K, ``masks`` uint8 [N, H, W], ``image_id`` int64 []; crowd regions are
    left out. ``transform(image, target) -> (image, target)`` (e.g. LargeScaleJitter) is applied last.

    Args:
        image_dir / annotation_file: the COCO layout.
        transform: augmentation for training; None gives the original images (evaluation).
        keep_empty: keep images that have no (non-crowd) object. Evaluation keeps every image regardless.
        on_bad_annotation: 'error' (raise AnnotationError listing them) or 'skip' (drop and count them).
        categories: the label order of another dataset (a list of category dicts) so labels agree between the
            training and validation sets; default: this json's categories.
        max_images: use the first n images only.
    """

    def __init__(
        self,
        image_dir: "str | Path",
        annotation_file: "str | Path",
        transform: Optional[Callable[[Tensor, Target], Tuple[Tensor, Target]]] = None,
        keep_empty: bool = True,
        on_bad_annotation: str = "error",
        categories: Optional[Sequence[Dict[str, Any]]] = None,
        max_images: Optional[int] = None,
        progress: bool = True,
    ):
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO

        if on_bad_annotation not in ("error", "skip"):
            raise ValueError(f"on_bad_annotation must be 'error' or 'skip', got {on_bad_annotation!r}")
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.transform = transform
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.annotation_file}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        try:
            data = json.loads(self.annotation_file.read_text())
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{self.annotation_file} is not valid JSON: {e}") from e
        _check_structure(data, self.annotation_file)

        images = data["images"]
        if max_images is not None:
            images = images[:max_images]
        missing = [img["file_name"] for img in images if not (self.image_dir / img["file_name"]).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise FileNotFoundError(f"{len(missing)} of the {len(images)} images listed in {self.annotation_file} "
                                    f"are missing from {self.image_dir}: {shown}")

        self.categories = [dict(id=c["id"], name=c.get("name", str(c["id"])))
                           for c in (categories if categories is not None else data["categories"])]
        self.category_ids = [c["id"] for c in self.categories]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        known_categories = {c["id"] for c in data["categories"]}
        unmapped = known_categories - set(self.category_ids)
        if unmapped:
            _logger.warning("%s: categories %s are not among the model's labels; they cannot be predicted",
                            self.annotation_file, sorted(unmapped))

        by_id = {img["id"]: img for img in images}
        kept, problems = [], []
        all_ids = {img["id"] for img in data["images"]}
        for ann in data["annotations"]:
            if ann.get("image_id") in all_ids and ann.get("image_id") not in by_id:
                continue  # an image left out by max_images
            problem = _annotation_problem(ann, by_id.get(ann.get("image_id")), known_categories)
            if problem is None:
                kept.append(ann)
            else:
                problems.append(f"annotation {ann.get('id')!r} (image {ann.get('image_id')!r}) {problem}")
        if problems and on_bad_annotation == "error":
            shown = "\n  ".join(problems[:10]) + (f"\n  ... ({len(problems)} in all)" if len(problems) > 10 else "")
            raise AnnotationError(
                f"{self.annotation_file}: {len(problems)} malformed annotation(s):\n  {shown}\n"
                "Fix them, or drop them (they are counted): det-train --set data.on_bad_annotation=skip, "
                "det-eval --on-bad-annotation skip.")
        self.skipped_annotations = len(problems)
        if problems:
            _logger.warning("%s: skipped %d malformed annotations, e.g. %s", self.annotation_file, len(problems),
                            problems[0])

        # The COCO object (used by COCOeval) holds exactly the images and annotations that passed the checks,
        # with the fields COCOeval reads filled in where a hand-made file leaves them out.
        kept = [dict(a) for a in kept]
        for ann in kept:
            ann.setdefault("iscrowd", 0)
            if not isinstance(ann.get("area"), (int, float)):
                img = by_id[ann["image_id"]]
                ann["area"] = float(mask_utils.area(_to_rle(mask_utils, ann["segmentation"], img["height"],
                                                            img["width"])))
        clean = {k: v for k, v in data.items() if k not in ("images", "annotations")}
        clean["images"], clean["annotations"] = images, kept
        self.coco = COCO()
        self.coco.dataset = copy.deepcopy(clean)
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            self.coco.createIndex()

        per_image: Dict[int, List[Dict[str, Any]]] = {img["id"]: [] for img in images}
        for ann in kept:
            if not ann.get("iscrowd", 0) and ann["category_id"] in self.label_of:
                per_image[ann["image_id"]].append(ann)
        self.num_crowd = sum(1 for a in kept if a.get("iscrowd", 0))
        self.image_infos = [img for img in images if keep_empty or per_image[img["id"]]]
        self.image_ids = [img["id"] for img in self.image_infos]
        self._instances: List[Dict[str, Any]] = []
        for img in self.image_infos:
            anns = per_image[img["id"]]
            h, w = img["height"], img["width"]
            rles = [_to_rle(mask_utils, a["segmentation"], h, w) for a in anns]
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            labels = np.array([self.label_of[a["category_id"]] for a in anns], dtype=np.int64)
            self._instances.append(dict(rles=rles, boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels)))

        self._images: List[Tensor] = []
        for img in tqdm(self.image_infos, desc=f"decode {self.image_dir.name}", disable=not progress, leave=False):
            try:
                tensor = load_image(self.image_dir / img["file_name"])
            except OSError as e:  # decoded before training, so a broken file stops nothing mid-run
                raise AnnotationError(f"{e} (image {img['id']} of {self.annotation_file}); replace the file or "
                                      f"remove the image from the annotations") from None
            if tuple(tensor.shape[1:]) != (img["height"], img["width"]):
                raise AnnotationError(
                    f"image {img['id']} ({img['file_name']}) is {tensor.shape[1]}x{tensor.shape[2]} pixels but "
                    f"{self.annotation_file} says {img['height']}x{img['width']}")
            self._images.append(tensor)

    @property
    def num_classes(self) -> int:
        """K, the number of object categories (the model predicts K + 1 classes with background)."""
        return len(self.categories)

    @property
    def num_objects(self) -> int:
        """The training targets: non-crowd instances of the model's categories, over all images."""
        return sum(len(inst["labels"]) for inst in self._instances)

    def __len__(self) -> int:
        return len(self.image_infos)

    def image(self, index: int) -> Tensor:
        return self._images[index]

    def target(self, index: int) -> Target:
        """The instances of image ``index`` in its original coordinates."""
        from pycocotools import mask as mask_utils

        inst = self._instances[index]
        h, w = self._images[index].shape[1:]
        if inst["rles"]:
            masks = mask_utils.decode(inst["rles"])  # [H, W, N], Fortran order
            masks = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
        return dict(boxes=inst["boxes"].clone(), labels=inst["labels"].clone(), masks=masks,
                    image_id=torch.tensor(self.image_ids[index], dtype=torch.int64))

    def __getitem__(self, index: int) -> Tuple[Tensor, Target]:
        image, target = self._images[index], self.target(index)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


def _to_rle(mask_utils, seg: Any, height: int, width: int) -> Dict[str, Any]:
    """Polygons, uncompressed or compressed RLE -> one compressed RLE."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    counts = seg["counts"]
    return dict(size=list(seg["size"]), counts=counts.encode() if isinstance(counts, str) else counts)


def collate_detection(batch: Sequence[Tuple[Tensor, Target]]) -> Tuple[List[Tensor], List[Target]]:
    """Detection batches stay lists: images differ in size and targets in length."""
    images, targets = zip(*batch)
    return list(images), list(targets)
