"""The Vim models: registration, parameter counts, official key names, equivalence with an independent
official-structure forward pass, the timm API, and clear errors on bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import official_style
from vision_mamba import MODEL_NAMES, VisionMamba, scan_backend
from vision_mamba.layers import BiMambaMixer

# the official Vim-Ti state dict's names, shapes and dtypes (a copy of the project's reference list, kept with the
# tests so that the check runs on every clone)
REFERENCE = Path(__file__).resolve().parent / "data" / "vim_tiny_state_dict_keys.tsv"

PARAM_COUNTS = {  # from the reference (official models)
    "vim_tiny_patch16_224": 7_148_008,
    "vim_tiny_patch16_stride8_224": 7_250_344,
    "vim_small_patch16_224": 25_796_584,
    "vim_small_patch16_stride8_224": 26_001_256,
    "vim_base_patch16_224": 97_598_440,
}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def perturb(model, seed=0):
    """Move every parameter off its initial value, so no structure of the init hides a mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.02 if p.ndim > 1 else 0.1))
    return model


def official_keys():
    rows = [line.rstrip("\n").split("\t") for line in REFERENCE.read_text().splitlines() if line.strip()]
    return [(k, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())) for k, shape, _ in rows]


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_parameter_counts(name):
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


def test_tiny_keys_match_official_list():
    model = timm.create_model("vim_tiny_patch16_224")
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == official_keys()


@pytest.mark.parametrize("name,dim", [("vim_small_patch16_224", 384), ("vim_base_patch16_224", 768)])
def test_larger_variants_have_the_same_names(name, dim):
    model = timm.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    scale = {192: dim, 384: 2 * dim, 768: 4 * dim, 12: -(-dim // 16), 44: -(-dim // 16) + 32}
    expected = {k: tuple(scale.get(s, s) for s in shape) for k, shape in official_keys()}
    assert ours == expected


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n.startswith(("vim_small", "vim_base")) else n for n in MODEL_NAMES])
def test_every_variant_runs_forward_and_backward(name):
    model = timm.create_model(name, img_size=64, num_classes=5)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    assert out.shape == (1, 5)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("name", ["test_vim", "test_vim_stride8"])
def test_matches_official_structure(name, backend):
    model = perturb(timm.create_model(name)).eval()
    x = torch.randn(2, 3, 64, 64)
    stride = model.patch_embed.stride[0]
    with torch.no_grad(), scan_backend(backend):
        logits = model(x)
        features = model.forward_features(x)
        ref_logits, ref_features = official_style.forward(model.state_dict(), x, stride=stride)
    assert rel_err(logits, ref_logits) < 1e-5
    assert rel_err(features, ref_features) < 1e-5


def test_vim_tiny_matches_official_structure():
    model = perturb(timm.create_model("vim_tiny_patch16_224", img_size=64)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        ref_logits, _ = official_style.forward(model.state_dict(), x)
    assert rel_err(logits, ref_logits) < 1e-5


def test_mixer_backends_match_official_composition_with_gradients():
    torch.manual_seed(0)
    mixer = perturb(BiMambaMixer(24, d_state=16))
    hidden = torch.randn(2, 37, 24, requires_grad=True)
    sd = {k: v for k, v in mixer.named_parameters()}
    ref = official_style.mixer(hidden, lambda n: sd[n])
    grad = torch.randn_like(ref)
    params = [hidden] + list(mixer.parameters())
    g_ref = torch.autograd.grad(ref, params, grad)
    for backend in ("reference", "torch"):
        with scan_backend(backend):
            out = mixer(hidden)
        assert rel_err(out, ref) < 1e-5, backend
        for (name, _), a, b in zip([("hidden", None)] + list(mixer.named_parameters()),
                                   torch.autograd.grad(out, params, grad), g_ref):
            assert rel_err(a, b) < 1e-4, (backend, name)


def test_mixer_bf16_autocast_backends_agree():
    torch.manual_seed(0)
    mixer = perturb(BiMambaMixer(32))
    hidden = torch.randn(2, 50, 32)
    outs = []
    for backend in ("reference", "torch"):
        with scan_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(mixer(hidden).float())
    assert rel_err(outs[1], outs[0]) < 1e-2


def test_forward_head_and_features_api():
    model = timm.create_model("test_vim").eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 17, 32)
    pre = model.forward_head(feats, pre_logits=True)
    assert torch.equal(pre, feats[:, 8])  # the middle class token
    assert model.forward_head(feats).shape == (2, 10)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, 32)
    with pytest.raises(ValueError, match="global_pool must be"):
        model.reset_classifier(5, "max")


