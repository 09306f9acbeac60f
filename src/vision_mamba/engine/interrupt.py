"""SIGINT / SIGTERM as a request to stop cleanly: the loop saves a checkpoint and returns."""
from __future__ import annotations

import signal
import threading
import time
from typing import Optional


class InterruptGuard:
    """``with InterruptGuard() as guard: ... if guard.requested: save(); break``.

    The first SIGINT or SIGTERM only sets ``requested`` (and ``signal_name``). A second one raises
    KeyboardInterrupt as usual, unless it comes within ``repeat_window`` seconds of the first: one stop is often
    delivered twice, e.g. by GNU ``timeout`` (to the command, then to its process group), by a terminal's Ctrl-C
    under torchrun (to every process of the group, then torchrun's own signal to its workers) or by a batch
    scheduler, and such an echo must not turn a clean stop into a crash without a checkpoint. Outside the main
    thread it does nothing (signals cannot be caught there).
    """

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM), repeat_window: float = 2.0):
        self.signals = signals
        self.repeat_window = float(repeat_window)
        self.requested = False
        self.signal_name: Optional[str] = None
        self.repeats = 0  # signals ignored as echoes of the first
        self._first_at: Optional[float] = None
        self._previous = {}

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.requested:
            if self._first_at is not None and now - self._first_at < self.repeat_window:
                self.repeats += 1
                return
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self._first_at = now

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
