"""Checkpoints: official format, plain state dicts and safetensors round trips; timm's pretrained path; the
pickle-payload checkpoint refused; errors that say what does not fit; pos_embed resizing."""
from __future__ import annotations

import argparse
import logging
import os

import pytest
import timm
import torch

from vision_mamba import CheckpointError, load_checkpoint, save_state_dict
from vision_mamba.layers import resample_pos_embed
from vision_mamba.models import read_checkpoint


def perturbed(name="test_vim", **kwargs):
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def official_checkpoint(model, path, with_ema=True):
    """A file shaped like the released ones: torch.save of a training dict with an argparse.Namespace."""
    state = {
        "model": model.state_dict(),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "lr_scheduler": {"last_epoch": 299},
        "epoch": 299,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model="vim_tiny_patch16_224", lr=1e-3, drop_path=0.0),
    }
    if with_ema:  # the EMA weights differ from the released ones; loaders must pick 'model'
        state["model_ema"] = {k: v + 1.0 for k, v in model.state_dict().items()}
    torch.save(state, path)
    return path


def test_official_format_round_trip(tmp_path):
    source = perturbed()
    path = official_checkpoint(source, tmp_path / "vim_t_midclstok.pth")
    target = timm.create_model("test_vim").eval()
    load_checkpoint(target, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
    ema = timm.create_model("test_vim")
    load_checkpoint(ema, path, use_ema=True)
    assert torch.equal(ema.head.bias, source.head.bias + 1.0)


def test_a_stride8_checkpoint_in_a_model_of_another_stride_is_warned_of(tmp_path, caplog):
    # the official fine-tuned (stride-8) weights have the shapes of the stride-16 model's but for pos_embed, which
    # is resized: the load succeeds, and the outputs are not the checkpoint's, so it is said
    path = official_checkpoint(perturbed("test_vim_stride8"), tmp_path / "vim_t_midclstok_ft.pth")
    state = torch.load(path, weights_only=False)
    state["args"].model = "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="vision_mamba.models.checkpoint"):
        load_checkpoint(timm.create_model("test_vim"), path)
    assert "trained as vim_tiny_patch16_stride8_224_bimambav2" in caplog.text and "stride 16x16" in caplog.text
    assert "4x4 patch grid" in caplog.text and "vim_tiny_patch16_stride8_224)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vision_mamba.models.checkpoint"):
        load_checkpoint(timm.create_model("test_vim_stride8"), path)  # its own stride: nothing to say
        # stride 16 into stride 8: the long-sequence fine-tune's start, not warned of
        load_checkpoint(timm.create_model("test_vim_stride8"), official_checkpoint(perturbed(), tmp_path / "s16.pth"))
    assert caplog.text == ""