def test_forward_intermediates():
    model = timm.create_model("test_vim_stride8").eval()
    x = torch.randn(2, 3, 64, 64)
    final, feats = model.forward_intermediates(x, indices=[0, 1])
    assert [tuple(f.shape) for f in feats] == [(2, 32, 7, 7)] * 2
    assert torch.allclose(final, model.forward_features(x))
    # The maps are the residual stream with the class token taken out, in patch order.
    nlc = model.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
    assert nlc[0].shape == (2, 49, 32)
    assert torch.allclose(nlc[0].reshape(2, 7, 7, 32).permute(0, 3, 1, 2), feats[1])
    normed = model.forward_intermediates(x, indices=[1], norm=True, intermediates_only=True,
                                         return_prefix_tokens=True)
    spatial, cls = normed[0]
    assert cls.shape == (2, 1, 32)
    tokens = final  # the last block normed by norm_f is forward_features' output
    assert torch.allclose(cls[:, 0], tokens[:, 24], atol=1e-6)


def test_features_only_through_timm():
    model = timm.create_model("test_vim", features_only=True, out_indices=(0, 1))
    feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 4, 4)] * 2
    # timm's default (the last 4 blocks) becomes every block of a 2-block model
    assert len(timm.create_model("test_vim", features_only=True)(torch.randn(1, 3, 64, 64))) == 2


def test_no_class_token_variant():
    model = timm.create_model("test_vim", class_token=False, global_pool="avg")
    assert timm.create_model("test_vim", class_token="none", global_pool="avg").cls_token is None
    assert model.cls_token is None and model.pos_embed.shape == (1, 16, 32)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="needs a class token"):
        timm.create_model("test_vim", class_token=False)


def test_no_weight_decay_names():
    model = timm.create_model("test_vim")
    names = model.no_weight_decay()
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.1.mixer.A_b_log", "layers.0.mixer.D",
            "layers.1.mixer.D_b"} <= names
    assert not any("in_proj" in n or "out_proj" in n for n in names)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = perturb(timm.create_model("test_vim"))
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def test_dynamic_img_size():
    model = timm.create_model("test_vim", dynamic_img_size=True).eval()
    fixed = timm.create_model("test_vim").eval()
    fixed.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), fixed(x))
        assert model(torch.randn(1, 3, 96, 128)).shape == (1, 10)
    with pytest.raises(ValueError, match="does not divide into 16x16 patches"):
        model(torch.randn(1, 3, 70, 64))


def test_set_input_size():
    model = timm.create_model("test_vim")
    model.set_input_size(96)
    assert model.pos_embed.shape == (1, 37, 32)
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)


@pytest.mark.parametrize("shape,match", [
    ((1, 4, 64, 64), "built for 3-channel images; got 4 channels"),
    ((1, 3, 96, 96), "built for 64x64 images; got 96x96"),
    ((3, 64, 64), r"expects images \[B, C, H, W\]"),
])
def test_bad_input_errors(shape, match):
    model = timm.create_model("test_vim")
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape))


@pytest.mark.parametrize("images", [[torch.zeros(3, 64, 64)], torch.zeros(1, 3, 64, 64).numpy()],
                         ids=["list", "numpy"])
