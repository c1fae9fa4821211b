"""Graceful stop on SIGTERM/SIGINT: the loop finishes its step, checkpoints, then exits."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class GracefulStop:
    """Context manager that turns SIGTERM/SIGINT into a flag the training loop polls.

    The first signal sets :attr:`requested`; the loop should then save a checkpoint and leave.
    A second SIGINT raises ``KeyboardInterrupt`` immediately.  Handlers are restored on exit and are
    only installed from the main thread.

    Example:
        >>> with GracefulStop() as stop:
        ...     for step in range(3):
        ...         if stop.requested:
        ...             break
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        log.warning(
            "received %s: finishing the current step and writing a checkpoint", signal.Signals(signum).name
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        self._old.clear()
