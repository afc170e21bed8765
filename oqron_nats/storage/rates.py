"""The rate-limit counters of one queue: one JetStream counter per group and window, in the
namespace's rate stream (``runtime/ratelimit.py`` decides what they admit)."""

from __future__ import annotations

from .._nats import Nats
from .._nats.names import Names


class RateCounters:
    """Counts the job starts of one queue, per group and window, at the server."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self.names = names
        self._conn = conn

    async def count(self, group: str, window: int) -> int:
        """Add one start to the counter of ``group`` in ``window``; returns the new total."""
        return await self._conn.increment(self.names.rate(group, window))
