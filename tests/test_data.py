"""Data: the synthetic set, ImageFolder checks and corrupt files, sampling, the device-resident path."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vision_mamba.data import (
    AugmentOptions,
    DatasetError,
    DeviceAugment,
    EpochSampler,
    ImageFolderDataset,
    SYNTHETIC_CLASSES,
    UnreadableImageWarning,
    build_classification_data,
    check_data_source,
    export_image_folder,
    generate_shapes,
    scan_image_folder,
)
from vision_mamba.data.folder import load_rgb
from vision_mamba.data.resident import decode_images
from vision_mamba.data.transforms import eval_resize_size, eval_transform, resize_crop_uint8


# ---------------------------------------------------------------------- helpers
def make_folder(root: Path, classes=("a", "b"), per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 6, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def make_split_root(root: Path, **kwargs) -> Path:
    make_folder(root / "train", **kwargs)
    make_folder(root / "val", **kwargs)
    return root


# ---------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_balanced_and_seed_dependent():
    a, la = generate_shapes(40, size=32, seed=3)
    b, lb = generate_shapes(40, size=32, seed=3)
    c, _ = generate_shapes(40, size=32, seed=4)
    assert a.dtype == torch.uint8 and a.shape == (40, 3, 32, 32) and la.dtype == torch.int64
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    assert torch.bincount(la, minlength=len(SYNTHETIC_CLASSES)).tolist() == [4] * len(SYNTHETIC_CLASSES)
    # the images are not blank: object and background differ in every image
    assert (a.float().flatten(1).std(dim=1) > 10).all()


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_images"):
        generate_shapes(0)
    with pytest.raises(ValueError, match="16 pixels"):
        generate_shapes(10, size=8)


# ---------------------------------------------------------------------- folder checks
def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan_image_folder(tmp_path / "nope")
    with pytest.raises(DatasetError, match="dataset folder not found"):
        check_data_source(str(tmp_path / "nope"))


def test_file_instead_of_folder_and_no_classes(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_image_folder(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        scan_image_folder(tmp_path / "empty")


def test_empty_class_folder_is_named(tmp_path):
    root = make_folder(tmp_path / "train")
    (root / "zzz_empty").mkdir()
    (root / "zzz_empty" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="zzz_empty"), pytest.warns(UserWarning, match="1 file skipped .*notes"):
        scan_image_folder(root)


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_smaller_dataset(tmp_path, monkeypatch):
    """os.walk skips a folder it cannot list (and its images with it): a sub-folder without read permission would
    shrink the dataset unnoticed. It is a DatasetError naming the folder; so is a root that cannot be listed.
    (Permissions do not bind root, so the refusal is simulated where os.walk and the scan list folders.)"""
    import os

    root = make_folder(tmp_path / "train")
    (root / "a" / "more").mkdir()
    Image.new("RGB", (8, 8)).save(root / "a" / "more" / "x.png")
    (root / "a" / ".hidden").mkdir()
    listing = os.scandir

    def scandir(path="."):
        if Path(path).name in ("more", ".hidden") or (Path(path) == root and refuse_root):
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    refuse_root = False
    with pytest.raises(DatasetError, match=r"cannot list .*a/more: Permission denied"):
        scan_image_folder(root)
    refuse_root = True
    with pytest.raises(DatasetError, match=r"cannot list the dataset folder .*train: Permission denied"):
        scan_image_folder(root)
    refuse_root = False
    (root / "a" / "more" / "x.png").unlink()
    (root / "a" / "more").rmdir()
    samples, _ = scan_image_folder(root)  # an unreadable hidden folder is skipped, as hidden folders are
    assert len(samples) == 8


def test_missing_split_and_class_mismatch(tmp_path):
    make_folder(tmp_path / "train")
    with pytest.raises(DatasetError, match="no 'val' folder"):
        check_data_source(str(tmp_path))
    make_folder(tmp_path / "val", classes=("a", "c"))
    with pytest.raises(DatasetError, match="differ"):
        check_data_source(str(tmp_path))


# ---------------------------------------------------------------------- corrupt files
def _corrupt(root: Path) -> tuple:
    garbage = root / "a" / "garbage.jpg"
    garbage.write_bytes(b"definitely not an image" * 10)
    good = root / "a" / "0.png"
    truncated = root / "b" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    return garbage, truncated


def test_training_dataset_substitutes_and_counts_unreadable_images(tmp_path):
    root = make_folder(tmp_path / "train")
    garbage, truncated = _corrupt(root)
    ds = ImageFolderDataset(root, transform=resize_crop_uint8(32, 32), substitute=True)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p in (str(garbage), str(truncated))]
    assert len(bad) == 2
    with pytest.warns(UnreadableImageWarning, match="unreadable image skipped"):
        items = [ds[i] for i in range(len(ds))]
    assert sum(1 - r for _, _, r in items) == 2
    for i in bad:  # a substitute of the right size and the substitute's label
        image, target, readable = items[i]
        assert readable == 0 and image.shape == (3, 32, 32)
        assert target == ds.samples[(i + 1) % len(ds)][1] or target == ds.samples[(i + 2) % len(ds)][1]


def test_streaming_training_counts_each_unreadable_file_once(tmp_path):
    """Over several epochs the streaming loader meets each broken file again: the count is of files, 2 here."""
    make_split_root(tmp_path, per_class=4)
    _corrupt(tmp_path / "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_classification_data(str(tmp_path), img_size=32, batch_size=4, workers=0, device="cpu",
                                         gpu_resident=False, progress=False)
        for epoch in range(3):
            for _ in data.train.epoch(epoch):
                pass
    assert data.train.unreadable == 2
    assert {Path(data.train.loader.dataset.samples[i][0]).name for i in data.train.unreadable_indices} == {
        "garbage.jpg", "truncated.png"}


def test_evaluation_leaves_unreadable_images_out(tmp_path):
    make_split_root(tmp_path, per_class=3)
    _corrupt(tmp_path / "val")
    for resident in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = build_classification_data(str(tmp_path), img_size=32, batch_size=4, workers=0, device="cpu",
                                             gpu_resident=resident, train_split=None, progress=False)
            count = valid = 0
            for images, targets, readable in data.val:
                count += images.shape[0]
                valid += images.shape[0] if readable is None else int(readable.sum())
        assert any("unreadable image skipped" in str(w.message) for w in caught)
        assert valid == 6, resident  # 3 + 3 readable images, the 2 broken ones left out
        assert (data.val.unreadable + len(data.unreadable)) == 2


def test_each_unreadable_image_is_reported_once_whatever_the_data_workers(tmp_path):
    """Streaming training with 2 DataLoader workers (each evaluation starting its own): the warning about a corrupt
    file reaches the terminal once per run, not once per worker, and the count at the end stays that of files.
    In a subprocess, as a user runs it: pytest's warning capture would swallow what the workers warn."""
    import json
    import subprocess
    import sys

    root = make_split_root(tmp_path / "data", per_class=4)
    for split in ("train", "val"):
        (root / split / "a" / "garbage.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    sets = ["model_kwargs.patch_size=8", "warmup_epochs=0", "auto_augment=null", "reprob=0", "mixup=0", "cutmix=0",
            "ema=false", "gpu_resident=false", "cpu_threads=1"]
    proc = subprocess.run([sys.executable, "-m", "vision_mamba", "train", "--data", str(root), "--model", "test_vim",
                           "--img-size", "32", "--epochs", "3", "--batch-size", "4", "--workers", "2", "--device",
                           "cpu", "--output", str(tmp_path / "run"), "--no-progress"] +
                          [a for kv in sets for a in ("--set", kv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "val"):
        assert proc.stderr.count(f"unreadable image skipped: {root / split / 'a' / 'garbage.jpg'}") == 1, proc.stderr
    assert "| 2 unreadable image(s) left out" in proc.stdout, proc.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["unreadable_images"] == 2


def test_a_script_with_a_live_streaming_loader_exits(tmp_path):
    """The training loader's persistent workers ignore SIGTERM (so that a stop signal lets the main process save
    first); a script whose loader is still alive at its end (a module-level one, an epoch read whole or in part)
    must still exit, not wait for ever on workers that multiprocessing tries to terminate."""
    import subprocess
    import sys

    root = make_split_root(tmp_path / "data", per_class=4, size=24)
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        "from vision_mamba.data import build_classification_data\n"
        f"data = build_classification_data({str(root)!r}, img_size=16, batch_size=2, workers=2, gpu_resident=False,"
        " progress=False)\n"
        "for i, batch in enumerate(data.train.epoch(0)):\n"
        "    if sys.argv[1] == 'part' and i == 1:\n"
        "        break\n"
        "print('read', i + 1)\n")
    for how in ("whole", "part"):
        proc = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == ("read 2" if how == "part" else "read 4")


def test_a_split_of_unreadable_images_is_one_line_and_eval_exits(tmp_path):
    """Every image of the split unreadable, read by DataLoader workers: `vision-mamba eval` says so in one line and
    exits 2. It printed the worker's traceback as the message, then waited for ever at exit on the evaluation
    loader's workers (they ignore SIGTERM). Training's loader gives the same one line; the count is of the images
    there are, not the 17 a longer run of broken files is cut at."""
    import multiprocessing
    import subprocess
    import sys

    import timm

    root = tmp_path / "data"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            (root / split / name / "x.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    torch.save({"model": timm.create_model("test_vim", num_classes=2, img_size=32, patch_size=8).state_dict()},
               tmp_path / "w.pth")
    proc = subprocess.run([sys.executable, "-m", "vision_mamba", "eval", "--checkpoint", str(tmp_path / "w.pth"),
                           "--model", "test_vim", "--img-size", "32", "--set", "model_kwargs.patch_size=8", "--data",
                           str(root), "--workers", "2", "--gpu-resident", "false", "--device", "cpu",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {root / 'val'}: none of its 2 image(s) could be read, starting at {root / 'val'}"), proc.stderr
    before = set(multiprocessing.active_children())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_classification_data(str(root), img_size=32, batch_size=2, workers=2, device="cpu",
                                         gpu_resident=False, progress=False)
        with pytest.raises(DatasetError) as info:
            next(iter(data.train.epoch(0)))
    message = str(info.value)
    assert message.startswith(f"{root / 'train'}: none of its 2 image(s) could be read") and "\n" not in message
    # its persistent workers are stopped with the error, not left to outlive the loader and block the exit
    assert set(multiprocessing.active_children()) <= before


def test_resident_decode_drops_and_reports_corrupt_files(tmp_path):
    root = make_folder(tmp_path / "x", per_class=2)
    garbage, _ = _corrupt(root)
    paths = sorted(str(p) for p in root.rglob("*.*"))
    with pytest.warns(UserWarning, match="unreadable"):
        images, keep, failures = decode_images(paths, resize_crop_uint8(24, 24), 24, workers=0, progress=False)
    assert images.shape == (len(paths) - 2, 3, 24, 24)
    assert {p for p, _ in failures} == {str(garbage), str(root / "b" / "truncated.png")}
    assert len(keep) == len(paths) - 2


# ---------------------------------------------------------------------- sampling
def test_sharded_batches_cover_the_single_process_batches():
    single = EpochSampler(50, batch_size=8, world_size=1, rank=0, seed=1)
    ranks = [EpochSampler(50, batch_size=8, world_size=2, rank=r, seed=1) for r in range(2)]
    assert single.steps_per_epoch == ranks[0].steps_per_epoch == 6
    for epoch in (0, 3):
        single.set_epoch(epoch)
        one = [i for i, _ in single]
        per_rank = []
        for s in ranks:
            s.set_epoch(epoch)
            per_rank.append([i for i, _ in s])
        for step in range(6):
            together = per_rank[0][step * 4:(step + 1) * 4] + per_rank[1][step * 4:(step + 1) * 4]
            assert sorted(together) == sorted(one[step * 8:(step + 1) * 8])
    single.set_epoch(0)
    first = [i for i, _ in single]
    single.set_epoch(1)
    assert [i for i, _ in single] != first  # a new order every epoch


def test_resuming_mid_epoch_gives_the_rest_of_the_epoch_with_the_same_seeds():
    s = EpochSampler(40, batch_size=8, seed=5)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start_step=3)
    assert list(s) == full[24:] and len(s) == 16
    with pytest.raises(ValueError, match="outside the epoch"):
        s.set_epoch(0, start_step=9)


def test_repeated_augmentation_and_batch_checks():
    s = EpochSampler(64, batch_size=8, repeats=3, seed=0)
    s.set_epoch(0)
    indices = [i for i, _ in s]
    counts = np.bincount(indices)
    assert counts.max() == 3  # each selected image three times
    with pytest.raises(ValueError, match="larger than"):
        EpochSampler(5, batch_size=8)
    with pytest.raises(ValueError, match="divisible"):
        EpochSampler(50, batch_size=9, world_size=2)


# ---------------------------------------------------------------------- device-side augmentation
def test_crop_boxes_follow_the_scale_and_ratio_ranges():
    torch.manual_seed(0)
    aug = DeviceAugment(16, scale=(0.25, 0.5), ratio=(0.75, 4 / 3), auto_augment=None, re_prob=0)
    boxes = aug.crop_boxes(500, 40, 40)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / 1600
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 40 + 1e-4).all() and (boxes[:, 3] <= 40 + 1e-4).all()
    assert area.min() >= 0.25 - 1e-4 and area.max() <= 0.5 + 1e-4
    assert (w / h).min() >= 0.75 - 1e-4 and (w / h).max() <= 4 / 3 + 1e-4
    full = DeviceAugment(16, scale=(1, 1), ratio=(1, 1), auto_augment=None, re_prob=0).crop_boxes(4, 40, 40)
    assert torch.allclose(full, torch.tensor([[0.0, 0.0, 40.0, 40.0]]).expand(4, 4))


def test_device_augment_full_recipe_is_seeded_and_normalised():
    images, _ = generate_shapes(16, size=40, seed=0)
    aug = DeviceAugment(32, auto_augment="rand-m9-mstd0.5-inc1", group_size=4, re_prob=0.5, device="cpu")
    torch.manual_seed(1)
    import random
    random.seed(1)
    a = aug(images)
    torch.manual_seed(1)
    random.seed(1)
    b = aug(images)
    c = aug(images)
    assert a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 10


def test_device_augment_without_augmentation_is_normalisation_only():
    images, _ = generate_shapes(4, size=32, seed=0)
    aug = DeviceAugment(32, no_aug=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert torch.allclose(aug(images), images.float() / 127.5 - 1)
    with pytest.raises(ValueError, match="already be 24 px"):
        DeviceAugment(24, no_aug=True)(images)
    with pytest.raises(ValueError, match="RandAugment"):
        DeviceAugment(24, auto_augment="augmix-m5")


def test_resident_eval_images_equal_timm_eval_transform(tmp_path):
    """Decode-once evaluation crops are exactly what timm's eval pipeline feeds the model."""
    root = make_folder(tmp_path / "v", classes=("a",), per_class=2, size=50)
    path = str(sorted(root.rglob("*.png"))[0])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = eval_transform(32, crop_pct=0.875, mean=mean, std=std)(load_rgb(path))
    stored = resize_crop_uint8(eval_resize_size(32, 0.875), 32)(load_rgb(path))
    mine = (stored.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(mine, reference, atol=1e-5)


def test_both_paths_give_batches_of_the_configured_shape(tmp_path):
    make_split_root(tmp_path, per_class=5)
    for resident in (True, False):
        data = build_classification_data(str(tmp_path), img_size=24, batch_size=4, workers=0, device="cpu",
                                         gpu_resident=resident, progress=False,
                                         augment=AugmentOptions(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5))
        assert data.resident is resident and data.classes == ["a", "b"]
        batches = list(data.train.epoch(0))
        assert len(batches) == data.train.steps_per_epoch == 2
        images, targets = batches[0]
        assert images.shape == (4, 3, 24, 24) and images.dtype == torch.float32
        assert targets.dtype == torch.int64 and targets.shape == (4,)


def test_export_image_folder_round_trip(tmp_path):
    images, labels = generate_shapes(10, size=32, seed=0)
    export_image_folder(images, labels, tmp_path / "syn")
    samples, classes = scan_image_folder(tmp_path / "syn")
    assert classes == sorted(SYNTHETIC_CLASSES) and len(samples) == 10
    first = next(p for p in sorted((tmp_path / "syn").rglob("000000.png")))
    assert torch.equal(torch.from_numpy(np.array(load_rgb(str(first)))).permute(2, 0, 1), images[0])


def test_streaming_randaugment_survives_its_largest_magnitude():
    """timm's PosterizeIncreasing asks for 0 bits at magnitude 10, which recent Pillow rejects mid-epoch."""
    from vision_mamba.data.transforms import train_transform

    transform = train_transform(32, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.0)
    rand_augment = next(t for t in transform.transforms if hasattr(t, "ops"))
    for op in rand_augment.ops:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    np.random.seed(0)  # timm picks the ops with numpy: this seed draws PosterizeIncreasing several times
    for _ in range(3 * len(rand_augment.ops)):
        assert transform(image).shape == (3, 32, 32)


def test_streaming_augmentation_does_not_depend_on_the_worker_processes(tmp_path):
    """Each sample carries its own seed: the same batches with 0 or 2 workers (and so after a resume)."""
    make_split_root(tmp_path, per_class=4)
    batches = {}
    for workers in (0, 2):
        data = build_classification_data(
            str(tmp_path), img_size=24, batch_size=4, workers=workers, device="cpu", gpu_resident=False,
            val_split=None, progress=False, augment=AugmentOptions(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5))
        batches[workers] = [images for images, _ in data.train.epoch(1)]
    assert len(batches[0]) == 2
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2]))


