"""Training configuration: files, overrides, clear errors; every shipped config resolves."""
from __future__ import annotations


import pytest
import yaml

from vision_mamba import cli
from vision_mamba.engine.config import BUILTIN_CONFIGS
from vision_mamba.train.config import QUICKSTART, ConfigError, TrainConfig, parse_overrides, resolve_config

CONFIGS = sorted(BUILTIN_CONFIGS.glob("**/*.yaml"))
TRAIN_CONFIGS = [p for p in CONFIGS if p.parts[-2] in ("imagenette", "imagenet", "synthetic")]


def test_unknown_key_in_a_file_names_the_key_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: test_vim\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'"):
        resolve_config(path)
    with pytest.raises(ConfigError, match=r"did you mean .*batch_size"):
        resolve_config(None, parse_overrides(["batch_sise=3"]), {"data": "synthetic"})


def test_types_ranges_and_required_keys(tmp_path):
    with pytest.raises(ConfigError, match="'lr' must be a number"):
        resolve_config(None, parse_overrides(["lr=fast", "data=synthetic"]))
    with pytest.raises(ConfigError, match="'hflip'.*in \\[0, 1\\]"):
        resolve_config(None, {"hflip": 1.5, "data": "synthetic"})
    with pytest.raises(ConfigError, match="'data'.*required"):
        resolve_config(None)
    with pytest.raises(ConfigError, match="'precision'"):
        resolve_config(None, {"precision": "fp8", "data": "synthetic"})
    with pytest.raises(ConfigError, match="'warmup_epochs'"):
        resolve_config(None, {"warmup_epochs": 5, "epochs": 5, "data": "synthetic"})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "missing.yaml")


def test_precedence_base_chain_and_dotted_mapping_keys(tmp_path):
    (tmp_path / "base.yaml").write_text("data: synthetic\nlr: 0.01\nepochs: 7\nmodel_kwargs: {depth: 3}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nlr: 0.02\n")
    cfg = resolve_config(tmp_path / "child.yaml", parse_overrides(["epochs=9", "model_kwargs.embed_dim=48"]))
    assert (cfg.lr, cfg.epochs) == (0.02, 9)
    assert cfg.model_kwargs == {"depth": 3, "embed_dim": 48}
    assert cfg.data == "synthetic" and cfg.batch_size == TrainConfig.batch_size  # untouched default
    with pytest.raises(ConfigError, match="dotted sub-key"):
        resolve_config(tmp_path / "child.yaml", {"lr.x": 1})
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        resolve_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(BUILTIN_CONFIGS)))
def test_every_shipped_training_config_resolves(path):
    cfg = resolve_config(path, {"data": "synthetic"})
    assert cfg.model


def test_the_quickstart_preset_is_a_shipped_config():
    assert QUICKSTART.is_file() and resolve_config("configs/synthetic/vim") == resolve_config(QUICKSTART)


@pytest.mark.parametrize("vim_name,deit_name", [("vim_tiny", "deit_tiny"), ("vim_tiny_distill", "deit_tiny_distill"),
                                                 ("vim_tiny_distill_soft", "deit_tiny_distill_soft")])
def test_imagenette_baselines_share_the_vim_recipe(vim_name, deit_name):
    vim = resolve_config(BUILTIN_CONFIGS / "imagenette" / f"{vim_name}.yaml").to_dict()
    deit = resolve_config(BUILTIN_CONFIGS / "imagenette" / f"{deit_name}.yaml").to_dict()
    different = {k for k in vim if vim[k] != deit[k]}
    assert different == {"model"}


def test_deit_token_matched_finetune_shares_the_vim_stride8_finetune_recipe():
    # DeiT-Ti fine-tuned at 240 px has Vim-Ti's stride-8 token count at 128 px (15 x 15 + 1); all else is equal,
    # and the teacher keeps the size both students started at
    vim = resolve_config(BUILTIN_CONFIGS / "imagenette" / "vim_tiny_stride8_ft_distill.yaml").to_dict()
    deit = resolve_config(BUILTIN_CONFIGS / "imagenette" / "deit_tiny_ft240_distill.yaml").to_dict()
    assert {k for k in vim if vim[k] != deit[k]} == {"model", "img_size", "resident_size",
                                                     "teacher_img_size"}
    assert deit["resident_size"] / deit["img_size"] == vim["resident_size"] / vim["img_size"]
    assert deit["img_size"] // 16 == (vim["img_size"] - 16) // 8 + 1 == 15 and deit["teacher_img_size"] == 128
    assert vim["teacher_img_size"] is None and vim["img_size"] == 128


