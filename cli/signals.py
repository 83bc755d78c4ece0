"""Ctrl-C and SIGTERM during training: the first asks for a clean stop, a second stops at once.

The handler only records the request; the training loop asks for it after every update, saves last.pt
and returns. Doing no more in the handler keeps it safe: it never writes files or the console while the
loop may be halfway through either. A second signal raises `StopNow`, which unwinds at once; a save it
interrupts removes its temporary file and leaves the checkpoint files as they were.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
EXIT_CODES = {"interrupted": 130, "terminated": 143}  # 128 + the signal's number, as shells report it


class StopNow(BaseException):
    """A second stop signal: leave now. BaseException, so that no `except Exception` can swallow it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StopRequest:
    """Called by the training loop at each step boundary: the reason to stop, or None to go on."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self) -> str | None:
        return self.reason

    def handle(self, signum: int, frame: FrameType | None) -> None:
        reason = REASONS[signal.Signals(signum)]
        if self.reason is not None:
            raise StopNow(reason)
        self.reason = reason


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to a StopRequest while the block runs; the previous handlers come back after."""
    request = StopRequest()
    previous = {number: signal.signal(number, request.handle) for number in REASONS}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
