"""Stop cleanly when asked: Ctrl-C, SIGTERM, or SIGUSR1 (what SLURM sends before it ends a job) set a
flag; the loop finishes its step, writes a checkpoint and exits with status 0. A second Ctrl-C
interrupts at once."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)


class GracefulStop:
    def __init__(self):
        self.requested = False
        self.signal_name = None
        self._previous = {}

    def _handle(self, number, frame):
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = True
        self.signal_name = signal.Signals(number).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        return False