def test_timm_pretrained_file(tmp_path):
    source = perturbed()
    path = official_checkpoint(source, tmp_path / "ckpt.pth")
    model = timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    # other classes: the head is kept as initialised, the rest loads
    model3 = timm.create_model("test_vim", pretrained=True, num_classes=3,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert model3.head.weight.shape == (3, 32)
    assert torch.equal(model3.layers[1].mixer.A_log, source.layers[1].mixer.A_log)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_plain_state_dict_round_trip(tmp_path, suffix):
    source = perturbed("test_vim_stride8")
    path = tmp_path / f"weights{suffix}"
    save_state_dict(source, path)
    assert not list(tmp_path.glob("*.tmp"))
    target = timm.create_model("test_vim_stride8").eval()
    load_checkpoint(target, path)
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


class _Payload:
    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    payload = _Payload()
    payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"model": timm.create_model("test_vim").state_dict(), "extra": payload}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(timm.create_model("test_vim"), path)
    with pytest.raises(CheckpointError, match="refused"):
        timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_missing_file_and_garbage(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        read_checkpoint(bad)
    # the unpickler's own line, not torch.load's paragraphs of advice about weights_only
    assert "unpickling failed: Unsupported operand" in str(info.value) and "weights_only" not in str(info.value)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(bad_st)


def test_errors_name_what_does_not_fit(tmp_path):
    sd = perturbed().state_dict()
    sd.pop("layers.1.mixer.D_b")
    sd["layers.7.mixer.extra"] = torch.zeros(3)
    sd["layers.0.mixer.in_proj.weight"] = torch.zeros(10, 32)
    path = tmp_path / "wrong.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(timm.create_model("test_vim"), path)
    msg = str(err.value)
    assert "missing keys: layers.1.mixer.D_b" in msg
    assert "unexpected keys: layers.7.mixer.extra" in msg
    assert "layers.0.mixer.in_proj.weight: checkpoint (10, 32) vs model (128, 32)" in msg
    # non-strict loading reports the same and loads the rest
    report = load_checkpoint(timm.create_model("test_vim"), path, strict=False)
    assert report["missing"] == ["layers.1.mixer.D_b"]


def test_state_dict_of_another_model_is_refused(tmp_path):
    path = tmp_path / "deit.pth"
    torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(timm.create_model("test_vim"), path)
    torch.save({"model": {"a": 1}}, path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(timm.create_model("test_vim"), path)


def test_pos_embed_resize_same_grid_is_identity():
    pos = torch.randn(1, 17, 8)
    assert resample_pos_embed(pos, (4, 4)) is pos


def test_pos_embed_resize_keeps_class_token_row():
    pos = torch.randn(1, 17, 8)
    out = resample_pos_embed(pos, (6, 6))
    assert out.shape == (1, 37, 8)
    assert torch.equal(out[:, 18], pos[:, 8])
    # the patch rows are a bicubic resize of the 4x4 grid without the class-token row
    grid = torch.cat([pos[:, :8], pos[:, 9:]], 1).reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    patches = torch.cat([out[:, :18], out[:, 19:]], 1).reshape(1, 6, 6, 8).permute(0, 3, 1, 2)
    assert torch.allclose(patches, expected, atol=1e-6)
    # 'first' (ViT / DeiT convention) keeps row 0
    out = resample_pos_embed(pos, (2, 2), class_token="first")
    assert out.shape == (1, 5, 8) and torch.equal(out[:, 0], pos[:, 0])


def test_checkpoint_into_model_of_other_resolution(tmp_path):
    source = perturbed()  # 64 px: 4x4 grid, 17 rows
    path = official_checkpoint(source, tmp_path / "c.pth")
    big = timm.create_model("test_vim", img_size=96)  # 6x6 grid, 37 rows
    load_checkpoint(big, path)
    assert torch.equal(big.pos_embed[:, 18], source.pos_embed[:, 8])
    assert big(torch.randn(1, 3, 96, 96)).shape == (1, 10)
    # stride-8 weights (7x7 + 1 rows at 64 px) into a stride-8 model at 96 px (11x11 + 1)
    s8 = perturbed("test_vim_stride8")
    path8 = official_checkpoint(s8, tmp_path / "s8.pth")
    big8 = timm.create_model("test_vim_stride8", img_size=96)
    load_checkpoint(big8, path8)
    assert big8.pos_embed.shape == (1, 122, 32)
    assert torch.equal(big8.pos_embed[:, 60], s8.pos_embed[:, 24])


def test_class_token_dropped_for_dense_models(tmp_path):
    source = perturbed()
    path = official_checkpoint(source, tmp_path / "c.pth")
    dense = timm.create_model("test_vim", img_size=96, class_token=False, global_pool="avg", num_classes=0)
    load_checkpoint(dense, path, adapt_head=True)
    assert dense.pos_embed.shape == (1, 36, 32)


def test_pos_embed_that_is_not_a_grid_is_reported(tmp_path):
    sd = perturbed().state_dict()
    sd["pos_embed"] = torch.zeros(1, 20, 32)
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"pos_embed: the checkpoint's \(1, 20, 32\) is not a square patch grid.*4x4"):
        load_checkpoint(timm.create_model("test_vim"), path)


def test_ema_asked_for_but_absent_is_an_error(tmp_path):
    path = official_checkpoint(perturbed(), tmp_path / "no_ema.pth", with_ema=False)
    with pytest.raises(CheckpointError, match="no EMA weights in the checkpoint"):
        load_checkpoint(timm.create_model("test_vim"), path, use_ema=True)


@pytest.mark.parametrize("text", ["hello world", "epoch,loss\n1,0.5\n", "junk", ""])
def test_text_files_are_not_checkpoints(tmp_path, text):
    """Whatever the weights-only unpickler raises on a file's first bytes (a memo KeyError for 'h', a pop from an
    empty stack for most others), the caller gets a CheckpointError naming the file."""
    path = tmp_path / "notes.pth"
    path.write_text(text)
    with pytest.raises(CheckpointError, match="notes.pth: (an empty file|not a readable PyTorch checkpoint)"):
        read_checkpoint(path)


def test_checkpoint_of_another_width_lists_every_mismatch(tmp_path, caplog):
    """A wider variant's checkpoint: the strict load lists the shape mismatches (pos_embed among them) instead of
    stopping at pos_embed's resize; a non-strict load skips them."""
    path = tmp_path / "wide.pth"
    torch.save({"model": timm.create_model("test_vim", embed_dim=48).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*pos_embed: checkpoint \(1, 17, 48\) vs model "
                                               r"\(1, 17, 32\)") as err:
        load_checkpoint(timm.create_model("test_vim"), path)
    assert "patch_embed.proj.weight: checkpoint (48, 3, 16, 16)" in str(err.value)
    model = timm.create_model("test_vim")
    with caplog.at_level(logging.WARNING, logger="vision_mamba"):
        report = load_checkpoint(model, path, strict=False)
    assert any(m.startswith("pos_embed:") for m in report["mismatched"])
    assert model.pos_embed.shape == (1, 17, 32)
    assert "partial load into VisionMamba; keys of another shape, left as initialised: " in caplog.text
    assert "cls_token, head.weight" in caplog.text
    # the same through timm: pretrained_strict=False reaches the model's own loader (strict by default)
    overlay = dict(file=str(path))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=overlay)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vision_mamba"):
        partial = timm.create_model("test_vim", pretrained=True, pretrained_strict=False, pretrained_cfg_overlay=overlay)
    assert "partial load" in caplog.text and partial.pos_embed.shape == (1, 17, 32)
    with pytest.raises(CheckpointError, match="shape mismatches"):  # (the flag does not outlive its call)
        timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=overlay)