def test_high_depth_grey_images_are_scaled_not_clipped(tmp_path):
    """Pillow's own RGB conversion clips a 16-bit grey PNG at 255 (a white image); the loaders scale it."""
    from vision_mamba.data.folder import to_rgb

    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # I;16 (or I in older Pillow)
    expected = np.repeat(grey8[:, :, None], 3, axis=2)
    assert np.array_equal(np.asarray(load_rgb(str(tmp_path / "g16.png"))), expected)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(grey8.astype(np.float32) / 255, mode="F"))), expected)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(grey8.astype(np.int32), mode="I"))), expected)
    # the dense tasks' readers share the conversion
    from vision_mamba.tasks.detection.datasets import load_image
    from vision_mamba.tasks.segmentation.datasets import read_image

    for reader in (load_image, read_image):
        assert np.array_equal(reader(tmp_path / "g16.png").permute(1, 2, 0).numpy(), expected)


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    """Datasets keep the stored pixels (their annotations refer to them, as in torchvision / timm); a user's
    photo is turned as a viewer turns it."""
    from vision_mamba.tasks.detection.datasets import load_image
    from vision_mamba.tasks.segmentation.datasets import read_image

    upright = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 8, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes())
    assert load_rgb(str(path)).size == (20, 8)
    assert np.array_equal(np.asarray(load_rgb(str(path), exif=True)), np.asarray(upright))
    for reader in (load_image, read_image):
        assert tuple(reader(path).shape) == (3, 8, 20)
        assert np.array_equal(reader(path, exif=True).permute(1, 2, 0).numpy(), np.asarray(upright))


