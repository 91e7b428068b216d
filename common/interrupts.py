"""Ctrl-C and SIGTERM become a request that the run honours at the next step boundary.

An interrupt in the middle of a training step would leave a state no checkpoint should hold: the
forward pass has already updated BatchNorm's running statistics, the optimiser has not stepped yet.
So the first Ctrl-C (SIGINT) or SIGTERM (what schedulers and ``docker stop`` send) only sets
:attr:`InterruptRequest.signal`; the session finishes the current step, saves a checkpoint and stops.
A second Ctrl-C stops at once (``KeyboardInterrupt``); the session then saves only if no step was in
progress, and otherwise keeps the last checkpoint as it is.
"""

from __future__ import annotations

import signal
import sys
import threading


class InterruptRequest:
    """Installs the deferring handlers while active (a context manager; main thread only)."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: stopping after the current step, then saving a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> InterruptRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
