"""Knowledge distillation (train/distill.py): the loss against plain formulas and timm's losses, the packing of
targets, and a distilled training run on the CPU (teacher loaded and evaluated, student pulled toward it)."""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vision_mamba.models.checkpoint import CheckpointError
from vision_mamba.train import Trainer
from vision_mamba.train.config import ConfigError
from vision_mamba.train.distill import DistillationLoss, ResizedInput, pack_targets

from test_train import tiny_config

C = 7


def _batch(seed=0, b=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, C, generator=g) * 3, torch.randn(b, C, generator=g) * 3,
            torch.randint(0, C, (b,), generator=g))


def test_alpha_zero_is_the_usual_loss_with_mixup_targets_or_label_smoothing():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    out, teacher, labels = _batch()
    soft = torch.softmax(torch.randn(5, C), dim=1)  # e.g. mixup's targets
    loss = DistillationLoss("hard", alpha=0.0)
    assert torch.allclose(loss(out, pack_targets(soft, teacher)), SoftTargetCrossEntropy()(out, soft), atol=1e-6)
    smoothed = loss(out, pack_targets(labels, teacher, smoothing=0.1))
    assert torch.allclose(smoothed, LabelSmoothingCrossEntropy(0.1)(out, labels), atol=1e-6)


def test_hard_and_soft_teacher_terms_against_their_formulas():
    out, teacher, labels = _batch(1)
    packed = pack_targets(labels, teacher)
    hard = DistillationLoss("hard", alpha=1.0)(out, packed)
    assert torch.allclose(hard, F.cross_entropy(out, teacher.argmax(1)), atol=1e-6)
    tau = 2.5
    p_t = torch.softmax(teacher / tau, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(out / tau, 1))).sum(1).mean() * tau ** 2
    assert torch.allclose(DistillationLoss("soft", alpha=1.0, tau=tau)(out, packed), kl, atol=1e-5)
    assert float(DistillationLoss("soft", 1.0, tau)(teacher, packed)) == pytest.approx(0.0, abs=1e-6)
    mixed = DistillationLoss("soft", alpha=0.3, tau=tau)(out, packed)
    assert torch.allclose(mixed, 0.7 * F.cross_entropy(out, labels) + 0.3 * kl, atol=1e-5)


def test_gradients_reach_the_student_only_and_bf16_logits_are_accepted():
    out, teacher, labels = _batch(2)
    student = out.clone().requires_grad_(True)
    packed = pack_targets(labels, teacher)
    DistillationLoss("soft", 0.5, 2.0)(student.bfloat16(), packed).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert not packed.requires_grad


def test_bad_arguments_and_shapes_are_refused():
    out, teacher, labels = _batch(3)
    with pytest.raises(ValueError, match="distill must be one of"):
        DistillationLoss("medium")
    with pytest.raises(ValueError, match="distill_alpha"):
        DistillationLoss("hard", alpha=1.5)
    with pytest.raises(ValueError, match="distill_tau"):
        DistillationLoss("soft", tau=0.0)
    with pytest.raises(ValueError, match="teacher must predict the student's 7 classes"):
        pack_targets(torch.softmax(torch.randn(5, C + 1), 1), teacher)
    with pytest.raises(ValueError, match="packed targets"):
        DistillationLoss()(out, torch.randn(5, C))


# ---------------------------------------------------------------------- through the trainer
TEACHER_KW = dict(synthetic_train=64, epochs=3, eval_interval=3, no_aug=True, smoothing=0.0,
                  model_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2})