def test_input_that_is_not_a_tensor_error(images):
    with pytest.raises(TypeError, match=r"expects a torch.Tensor of images \[B, C, H, W\]; got a "
                                        r"(builtins.list|numpy.ndarray) \(torch.as_tensor converts"):
        timm.create_model("test_vim")(images)


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=8), "img_size 8x8 is smaller than one 16x16 patch; use at least img_size=16"),
    (dict(img_size=(64, 15)), "img_size 64x15 is smaller than one 16x16 patch"),
    (dict(img_size=0), "img_size must be a positive int or a pair of them"),
    (dict(img_size=-64), "img_size must be a positive int or a pair of them"),
    (dict(img_size=(64,)), r"img_size must be .* got \(64,\)"),
    (dict(img_size=64.0), "img_size must be .* got 64.0"),
    (dict(img_size="64"), "img_size must be .* got '64'"),
    (dict(patch_size=0), "patch_size must be a positive int"),
    (dict(stride=0), "stride must be a positive int"),
    (dict(in_chans=0), "in_chans must be a positive int; got 0"),
    (dict(embed_dim=0), "embed_dim must be a positive int; got 0"),
])
def test_impossible_geometry_is_refused_when_the_model_is_built(kwargs, match):
    """Sizes that leave no patch, or are not sizes, are a ValueError naming the argument when the model is made
    (they used to build a model with no tokens that failed at its first forward, or fail with IndexError /
    ZeroDivisionError); set_input_size checks the same."""
    with pytest.raises(ValueError, match=match):
        timm.create_model("test_vim", **kwargs)
    with pytest.raises(ValueError, match="img_size 8x8 is smaller than one 16x16 patch"):
        timm.create_model("test_vim").set_input_size(8)
    import numpy as np

    assert timm.create_model("test_vim", img_size=(np.int64(32), 48)).patch_embed.grid_size == (2, 3)


def test_the_official_model_names_make_the_registered_variants(tmp_path):
    """The official code's --model names (kept in its checkpoints' args) build the same models, official-format
    weights load through them, timm warns which name they map to, and timm.list_models() lists the short names."""
    from vision_mamba.models.vision_mamba import OFFICIAL_NAMES

    assert len(OFFICIAL_NAMES) == 5 and set(OFFICIAL_NAMES.values()) <= set(MODEL_NAMES)
    for official, name in OFFICIAL_NAMES.items():
        with pytest.warns(UserWarning, match=f"to current {name}"):
            model = timm.create_model(official, img_size=32, depth=1, num_classes=3)
        reference = timm.create_model(name, img_size=32, depth=1, num_classes=3)
        assert {k: v.shape for k, v in model.state_dict().items()} == \
            {k: v.shape for k, v in reference.state_dict().items()}
        assert model.patch_embed.stride == reference.patch_embed.stride
    assert not [n for n in timm.list_models("vim*") if "bimamba" in n]
    source = perturb(timm.create_model("vim_tiny_patch16_224", img_size=32, depth=2, num_classes=3)).eval()
    path = tmp_path / "official.pth"
    torch.save({"model": source.state_dict(), "epoch": 299}, path)
    with pytest.warns(UserWarning, match="to current vim_tiny_patch16_224"):
        loaded = timm.create_model("vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
                                   pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), img_size=32,
                                   depth=2, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_float_input_error(dtype):
    with pytest.raises(TypeError, match=f"floating-point images .*got {dtype}"):
        timm.create_model("test_vim")(torch.zeros(1, 3, 64, 64, dtype=dtype))


def test_meta_device_forward():
    """Shapes (and FLOP counters) on the meta device: the finite-input check cannot read meta values."""
    model = timm.create_model("test_vim").to("meta")
    assert model(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, 10)


