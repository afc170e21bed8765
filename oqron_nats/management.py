"""Managing a queue across the cluster: pause, resume and the jobs held meanwhile.

These act on the shared state in NATS, so every process sees them, and they are used through
the methods of :class:`oqron_nats.Queue`.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from . import dag
from ._nats import Bucket, CasConflict
from .backend import Backend
from .errors import InvalidState, JobNotFound
from .job import JobState, moved
from .log import logger
from .store import RawJob

log = logger(__name__)

ACTIVE_LIMIT = 100_000
"""At most this many active jobs are listed (to drain, or to stop them when obliterating)."""


async def pause(backend: Backend) -> bool:
    """Pause the queue cluster-wide (persisted); True if it was running."""
    changed = await backend.control.set_paused(True)
    await backend.control.apply_to_consumers()
    return changed


async def resume(backend: Backend) -> int:
    """Resume the queue cluster-wide and release the jobs held meanwhile; how many released."""
    await backend.control.set_paused(False)
    await backend.control.apply_to_consumers()
    held = await backend.conn.subjects(backend.names.stream, backend.names.helds)
    released = 0
    for subject in held:
        if await release(backend, subject.rsplit(".", 1)[1]):
            released += 1
    return released


async def release(backend: Backend, job_id: str, *, purge_marker: bool = True) -> bool:
    """Enqueue a held job with its original delay and priority; True if this call released it.

    ``purge_marker=False`` leaves its held marker (a publisher may not purge the work stream);
    the next resume() or obliterate() removes it, and it runs nothing.
    """
    record = await backend.store.get(job_id)
    released = False
    if record is not None and record.job.state == JobState.PAUSED:
        job = record.job
        state = JobState.DELAYED if job.run_at is not None else JobState.WAITING
        again = moved(job, state, "queue resumed", enqueued=job.enqueued + 1)
        with contextlib.suppress(CasConflict):  # someone else released it
            await backend.store.update(again, record.revision, "resumed", job.state)
            await backend.broker.enqueue(again)
            released = True
    if purge_marker:
        await backend.conn.purge_subject(backend.names.stream, backend.names.held(job_id))
    return released


async def cancel(backend: Backend, job_id: str) -> bool:
    """Cancel a job wherever it is; False if it had already finished.

    A queued, delayed, held or waiting-for-parents job is written cancelled and its messages are
    removed, so it never runs. A running job is written cancelled first (its worker's later
    writes fail their compare-and-set), then every worker of the queue is told, and the one
    running it fires the handler's ``ctx.signal``.
    """
    while True:
        record = await backend.store.get(job_id)
        if record is None:
            raise JobNotFound(f"there is no job {job_id!r} in queue {backend.names.queue!r}")
        job = record.job
        if job.is_terminal:
            return False
        cancelled = moved(job, JobState.CANCELLED, "cancelled", finished_at=_now(), leased=False)
        try:
            await backend.store.update(cancelled, record.revision, "cancelled", job.state)
        except CasConflict:
            continue  # it moved meanwhile (claimed, finished): decide again
        break
    if job.state == JobState.ACTIVE:
        await backend.conn.publish_core(backend.names.control("cancel", job_id))
    await remove_messages(backend, job_id)
    if backend.control.state.flows:
        await dag.notify_children(backend, job_id)
    return True


async def remove_messages(backend: Backend, job_id: str) -> None:
    """Remove every message of a job from the queue's stream (lanes, schedule, run lane, held)."""
    names = backend.names
    for subject in (
        names.lane_of(job_id),
        names.schedule(job_id),
        names.run(job_id),
        names.held(job_id),
    ):
        await backend.conn.purge_subject(names.stream, subject)


async def run_again(
    backend: Backend, job_id: str, reason: str, *, allowed: frozenset[JobState]
) -> None:
    """Put a finished job back on its queue under the same id, attempts reset, history kept."""
    while True:
        record = await backend.store.get(job_id)
        if record is None:
            raise JobNotFound(f"there is no job {job_id!r} in queue {backend.names.queue!r}")
        job = record.job
        if job.state not in allowed:
            raise InvalidState(f"job {job_id!r} is {job.state}; {reason} needs {sorted(allowed)}")
        again = moved(
            job, JobState.WAITING, reason,
            attempt=0, stalled_count=0, enqueued=job.enqueued + 1, run_at=None,
            started_at=None, finished_at=None, result=None, error=None, progress=0.0,
            progress_label=None, worker=None, leased=False, msg_seq=0,
        )  # fmt: skip
        try:
            await backend.store.update(again, record.revision, "retried", job.state)
        except CasConflict:
            continue
        await backend.conn.purge_subject(
            backend.names.dlq_stream, backend.names.dead_letter(job_id)
        )
        await backend.broker.enqueue(again)
        return


async def promote(backend: Backend, job_id: str) -> None:
    """Run a delayed job now (its schedule is removed)."""
    while True:
        record = await backend.store.get(job_id)
        if record is None:
            raise JobNotFound(f"there is no job {job_id!r} in queue {backend.names.queue!r}")
        job = record.job
        if job.state != JobState.DELAYED:
            raise InvalidState(f"job {job_id!r} is {job.state}, not delayed")
        now = moved(job, JobState.WAITING, "promoted", run_at=None, enqueued=job.enqueued + 1)
        try:
            await backend.store.update(now, record.revision, "promoted", job.state)
        except CasConflict:
            continue
        await backend.conn.purge_subject(backend.names.stream, backend.names.schedule(job_id))
        await backend.broker.enqueue(now)
        return


async def active_jobs(backend: Backend) -> list[RawJob]:
    """The queue's running jobs: its active index entries, checked against their records."""
    entries = await backend.store.index.newest(JobState.ACTIVE, ACTIVE_LIMIT)
    return (await backend.store.listed(entries)).jobs


def _now() -> datetime:
    return datetime.now(UTC)


async def obliterate(backend: Backend, force: bool = False) -> int:
    """Remove every job, record, message, schedule, lease, edge and dead letter of the queue
    (and its rejected-message samples and count).

    Refuses while jobs are active unless ``force``; then their handlers are told to stop
    (their ``ctx.signal`` fires) and none of their later writes can bring a record back (every
    write is a compare-and-set on a revision that no longer exists). Returns how many jobs went.
    """
    names, conn = backend.names, backend.conn
    active = await active_jobs(backend)
    if active and not force:
        raise InvalidState(
            f"queue {names.queue!r} has {len(active)} active job(s); stop its workers, drain it, "
            "or obliterate(force=True)"
        )
    was_paused = backend.control.state.paused
    await pause(backend)  # nothing new starts while it goes
    removed = sum([await backend.store.index.count(state) for state in JobState])
    for job in active:
        await conn.publish_core(names.control("cancel", job.id))
    await conn.purge_subject(names.stream, ">")
    for bucket, keys in (
        (names.jobs_bucket, names.keys),
        (names.locks_bucket, names.keys),
        (names.deps_bucket, f"{names.queue}.>"),
    ):
        await Bucket(conn, bucket).purge(keys)
    for state in JobState:
        await conn.purge_subject(names.index_stream(state), ">")
    await conn.purge_subject(names.dlq_stream, names.dead_letter("*"))
    await conn.purge_subject(names.dlq_stream, names.rejected_samples)
    await conn.purge_subject(names.rate_stream, names.rejections)
    if not was_paused:
        await resume(backend)
    log.warning("queue obliterated", queue=names.queue, jobs=removed)
    return removed
