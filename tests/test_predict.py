"""``vision-mamba predict``: class names from the exported weights, the training preprocessing, folders of
images, a corrupt image skipped and reported, clear errors."""
from __future__ import annotations

import json
import shutil

import pytest

from vision_mamba import cli
from vision_mamba.data import SYNTHETIC_CLASSES, export_image_folder, synthetic_split
from vision_mamba.train import Trainer

from test_train import tiny_config


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny Vim that has memorised 32 synthetic training images, and those images as PNG files."""
    tmp = tmp_path_factory.mktemp("predict")
    cfg = tiny_config(tmp, "run", synthetic_train=32, batch_size=32, epochs=30, warmup_epochs=2, lr=4e-3,
                      no_aug=True, smoothing=0.0, weight_decay=0.0, eval_interval=30, save_interval=30,
                      model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2})
    result = Trainer(cfg).run()
    images, labels = synthetic_split("train", 32, 32, seed=cfg.seed)
    export_image_folder(images, labels, tmp / "images")
    return tmp, result.weights, labels.tolist()


def test_predictions_use_the_stored_class_names_and_the_training_preprocessing(overfit, tmp_path, capsys):
    tmp, weights, labels = overfit
    report = tmp_path / "pred.json"
    folders = sorted(p for p in (tmp / "images").iterdir())
    assert cli.main(["predict", "--checkpoint", str(weights), *map(str, folders), "--top-k", "3",
                     "--json", str(report)]) == 0
    predictions = json.loads(report.read_text())["predictions"]
    assert len(predictions) == 32
    hits = 0
    for p in predictions:
        probs = [t["prob"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(t["label"] == SYNTHETIC_CLASSES[t["index"]] for t in p["top"])
        hits += p["top"][0]["label"] == p["image"].split("/")[-2]  # the class folder it was exported into
    # the memorised training images come back with their labels: predict preprocesses as training did
    assert hits >= 28, hits
    out = capsys.readouterr().out
    assert out.count("%") == 32 * 3 and SYNTHETIC_CLASSES[labels[0]] in out

    # the weights alone, moved away from their run: model, size and class names come from their metadata
    alone = tmp_path / "alone" / "weights.safetensors"
    alone.parent.mkdir()
    shutil.copy(weights, alone)
    again = tmp_path / "again.json"
    assert cli.main(["predict", "--checkpoint", str(alone), *map(str, folders), "--top-k", "3",
                     "--json", str(again)]) == 0
    assert json.loads(again.read_text())["predictions"] == predictions


def test_a_run_directory_is_resolved_without_changing_the_callers_arguments(overfit, tmp_path):
    """--checkpoint RUN_DIR: its final.safetensors is loaded and named in the JSON, but load_classifier and the
    command only read their argparse Namespace (it used to come back with args.checkpoint rewritten)."""
    from vision_mamba.train import predict_command

    tmp, weights, _ = overfit
    image = next(p for d in sorted((tmp / "images").iterdir()) for p in sorted(d.iterdir()))
    report = tmp_path / "pred.json"
    argv = ["predict", "--checkpoint", str(weights.parent), "--json", str(report), str(image)]
    args = cli.build_parser(argv).parse_args(argv)
    given = vars(args).copy()
    model, classes, cfg = predict_command.load_classifier(args)
    assert vars(args) == given
    assert classes == list(SYNTHETIC_CLASSES) and cfg.img_size == 32 and not model.training
    assert predict_command.main(args) == 0
    assert vars(args) == given
    assert json.loads(report.read_text())["checkpoint"] == str(weights)


def test_a_corrupt_image_is_skipped_and_reported_and_bad_paths_are_errors(overfit, tmp_path, capsys):
    tmp, weights, _ = overfit
    good = next((tmp / "images" / SYNTHETIC_CLASSES[0]).iterdir(), None) or \
        next(p for d in (tmp / "images").iterdir() for p in d.iterdir())
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    assert cli.main(["predict", "--checkpoint", str(weights), str(good), str(corrupt)]) == 1
    captured = capsys.readouterr()
    assert str(good) in captured.out and f"skipped {corrupt}" in captured.err
    assert "1 of 2 image(s) could not be read" in captured.err

    assert cli.main(["predict", "--checkpoint", str(weights), str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", "--checkpoint", str(weights), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no image files directly inside" in err and "hold images" not in err
    # a dataset's folder (its images a class folder down): the error names the class folders that hold them
    assert cli.main(["predict", "--checkpoint", str(weights), str(tmp / "images")]) == 2
    err = capsys.readouterr().err
    assert "no image files directly inside" in err and f"e.g. {tmp / 'images' / min(SYNTHETIC_CLASSES)}" in err
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "nope.safetensors"), str(good)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_broken_symbolic_link_is_skipped_with_a_warning(tmp_path, capsys):
    """A link whose target is gone, in a folder or named itself (a shell glob names it too): not silently left out
    but one warning line naming it, the other images predicted, exit 1 as for an unreadable image. Only broken
    links: the error of nothing to predict."""
    import numpy as np
    import timm
    import torch
    from PIL import Image

    model = timm.create_model("test_vim", num_classes=3, patch_size=8, img_size=32)
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    args = ["predict", "--checkpoint", str(tmp_path / "weights.pth"), "--model", "test_vim", "--img-size", "32",
            "--set", "model_kwargs.patch_size=8"]
    folder = tmp_path / "images"
    folder.mkdir()
    good = folder / "good.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    broken = folder / "broken.png"
    broken.symlink_to(tmp_path / "gone.png")
    report = tmp_path / "pred.json"
    for given in ([folder], [good, broken]):
        assert cli.main(args + ["--json", str(report)] + [str(p) for p in given]) == 1, given
        captured = capsys.readouterr()
        assert captured.out.startswith(f"{good}: ") and str(broken) not in captured.out
        warning = [line for line in captured.err.splitlines() if str(broken) in line]
        assert len(warning) == 1 and warning[0].startswith("warning: skipped 1 broken symbolic link"), captured.err
        assert "1 of 2 image(s) could not be read" in captured.err
        saved = json.loads(report.read_text())
        assert [p["image"] for p in saved["predictions"]] == [str(good)] and saved["unreadable"] == [str(broken)]

    many = tmp_path / "many"
    many.mkdir()
    for i in range(7):
        (many / f"{i}.jpg").symlink_to(tmp_path / f"gone{i}.jpg")
    shutil.copy(good, many / "good.png")
    assert cli.main(args + [str(many)]) == 1
    err = capsys.readouterr().err
    assert "warning: skipped 7 broken symbolic links" in err and str(many / "4.jpg") in err
    assert str(many / "5.jpg") not in err and "(7 in all)" in err  # a few named, and the count
    (many / "good.png").unlink()
    assert cli.main(args + [str(many)]) == 2
    assert "error: nothing to predict: 7 broken symbolic links" in capsys.readouterr().err
    assert cli.main(args + [str(broken)]) == 2
    assert f"error: nothing to predict: 1 broken symbolic link (target missing): {broken}" in capsys.readouterr().err


def test_weights_without_names_get_numbered_classes_from_their_classifier(overfit, tmp_path, capsys):
    """Weights from elsewhere (here a state dict with a 1000-way head, as the official checkpoints have): no
    class names anywhere, so the classes are numbered and their count read from the classifier."""
    import timm
    import torch

    tmp, _, _ = overfit
    model = timm.create_model("test_vim", num_classes=1000, patch_size=8, img_size=32)
    torch.save({"model": model.state_dict()}, tmp_path / "foreign.pth")
    image = next(p for d in sorted((tmp / "images").iterdir()) for p in sorted(d.iterdir()))
    report = tmp_path / "foreign.json"
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "foreign.pth"), "--model", "test_vim", "--img-size",
                     "32", "--set", "model_kwargs.patch_size=8", "--json", str(report), str(image)]) == 0
    top = json.loads(report.read_text())["predictions"][0]["top"]
    assert len(top) == 5 and all(t["label"] == str(t["index"]) and 0 <= t["index"] < 1000 for t in top)


def test_a_photo_is_seen_as_its_exif_orientation_says(overfit, tmp_path):
    """A camera stores a portrait photo's pixels sideways with an EXIF orientation tag: predict turns it as a
    viewer does, so the prediction is the upright image's."""
    from PIL import Image

    tmp, weights, _ = overfit
    image = next(p for d in sorted((tmp / "images").iterdir()) for p in sorted(d.iterdir()))
    upright = Image.open(image).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = tmp_path / "sideways.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif.tobytes())
    plain = tmp_path / "plain.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(plain)  # the same pixels without the tag
    results = {}
    for name, path in (("upright", image), ("sideways", sideways), ("plain", plain)):
        report = tmp_path / f"{name}.json"
        assert cli.main(["predict", "--checkpoint", str(weights), "--json", str(report), str(path)]) == 0
        results[name] = json.loads(report.read_text())["predictions"][0]["top"]
    assert results["sideways"] == results["upright"]
    assert results["plain"] != results["upright"]  # the tag is what turned it


@pytest.mark.parametrize("argv, message", [
    (["predict", "--checkpoint", "x", "y.jpg", "--top-k", "0"], "--top-k: expected a whole number >= 1, got 0"),
    (["predict", "--checkpoint", "x", "y.jpg", "--batch-size", "-2"], "--batch-size: expected a whole number >= 1"),
    (["eval", "--checkpoint", "x", "--img-size", "0"], "--img-size: expected a whole number >= 1"),
    (["eval", "--checkpoint", "x", "--workers", "-1"], "--workers: expected a whole number >= 0"),
    (["seg-predict", "--checkpoint", "x", "--image", "y", "--output", "z.png", "--width", "-5"],
     "--width: expected a whole number >= 0, got -5"),
    (["seg-predict", "--checkpoint", "x", "--image", "y", "--output", "z.png", "--alpha", "1.5"],
     "--alpha: expected a number in [0, 1], got 1.5"),
    (["seg-eval", "--checkpoint", "x", "--top", "-1"], "--top: expected a whole number >= 0")])
def test_numeric_options_are_checked_by_the_parser(argv, message, capsys):
    """A bad number is argparse's one-line usage error naming the option (exit 2), before anything is loaded."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
