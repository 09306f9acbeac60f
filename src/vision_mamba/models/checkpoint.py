"""Reading and loading checkpoints: weights only, never running a pickled payload.

Formats: the official training checkpoint (``torch.save`` of {'model': ..., 'args': argparse.Namespace, ...}),
a plain state dict (``.pth`` / ``.pt`` / ``.bin``), and safetensors. The only non-tensor class a ``.pth`` may
carry is ``argparse.Namespace``; anything else is refused before it can execute.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

_logger = logging.getLogger(__name__)

STATE_DICT_KEYS = ("model", "state_dict", "module")
EMA_KEYS = ("model_ema", "state_dict_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that does not fit the model; the message says what is wrong."""


def _pickle_reason(error: Exception) -> str:
    """The informative part of torch.load's weights-only unpickling error: it wraps the unpickler's one line (e.g.
    "Unsupported operand 110") in paragraphs of advice."""
    text = str(error)
    found = re.search(r"Unpickler error:\s*(\S[^\n]*)", text)
    if found:
        return f"unpickling failed: {found.group(1).strip()}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first[:200]


def read_checkpoint(path: "str | os.PathLike") -> Any:
    """Load a checkpoint file onto the CPU, weights only (safetensors, or torch.load with weights_only=True and
    argparse.Namespace as the one allowed class)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: an empty file, not a checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        torch.serialization.add_safe_globals([argparse.Namespace])
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if "global" in line.lower()]
        if not lines:  # not a refused class: the file is not a pickle torch can read at all
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_pickle_reason(e)})") from e
        first = lines[0]
        raise CheckpointError(
            f"{path}: refused. The file holds pickled objects other than tensors and argparse.Namespace, and "
            f"loading them could run code. Only weights are loaded here. ({first})") from e
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError, TypeError, struct.error) as e:
        # The weights-only unpickler meets a file that is not a pickle (text, a CSV, ...) with whatever its first
        # opcodes make it raise: a memo KeyError, a pop from an empty stack, ...
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = lines[0][:200] if lines else type(e).__name__  # torch adds paragraphs of advice after the cause
        if not isinstance(e, (RuntimeError, EOFError, OSError)):
            reason = f"its bytes do not unpickle: {type(e).__name__} {reason}"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from e


def read_metadata(path: "str | os.PathLike", strict: bool = False) -> Dict[str, str]:
    """The string metadata of a safetensors file (``vision-mamba train`` stores model, classes and img_size
    there; seg-train and det-train their config); {} for other files. A file that cannot be read gives {} (loading
    the weights then says why), or with ``strict`` a :class:`CheckpointError` naming it."""
    if Path(path).suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        if strict:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        return {}


def extract_state_dict(checkpoint: Any, use_ema: bool = False) -> Dict[str, Tensor]:
    """The state dict inside a checkpoint: 'model' (official / our training), 'state_dict', or the EMA weights
    when ``use_ema`` (an error if the checkpoint has none); DDP 'module.' and torch.compile '_orig_mod.' prefixes
    stripped."""
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        keys = EMA_KEYS if use_ema else STATE_DICT_KEYS
        for key in keys:
            value = checkpoint.get(key)
            if isinstance(value, Mapping) and value and all(isinstance(v, Tensor) for v in value.values()):
                state = value
                break
        else:
            if use_ema:
                raise CheckpointError(
                    f"no EMA weights in the checkpoint (no state dict under {' or '.join(EMA_KEYS)}; its top-level "
                    f"keys: {sorted(map(str, checkpoint))[:10]}); load it without the EMA option")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"the checkpoint holds a {type(state).__name__}, not a state dict")
    non_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if non_tensors:
        raise CheckpointError(
            f"the checkpoint is not a state dict: entries {non_tensors[:5]} are not tensors "
            f"(top-level keys: {sorted(state)[:10]})")
    out = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _filter_for(model: nn.Module):
    from .vision_mamba import VisionMamba, checkpoint_filter_fn

    if isinstance(model, VisionMamba):
        return checkpoint_filter_fn
    try:  # timm's ViT / DeiT: its own filter resizes pos_embed
        from timm.models.vision_transformer import VisionTransformer
        from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter

        if isinstance(model, VisionTransformer):
            return vit_filter
    except ImportError:
        pass
    return None


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_fit(model: nn.Module, state_dict: Mapping[str, Tensor]) -> Tuple[List[str], List[str], List[str]]:
    """(missing keys, unexpected keys, shape mismatches described) of ``state_dict`` against ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, mismatched


def load_checkpoint(
    model: nn.Module,
    path: "str | os.PathLike",
    strict: bool = True,
    use_ema: bool = False,
    adapt_head: bool = False,
) -> Dict[str, List[str]]:
    """Load weights from ``path`` into ``model`` (official .pth, plain state dict or safetensors).

    pos_embed is resized to the model's patch grid. ``adapt_head``: a classifier of another size is skipped
    (kept as initialised), for fine-tuning on other classes. With ``strict`` (default), any other missing or
    unexpected key or shape mismatch raises :class:`CheckpointError` listing them. Returns what was skipped.
    """
    try:
        state_dict = extract_state_dict(read_checkpoint(path), use_ema=use_ema)
    except CheckpointError as e:
        if str(path) in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    filter_fn = _filter_for(model)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    skipped = []
    if adapt_head:
        classifier = getattr(model, "get_classifier", lambda: None)()
        head_names = [n for n, m in model.named_modules() if m is classifier and n]
        for head in head_names:
            expected = {k: v for k, v in model.state_dict().items() if k.startswith(head + ".")}
            found = {k: v for k, v in state_dict.items() if k.startswith(head + ".")}
            if found and (set(found) != set(expected) or any(found[k].shape != expected[k].shape for k in found)):
                for k in found:
                    state_dict.pop(k)
                skipped += sorted(found)
                _logger.info("%s: the checkpoint's classifier '%s' is of another size; the model's is kept as "
                             "initialised", path, head)
            if not found and not expected:
                continue
            if not found:
                skipped += sorted(expected)
                _logger.warning("%s: the checkpoint has no classifier '%s'; the model's is left as initialised "
                                "(random until trained)", path, head)
    missing, unexpected, mismatched = check_fit(model, state_dict)
    missing = [k for k in missing if k not in skipped]
    if strict and (missing or unexpected or mismatched):
        lines = [f"checkpoint {path} does not fit {type(model).__name__}:"]
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched[:12])
                         + (f"; ... ({len(mismatched)} in all)" if len(mismatched) > 12 else ""))
        if missing:
            lines.append("  missing keys: " + _listing(missing))
        if unexpected:
            lines.append("  unexpected keys: " + _listing(unexpected))
        raise CheckpointError("\n".join(lines))
    if mismatched:
        bad = {m.split(":")[0] for m in mismatched}
        state_dict = {k: v for k, v in state_dict.items() if k not in bad}
    model.load_state_dict(state_dict, strict=False)
    return dict(missing=missing, unexpected=unexpected, mismatched=mismatched, skipped=skipped)


def save_state_dict(model_or_state: "nn.Module | Mapping[str, Tensor]", path: "str | os.PathLike",
                    metadata: Optional[Dict[str, str]] = None) -> None:
    """Write weights as safetensors (by suffix) or a plain torch state dict, atomically (temp file + rename)."""
    path = Path(path)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata=metadata)
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
