"""Files written whole or not at all: a temporary file beside the target, renamed over it once complete, and
removed if the writing fails (a full disk, an interrupt), so that neither a half-written result nor a stray
temporary file is left, and an earlier complete file survives."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "unwritable", "write_json", "write_text"]


def atomic_write(path: "str | os.PathLike", write: Callable[[Path], None], fsync: bool = False) -> Path:
    """``write(tmp)`` writes the content to the temporary path it is given; then it replaces ``path`` (folders
    made). ``fsync``: flushed to the disk before the rename (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: "str | os.PathLike", text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: "str | os.PathLike", data: Any, indent: int = 2, **dumps_kwargs: Any) -> Path:
    """``data`` as JSON (a final newline), atomically."""
    return write_text(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


def unwritable(path: "str | os.PathLike") -> "str | None":
    """Why ``path`` (a file or a folder to be written, maybe not there yet) cannot be written, or None: the nearest
    folder that exists on its way must be writable. Checked before a command's work, not after it."""
    target = Path(path).expanduser().absolute()
    folder = target if target.is_dir() else target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to write in {folder}"
    return None
