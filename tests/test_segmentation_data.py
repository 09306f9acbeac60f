"""Segmentation data: class lists, raw value -> train id tables, clear errors for bad masks, the ADE20K layout,
the joint image + mask augmentation, and (with VISION_MAMBA_DATA) the real COCO-128 semantic masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_segmentation_fixtures import synthetic_pair, tiny_config, write_folder_dataset
from vision_mamba.tasks.segmentation import ADE20KDataset, ClassList, DatasetError, TrainTransform, read_class_list
from vision_mamba.tasks.segmentation.datasets import dataset_from_config, read_raw_mask
from vision_mamba.tasks.segmentation.transforms import rescaled_size


def write(path: Path, array: np.ndarray, mode=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


# ---------------------------------------------------------------------------------------------- class lists
def test_class_list_formats(tmp_path):
    coco = tmp_path / "classes.json"
    coco.write_text(json.dumps([{"id": 0, "name": "unlabeled"}, {"id": 1, "name": "person"},
                                {"id": 5, "name": "airplane"}, {"id": 200, "name": "rug"}]))
    classes = read_class_list(coco, ignore_values=[0])
    assert classes.names == ("person", "airplane", "rug") and classes.raw_values == (1, 5, 200)
    table = classes.lookup_table()
    assert table[0] == 255 and table[1] == 0 and table[5] == 1 and table[200] == 2 and table[2] == -1

    (tmp_path / "map.yaml").write_text("3: cat\n1: dog\n")
    assert read_class_list(tmp_path / "map.yaml").names == ("dog", "cat")  # ascending raw value -> train id
    (tmp_path / "names.json").write_text(json.dumps(["sky", "tree"]))
    assert read_class_list(tmp_path / "names.json").raw_values == (0, 1)
    (tmp_path / "names.txt").write_text("sky\ntree\n\nroad\n")
    assert read_class_list(tmp_path / "names.txt").names == ("sky", "tree", "road")
    (tmp_path / "ids.txt").write_text("0 background\n7 traffic light\n")
    ids = read_class_list(tmp_path / "ids.txt", ignore_values=[0])
    assert ids.names == ("traffic light",) and ids.raw_values == (7,)


def test_class_list_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_class_list(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"categories": [{"name": "x"}]}))
    with pytest.raises(DatasetError, match="expected a list"):
        read_class_list(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match="collides with train id"):
        ClassList(tuple(f"c{i}" for i in range(300)), tuple(range(300)), (), 255)


def test_encode_maps_values_and_names_bad_ones():
    classes = ClassList(("person", "sky"), (1, 120), (0,), 255, "classes.json")
    raw = np.array([[0, 1], [120, 1]], dtype=np.uint8)
    assert classes.encode(raw).tolist() == [[255, 0], [1, 0]]
    with pytest.raises(DatasetError, match=r"m\.png: mask values \[7, 300\] are not in the class list classes.json"):
        classes.encode(np.array([[1, 7], [300, 0]], dtype=np.int32), "m.png")


# ---------------------------------------------------------------------------------------------- folder layout
def test_folder_dataset_reads_pairs(tmp_path):
    root = write_folder_dataset(tmp_path, n_train=3, n_val=1)
    config = tiny_config(root, tmp_path / "run")
    for cache in (True, False):
        ds = dataset_from_config(tiny_config(root, tmp_path / "run", cache_images=cache), "train")
        assert len(ds) == 3 and ds.classes.names == ("red", "green", "blue")
        image, mask = ds[0]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 64, 64) and tuple(mask.shape) == (64, 64)
        raw = np.asarray(Image.open(ds.samples[0][1]))
        expected = np.select([raw == 0, raw == 10, raw == 20, raw == 30], [255, 0, 1, 2])
        assert np.array_equal(mask.numpy(), expected)
    assert dataset_from_config(config, "val").stems == ["val_000"]


def test_images_without_masks_are_left_out_but_masks_need_images(tmp_path):
    root = write_folder_dataset(tmp_path, n_train=2, n_val=1)
    write(root / "images" / "train" / "extra.png", np.zeros((8, 8, 3), np.uint8))  # no mask: skipped
    assert len(dataset_from_config(tiny_config(root, tmp_path / "r"), "train")) == 2
    write(root / "masks" / "train" / "orphan.png", np.zeros((8, 8), np.uint8), "L")
    with pytest.raises(DatasetError, match="1 masks .* have no image .*orphan"):
        dataset_from_config(tiny_config(root, tmp_path / "r"), "train")


@pytest.mark.parametrize("cache", [True, False])
def test_mask_value_outside_the_class_list(tmp_path, cache):
    root = write_folder_dataset(tmp_path, n_train=2, n_val=1)
    image, mask = synthetic_pair(np.random.default_rng(0))
    mask[5:9, 5:9] = 42
    write(root / "masks" / "train" / "train_001.png", mask, "L")
    config = tiny_config(root, tmp_path / "r", cache_images=cache)
    with pytest.raises(DatasetError, match=r"train_001\.png: mask values \[42\] are not in the class list"):
        ds = dataset_from_config(config, "train")  # cached: checked now
        ds[1]  # not cached: checked when read


@pytest.mark.parametrize("cache", [True, False])
def test_image_and_mask_sizes_must_match(tmp_path, cache):
    root = write_folder_dataset(tmp_path, n_train=2, n_val=1)
    write(root / "masks" / "train" / "train_000.png", np.full((64, 48), 10, np.uint8), "L")
    with pytest.raises(DatasetError, match=r"sizes differ: .*train_000\.png is 64x64 .* is 48x64"):
        dataset_from_config(tiny_config(root, tmp_path / "r", cache_images=cache), "train")


def test_colour_masks_and_missing_folders_are_refused(tmp_path):
    root = write_folder_dataset(tmp_path, n_train=1, n_val=1)
    write(root / "masks" / "train" / "train_000.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(DatasetError, match="mode RGB .* single-channel"):
        dataset_from_config(tiny_config(root, tmp_path / "r"), "train")
    with pytest.raises(DatasetError, match="folder not found"):
        dataset_from_config(tiny_config(root, tmp_path / "r", train_images="nope"), "train")
    with pytest.raises(DatasetError, match="data_root is not set"):
        config = tiny_config(root, tmp_path / "r")
        config.data_root = None
        dataset_from_config(config, "train")


# ---------------------------------------------------------------------------------------------- ADE20K
def test_ade20k_layout_reduces_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1], [150, 7]], dtype=np.uint8)
    for split in ("training", "validation"):
        write(root / "images" / split / f"ADE_{split}_00000001.jpg", np.zeros((2, 2, 3), np.uint8))
        write(root / "annotations" / split / f"ADE_{split}_00000001.png", raw, "L")
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.1\t1\t1\tname{i};alias" for i in range(1, 151)]
    (root / "objectInfo150.txt").write_text("\n".join(rows))
    ds = ADE20KDataset(tmp_path, "training")  # the parent folder is found too
    assert ds.classes.num_classes == 150 and ds.classes.names[0] == "name1" and ds.classes.names[149] == "name150"
    _, mask = ds[0]
    assert mask.tolist() == [[255, 0], [149, 6]]  # 0 -> ignore, 1..150 -> 0..149
    assert len(ADE20KDataset(root, "val")) == 1
    with pytest.raises(DatasetError, match="no ADE20K layout"):
        ADE20KDataset(tmp_path / "elsewhere")


# ---------------------------------------------------------------------------------------------- transforms
def test_rescaled_size_keeps_aspect_within_bounds():
    assert rescaled_size((480, 640), (2048, 512)) == (512, 683)  # the short side binds
    assert rescaled_size((100, 1000), (2048, 512)) == (205, 2048)  # the long side binds
    assert rescaled_size((480, 640), (2048, 512), ratio=0.5) == (256, 341)


def striped_pair(height=48, width=80):
    """An image whose red channel encodes the class of each pixel (vertical stripes of classes 0..3)."""
    mask = (torch.arange(width) * 4 // width).repeat(height, 1).to(torch.uint8)
    image = torch.stack([mask * 60, torch.zeros_like(mask), torch.full_like(mask, 90)]).to(torch.uint8)
    return image, mask


def test_train_transform_keeps_image_and_mask_aligned():
    torch.manual_seed(0)
    transform = TrainTransform((32, 32), scale=(80, 48), ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
                               color_jitter=None, mean=(0, 0, 0), std=(1, 1, 1))
    image, mask = striped_pair()
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
        assert tuple(out_image.shape) == (3, 32, 32) and tuple(out_mask.shape) == (32, 32)
        assert out_image.dtype == torch.float32 and out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest: no blended labels
        labelled = out_mask != 255
        # red / 60 gives the class back; only the bilinear seams between stripes may disagree
        from_image = (out_image[0] * 255 / 60).round().long()
        agree = (from_image[labelled] == out_mask[labelled]).float().mean()
        assert agree > 0.85
        padded = ~labelled
        assert bool((out_image[:, padded] == 0).all())  # padding: 0 in the image, ignore in the mask


def test_train_transform_flips_both():
    image, mask = striped_pair(32, 32)
    flip = TrainTransform((32, 32), scale=(32, 32), ratio_range=(1.0, 1.0), cat_max_ratio=1.0, flip_prob=1.0,
                          color_jitter=None, mean=(0, 0, 0), std=(1, 1, 1))
    out_image, out_mask = flip(image, mask)
    assert torch.equal(out_mask, mask.flip(-1).long())
    torch.testing.assert_close(out_image, image.flip(-1).float() / 255)


def test_small_images_are_padded_with_the_ignore_index():
    image, mask = striped_pair(20, 24)
    transform = TrainTransform((32, 32), scale=(24, 20), ratio_range=(1.0, 1.0), flip_prob=0.0, color_jitter=None)
    out_image, out_mask = transform(image, mask)
    assert tuple(out_mask.shape) == (32, 32)
    assert bool((out_mask[20:] == 255).all()) and bool((out_mask[:, 24:] == 255).all())
    assert torch.equal(out_mask[:20, :24], mask.long())


def test_crop_avoids_one_class_crops():
    """cat_max_ratio: a crop where one class covers more than the ratio is drawn again (up to 10 times)."""
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[:, 32:] = 1  # a 32x32 crop is mostly class 0 when it starts in the first 8 columns
    transform = TrainTransform((32, 32), scale=(64, 64), cat_max_ratio=0.75)
    torch.manual_seed(0)
    shares = []
    for _ in range(30):
        top, left, h, w = transform.crop_box(mask)
        crop = mask[top:top + h, left:left + w]
        shares.append(float((crop == 0).float().mean()))
    assert all(s < 0.75 for s in shares)
    unconstrained = TrainTransform((32, 32), scale=(64, 64), cat_max_ratio=1.0)
    torch.manual_seed(0)
    boxes = [unconstrained.crop_box(mask) for _ in range(30)]
    assert any(float((mask[t:t + h, l:l + w] == 0).float().mean()) >= 0.75 for t, l, h, w in boxes)


def test_colour_jitter_changes_only_the_image():
    torch.manual_seed(0)
    image, mask = striped_pair(32, 32)
    plain = TrainTransform((32, 32), scale=(32, 32), ratio_range=(1.0, 1.0), flip_prob=0.0, color_jitter=None)
    jitter = TrainTransform((32, 32), scale=(32, 32), ratio_range=(1.0, 1.0), flip_prob=0.0,
                            color_jitter=(0.4, 0.4, 0.4, 0.1))
    a_image, a_mask = plain(image, mask)
    b_image, b_mask = jitter(image, mask)
    assert torch.equal(a_mask, b_mask) and not torch.allclose(a_image, b_image)


# ---------------------------------------------------------------------------------------------- real data
@pytest.mark.data
def test_coco128_semantic_masks(shared_data):
    """The real COCO-128 semantic masks through the coco128 config: 133 classes, every value in the class list."""
    from vision_mamba.tasks.segmentation import build_config

    config = build_config("configs/segmentation/coco128_vim_tiny.yaml",
                          {"data_root": str(shared_data / "coco128"), "cache_images": False})
    train = dataset_from_config(config, "train")  # image and mask sizes are checked here
    val = dataset_from_config(config, "val")
    assert len(train) == 100 and len(val) == 100
    assert train.classes.num_classes == 133 and train.classes.names[0] == "person"
    values = set()
    for _, mask_path in train.samples:
        values |= set(train.classes.encode(read_raw_mask(mask_path), mask_path).unique().tolist())
    assert values <= set(range(133)) | {255} and 255 in values and len(values) > 50
    image, mask = train[0]
    assert image.shape[0] == 3 and tuple(image.shape[1:]) == tuple(mask.shape)
