"""Segmentation model: the pyramid adapter and heads for Vim and DeiT, the loss, layer-wise lr decay, inference
modes, backbone initialisation from a classification checkpoint, and saving / loading a trained model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import vision_mamba  # noqa: F401  (registers the Vim models)
from vision_mamba.models.checkpoint import CheckpointError, save_state_dict
from vision_mamba.tasks.segmentation import (ClassList, ConfigError, FCNHead, InferenceSettings, Predictor,
                                             PyramidAdapter, SegConfig, UperNetHead, build_segmentation_model,
                                             create_backbone, default_out_indices, load_segmentation_model,
                                             save_segmentation_model, segmentation_loss)
from vision_mamba.tasks.segmentation.trainer import build_optimizer

DEIT_TINY_TEST = dict(depth=2, embed_dim=32, num_heads=2)
NO_CLASS_TOKEN = dict(class_token=None, global_pool="avg")  # the official Vim segmentation backbone
KINDS = ["vim", "vim_no_cls", "deit"]


def small_backbone(kind: str, img_size=64):
    if kind == "vim":
        return create_backbone("test_vim", img_size)
    if kind == "vim_no_cls":
        return create_backbone("test_vim", img_size, **NO_CLASS_TOKEN)
    return create_backbone("deit_tiny_patch16_224", img_size, **DEIT_TINY_TEST)


def small_config(kind: str = "vim", **overrides) -> SegConfig:
    values = dict(backbone="test_vim", head_channels=16, aux_channels=16, pool_scales=[1, 2], crop_size=[64, 64],
                  drop_path_rate=0.0, iters=10, warmup_iters=1)
    if kind == "deit":
        values.update(backbone="deit_tiny_patch16_224", backbone_kwargs=DEIT_TINY_TEST)
    if kind == "vim_no_cls":
        values.update(backbone_kwargs=NO_CLASS_TOKEN)
    values.update(overrides)
    return SegConfig.from_dict(dict(SegConfig().to_dict(), **values))


def test_default_out_indices():
    assert default_out_indices(24) == [5, 11, 17, 23]  # the paper's blocks for Vim-Ti / DeiT-S-like depth
    assert default_out_indices(12) == [2, 5, 8, 11]
    assert default_out_indices(2) == [0, 0, 0, 1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_adapter_gives_strides_4_8_16_32(kind, size):
    torch.manual_seed(0)
    adapter = PyramidAdapter(small_backbone(kind), norm="bn")
    assert adapter.size_divisor == 32 and adapter.out_strides == [4, 8, 16, 32]
    h, w = size  # 64x96 differs from the 64x64 the backbone was built for: dynamic_img_size resizes pos_embed
    feats = adapter(torch.randn(2, 3, h, w))
    assert [tuple(f.shape) for f in feats] == [(2, 32, h // s, w // s) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_level_2_is_the_backbone_block_output(kind):
    """Level 2 is the chosen block's map itself (class token removed), as forward_intermediates gives it."""
    torch.manual_seed(0)
    backbone = small_backbone(kind)
    adapter = PyramidAdapter(backbone, out_indices=[0, 0, 1, 1]).eval()
    x = torch.randn(1, 3, 64, 64)
    expected = backbone.forward_intermediates(x, indices=[1], output_fmt="NCHW", intermediates_only=True)[0]
    torch.testing.assert_close(adapter(x)[2], expected)
    torch.testing.assert_close(adapter(x)[3], F.max_pool2d(expected, 2))


def test_adapter_prunes_what_it_does_not_use():
    backbone = create_backbone("test_vim", 64)
    assert any(n.startswith("norm_f") for n, _ in backbone.named_parameters())
    PyramidAdapter(backbone, out_indices=[0, 0, 0, 0])  # only block 0 is needed
    assert len(backbone.layers) == 1
    assert not any(n.startswith(("norm_f", "head", "layers.1")) for n, _ in backbone.named_parameters())


