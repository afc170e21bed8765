"""Per-process throttling: at most ``max`` job starts in any window of ``duration`` seconds."""

from __future__ import annotations

import time
from collections import deque

from ..core.config import Throttle, seconds


class StartWindow:
    """A sliding window of recent job starts."""

    def __init__(self, policy: Throttle) -> None:
        self.max = policy.max
        self.duration = seconds(policy.duration, "throttle.duration")
        self._starts: deque[float] = deque()

    def _forget_old(self, now: float) -> None:
        while self._starts and self._starts[0] <= now - self.duration:
            self._starts.popleft()

    def room(self, now: float | None = None) -> int:
        """How many more jobs may start now."""
        now = time.monotonic() if now is None else now
        self._forget_old(now)
        return self.max - len(self._starts)

    def started(self, now: float | None = None) -> None:
        """Count one job start."""
        self._starts.append(time.monotonic() if now is None else now)

    def next_room_in(self, now: float | None = None) -> float | None:
        """Seconds until a start leaves the window (None if there is room already)."""
        now = time.monotonic() if now is None else now
        if self.room(now) > 0:
            return None
        return self._starts[0] + self.duration - now