def test_export_with_a_dynamic_batch():
    """torch.export of the CPU model: a batch dimension left free, and the program callable with gradients
    enabled (the chunked scan's in-place buffers and batch-dependent chunk sizes stay out of the graph)."""
    model = perturb(timm.create_model("test_vim")).eval()
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", max=64)}})
    x5 = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        expected = model(x5)
    assert torch.allclose(program.module()(x5), expected, atol=1e-5)


def test_nan_input_error():
    model = timm.create_model("test_vim")
    x = torch.randn(1, 3, 64, 64)
    x[0, 1, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(x)
    assert torch.isnan(VisionMamba(img_size=64, embed_dim=32, depth=1, check_finite=False)(x)).any()


def test_initialisation():
    model = timm.create_model("vim_tiny_patch16_224")
    mixer = model.layers[0].mixer
    assert torch.allclose(mixer.A_log[3], torch.log(torch.arange(1, 17.0)))
    assert torch.equal(mixer.D, torch.ones(384))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert mixer.dt_proj.weight.abs().max() <= 12 ** -0.5
    bound = 1 / (384 ** 0.5) / (24 ** 0.5)  # kaiming_uniform(a=sqrt 5) bound is 1/sqrt(fan_in), then / sqrt(depth)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-7
    assert float(model.head.bias.detach().abs().max()) == 0.0 and model.head.weight.std() < 0.03


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (70, 53)])
def test_patch_embed_gemm_path_matches_conv(size):
    # the CUDA path (patches as one matrix product) computes the conv's map, pixels past the last patch dropped
    from vision_mamba.layers.embed import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(img_size=64, patch_size=16, in_chans=3, embed_dim=24)
    x = torch.randn(2, 3, *size)
    ref = embed.proj(x).flatten(2).transpose(1, 2)
    out = embed.patchify_linear(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    # under autocast the patches are cast as they are gathered: the same as autocast casting them for the product
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = embed.patchify_linear(x)
        gh, gw = size[0] // 16, size[1] // 16
        patches = x[:, :, :gh * 16, :gw * 16].reshape(2, 3, gh, 16, gw, 16).permute(0, 2, 4, 1, 3, 5)
        want = torch.nn.functional.linear(patches.reshape(2, gh * gw, -1), embed.proj.weight.reshape(24, -1),
                                          embed.proj.bias)
    assert out.dtype == want.dtype == torch.bfloat16 and torch.equal(out, want)
    # gradients reach the images through the gathering copy
    xg = x.clone().requires_grad_()
    grad = torch.autograd.grad(embed.patchify_linear(xg).square().sum(), xg)[0]
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad(embed.proj(xr).flatten(2).transpose(1, 2).square().sum(), xr)[0]
    assert torch.allclose(grad, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_patch_embed_cuda_path(dtype):
    # on CUDA the model's patch embedding takes the GEMM path: same result as cuDNN's conv, fp32 and bf16 autocast
    model = timm.create_model("vim_tiny_patch16_224").cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    embed = model.patch_embed
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # (cuDNN's fp32 default would round the reference to TF32)
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = embed(x)
            ref = embed.proj(x).flatten(2).transpose(1, 2)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert out.dtype == ref.dtype and err < (1e-5 if dtype == torch.float32 else 1e-2)


def test_input_of_another_dtype_is_a_clear_error_outside_autocast():
    model = timm.create_model("test_vim").eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(TypeError, match="images are torch.bfloat16 but the model's weights are torch.float32"):
        model(x.bfloat16())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.bfloat16()).shape == (2, 10)  # autocast casts it, as it casts the weights
    with pytest.raises(TypeError, match="images are torch.float32 but the model's weights are torch.bfloat16"):
        model.bfloat16()(x)


def test_intermediates_of_an_empty_batch():
    model = timm.create_model("test_vim").eval()
    maps = model.forward_intermediates(torch.randn(0, 3, 64, 64), intermediates_only=True)
    assert all(tuple(m.shape) == (0, 32, 4, 4) for m in maps)
