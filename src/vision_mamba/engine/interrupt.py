"""SIGINT / SIGTERM as a request to stop cleanly: the loop saves a checkpoint and returns."""
from __future__ import annotations

import signal
import threading
from typing import Optional


class InterruptGuard:
    """``with InterruptGuard() as guard: ... if guard.requested: save(); break``.

    The first SIGINT or SIGTERM only sets ``requested`` (and ``signal_name``); a second one raises
    KeyboardInterrupt as usual. Outside the main thread it does nothing (signals cannot be caught there).
    """

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
