"""Waiting on a queue's jobs through their events: one job's end, the end of every active job
(what drain() waits for), and the stream of every event.

Each listens first and reads the state after, so no end can slip between the two; and reads it
again now and then, for an event it was not told of (one that a worker sent before it heard of
this listener, or that a reconnect lost: events are at most once, see observe/audience.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import msgspec

from ..core.encryption import Sealer
from ..core.errors import JobNotFound
from ..observe.events import TERMINAL_EVENTS, Event
from ..storage.backend import Backend
from ..storage.store import RawJob
from . import management
from .late_entry import LISTED_WITHIN

FIRST_RECHECK = 0.5
MAX_RECHECK = 30.0
"""Seconds after which a wait reads the job's record again though no end was heard: doubling
from the first to the cap."""


async def finished(backend: Backend, job_id: str) -> RawJob:
    """The job once it is completed, failed or cancelled (its last record if it was removed as
    it finished, for TOMBSTONE_TTL seconds after); JobNotFound for an unknown job."""
    async with backend.store.events.listen(backend.names.job_events(job_id)) as inbox:
        recheck = FIRST_RECHECK
        while True:  # subscribed first, then read: the end cannot slip between the two
            record = await backend.store.get(job_id, fresh=True)
            if record is None:
                return await _removed(backend, job_id)
            if record.job.is_terminal:
                return record.job
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(recheck):
                    while (await inbox.get()).name not in TERMINAL_EVENTS:
                        pass
            recheck = min(2 * recheck, MAX_RECHECK)


async def _removed(backend: Backend, job_id: str) -> RawJob:
    """The last record of a job removed when it finished (retention); JobNotFound if none."""
    last = await backend.store.removed(job_id)
    if last is None:
        raise JobNotFound(f"there is no job {job_id!r} in queue {backend.names.queue!r}")
    return last


async def until_idle(backend: Backend) -> None:
    """Return once no job of the queue is active (re-counted on each end, and every second).

    A job is listed as active only a moment after its claim (:mod:`.late_entry`): the first
    count waits LISTED_WITHIN seconds, and the jobs claimed while it listens count too.
    """
    async with backend.store.events.listen(backend.names.events) as inbox:
        claimed: set[str] = set()  # listening first: no claim or end slips by
        await management.note_claims(inbox, claimed, LISTED_WITHIN)
        while active := await management.active_jobs(backend, claimed):
            claimed = {job.id for job in active}  # re-counted now and then regardless
            await management.note_claims(inbox, claimed, 1.0, until_end=True)


async def events(backend: Backend, sealer: Sealer) -> AsyncGenerator[Event, None]:
    """Every lifecycle event of the queue's jobs, from any process, as it happens; an error
    is decrypted where ``sealer`` can open it."""
    async with backend.store.events.listen(backend.names.events) as inbox:
        while True:
            event = await inbox.get()
            if event.error is not None and event.error.sealed is not msgspec.UNSET:
                with contextlib.suppress(Exception):  # unopened, it reads "(encrypted)"
                    error = sealer.open_failure(event.job_id, event.error)
                    event = msgspec.structs.replace(event, error=error)
            yield event
