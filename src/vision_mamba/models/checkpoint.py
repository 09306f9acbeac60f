"""Reading and loading checkpoints: weights only, never running a pickled payload.

Formats: the official training checkpoint (``torch.save`` of {'model': ..., 'args': argparse.Namespace, ...}),
a plain state dict (``.pth`` / ``.pt`` / ``.bin``), and safetensors. The only non-tensor class a ``.pth`` may
carry is ``argparse.Namespace``; anything else is refused before it can execute.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import struct
import zipfile
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


def _shortened(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters at the end of a sentence or word, marked with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(". ", 0, limit), text.rfind("; ", 0, limit))
    if cut < limit // 2:
        cut = text.rfind(" ", 0, limit)
    return text[:cut if cut > 0 else limit].rstrip(" .;,") + " ..."


def read_checkpoint(path: "str | os.PathLike", mmap: bool = False) -> Any:
    """Load a checkpoint file onto the CPU, weights only (safetensors, or torch.load with weights_only=True and
    argparse.Namespace as the one allowed class). ``mmap``: a torch.save file's tensors are mapped from the file, not
    read (for a caller that wants its other entries; a file in the legacy format is read whole)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give one of its files" +
                              (f" ({', '.join(found)})" if found else " (it holds no .safetensors / .pth file)"))
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
                return _torch_load(path, mmap)
        torch.serialization.add_safe_globals([argparse.Namespace])
        return _torch_load(path, mmap)
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
        reason = _shortened(lines[0]) if lines else type(e).__name__  # torch adds paragraphs of advice after it
        if "zip archive" in reason or "central directory" in reason or isinstance(e, EOFError):
            reason = f"truncated or damaged: {reason.split('. ')[0].rstrip('. ')}"
        if not isinstance(e, (RuntimeError, EOFError, OSError)):
            reason = f"its bytes do not unpickle: {type(e).__name__} {reason}"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from e


def _torch_load(path: Path, mmap: bool) -> Any:
    if mmap and zipfile.is_zipfile(path):  # (torch.save's format since 1.6; mmap refuses the legacy one)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(path, map_location="cpu", weights_only=True)


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


def checkpoint_classes(path: "str | os.PathLike") -> Optional[List[str]]:
    """Class names stored with the weights (``vision-mamba train`` keeps them): a safetensors file's 'classes'
    metadata, or a training checkpoint's 'classes' list; None where there are none or the file cannot be read."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            meta = read_metadata(path)
            return [str(c) for c in json.loads(meta["classes"])] if "classes" in meta else None
        state = read_checkpoint(path)
        classes = state.get("classes") if isinstance(state, Mapping) else None
        return [str(c) for c in classes] if classes else None
    except (ValueError, KeyError, TypeError, OSError):  # CheckpointError and JSON errors are ValueErrors
        return None


# the format tags of the files this package's commands write: train's training state (last.pth), and the final
# weights of det-train and seg-train (model.safetensors metadata)
CLASSIFICATION_FORMAT = "vision_mamba.classification/1"
DETECTION_FORMAT = "vision_mamba.detection/1"
SEGMENTATION_FORMAT = "vision_mamba.segmentation/1"


def written_by(path: "str | os.PathLike") -> Optional[str]:
    """Which command of this package wrote the checkpoint at ``path``, in words for an error message (e.g.
    "seg-train's training checkpoint"); None for other files and for files that cannot be read. Tells them apart by the
    'format' tag (train's last.pth, seg-train's and det-train's model.safetensors) or the entries a state holds."""
    path = Path(path)
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        return {DETECTION_FORMAT: "det-train's final weights (a whole detector)",
                SEGMENTATION_FORMAT: "seg-train's final weights (a whole segmentation model)"}.get(
            meta.get("format", ""), "classifier weights exported by train" if meta.get("model") else None)
    try:
        state = read_checkpoint(path, mmap=True)
    except (CheckpointError, OSError):
        return None
    if not isinstance(state, Mapping) or not isinstance(state.get("config"), Mapping):
        return None
    if state.get("format") == CLASSIFICATION_FORMAT:
        return "train's training checkpoint"
    if "categories" in state:
        return "det-train's training checkpoint (a whole detector)"
    if isinstance(state.get("classes"), Mapping):
        return "seg-train's training checkpoint (a whole segmentation model)"
    return None


def whole_model_error(path: "str | os.PathLike", setting: str, command: str, more_iters: str,
                      ) -> Optional[CheckpointError]:
    """A one-line error for a backbone initialisation ``setting`` (e.g. "model.init (--init)") given a whole
    detector or segmentation model, whose loading fails with lists of keys; None for other files. ``command``
    ("det-train" / "seg-train") reads the setting: a model it wrote itself gets the hint to resume its run instead,
    ``more_iters`` saying how to ask for more iterations."""
    kind = written_by(path)
    if not kind or not kind.startswith(("det-train", "seg-train")):
        return None
    hint = ""
    if kind.startswith(command):
        model = "detector" if command == "det-train" else "segmentation model"
        hint = (f"; to train that {model} further, resume its run: --resume {Path(path).parent} "
                f"({more_iters} for more iterations)")
    return CheckpointError(f"{setting}: {path} is {kind}, not a classification checkpoint for the backbone{hint}")


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
                empty = [k for k in EMA_KEYS if k in checkpoint and not checkpoint[k]]
                where = (f"its {' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty (a run trained "
                         f"without EMA saves it so)" if empty else
                         f"no state dict under {' or '.join(EMA_KEYS)}; its top-level keys: "
                         f"{sorted(map(str, checkpoint))[:10]}")
                raise CheckpointError(f"no EMA weights in the checkpoint ({where}); load it without the EMA option")
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


def _is_vim(model: nn.Module) -> bool:
    from .vision_mamba import VisionMamba

    return isinstance(model, VisionMamba)


def _stored_grid(path: "str | os.PathLike") -> Optional[Tuple[int, int]]:
    """The patch grid :func:`save_state_dict` stored with a model's weights (safetensors metadata), if any."""
    try:
        grid = json.loads(read_metadata(path).get("patch_grid", "null"))
    except ValueError:
        return None
    if isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid):
        return int(grid[0]), int(grid[1])
    return None


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