def test_third_stage_at_160_px_matches_tokens_and_recipe():
    # the third stage: Vim-Ti at stride 8 and the images' own 160 px (19 x 19 + 1 tokens), DeiT-Ti at 304 px (as
    # many); both keep the second stage's recipe, the stored images at 1.25 x img_size and the teacher at 128 px
    stage2 = resolve_config(BUILTIN_CONFIGS / "imagenette" / "vim_tiny_stride8_ft_distill.yaml").to_dict()
    vim = resolve_config(BUILTIN_CONFIGS / "imagenette" / "vim_tiny_stride8_ft160_distill.yaml").to_dict()
    deit = resolve_config(BUILTIN_CONFIGS / "imagenette" / "deit_tiny_ft304_distill.yaml").to_dict()
    assert {k for k in vim if vim[k] != stage2[k]} == {"epochs", "img_size", "resident_size", "teacher_img_size"}
    assert {k for k in vim if vim[k] != deit[k]} == {"model", "img_size", "resident_size"}
    assert vim["img_size"] == 160 and deit["img_size"] // 16 == (vim["img_size"] - 16) // 8 + 1 == 19
    assert vim["resident_size"] / vim["img_size"] == deit["resident_size"] / deit["img_size"] == 1.25
    assert vim["teacher_img_size"] == deit["teacher_img_size"] == 128 and vim["epochs"] == 30


def test_cli_reports_config_errors_before_any_work(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("modle: vim_tiny_patch16_224\n")
    assert cli.main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown config key 'modle'" in capsys.readouterr().err
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(tmp_path / "no_such_folder"), "--output", str(out)]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert not out.exists()  # nothing was created
    assert cli.main(["train", "--model", "vim_tinny_patch16_224", "--epochs", "2", "--output", str(out),
                     "--set", "synthetic_train=64"]) == 2
    assert "did you mean vim_tiny_patch16_224" in capsys.readouterr().err