def test_adapter_rejects_bad_arguments():
    with pytest.raises(ValueError, match="out of range"):
        PyramidAdapter(small_backbone("vim"), out_indices=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="4 blocks"):
        PyramidAdapter(small_backbone("vim"), out_indices=[0, 1])
    with pytest.raises(ValueError, match="block order"):
        PyramidAdapter(small_backbone("vim"), out_indices=[1, 0, 0, 0])
    adapter = PyramidAdapter(small_backbone("vim"))
    with pytest.raises(ValueError, match="multiple of 32"):
        adapter(torch.randn(1, 3, 64, 80))


def test_heads_shapes():
    feats = [torch.randn(2, 24, s, s) for s in (16, 8, 4, 2)]
    for norm in ("bn", "gn"):
        head = UperNetHead([24] * 4, channels=16, num_classes=5, pool_scales=(1, 2, 3, 6), norm=norm)
        assert tuple(head(feats).shape) == (2, 5, 16, 16)
        aux = FCNHead(24, 16, 5, norm=norm)
        assert tuple(aux(feats[2]).shape) == (2, 5, 4, 4)
    with pytest.raises(ValueError, match="expects 4 feature maps"):
        head(feats[:3])


@pytest.mark.parametrize("kind", KINDS)
def test_model_outputs_and_every_parameter_learns(kind):
    """Training mode gives the decode and auxiliary logits; every parameter gets a gradient (so DDP needs no
    unused-parameter search); eval mode gives the decode logits only."""
    torch.manual_seed(0)
    model = build_segmentation_model(small_config(kind), num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    out = model.train()(x)
    assert tuple(out["out"].shape) == (2, 3, 16, 16) and tuple(out["aux"].shape) == (2, 3, 4, 4)
    loss, parts = segmentation_loss(out, target, aux_weight=0.4)
    torch.testing.assert_close(loss, parts["loss_decode"] + 0.4 * parts["loss_aux"])
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    assert set(model.eval()(x)) == {"out"}


def test_loss_leaves_out_ignored_pixels():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 8, 8))
    target[0, :4] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    valid = target != 255
    expected = F.cross_entropy(up.permute(0, 2, 3, 1)[valid], target[valid])
    loss, _ = segmentation_loss({"out": logits}, target)
    torch.testing.assert_close(loss, expected)
    all_ignored, _ = segmentation_loss({"out": logits}, torch.full((1, 8, 8), 255))
    assert float(all_ignored) == 0.0  # not NaN: such a batch is harmless


@pytest.mark.parametrize("kind", ["vim", "deit"])
def test_layer_decay_scales_backbone_lr_by_depth(kind):
    config = small_config(kind, layer_decay=0.5, weight_decay=0.05)
    model = build_segmentation_model(config, num_classes=3)
    optimizer = build_optimizer(model, config)
    scale_of = {}
    decay_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale_of[names[id(p)]] = group["lr_scale"]
            decay_of[names[id(p)]] = group["weight_decay"]
    blocks = "layers" if kind == "vim" else "blocks"
    stem = scale_of["backbone.model.patch_embed.proj.weight"]
    block0 = scale_of[f"backbone.model.{blocks}.0.norm.weight" if kind == "vim" else
                      f"backbone.model.{blocks}.0.attn.qkv.weight"]
    block1 = scale_of[f"backbone.model.{blocks}.1.norm.weight" if kind == "vim" else
                      f"backbone.model.{blocks}.1.attn.qkv.weight"]
    head = scale_of["decode_head.classifier.weight"]
    neck = scale_of["backbone.up4.0.weight"]
    # stem, block 0, block 1, then the adapter and heads: each group 0.5 times the next
    assert (stem, block0, block1, head, neck) == (0.125, 0.25, 0.5, 1.0, 1.0)
    assert decay_of["backbone.model.pos_embed"] == 0.0 and decay_of["decode_head.classifier.bias"] == 0.0
    assert decay_of["decode_head.classifier.weight"] == 0.05


