"""A bounded queue (``max_jobs``): add() is refused with QueueFull once it is full.

What counts is the queue's work stream: one message per unfinished job (waiting, delayed,
held while paused, or running and not yet acked). The count is read from the server (one
request) at most every ``REFRESH`` seconds while the queue is far from full, and before every
add once it is near; adds made since the last read count too. Publishers in other processes
are seen at the next read, so several adding at once near the limit can go over it by a few:
the bound is for storage, not an exact quota. Nothing is ever dropped to make room.
"""

from __future__ import annotations

import time

from ._nats import Nats
from .errors import QueueFull
from .names import Names

REFRESH = 1.0
"""Seconds a read of the queue's size is trusted while it is far from full."""


class Admission:
    """Decides whether one queue has room for another job."""

    def __init__(self, conn: Nats, names: Names, max_jobs: int) -> None:
        self.conn = conn
        self.names = names
        self.max_jobs = max_jobs
        self._count = 0
        self._read_at = -REFRESH

    async def admit(self) -> None:
        """Count one more job, or raise QueueFull (nothing stored) if the queue is full."""
        stale = time.monotonic() - self._read_at > REFRESH
        if stale or self._count + 1 > self.max_jobs:
            self._count = (await self.conn.stream_state(self.names.stream)).messages
            self._read_at = time.monotonic()
        if self._count + 1 > self.max_jobs:
            raise QueueFull(
                f"queue {self.names.queue!r} holds {self._count} unfinished jobs, its max_jobs "
                f"({self.max_jobs}); nothing was stored"
            )
        self._count += 1