# the registered Vim of each released width (24 blocks of 16x16 patches)
_VIM_OF_WIDTH = {192: "vim_tiny_patch16_224", 384: "vim_small_patch16_224", 768: "vim_base_patch16_224"}


def _how_it_differs(model: nn.Module, state_dict: Mapping[str, Tensor]) -> str:
    """For the first line of the error that lists the mismatches: for a Vim model and a Vim checkpoint of another
    build (width, blocks, patch size, class token), the two builds in words and what to do; else a classifier of
    another size (:func:`_other_classes`), or ''."""
    weight = state_dict.get("patch_embed.proj.weight")
    blocks = {int(k.split(".")[1]) for k in state_dict if re.match(r"layers\.\d+\.", k)}
    if not _is_vim(model) or not isinstance(weight, Tensor) or weight.ndim != 4 or not blocks:
        return _other_classes(model, state_dict)

    def build(width: int, depth: int, patch: Tuple[int, ...], token: bool) -> str:
        return (f"{width} wide with {depth} blocks of {patch[0]}x{patch[1]} patches"
                + ("" if token else " and no class token"))

    theirs = (int(weight.shape[0]), max(blocks) + 1, tuple(int(n) for n in weight.shape[2:]), "cls_token" in state_dict)
    ours = (model.embed_dim, len(model.layers), tuple(model.patch_embed.patch_size), model.has_class_token)
    if theirs == ours:
        return _other_classes(model, state_dict)
    fix = "create the model the checkpoint was trained as"
    if theirs[0] != ours[0] and theirs[0] in _VIM_OF_WIDTH and theirs[1:3] == (24, (16, 16)):
        fix += f" ({_VIM_OF_WIDTH[theirs[0]]}, or its stride-8 variant)"
    elif theirs[:3] == ours[:3] and not theirs[3]:  # (a class token the model lacks is dropped on load)
        fix += " (class_token=False, global_pool='avg')"
    return f" the checkpoint's Vim is {build(*theirs)}, the model {build(*ours)}; {fix}"


def _other_classes(model: nn.Module, state_dict: Mapping[str, Tensor]) -> str:
    """' its classifier has N classes, the model's M' where the classifiers' weights differ in rows only, else ''."""
    classifier = getattr(model, "get_classifier", lambda: None)()
    weight = getattr(classifier, "weight", None)
    name = next((n for n, m in model.named_modules() if m is classifier and n), None)
    theirs = state_dict.get(f"{name}.weight") if name else None
    if (isinstance(weight, Tensor) and isinstance(theirs, Tensor) and weight.ndim == theirs.ndim == 2
            and theirs.shape[1] == weight.shape[1] and theirs.shape[0] != weight.shape[0]):
        return f" its classifier has {theirs.shape[0]} classes, the model's {weight.shape[0]}"
    return ""


def _trained_as(checkpoint: Any) -> Optional[str]:
    """The model name a training checkpoint gives for itself (the official code's ``args.model``, or the
    ``model`` of our runs' config), if any."""
    if not isinstance(checkpoint, Mapping):
        return None
    args = checkpoint.get("args", checkpoint.get("config"))
    name = args.get("model") if isinstance(args, Mapping) else getattr(args, "model", None)
    return name if isinstance(name, str) else None