def test_hidden_folders_are_not_classes_and_skipped_files_are_reported(tmp_path):
    root = make_folder(tmp_path / "train", per_class=3)
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".ipynb_checkpoints" / "x.png")
    Image.new("RGB", (8, 8)).save(root / "a" / "._0.png")  # macOS metadata beside an image
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # hidden files are skipped without a word
        samples, classes = scan_image_folder(root)
    assert classes == ["a", "b"] and len(samples) == 6
    Image.new("RGB", (8, 8)).save(root / "b" / "3.gif")
    Image.new("RGB", (8, 8)).save(root / "b" / "4.jfif", format="JPEG")
    from vision_mamba.data import IgnoredFilesWarning

    with pytest.warns(IgnoredFilesWarning, match=r"2 files skipped for their ending \(\.gif, \.jfif; e\.g\. "):
        samples, _ = scan_image_folder(root)
    assert len(samples) == 6


def test_the_sample_order_is_torchvisions(tmp_path):
    """One walk of our own (hidden files out, other endings counted) keeps ImageFolder's order, so a run's
    sample order does not depend on which lister built it."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    root = make_folder(tmp_path / "train", classes=("b", "a", "c"), per_class=3)
    (root / "a" / "nested" / "deeper").mkdir(parents=True)
    for name in ("z.png", "A.PNG", "m.jpg"):
        Image.new("RGB", (8, 8)).save(root / "a" / "nested" / "deeper" / name)
    Image.new("RGB", (8, 8)).save(root / "c" / "0b.webp")
    samples, classes = scan_image_folder(root)
    expected = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
    assert samples == expected and len(samples) == 13
