"""Event-loop lag: how late the loop wakes up, watched continuously.

A sampler sleeps ``sample_interval`` and measures how much later than asked it woke. The loop
counts as lagging while the worst sample of the last ``window`` seconds is at least
``max_lag``: a single blocked stretch keeps the worker from claiming for a whole window after it,
and a loop that keeps lagging keeps it from claiming at all (a momentary sample would let it
claim again between two blocks).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from ..core.config import LagMonitor, seconds
from ..observe.log import logger

log = logger(__name__)


class LagWatch:
    """Samples the running loop's lag and reports when it turns lagging or healthy."""

    def __init__(self, policy: LagMonitor, on_change: Callable[[bool], None]) -> None:
        self.max_lag = seconds(policy.max_lag, "lag_monitor.max_lag")
        self.sample_interval = seconds(policy.sample_interval, "lag_monitor.sample_interval")
        self.window = seconds(policy.window, "lag_monitor.window")
        self._on_change = on_change
        self._samples: deque[tuple[float, float]] = deque()
        self.lagging = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling on the running loop."""
        self._task = asyncio.create_task(self._sample(), name="oqron-lag-watch")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def record(self, now: float, lag: float) -> None:
        """Take one sample (seconds late) and update ``lagging``."""
        self._samples.append((now, lag))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        lagging = max(lag for _, lag in self._samples) >= self.max_lag
        if lagging != self.lagging:
            self.lagging = lagging
            event = "event loop lagging; not claiming" if lagging else "event loop healthy again"
            log.warning(event, lag=round(lag, 3))
            self._on_change(lagging)

    async def _sample(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.sample_interval)
            woke = time.monotonic()
            self.record(woke, woke - asked - self.sample_interval)
