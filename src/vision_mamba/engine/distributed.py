"""One process per device under torchrun (NCCL on GPU, gloo on CPU), or a single process without it."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(tensor) / self.world_size if self.is_distributed else tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda" and (not torch.cuda.is_available() or dev.index >= torch.cuda.device_count()):
        from .config import ConfigError

        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ConfigError(f"device {device!r}: this machine has {seen} usable CUDA device(s); use device auto or "
                          f"cpu")
    return dev


def _stop_with_launcher() -> None:
    """Under torchrun, on Linux: a SIGTERM for this worker when its launcher dies. torchrun starts its workers in
    sessions of their own, so a launcher killed outright (``kill -9``, the OOM killer, a job's time limit) would
    leave them training and writing the run directory; with the signal they save and stop as on Ctrl-C."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            return
        if os.getppid() != parent:  # the launcher died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def init_distributed(device: str = "auto") -> DistributedContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); start the process group if there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    backend = None
    if world_size > 1:
        _stop_with_launcher()
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    elif dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistributedContext(rank, world_size, local_rank, dev, backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def report_error(message: str) -> None:
    """Print a command's error to stderr once: under torchrun every process meets the same error, and only the
    first (RANK 0) says it."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(message, file=sys.stderr)


def check_resume_world_size(saved: Any, ctx: DistributedContext, path: Any) -> None:
    """Refuse to resume on another number of processes (for trainers whose batch is per process, and whose
    processes' places in the sample stream depend on the count): a ConfigError naming both counts. ``saved``:
    the count the checkpoint recorded (None for checkpoints from before it was stored: accepted)."""
    from .config import ConfigError

    if saved is not None and int(saved) != ctx.world_size:
        raise ConfigError(f"--resume: {path} was trained on {saved} process(es) and this run has "
                          f"{ctx.world_size}; resume with the same number (torchrun --nproc_per_node {saved}"
                          f"{', or without torchrun' if int(saved) == 1 else ''}), as the global batch and the "
                          f"data order depend on it")