def test_print_config_shows_the_resolved_values(capsys):
    assert cli.main(["train", "--print-config", "--lr", "0.5", "--set", "model_kwargs.depth=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lr"] == 0.5 and printed["model_kwargs"]["depth"] == 3 and printed["data"] == "synthetic"
    assert printed["progress"] is True
    assert cli.main(["train", "--print-config", "--no-progress"]) == 0  # as in eval and det-train
    assert yaml.safe_load(capsys.readouterr().out)["progress"] is False


@pytest.mark.parametrize("override,match", [
    ("opt=adamww", r"'opt': not an optimizer timm can make .*did you mean adamw"),
    ("sched=cosin", r"'sched': not a schedule timm can make"),
    ("auto_augment=bogus", r"'auto_augment': not an augmentation policy timm knows"),
    ("auto_augment=rand-xyz", r"'auto_augment': section 'xyz' of 'rand-xyz' has no number"),
    ("auto_augment=rand-m9-msdt", r"'auto_augment': section 'msdt' .* has no number"),
    ("auto_augment=rand-m9-mstdd0.5", r"'auto_augment': not an augmentation policy timm knows"),
    ("device=gpu", r"'device': must be auto, cpu, cuda or cuda:N"),
])
def test_timm_choices_and_device_are_checked_before_any_work(override, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(QUICKSTART, parse_overrides([override]))


def test_a_bad_override_is_blamed_on_its_source(tmp_path):
    (tmp_path / "ok.yaml").write_text("data: synthetic\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"^--set: config key 'lr' must be a number"):
        resolve_config(tmp_path / "ok.yaml", parse_overrides(["lr=abc"]), sources=["--set"])
    with pytest.raises(ConfigError, match=r"add --set warmup_epochs=0"):
        resolve_config(QUICKSTART, {"epochs": 1})


def test_cli_refuses_an_img_size_the_patches_do_not_tile(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--img-size", "30", "--output", str(out), "--set", "synthetic_train=64"]) == 2
    assert "do not tile 30 px images; use a size such as 24 or 32" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", [["train"], ["eval", "--checkpoint", "CKPT"],
                                     ["predict", "--checkpoint", "CKPT", "IMAGE"], ["seg-train"]])
def test_a_config_that_is_not_text_is_a_one_line_error(tmp_path, capsys, command):
    """An image (or a checkpoint) passed as --config: a one-line error naming it, not a UnicodeDecodeError
    traceback."""
    from PIL import Image

    picture = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(picture)
    (tmp_path / "w.pth").write_bytes(b"weights")
    argv = [{"CKPT": str(tmp_path / "w.pth"), "IMAGE": str(picture)}.get(a, a) for a in command]
    assert cli.main(argv + ["--config", str(picture)]) == 2
    err = capsys.readouterr().err
    assert f"config {picture}: not a YAML file (not UTF-8 text: invalid start byte at byte 0)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name,message", [
    ("confusion.txt", "matplotlib does not write .txt files; give a .png file"),
    ("confusion", "the file has no ending; give a .png file")])
def test_eval_refuses_a_plot_it_cannot_write_before_evaluating(tmp_path, capsys, name, message):
    """eval --plot with an ending matplotlib does not write: one line before anything is loaded (it was
    matplotlib's traceback after the whole evaluation)."""
    plot = tmp_path / name
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing.pth"), "--plot", str(plot)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --plot {plot}: {message} (or .pdf, .svg, .jpg)"


def test_an_img_size_among_the_model_arguments_must_be_the_images_size():
    """model_kwargs.img_size other than img_size built a model for another size than its images: a traceback at
    the first batch of train, eval or predict. The same for a teacher; the same size is accepted."""
    with pytest.raises(ConfigError, match=r"^config key 'model_kwargs': its img_size is not the 32 px the images are "
                                          r"resized to; set img_size instead"):
        resolve_config(QUICKSTART, parse_overrides(["model_kwargs.img_size=8"]))
    teacher = ["teacher=test_vim", "teacher_checkpoint=t.pth", "teacher_img_size=48"]
    with pytest.raises(ConfigError, match=r"^config key 'teacher_kwargs': its img_size is not the 48 px the images "
                                          r"are resized to; set teacher_img_size instead"):
        resolve_config(QUICKSTART, parse_overrides(teacher + ["teacher_kwargs.img_size=32"]))
    assert resolve_config(QUICKSTART, parse_overrides(["model_kwargs.img_size=32"])).model_kwargs["img_size"] == 32
    assert resolve_config(QUICKSTART, parse_overrides(teacher + ["teacher_kwargs.img_size=48"]))


def test_print_config_refuses_an_unknown_model(capsys):
    assert cli.main(["train", "--model", "vim_tinyy", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'vim_tinyy' (did you mean vim_tiny_patch16_224" in err


def test_shipped_configs_are_found_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    """The recipes ship inside the package: `--config configs/imagenette/vim_tiny.yaml` (the docs' form), or
    without `configs/` and `.yaml`, finds them from a directory that has no configs/ folder (an installed package);
    a name that is neither a file nor a shipped config lists the shipped ones."""
    from vision_mamba import cli
    from vision_mamba.engine.config import builtin_configs, find_config

    monkeypatch.chdir(tmp_path)
    expected = BUILTIN_CONFIGS / "imagenette" / "vim_tiny.yaml"
    for name in ("configs/imagenette/vim_tiny.yaml", "imagenette/vim_tiny.yaml", "imagenette/vim_tiny"):
        assert find_config(name) == expected
    assert "configs/segmentation/coco128_vim_tiny.yaml" in builtin_configs()
    (tmp_path / "configs" / "imagenette").mkdir(parents=True)  # a file of the user's own wins
    own = tmp_path / "configs" / "imagenette" / "vim_tiny.yaml"
    own.write_text("epochs: 3\n")
    assert find_config("configs/imagenette/vim_tiny.yaml") == own.relative_to(tmp_path)
    with pytest.raises(ConfigError, match=r"nor a shipped config of that name; shipped: configs/imagenette/"):
        find_config("configs/imagenette/vim_huge.yaml")
    assert cli.main(["train", "--config", "configs/imagenet/vim_small.yaml", "--print-config"]) == 0
    assert "model: vim_small_patch16_224" in capsys.readouterr().out
    assert cli.main(["seg-train", "--config", "configs/segmentation/coco128_vim_tiny.yaml", "--print-config"]) == 0
    assert cli.main(["det-train", "--config", "configs/detection/coco128_vim_tiny.yaml", "--print-config"]) == 0
    assert cli.main(["train", "--config", "configs/nothing.yaml"]) == 2
    assert "config file not found: configs/nothing.yaml" in capsys.readouterr().err
    # a file of the user's own builds on a shipped recipe by its name
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: imagenette/vim_tiny.yaml\nepochs: 7\n")  # (configs/... beside it is the own file above)
    cfg = resolve_config(mine, {"data": "synthetic"})
    assert cfg.to_dict() == dict(resolve_config(expected, {"data": "synthetic"}).to_dict(), epochs=7)
    assert cfg.epochs == 7 != resolve_config(expected, {"data": "synthetic"}).epochs
    mine.write_text("base: imagenette/vim_tinyy.yaml\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: its base imagenette/vim_tinyy.yaml is neither a file beside"):
        resolve_config(mine)
