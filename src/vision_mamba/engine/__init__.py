"""What every training loop of the package shares: atomic state files with RNG, clean interruption, metrics and
curves, torchrun / DDP, mixed precision with a non-finite-loss guard, run directories."""
from .distributed import DistributedContext, cleanup_distributed, init_distributed, report_error, resolve_device
from .interrupt import InterruptGuard
from .metrics import MetricLogger, plot_curves
from .precision import NonFiniteGuard, NonFiniteLossError, autocast, resolve_precision
from .rundir import RunDirBusy, RunDirLock, prepare_run_dir, save_config
from .state import capture_rng_state, load_state, restore_rng_state, save_state

__all__ = [
    "DistributedContext", "cleanup_distributed", "init_distributed", "report_error", "resolve_device",
    "InterruptGuard", "MetricLogger", "plot_curves", "NonFiniteGuard", "NonFiniteLossError", "autocast",
    "resolve_precision", "prepare_run_dir", "save_config", "RunDirBusy", "RunDirLock", "capture_rng_state",
    "load_state", "restore_rng_state", "save_state",
]