@pytest.mark.parametrize("saved,target,first_line", [
    (("vim_small_patch16_224", dict(img_size=32)), ("vim_tiny_patch16_224", dict(img_size=32)),
     "the checkpoint's Vim is 384 wide with 24 blocks of 16x16 patches, the model 192 wide with 24 blocks of 16x16 "
     "patches; create the model the checkpoint was trained as (vim_small_patch16_224, or its stride-8 variant)"),
    (("test_vim", dict(depth=3)), ("test_vim", {}),
     "the checkpoint's Vim is 32 wide with 3 blocks of 16x16 patches, the model 32 wide with 2 blocks of 16x16 "
     "patches; create the model the checkpoint was trained as"),
    (("test_vim", dict(class_token=False, global_pool="avg")), ("test_vim", {}),
     "the checkpoint's Vim is 32 wide with 2 blocks of 16x16 patches and no class token, the model 32 wide with 2 "
     "blocks of 16x16 patches; create the model the checkpoint was trained as (class_token=False, global_pool='avg')"),
    (("test_vim", dict(num_classes=5)), ("test_vim", {}), "its classifier has 5 classes, the model's 10"),
], ids=["width", "depth", "class-token", "classes"])
def test_the_first_line_of_a_misfit_says_how_the_checkpoint_differs(tmp_path, saved, target, first_line):
    """A checkpoint of another build: the error's first line says what it is and what to do (the lists of keys and
    shapes follow); it only listed them."""
    path = tmp_path / "other.pth"
    torch.save({"model": timm.create_model(saved[0], **saved[1]).state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(timm.create_model(target[0], **target[1]), path)
    assert str(err.value).splitlines()[0] == f"checkpoint {path} does not fit VisionMamba: {first_line}"


def test_pretrained_rgb_weights_into_other_channels(tmp_path):
    """As timm does for its own models: the RGB patch kernel summed for one channel, repeated and rescaled for
    four; everything else loads unchanged."""
    source = perturbed()
    path = official_checkpoint(source, tmp_path / "rgb.pth")
    weight = source.patch_embed.proj.weight
    gray = timm.create_model("test_vim", pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.allclose(gray.patch_embed.proj.weight[:, 0], weight.sum(1))
    four = timm.create_model("test_vim", pretrained=True, in_chans=4, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.allclose(four.patch_embed.proj.weight[:, :3], weight * 3 / 4)
    assert torch.equal(four.layers[1].mixer.A_log, source.layers[1].mixer.A_log)
    with torch.no_grad():
        assert four(torch.randn(1, 4, 64, 64)).shape == (1, 10)


def test_checkpoint_without_classifier_warns(tmp_path, caplog):
    path = tmp_path / "backbone.pth"
    torch.save({"model": perturbed(num_classes=0).state_dict()}, path)
    with caplog.at_level("WARNING", logger="vision_mamba.models.checkpoint"):
        timm.create_model("test_vim", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert "has no classifier 'head'" in caplog.text


def test_a_non_square_grid_is_stored_and_resized_even_when_transposed(tmp_path):
    """A 4x6 grid has as many rows as a 6x4 one: only the stored grid tells them apart."""
    source = perturbed(img_size=(64, 96))
    path = tmp_path / "wide.safetensors"
    save_state_dict(source, path)
    tall = timm.create_model("test_vim", img_size=(96, 64))
    load_checkpoint(tall, path)
    expected = resample_pos_embed(source.pos_embed.detach(), (6, 4), (4, 6), "middle")
    assert torch.equal(tall.pos_embed.detach(), expected)
    assert not torch.equal(tall.pos_embed.detach(), source.pos_embed.detach())
    square = timm.create_model("test_vim", img_size=128)
    load_checkpoint(square, path)
    assert torch.equal(square.pos_embed.detach(), resample_pos_embed(source.pos_embed.detach(), (8, 8), (4, 6),
                                                                     "middle"))
    same = timm.create_model("test_vim", img_size=(64, 96))
    load_checkpoint(same, path)
    assert torch.equal(same.pos_embed, source.pos_embed)
    torch.save(source.state_dict(), tmp_path / "wide.pth")  # no grid stored: a non-square grid cannot be guessed
    with pytest.raises(CheckpointError, match="not a square patch grid.*does not say its grid"):
        load_checkpoint(square, tmp_path / "wide.pth")


def test_a_folder_and_an_empty_ema_get_their_own_messages(tmp_path):
    save_state_dict(perturbed(), tmp_path / "final.safetensors")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file.*\(final\.safetensors\)"):
        load_checkpoint(timm.create_model("test_vim"), tmp_path)
    path = tmp_path / "last.pth"
    torch.save({"model": perturbed().state_dict(), "model_ema": None}, path)  # a run trained without EMA
    with pytest.raises(CheckpointError, match="its model_ema is empty"):
        load_checkpoint(timm.create_model("test_vim"), path, use_ema=True)


def test_drop_head_skips_a_classifier_of_the_same_size(tmp_path):
    source = perturbed(num_classes=10)
    save_state_dict(source, tmp_path / "w.safetensors", metadata={"classes": '["a", "b"]'})
    from vision_mamba.models import checkpoint_classes

    assert checkpoint_classes(tmp_path / "w.safetensors") == ["a", "b"]
    model = timm.create_model("test_vim", num_classes=10)
    before = model.head.weight.detach().clone()
    report = load_checkpoint(model, tmp_path / "w.safetensors", drop_head=True)
    assert report["skipped"] == ["head.bias", "head.weight"] and torch.equal(model.head.weight, before)
    assert torch.equal(model.pos_embed, source.pos_embed)


def test_a_truncated_checkpoint_says_so_and_exports_are_readable_by_all(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model": perturbed().state_dict()}, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or damaged: [^\n]*central directory\)$"):
        read_checkpoint(tmp_path / "cut.pth")
    umask = os.umask(0o022)
    try:
        save_state_dict(perturbed(), tmp_path / "w.safetensors")  # safetensors alone writes 0600
    finally:
        os.umask(umask)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
