"""Jobs completed and failed per minute over the last hour, read from what NATS stores.

A finished job has an entry in its state's index (``storage/index.py``), stored when it
finished. The server counts the entries of a state stored from a given time on (a batch read of
one message from that time: its ``Nats-Num-Pending``), so a minute's count is the count from its
start less the count from the next minute's start: 61 reads per state for the hour, whatever the
number of jobs. A minute that has ended does not change any more, so it is read once and kept;
the current minute is read again at most every :data:`CURRENT_FRESH` seconds, so a later read
of the chart costs at most one read per state, and most cost none.

Jobs that left the index since (removed by their retention, retried, obliterated) are not
counted: the dashboard takes, for each minute, the larger of this count and the one it made
from the events it received (:class:`~oqron_nats.dashboard.live.Rates`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from ..client import Client
from ..core.job import JobState
from ..observe.log import logger

log = logger(__name__)

MINUTES = 60
SETTLE = 5.0
"""Seconds after a minute ends before its count is kept (entries still on their way)."""
READS = 64
"""Index reads in flight at once, over every queue."""
WAIT = 0.1
"""Seconds an overview read waits for a queue's chart; a chart still being read (a dashboard's
first read of the hour) goes on in the background, and the overview shows the events' counts
meanwhile."""
CURRENT_FRESH = 5.0
"""Seconds the current minute's count is served from memory (the events received meanwhile
are counted by the live side, and the chart shows the larger of the two)."""


class History:
    """The per-minute counts of every queue's finished jobs, the ended minutes kept."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._ended: dict[tuple[str, JobState], dict[int, int]] = {}
        self._current: dict[tuple[str, JobState], tuple[int, int, float]] = {}
        """The current minute's count: the minute, the count, and when it was read."""
        self._reads = asyncio.Semaphore(READS)
        self._reading: dict[str, asyncio.Task[list[tuple[int, int]]]] = {}

    async def soon(self, queue: str) -> list[tuple[int, int]]:
        """The queue's series if it is read within :data:`WAIT` seconds, else none yet (the
        read goes on, for the next call); none if it cannot be read (NATS away)."""
        task = self._reading.get(queue)
        if task is None or task.done():
            task = asyncio.create_task(self.series(queue), name=f"oqron-dashboard-chart-{queue}")
            task.add_done_callback(_retrieved)
            self._reading[queue] = task
        try:
            return await asyncio.wait_for(asyncio.shield(task), WAIT)
        except TimeoutError:
            return []
        except Exception as exc:
            log.warning("dashboard cannot read a queue's chart", queue=queue, error=repr(exc))
            return []

    async def close(self) -> None:
        """Stop the reads still going on in the background."""
        tasks, self._reading = list(self._reading.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def series(self, queue: str, now: float | None = None) -> list[tuple[int, int]]:
        """(completed, failed) for each of the last 60 minutes, oldest first."""
        at = time.time() if now is None else now
        completed, failed = await asyncio.gather(
            self._per_minute(queue, JobState.COMPLETED, at),
            self._per_minute(queue, JobState.FAILED, at),
        )
        return list(zip(completed, failed, strict=True))

    def forget(self, queue: str) -> None:
        """Drop what is kept of ``queue`` (it was obliterated or removed)."""
        for state in (JobState.COMPLETED, JobState.FAILED):
            self._ended.pop((queue, state), None)
            self._current.pop((queue, state), None)

    async def _per_minute(self, queue: str, state: JobState, now: float) -> list[int]:
        current = int(now // 60)
        settled = int((now - SETTLE) // 60)  # minutes before this one are kept once read
        first = current - MINUTES + 1
        ended = self._ended.setdefault((queue, state), {})
        for minute in [m for m in ended if m < first]:
            del ended[minute]
        missing = [m for m in range(first, current) if m not in ended]
        kept = self._current.get((queue, state))
        fresh = (
            kept is not None and kept[0] == current and time.monotonic() - kept[2] < CURRENT_FRESH
        )
        starts = sorted({*missing, *(m + 1 for m in missing)} | (set() if fresh else {current}))
        counts = dict(
            zip(starts, await asyncio.gather(*(self._since(queue, state, m) for m in starts)),
                strict=True)
        )  # fmt: skip
        if fresh:
            assert kept is not None
            counts.setdefault(current, kept[1])
        else:
            self._current[(queue, state)] = (current, counts[current], time.monotonic())
        shown = {m: max(0, counts[m] - counts[m + 1]) for m in missing}
        ended.update({m: n for m, n in shown.items() if m < settled})
        return [ended.get(m, shown.get(m, 0)) for m in range(first, current)] + [counts[current]]

    async def _since(self, queue: str, state: JobState, minute: int) -> int:
        """How many entries of ``state`` were stored from the start of ``minute`` on."""
        names = self.client.names(queue)
        start = datetime.fromtimestamp(minute * 60, UTC).isoformat().replace("+00:00", "Z")
        async with self._reads:
            conn = await self.client._connection()
            first, more = await conn.direct_batch(
                names.index_stream, start=0, batch=1,
                subject=names.index_entries(state), start_time=start,
            )  # fmt: skip
        return len(first) + more


def _retrieved(task: asyncio.Task[list[tuple[int, int]]]) -> None:
    """Mark a background read's failure seen (``soon`` logs it when it is asked for)."""
    if not task.cancelled():
        task.exception()


def merged(stored: list[tuple[int, int]], seen: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Per minute, the larger of the stored count and the count from the events received."""
    return [(max(a, c), max(b, d)) for (a, b), (c, d) in zip(stored, seen, strict=True)]
