"""Synthetic segmentation data for the segmentation tests (imported by the other test_segmentation_* files), and
checks that the data it writes is what the tests assume.

Images are flat-coloured regions with a little noise; the colour says the class, so a tiny model can learn it in
a few dozen steps. Masks use raw values 10 / 20 / 30 (mapped to train ids 0 / 1 / 2 through the class list) and 0
for an unlabelled border (ignored).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
from PIL import Image

from vision_mamba.tasks.segmentation import SegConfig

COLOURS = {10: (220, 40, 40), 20: (40, 200, 60), 30: (50, 60, 220)}  # raw mask value -> RGB
NAMES = {0: "unlabeled", 10: "red", 20: "green", 30: "blue"}


def synthetic_pair(rng: np.random.Generator, size: Tuple[int, int] = (64, 64)) -> Tuple[np.ndarray, np.ndarray]:
    """An RGB image [H, W, 3] uint8 and its raw mask [H, W]: a 2 x 2 grid of blocks, each of a random class
    (blocks of 2 x 2 patches for a patch-16 model at 64 x 64), and a one-pixel unlabelled border."""
    h, w = size
    values = np.array(list(COLOURS), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for r in range(2):
        for c in range(2):
            mask[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] = rng.choice(values)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 0
    image = np.zeros((h, w, 3), dtype=np.int16)
    for value, colour in COLOURS.items():
        image[mask == value] = colour
    image[mask == 0] = (128, 128, 128)
    image += rng.integers(-12, 13, size=image.shape).astype(np.int16)
    return image.clip(0, 255).astype(np.uint8), mask


def write_folder_dataset(root: Path, n_train: int = 4, n_val: int = 2, size: Tuple[int, int] = (64, 64),
                         seed: int = 0) -> Path:
    """root/images/{train,val}/*.png, root/masks/{train,val}/*.png, root/classes.json (COCO-style records)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = synthetic_pair(rng, size)
            Image.fromarray(image).save(root / "images" / split / f"{split}_{i:03d}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{split}_{i:03d}.png")
    (root / "classes.json").write_text(json.dumps([{"id": k, "name": v} for k, v in NAMES.items()]))
    return root


def tiny_config(data_root: Path, output: Path, **overrides: Any) -> SegConfig:
    """A seconds-long run on the synthetic data: test_vim (2 blocks, 32 wide), 16-channel heads, 64x64 crops."""
    values: Dict[str, Any] = dict(
        backbone="test_vim", head_channels=16, aux_channels=16, pool_scales=[1, 2], drop_path_rate=0.0,
        data_root=str(data_root), train_images="images/train", train_masks="masks/train", val_images="images/val",
        val_masks="masks/val", classes_file="classes.json", ignore_values=[0], num_workers=0,
        crop_size=[64, 64], resize_scale=[64, 64], ratio_range=[0.75, 1.25], test_scale=[64, 64], color_jitter=None,
        iters=4, warmup_iters=1, lr=1e-3, layer_decay=0.92, batch_size=2, precision="fp32", device="cpu",
        checkpoint_every=2, log_every=1, output=str(output))
    values.update(overrides)
    return SegConfig.from_dict(dict(SegConfig().to_dict(), **values))


def test_synthetic_data_matches_its_description(tmp_path):
    root = write_folder_dataset(tmp_path, n_train=3, n_val=1)
    masks = sorted((root / "masks" / "train").glob("*.png"))
    images = sorted((root / "images" / "train").glob("*.png"))
    assert [m.name for m in masks] == [i.name for i in images] and len(masks) == 3
    for image_path, mask_path in zip(images, masks):
        image, mask = np.asarray(Image.open(image_path)), np.asarray(Image.open(mask_path))
        assert image.shape[:2] == mask.shape
        assert set(np.unique(mask)) <= {0, 10, 20, 30} and 0 in mask
        for value, colour in COLOURS.items():  # the colour of a region says its class
            if (mask == value).any():
                mean = image[mask == value].mean(axis=0)
                assert np.abs(mean - np.array(colour)).max() < 6
