"""Run directories: created once, with the resolved configuration saved next to the results."""
from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from .config import ConfigError


def save_config(config: Dict[str, Any], path: "str | Path") -> Path:
    from .files import write_text

    return write_text(path, yaml.safe_dump(config, sort_keys=False))


def prepare_run_dir(output: "str | Path", config: Dict[str, Any], filename: str = "config.yaml") -> Path:
    """Create ``output`` and write the resolved ``config`` into it as YAML."""
    run_dir = Path(output)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / filename)
    return run_dir


RUN_CHECKPOINTS = ("last.pth", "checkpoint.pt")  # the training states: train's and seg-train's, det-train's


def refuse_other_commands_run(run_dir: "str | Path", command: str) -> None:
    """A ConfigError where ``run_dir`` holds the run of another command of this package (``command``: "train",
    "seg-train" or "det-train"), found by its training state (``last.pth`` of train or seg-train, ``checkpoint.pt``
    of det-train): a run of ``command`` there would overwrite that run's config.yaml, metrics and curves, which each
    command refuses for a run of its own only. A state of ``command`` itself, or one that cannot be read under its
    own file name, is left to the command's own checks."""
    from ..models.checkpoint import written_by

    own = "checkpoint.pt" if command == "det-train" else "last.pth"
    for name in RUN_CHECKPOINTS:
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        kind = written_by(path)
        if (kind is None and name == own) or (kind is not None and kind.startswith(f"{command}'s")):
            continue
        raise ConfigError(f"{run_dir} holds the run of another command ({name}: {kind or f'not a {command} checkpoint'}"
                          f"); a {command} run there would overwrite its files: choose another --output")


class RunDirBusy(ConfigError):
    """Another process is writing the run directory."""


class RunDirLock:
    """An exclusive lock on a run directory (``run_dir/.lock``, ``fcntl.flock``), held while a run writes there,
    so that a second run started with the same output (or a resume of a run that is still going, or whose
    orphaned workers still write) is refused instead of interleaving its files with the first one's. The lock
    goes with the process, however it ends. Where ``fcntl`` does not exist (Windows) it does nothing."""

    def __init__(self, run_dir: "str | Path"):
        self.path = Path(run_dir) / ".lock"
        self._file = None

    def acquire(self) -> "RunDirLock":
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # a file system without locks (some network mounts): the run goes on unguarded, as before locks
                f.close()
                warnings.warn(f"{self.path.parent}: cannot lock the run directory ({e.strerror}); nothing stops a "
                              f"second run from writing there at the same time", RuntimeWarning, stacklevel=3)
                return self
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise RunDirBusy(f"{self.path.parent} is in use by another run{f' (process {holder})' if holder else ''}"
                             f"; wait for it to end, stop it, or choose another output directory") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the lock
            self._file = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def hold_run_dir(run_dir: "str | Path", ctx=None, held: Optional[RunDirLock] = None) -> Optional[RunDirLock]:
    """The run directory's lock, taken by the main process of ``ctx`` (a DistributedContext; None: this process)
    unless ``held`` already is it; :class:`RunDirBusy` on every process if another run holds it."""
    busy, lock = None, held
    if (ctx is None or ctx.is_main) and lock is None:
        try:
            lock = RunDirLock(run_dir).acquire()
        except RunDirBusy as e:
            busy = str(e)
    if ctx is not None:
        busy = ctx.broadcast_object(busy)
    if busy:
        raise RunDirBusy(busy)
    return lock
