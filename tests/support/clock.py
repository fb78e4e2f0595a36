"""The one hand-moved clock of the tests: wall time or monotonic time, whatever the code under test takes."""

from __future__ import annotations

import time


class Clock:
    """A clock the test sets or advances; calling it returns `now` (default: the real time at creation)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by seconds; return the new time."""
        self.now += seconds
        return self.now
