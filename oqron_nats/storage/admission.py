"""A bounded queue: add() is refused with QueueFull once the queue is full.

* ``max_jobs``: the queue's work stream holds one message per unfinished job (waiting, delayed,
  held while paused, or running and not yet acked); that count is the bound.
* ``max_bytes``: the queue's job records (its own KV bucket: the unfinished jobs and the finished
  ones its retention keeps) may take at most that many bytes of storage.

A size is read from the server (one request) at most every ``REFRESH`` seconds while the queue
is far from full, and before every add once it is near; adds made since the last read count
too (a job as its record's size). Publishers in other processes are seen at the next read, so
several adding at once near the limit can go over it by a few: the bound is for storage, not an
exact quota. Nothing is ever dropped to make room, and a running job can always finish (its
record may grow past the bound).
"""

from __future__ import annotations

import time

from .._nats import Nats, stream_of
from .._nats.names import Names
from ..core.errors import QueueFull

REFRESH = 1.0
"""Seconds a read of the queue's size is trusted while it is far from full."""


class Gauge:
    """One size of a queue, read from a stream now and then and counted up between reads."""

    def __init__(self, conn: Nats, stream: str, limit: int, *, in_bytes: bool) -> None:
        self.conn = conn
        self.stream = stream
        self.limit = limit
        self.in_bytes = in_bytes
        self.size = 0
        self._read_at = -REFRESH

    async def room_for(self, amount: int) -> bool:
        """Whether ``amount`` more fits (counting it if so)."""
        stale = time.monotonic() - self._read_at > REFRESH
        if stale or self.size + amount > self.limit:
            state = await self.conn.stream_state(self.stream)
            self.size = state.bytes if self.in_bytes else state.messages
            self._read_at = time.monotonic()
        if self.size + amount > self.limit:
            return False
        self.size += amount
        return True


class Admission:
    """Decides whether one queue has room for another job."""

    def __init__(
        self, conn: Nats, names: Names, *, max_jobs: int | None, max_bytes: int | None
    ) -> None:
        self.names = names
        self._jobs = Gauge(conn, names.stream, max_jobs, in_bytes=False) if max_jobs else None
        self._bytes = (
            Gauge(conn, stream_of(names.jobs_bucket), max_bytes, in_bytes=True)
            if max_bytes
            else None
        )

    async def admit(self, record_size: int) -> None:
        """Count one more job of ``record_size`` bytes, or raise QueueFull (nothing stored)."""
        for gauge, amount, what in (
            (self._jobs, 1, "unfinished jobs, its max_jobs"),
            (self._bytes, record_size, "bytes of job records, its max_bytes"),
        ):
            if gauge is not None and not await gauge.room_for(amount):
                raise QueueFull(
                    f"queue {self.names.queue!r} holds {gauge.size} {what} ({gauge.limit}); "
                    "nothing was stored"
                )
