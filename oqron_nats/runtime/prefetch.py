"""Prefetch: deliveries held ready beyond a worker's free slots, while its jobs are short.

A slot that frees up waits a pull's round trip for its next job unless a delivery is already
here. For short jobs that wait is a large part of each job (at concurrency 10, about a quarter
of its time), so a fifo worker whose slots are held less than ``SHORT_JOB`` on average keeps up
to ``min(concurrency, MOST)`` deliveries ready, and starts one as soon as a slot frees up.

Nothing is claimed before it starts: a ready delivery is a message whose ack deadline runs, no
more. It waits about one job's time (as many are ready as slots), and at most ``MAX_WAIT``: then
it is handed back for any worker to take, and jobs are no longer judged short until one ends (the
jobs in the slots may have turned long). A worker that stops, or whose queue pauses or whose
loop lags, hands them back at once; one that crashes has them redelivered after the ack
deadline. Only jobs that ran their handler count towards the average. Long jobs get no prefetch
(a job would wait behind another in this worker while another worker is idle), nor does a worker
that must meter its starts (throttle, rate limit) or keep the lanes' order (lifo, priority): a
ready delivery would jump ahead of a better job moved later. Jobs are judged short only once
some have ended: a worker starts without prefetch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .._nats import Delivery
from ..core.config import QueueConfig

SHORT_JOB = 0.05
"""Seconds: a worker prefetches while its slots are held less than this on average."""
MOST = 10
"""The most deliveries held ready (a pull's round trip is a few jobs' time at most)."""
WEIGHT = 0.1
"""How much each ended job moves the average (an exponentially weighted one)."""
MAX_WAIT = 1.0
"""Seconds a delivery is held ready at most before it is handed back."""


def prefetches(config: QueueConfig) -> bool:
    """Whether a worker of this queue may hold deliveries ready beyond its slots."""
    return config.strategy == "fifo" and config.throttle is None and config.rate_limit is None


class Prefetch:
    """The deliveries a worker holds ready for its next free slots, and whether it may."""

    def __init__(self, config: QueueConfig, hand_back: Callable[[Delivery], None]) -> None:
        self._most = min(config.concurrency, MOST) if prefetches(config) else 0
        self._hand_back = hand_back
        self._ready: deque[tuple[float, Delivery]] = deque()
        """The deliveries held ready, oldest first, each with the loop time it came."""
        self._slot_time: float | None = None
        """The average seconds a job held its slot (None: none ended since the last hand-back)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def room(self) -> int:
        """How many more deliveries it would hold now."""
        return max(0, self._capacity() - len(self._ready))

    def hold(self, delivery: Delivery) -> bool:
        """Keep ``delivery`` ready for the next free slot; False if there is no room."""
        if not self.room:
            return False
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._ready.append((loop.time(), delivery))
        if self._timer is None:
            self._timer = loop.call_later(MAX_WAIT, self._hand_back_stale)
        return True

    def take(self) -> Delivery | None:
        """The delivery ready longest, if any."""
        return self._ready.popleft()[1] if self._ready else None

    def hand_back_all(self) -> None:
        """Hand back every delivery held ready (the worker stops, pauses or lags)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._ready:
            self._hand_back(self._ready.popleft()[1])

    def ended(self, slot_time: float) -> None:
        """A job left its slot after ``slot_time`` seconds."""
        if self._most:
            average = self._slot_time
            self._slot_time = (
                slot_time if average is None else average + WEIGHT * (slot_time - average)
            )

    def _hand_back_stale(self) -> None:
        """Hand back the deliveries ready for MAX_WAIT; look again when the next one is due."""
        loop = self._loop
        assert loop is not None, "set by hold(), which armed this timer"
        self._timer = None
        ready, now = self._ready, loop.time()
        try:
            if ready and ready[0][0] + MAX_WAIT <= now:
                self._slot_time = None  # the jobs in the slots turned long: none until one ends
                while ready and ready[0][0] + MAX_WAIT <= now:
                    self._hand_back(ready.popleft()[1])
        finally:
            if ready:
                self._timer = loop.call_later(ready[0][0] + MAX_WAIT - now, self._hand_back_stale)

    def _capacity(self) -> int:
        average = self._slot_time
        return self._most if average is not None and average < SHORT_JOB else 0