def test_a_distilled_run_loads_and_scores_its_teacher_and_pulls_the_student_toward_it(tmp_path):
    teacher = Trainer(tiny_config(tmp_path, "teacher", **TEACHER_KW)).run()
    teacher_results = json.loads((tmp_path / "teacher" / "results.json").read_text())
    seen = []
    # (no teacher_kwargs: the exported weights' metadata holds the teacher's model_kwargs)
    student_kw = dict(teacher="test_vim", teacher_checkpoint=str(teacher.weights), distill="hard",
                      distill_alpha=1.0, synthetic_train=32, batch_size=32, epochs=25, warmup_epochs=1, lr=4e-3,
                      no_aug=True, smoothing=0.0, weight_decay=0.0, eval_interval=25, save_interval=25,
                      model_kwargs={"patch_size": 8, "embed_dim": 24, "depth": 2})
    trainer = Trainer(tiny_config(tmp_path, "student", **student_kw),
                      step_hook=lambda tr, epoch, step, loss: seen.append(float(loss)))
    result = trainer.run()
    assert not result.interrupted and len(seen) == 25
    results = json.loads((tmp_path / "student" / "results.json").read_text())
    # the teacher was loaded intact: it scores on the validation images what its own run reported
    assert results["teacher"] == "test_vim" and results["distill"] == "hard"
    assert results["teacher_top1"] == pytest.approx(teacher_results["top1"])
    # with alpha 1 the student learns the teacher's labels for its training images, right or wrong (measured:
    # 94% agreement with alpha 1; 12% with alpha 0, where it learns the true labels of this poor teacher)
    images = torch.cat([x for x, _y in trainer.data.train.epoch(0, 0)][:1])
    with torch.no_grad():
        agree = (trainer.model.eval()(images).argmax(1) == trainer.teacher(images).argmax(1)).float().mean()
    assert seen[-1] < 0.5 * seen[0] and agree >= 0.75, (seen[0], seen[-1], float(agree))


def test_resized_input_resizes_only_what_differs_and_keeps_dtype_and_layout():
    seen = []
    model = torch.nn.Identity()
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    wrapped = ResizedInput(model, 8)
    x = torch.randn(2, 3, 12, 12)
    expected = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(wrapped(x), expected) and seen[-1].shape == (2, 3, 8, 8)
    same = torch.randn(2, 3, 8, 8)
    assert wrapped(same) is same  # (already the teacher's size: passed through untouched)
    half = wrapped(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(half.float(), expected, atol=0.05)
    with pytest.raises(ValueError, match="size"):
        ResizedInput(model, 0)


def test_a_student_at_a_larger_size_distils_from_a_teacher_at_its_own_size(tmp_path):
    # fine-tuning at a higher resolution (more tokens) while the teacher keeps the size it was trained at: the
    # teacher is built for teacher_img_size and sees every image resized to it, in training and in its evaluation
    teacher = Trainer(tiny_config(tmp_path, "teacher", **TEACHER_KW)).run()
    trainer = Trainer(tiny_config(tmp_path, "student", teacher="test_vim", teacher_checkpoint=str(teacher.weights),
                                  distill="soft", distill_alpha=1.0, img_size=48, teacher_img_size=32, epochs=2,
                                  synthetic_train=32, eval_interval=2))
    trainer.setup()
    sizes = set()
    trainer.teacher.model.register_forward_pre_hook(lambda m, args: sizes.add(tuple(args[0].shape[-2:])))
    result = trainer.run()
    results = json.loads((tmp_path / "student" / "results.json").read_text())
    assert not result.interrupted and sizes == {(32, 32)} and results["teacher_img_size"] == 32
    # its evaluation before training went through the resize too (the teacher, built for 32 px, refuses 48 px
    # images): the score is that of the resized validation images
    from vision_mamba.train.evaluate import evaluate

    with pytest.raises(ValueError, match="built for 32x32"):
        trainer.teacher.model(torch.zeros(1, 3, 48, 48))
    again = evaluate(ResizedInput(trainer.teacher.model, 32), trainer.data.val, torch.device("cpu"), None,
                     trainer.ctx, progress=False)
    assert results["teacher_top1"] == pytest.approx(again["top1"])
    with pytest.raises(ConfigError, match="teacher_img_size"):
        tiny_config(tmp_path, teacher="test_vim", teacher_checkpoint="w.pt", teacher_img_size=0).validate()


def test_teacher_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="teacher_checkpoint"):
        tiny_config(tmp_path, teacher="test_vim").validate()
    with pytest.raises(ConfigError, match="'teacher'"):
        tiny_config(tmp_path, teacher_checkpoint="w.safetensors").validate()
    with pytest.raises(ConfigError, match="config key 'teacher': unknown model"):
        Trainer(tiny_config(tmp_path, "a", teacher="resnet_nonexistent", teacher_checkpoint="w.pt")).setup()
    other = timm.create_model("test_vim", num_classes=3, patch_size=8)  # trained on other classes
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="head"):
        Trainer(tiny_config(tmp_path, "b", teacher="test_vim", teacher_kwargs={"patch_size": 8},
                            teacher_checkpoint=str(tmp_path / "other.safetensors"))).setup()
