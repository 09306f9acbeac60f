"""Knowledge distillation from a trained teacher (DeiT's recipe, without a distillation token).

The student keeps its one classifier; its loss mixes the usual soft-target cross-entropy (mixup / cutmix and
label smoothing included) with a term that pulls it toward a frozen teacher seeing the same augmented images:

    loss = (1 - alpha) * CE(student, targets) + alpha * KD
    KD   = CE(student, argmax teacher)                                          distill: hard (DeiT's choice)
    KD   = tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))         distill: soft

Why: a transformer or a Vim trained from scratch on a few thousand images lacks the locality prior that a
convnet has built in; a convnet teacher trained on the same images passes it on through its predictions (DeiT,
Touvron et al. 2021, Sec. 5). The teacher is any timm model trained by ``vision-mamba train`` on the same classes.

The teacher's logits travel with the targets in one tensor, ``[targets (B, C) | teacher logits (B, C)]``
(:func:`pack_targets`), so the loss keeps the ``criterion(output, targets)`` form that an eager step and a step
replayed from a CUDA graph (train/graphed.py) both call; the teacher itself runs before the step, without
gradients.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import autocast

__all__ = ["DistillationLoss", "Teacher", "ResizedInput", "pack_targets", "KINDS"]

KINDS = ("hard", "soft")


def pack_targets(targets: torch.Tensor, teacher_logits: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """``[soft targets | teacher logits]`` as one float32 (B, 2C) tensor. Class indices (B,) become one-hot
    targets with ``smoothing`` spread over the classes (as timm's label smoothing); soft targets (B, C), e.g.
    from timm's Mixup, are kept as they are."""
    num_classes = teacher_logits.shape[1]
    if targets.ndim == 1:
        off = smoothing / num_classes
        soft = torch.full((targets.shape[0], num_classes), off, dtype=torch.float32, device=targets.device)
        soft.scatter_(1, targets.long()[:, None], 1.0 - smoothing + off)
        targets = soft
    if targets.shape != teacher_logits.shape:
        raise ValueError(f"targets {tuple(targets.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
                         f"the teacher must predict the student's {num_classes} classes")
    return torch.cat([targets.float(), teacher_logits.float()], dim=1)


class DistillationLoss(nn.Module):
    """``loss(student_logits, packed)``: see the module's doc; ``packed`` comes from :func:`pack_targets`."""

    def __init__(self, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"distill must be one of {', '.join(KINDS)}, got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"distill_tau must be > 0, got {tau}")
        self.kind, self.alpha, self.tau = kind, float(alpha), float(tau)

    def forward(self, output: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        num_classes = output.shape[1]
        if packed.shape != (output.shape[0], 2 * num_classes):
            raise ValueError(f"expected packed targets of shape {(output.shape[0], 2 * num_classes)} "
                             f"(targets | teacher logits), got {tuple(packed.shape)}")
        output = output.float()
        targets, teacher = packed[:, :num_classes], packed[:, num_classes:]
        base = torch.sum(-targets * F.log_softmax(output, dim=-1), dim=-1).mean()
        if self.kind == "hard":
            kd = F.cross_entropy(output, teacher.argmax(dim=-1))
        else:
            t = self.tau
            kd = F.kl_div(F.log_softmax(output / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                          reduction="batchmean", log_target=True) * (t * t)
        return (1.0 - self.alpha) * base + self.alpha * kd

    def extra_repr(self) -> str:
        return f"kind={self.kind}, alpha={self.alpha}, tau={self.tau}"


class ResizedInput(nn.Module):
    """``model`` seeing its input resized to ``size`` x ``size`` (bilinear, antialiased, in float32; the result in
    the input's dtype and memory format), or unchanged where it already has that size."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.model, self.size = model, int(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != (self.size, self.size):
            channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
            resized = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear",
                                    align_corners=False, antialias=True).to(images.dtype)
            images = resized.contiguous(memory_format=torch.channels_last) if channels_last else resized
        return self.model(images)


class Teacher:
    """A frozen classifier in eval mode: ``teacher(images)`` gives float32 logits, without gradients, under the
    run's autocast. Built by name and loaded from ``checkpoint`` (weights-only; pos_embed resized for models
    that have one; every key must fit, so a teacher trained on other classes is refused with the shapes).
    ``model_kwargs`` default to those stored in the metadata of weights that ``vision-mamba train`` exported.
    ``input_size``: the teacher sees the student's images resized to this side (e.g. the resolution it was
    trained at, while the student fine-tunes at a larger one); ``module`` is the teacher as it sees them."""

    def __init__(self, name: str, checkpoint: str, *, num_classes: int, img_size: Optional[int],
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, channels_last: bool = False,
                 input_size: Optional[int] = None):
        import json

        from ..models.checkpoint import load_checkpoint, read_metadata
        from .model import create_classifier

        meta = read_metadata(checkpoint)  # weights exported by train name their model and its arguments
        if not model_kwargs and meta.get("model") == name and meta.get("model_kwargs"):
            model_kwargs = json.loads(meta["model_kwargs"])
        model = create_classifier(name, num_classes=num_classes, img_size=input_size or img_size,
                                  model_kwargs=model_kwargs)
        load_checkpoint(model, checkpoint, strict=True)
        if hasattr(model, "check_finite"):
            model.check_finite = False
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model.to(device).eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.module = ResizedInput(self.model, input_size) if input_size else self.model
        self.name, self.checkpoint = name, checkpoint
        self.device, self.amp_dtype = device, amp_dtype

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.module(images).float()