def test_whole_and_slide_inference():
    torch.manual_seed(0)
    config = small_config(test_scale=[70, 50], slide_stride=[32, 32])  # (long, short): the image's own size
    model = build_segmentation_model(config, num_classes=3).eval()
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)  # not a multiple of 32: padded inside
    predictor = Predictor(model, InferenceSettings.from_config(config))
    whole = predictor.logits(image, mode="whole")
    slide = predictor.logits(image, mode="slide")
    assert tuple(whole.shape) == tuple(slide.shape) == (3, 50, 70)
    assert predictor.predict(image).shape == (50, 70)
    # what a user may hold instead: a numpy array [H, W, 3] or a PIL image give the same labels
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    for other in (array, Image.fromarray(array)):
        assert torch.equal(predictor.predict(other, mode="whole"), whole.argmax(dim=0))
    with pytest.raises(ValueError, match=r"expected an image array \[H, W, 3\], got shape \(50, 70, 4\)"):
        predictor.predict(np.zeros((50, 70, 4), dtype=np.uint8))
    with pytest.raises(TypeError, match="expected a uint8 image"):
        predictor.predict(image.float() / 255)  # would be divided by 255 again
    with pytest.raises(ValueError, match="must be 'whole' or 'slide', got 'wholee'"):
        predictor.predict(image, mode="wholee")
    for bad in (dict(stride=(0, 0)), dict(stride=(-10, -10)), dict(crop_size=(64,)), dict(windows_per_batch=0)):
        with pytest.raises(ValueError, match="must be"):
            InferenceSettings(**bad)
    with pytest.raises(ValueError, match="num_classes must be a whole number >= 1, got 0"):
        build_segmentation_model(config, num_classes=0)
    with pytest.raises(ConfigError, match=r"constructor refused the configured arguments \['foo'\]"):
        build_segmentation_model(small_config(backbone_kwargs={"foo": 1}), num_classes=3)
    # a window that covers the whole (padded) image: sliding is the same as one whole pass
    one_window = Predictor(model, InferenceSettings(mode="slide", crop_size=(64, 96), stride=(64, 96)))
    torch.testing.assert_close(one_window.logits(image), Predictor(model, InferenceSettings()).logits(image))


