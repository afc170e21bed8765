"""Managing a queue across the cluster: pause, resume and the jobs held meanwhile.

These act on the shared state in NATS, so every process sees them, and they are used through
the methods of :class:`oqron_nats.Queue`.
"""

from __future__ import annotations

import contextlib

import structlog

from ._nats import CasConflict
from .backend import Backend
from .job import JobState, moved

log = structlog.get_logger("oqron_nats")


async def pause(backend: Backend) -> bool:
    """Pause the queue cluster-wide (persisted); True if it was running."""
    changed = await backend.control.set_paused(True)
    await backend.control.apply_to_consumers(True)
    return changed


async def resume(backend: Backend) -> int:
    """Resume the queue cluster-wide and release the jobs held meanwhile; how many released."""
    await backend.control.set_paused(False)
    await backend.control.apply_to_consumers(False)
    held = await backend.conn.subjects(backend.names.stream, backend.names.helds)
    released = 0
    for subject in held:
        if await release(backend, subject.rsplit(".", 1)[1]):
            released += 1
    return released


async def release(backend: Backend, job_id: str) -> bool:
    """Enqueue a held job with its original delay and priority; True if this call released it."""
    record = await backend.store.get(job_id)
    released = False
    if record is not None and record.job.state == JobState.PAUSED:
        job = record.job
        state = JobState.DELAYED if job.run_at is not None else JobState.WAITING
        again = moved(job, state, "queue resumed", enqueued=job.enqueued + 1)
        with contextlib.suppress(CasConflict):  # someone else released it
            await backend.store.update(again, record.revision, "resumed")
            await backend.broker.enqueue(again)
            released = True
    await backend.conn.purge_subject(backend.names.stream, backend.names.held(job_id))
    return released
