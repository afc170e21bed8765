"""What the pages show, read from NATS through the same code as ``oqron queues`` and ``oqron jobs``:
the queues of the namespace and their counts (the state index), a page of a queue's jobs, one
job. A queue's handle is kept for the dashboard's life (:class:`Handles`), so reading a page
opens nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..client import Client
from ..core.errors import CorruptRecord, QueueNotFound
from ..core.job import Job, JobState
from ..core.naming import check_name
from ..ops import admin
from ..queue import Queue
from ..storage.presence import workers_online
from ..storage.rejects import rejected_count
from ..storage.store import CorruptJob
from .history import History

STATES = (
    JobState.WAITING, JobState.ACTIVE, JobState.DELAYED, JobState.FAILED, JobState.COMPLETED,
    JobState.PAUSED, JobState.WAITING_CHILDREN, JobState.CANCELLED,
)  # fmt: skip
"""The states shown, in the order of the overview's columns and the queue page's tabs."""
PAGE_SIZE = 50
CORRELATION_SCAN = 1_000
"""A search by correlation id looks at this many of the queue's newest jobs (no index by it)."""
CHILDREN_SHOWN = 100
READ_CONCURRENCY = 16
"""Queues read at once for the overview."""


class QueueRow(msgspec.Struct, kw_only=True):
    """One queue on the overview."""

    name: str
    counts: dict[str, int]
    paused: bool
    oldest_waiting_seconds: float | None
    workers: int
    rejected: int
    finished: list[tuple[int, int]] = msgspec.field(default_factory=list)
    """Jobs completed and failed in each of the last 60 minutes, from the state index."""


class Handles:
    """Publisher-only handles on the namespace's queues, opened once and kept."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._queues: dict[str, Queue[Any]] = {}
        self._lock = asyncio.Lock()
        self.history = History(client)

    async def names(self) -> list[str]:
        """The queues that exist in NATS, sorted."""
        return await admin.queue_names(self.client)

    async def get(self, name: str) -> Queue[Any]:
        """The handle of queue ``name``; QueueNotFound if it does not exist (looking at a queue
        never creates it)."""
        check_name(name)
        if name not in self._queues:
            async with self._lock:
                if name not in self._queues:
                    self._queues[name] = await admin.existing_queue(self.client, name)
        return self._queues[name]

    async def close(self) -> None:
        """Close every handle (the client stays open: it is the caller's)."""
        await self.history.close()
        queues, self._queues = list(self._queues.values()), {}
        for q in queues:
            with contextlib.suppress(Exception):
                await q.close()


async def overview(handles: Handles) -> list[QueueRow]:
    """Every queue of the namespace with its counts, pause state, oldest job and workers."""
    limit = asyncio.Semaphore(READ_CONCURRENCY)

    async def row(name: str) -> QueueRow | None:
        async with limit:
            with contextlib.suppress(QueueNotFound):  # removed since it was listed
                return await queue_row(handles, name)
            return None

    rows = await asyncio.gather(*(row(n) for n in await handles.names()))
    return [r for r in rows if r is not None]


async def queue_row(handles: Handles, name: str) -> QueueRow:
    """One queue's counts per state, pause flag, oldest waiting job's age, workers, rejects."""
    q = await handles.get(name)
    conn, names = await handles.client._connection(), handles.client.names(name)
    counts, oldest, paused, workers, rejected, finished = await asyncio.gather(
        asyncio.gather(*(q.count(s) for s in STATES)),
        q.oldest_waiting(),
        q.is_paused(),
        workers_online(conn, names),
        rejected_count(conn, names),
        handles.history.soon(name),
    )
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
    return QueueRow(
        name=name,
        counts={s.value: n for s, n in zip(STATES, counts, strict=True)},
        paused=paused,
        oldest_waiting_seconds=round(age, 3) if age is not None else None,
        workers=workers,
        rejected=rejected,
        finished=finished,
    )


async def page(
    handles: Handles, name: str, state: JobState, number: int
) -> list[Job[Any] | CorruptJob]:
    """Page ``number`` (from 1) of the queue's jobs in ``state``, newest first, from the index
    (as ``oqron jobs list``), then the records on it that do not decode."""
    q = await handles.get(name)
    jobs, corrupt = await q._listing(state, PAGE_SIZE, (number - 1) * PAGE_SIZE)
    return [*jobs, *corrupt]


async def job(handles: Handles, name: str, job_id: str) -> Job[Any] | CorruptJob | None:
    """The job ``job_id`` of queue ``name``; None if there is none, a CorruptJob if its record
    does not decode."""
    q = await handles.get(name)
    check_name(job_id, "job id")
    try:
        return await q.get_job(job_id)
    except CorruptRecord as exc:
        return CorruptJob(id=job_id, size=exc.size, error=exc.reason)


async def find(handles: Handles, name: str, text: str) -> list[Job[Any]]:
    """Jobs of queue ``name`` whose id is ``text``, or whose correlation id is ``text`` among
    the queue's newest :data:`CORRELATION_SCAN` jobs."""
    q = await handles.get(name)
    text = text.strip()
    if not text:
        return []
    with contextlib.suppress(Exception):  # not a valid id, or a corrupt record: search on
        found = await q.get_job(check_name(text, "job id"))
        if found is not None:
            return [found]
    newest = await q.get_jobs(None, limit=CORRELATION_SCAN)
    return [j for j in newest if j.correlation_id == text]


async def find_anywhere(handles: Handles, job_id: str) -> tuple[str, str] | None:
    """The queue and id of job ``job_id`` in any queue of the namespace, or None."""
    check_name(job_id, "job id")
    for name in await handles.names():
        q = await handles.get(name)
        with contextlib.suppress(CorruptRecord):
            if await q.get_job(job_id) is not None:
                return name, job_id
    return None


async def children(handles: Handles, name: str, job_id: str) -> list[str]:
    """The ids of the jobs that wait for ``job_id`` (its flow's children), the first 100."""
    backend = await (await handles.get(name))._open()
    found: list[str] = []
    async for child in backend.edges.children(job_id):
        found.append(child)
        if len(found) >= CHILDREN_SHOWN:
            break
    return found


async def revision(handles: Handles, name: str, job_id: str) -> int | None:
    """The revision the job's record is at: the compare-and-set token of its next write (and
    the fencing token of an attempt that holds no lease)."""
    backend = await (await handles.get(name))._open()
    with contextlib.suppress(CorruptRecord):
        record = await backend.store.get(job_id, fresh=True)
        return None if record is None else record.revision
    return None