def test_slide_averages_overlapping_windows():
    """With a model whose logits depend only on the pixel (a 1x1 conv on the input), every window agrees, so the
    average over overlaps equals a single pass: this checks the window placement and the counts."""
    class PixelModel(torch.nn.Module):
        size_divisor = 32

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return {"out": self.conv(x)}

    torch.manual_seed(0)
    model = PixelModel()
    image = torch.randint(0, 256, (3, 100, 130), dtype=torch.uint8)
    slide = Predictor(model, InferenceSettings(mode="slide", crop_size=(64, 64), stride=(40, 40))).logits(image)
    whole = Predictor(model, InferenceSettings(mode="whole")).logits(image)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_backbone_initialised_from_a_classification_checkpoint(kind, tmp_path):
    """A classifier trained at 64x64 with 10 classes initialises a 96x96 segmentation backbone: weights copied,
    head dropped, pos_embed resized to the 6x6 grid (and the class token dropped for a Vim built without one)."""
    torch.manual_seed(0)
    if kind.startswith("vim"):
        classifier = timm.create_model("test_vim", num_classes=10)
        block_key = "layers.1.mixer.in_proj.weight"
    else:
        classifier = timm.create_model("deit_tiny_patch16_224", img_size=64, num_classes=10, **DEIT_TINY_TEST)
        block_key = "blocks.1.attn.qkv.weight"
    path = tmp_path / "classifier.safetensors"
    save_state_dict({k: v.half() for k, v in classifier.state_dict().items()}, path)  # as the Imagenette runs export
    config = small_config(kind, crop_size=[96, 96], init_checkpoint=str(path))
    model = build_segmentation_model(config, num_classes=3)
    backbone = model.backbone.model
    torch.testing.assert_close(backbone.state_dict()[block_key], classifier.state_dict()[block_key].half().float())
    prefix = 0 if kind == "vim_no_cls" else 1  # the class token row
    assert backbone.pos_embed.shape[1] == 6 * 6 + prefix and (backbone.cls_token is None) == (prefix == 0)
    assert not any(k.startswith("head.") for k in backbone.state_dict())

    state = classifier.state_dict()
    state.pop(block_key)
    save_state_dict(state, tmp_path / "incomplete.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        build_segmentation_model(small_config(kind, init_checkpoint=str(tmp_path / "incomplete.safetensors")), 3)


def test_backbone_init_refuses_a_whole_model_in_one_line(tmp_path):
    # a segmentation model's final weights or training state, a detector's training state: one line naming it (used
    # to be the lists of keys that do not fit the backbone)
    config = small_config()
    save_segmentation_model(build_segmentation_model(config, 3), tmp_path / "model.safetensors", config,
                            ClassList(("a", "b", "c"), (1, 2, 5), (0,)))
    torch.save({"model": {}, "config": config.to_dict(), "classes": {"names": ["a"]}}, tmp_path / "last.pth")
    torch.save({"model": {}, "config": {"model": {"backbone": "test_vim"}}, "categories": [{"id": 1, "name": "a"}]},
               tmp_path / "checkpoint.pt")
    backbone = ", not a classification checkpoint for the backbone"
    resume = f"; to train that segmentation model further, resume its run: --resume {tmp_path} (with --iters N for " \
             "more iterations)"
    for name, kind in (("model.safetensors", "seg-train's final weights (a whole segmentation model)" + backbone
                        + resume),
                       ("last.pth", "seg-train's training checkpoint (a whole segmentation model)" + backbone + resume),
                       ("checkpoint.pt", "det-train's training checkpoint (a whole detector)" + backbone)):
        with pytest.raises(CheckpointError) as error:
            build_segmentation_model(small_config(init_checkpoint=str(tmp_path / name)), 3)
        assert str(error.value) == f"init_checkpoint (--init-checkpoint): {tmp_path / name} is {kind}"


def test_saved_model_round_trips(tmp_path):
    torch.manual_seed(0)
    config = small_config()
    classes = ClassList(("a", "b", "c"), (1, 2, 5), (0,))
    model = build_segmentation_model(config, num_classes=3).eval()
    path = save_segmentation_model(model, tmp_path / "model.safetensors", config, classes)
    loaded, loaded_config, loaded_classes = load_segmentation_model(path)
    assert loaded_config == config and loaded_classes.names == classes.names
    assert loaded_classes.raw_values == (1, 2, 5) and loaded_classes.ignore_values == (0,)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x)["out"], model(x)["out"])
    plain = tmp_path / "plain.safetensors"
    save_state_dict(model, plain)
    with pytest.raises(CheckpointError, match="not a segmentation model"):
        load_segmentation_model(plain)
    with pytest.raises(FileNotFoundError):
        load_segmentation_model(tmp_path / "missing.safetensors")
    # inference settings may change; what shapes the network may not (a one-line error, not a shape dump)
    crop = list(config.crop_size)
    assert load_segmentation_model(path, {"test_mode": "slide", "crop_size": crop})[1].test_mode == "slide"
    with pytest.raises(ConfigError, match=r"crop_size: fixed by the trained model .*crop_size=\["):
        load_segmentation_model(path, {"crop_size": [c * 2 for c in crop]})


def test_config_errors_are_named():
    with pytest.raises(ConfigError, match="crop_size 80x80 must be a multiple of 32"):
        build_segmentation_model(small_config(crop_size=[80, 80]), num_classes=3)
    with pytest.raises(ConfigError, match="'vim_nano' is not a registered timm model"):
        build_segmentation_model(small_config(backbone="vim_nano"), num_classes=3)
    with pytest.raises(ConfigError, match="out_indices .* out of range"):
        build_segmentation_model(small_config(out_indices=[0, 1, 2, 9]), num_classes=3)


def test_pixels_are_classified_at_input_resolution():
    """The decode logits are at stride 4; inference brings them to the image size exactly."""
    torch.manual_seed(0)
    config = small_config(test_scale=[128, 96])
    model = build_segmentation_model(config, num_classes=4).eval()
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    logits = Predictor(model, InferenceSettings.from_config(config)).logits(image)
    assert tuple(logits.shape) == (4, 96, 128) and bool(torch.isfinite(logits).all())
    assert math.isclose(float(model(torch.zeros(1, 3, 96, 128))["out"].shape[-1]), 128 / 4)