def _warn_of_stride(model: nn.Module, trained_as: Optional[str], path) -> None:
    """A warning where a checkpoint of a stride-8 Vim (the paper's long-sequence fine-tune) is loaded into a Vim of
    another stride: the weights have the same shapes but for pos_embed, which is resized, so the load succeeds and
    the model's outputs are not the checkpoint's. (The other way round, stride 16 into stride 8, is that
    fine-tune's start, and not warned of.)"""
    stride = tuple(getattr(getattr(model, "patch_embed", None), "stride", ()))
    if not _is_vim(model) or not trained_as or "stride8" not in trained_as or stride == (8, 8):
        return
    _logger.warning("%s was trained as %s (stride 8), and this model has stride %s: its pos_embed is resized to "
                    "the model's %dx%d patch grid, and its outputs will not be the checkpoint's; for those, create "
                    "the stride-8 variant (e.g. vim_tiny_patch16_stride8_224)", path, trained_as,
                    "x".join(map(str, stride)), *model.patch_embed.grid_size)


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
    drop_head: bool = False,
) -> Dict[str, List[str]]:
    """Load weights from ``path`` into ``model`` (official .pth, plain state dict or safetensors).

    pos_embed is resized to the model's patch grid. ``adapt_head``: a classifier of another size is skipped
    (kept as initialised), for fine-tuning on other classes; ``drop_head``: the classifier is skipped whatever its
    size (other classes, as many). With ``strict`` (default), any other missing or
    unexpected key or shape mismatch raises :class:`CheckpointError` listing them. Returns what was skipped.
    """
    try:
        checkpoint = read_checkpoint(path)
        state_dict = extract_state_dict(checkpoint, use_ema=use_ema)
    except CheckpointError as e:
        if str(path) in str(e):
            raise
        raise CheckpointError(f"{path}: {e}") from None
    _warn_of_stride(model, _trained_as(checkpoint), path)
    filter_fn = _filter_for(model)
    if filter_fn is not None:
        grid = _stored_grid(path) if _is_vim(model) else None
        state_dict = filter_fn(state_dict, model, grid=grid) if grid else filter_fn(state_dict, model)
    skipped = []
    if adapt_head or drop_head:
        classifier = getattr(model, "get_classifier", lambda: None)()
        head_names = [n for n, m in model.named_modules() if m is classifier and n]
        for head in head_names:
            expected = {k: v for k, v in model.state_dict().items() if k.startswith(head + ".")}
            found = {k: v for k, v in state_dict.items() if k.startswith(head + ".")}
            if found and drop_head:
                for k in found:
                    state_dict.pop(k)
                skipped += sorted(expected)
            elif found and (set(found) != set(expected) or any(found[k].shape != expected[k].shape for k in found)):
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
        lines = [f"checkpoint {path} does not fit {type(model).__name__}:{_how_it_differs(model, state_dict)}"]
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
    if missing or unexpected or mismatched:  # (not strict) a partial load is said once, not done silently
        parts = []
        if mismatched:
            parts.append(f"of another shape, left as initialised: {_listing(m.split(':')[0] for m in mismatched)}")
        if missing:
            parts.append(f"missing, left as initialised: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected, ignored: {_listing(unexpected)}")
        _logger.warning("%s: partial load into %s; keys %s", path, type(model).__name__, "; ".join(parts))
    model.load_state_dict(state_dict, strict=False)
    return dict(missing=missing, unexpected=unexpected, mismatched=mismatched, skipped=skipped)


def save_state_dict(model_or_state: "nn.Module | Mapping[str, Tensor]", path: "str | os.PathLike",
                    metadata: Optional[Dict[str, str]] = None) -> None:
    """Write weights as safetensors (by suffix) or a plain torch state dict, atomically (temp file + rename).
    A model with a patch grid (Vim) has it stored in the safetensors metadata ('patch_grid'), so that its
    pos_embed can be resized on load even when the grid is not square."""
    path = Path(path)
    grid = getattr(getattr(model_or_state, "patch_embed", None), "grid_size", None)
    if isinstance(model_or_state, nn.Module) and grid is not None and path.suffix == ".safetensors":
        metadata = {"patch_grid": json.dumps([int(g) for g in grid]), **(metadata or {})}
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    from ..engine.files import atomic_write

    def write(tmp: Path) -> None:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata=metadata)
        else:
            torch.save(state, tmp)
        _readable_as_files_are(tmp)

    atomic_write(path, write)


def _readable_as_files_are(path: Path) -> None:
    """safetensors writes its files readable by their owner only (0600); give them the mode any new file gets
    under the process's umask (0644 usually), like the rest of a run directory."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass
