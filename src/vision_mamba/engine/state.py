"""Training state on disk: written atomically (temporary file, then rename), read weights-only, RNG included."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch


def capture_rng_state() -> Dict[str, Any]:
    """Every RNG a training step draws from (python, numpy, torch CPU and CUDA), as weights-only-loadable data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # resumed on another number of GPUs: seed what there is from the first state
            for i in range(torch.cuda.device_count()):
                torch.cuda.set_rng_state(cuda_states[min(i, len(cuda_states) - 1)], i)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_state(path: "str | os.PathLike", state: Dict[str, Any]) -> Path:
    """torch.save ``state`` to ``path`` atomically: a crash mid-write never leaves a truncated checkpoint."""
    from .files import atomic_write

    return atomic_write(path, lambda tmp: torch.save(state, tmp), fsync=True)


def load_state(path: "str | os.PathLike", mmap: bool = False) -> Dict[str, Any]:
    """Read a state written by :func:`save_state` onto the CPU (weights-only: no pickled code runs). A file that is
    not such a state (unreadable, refused, or not a mapping) is a ``CheckpointError`` naming it. ``mmap``: its
    tensors mapped from the file rather than read, for a look at its other entries (the configuration a resume
    starts from: the trainer reads the whole state afterwards)."""
    from ..models.checkpoint import CheckpointError, read_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_checkpoint(path, mmap=mmap)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a training checkpoint")
    return state
