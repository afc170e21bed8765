"""Managing a queue across the cluster: pause, resume and the jobs held meanwhile.

These act on the shared state in NATS, so every process sees them, and they are used through
the methods of :class:`oqron_nats.Queue`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime

from .._nats import CasConflict
from ..core.errors import InvalidState, JobNotFound, Unavailable
from ..core.job import JobState, moved
from ..observe.events import Event
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.store import CAS_TRIES, RawJob
from . import dag
from .late_entry import LISTED_WITHIN

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
    released = 0
    for job_id in await backend.broker.held_jobs():
        if await release(backend, job_id):
            released += 1
    return released


async def release(backend: Backend, job_id: str, *, purge_marker: bool = True) -> bool:
    """Enqueue a held job with its original delay and priority; True if this call released it.

    ``purge_marker=False`` leaves its held marker (a publisher may not purge the work stream);
    the next resume() or obliterate() removes it, and it runs nothing.
    """

    async def resumed(job: RawJob) -> RawJob | None:
        if job.state != JobState.PAUSED:
            return None  # someone else released it
        state = JobState.DELAYED if job.run_at is not None else JobState.WAITING
        return moved(job, state, "queue resumed", enqueued=job.enqueued + 1)

    try:
        changed = await backend.store.transition(job_id, resumed, "resumed")
    except JobNotFound:
        changed = None  # removed meanwhile: only its marker is left
    if changed is not None:
        await backend.broker.enqueue(changed[1])
    if purge_marker:
        await backend.broker.forget_held(job_id)
    return changed is not None


async def cancel(backend: Backend, job_id: str) -> bool:
    """Cancel a job wherever it is; False if it had already finished.

    A queued, delayed, held or waiting-for-parents job is written cancelled and its messages are
    removed, so it never runs. A running job is written cancelled first (its worker's later
    writes fail their compare-and-set), then every worker of the queue is told, and the one
    running it fires the handler's ``ctx.signal``.
    """

    async def cancelled(job: RawJob) -> RawJob | None:
        if job.is_terminal:
            return None
        return moved(job, JobState.CANCELLED, "cancelled", finished_at=_now(), leased=False)

    changed = await backend.store.transition(job_id, cancelled, "cancelled")
    if changed is None:
        return False
    if changed[0].state == JobState.ACTIVE:
        await backend.control.tell_cancel(job_id)
    await backend.broker.remove_messages(job_id)
    if backend.control.state.flows:
        await dag.notify_children(backend, job_id)
    return True


async def run_again(
    backend: Backend, job_id: str, reason: str, *, allowed: frozenset[JobState]
) -> None:
    """Put a finished job back on its queue under the same id, attempts reset, history kept."""

    async def again(job: RawJob) -> RawJob:
        if job.state not in allowed:
            raise InvalidState(f"job {job_id!r} is {job.state}; {reason} needs {sorted(allowed)}")
        return moved(
            job, JobState.WAITING, reason,
            attempt=0, stalled_count=0, enqueued=job.enqueued + 1, run_at=None,
            started_at=None, finished_at=None, result=None, error=None, progress=0.0,
            progress_label=None, worker=None, leased=False, msg_seq=0,
        )  # fmt: skip

    changed = await backend.store.transition(job_id, again, "retried")
    assert changed is not None  # again() never leaves a job as it is
    await backend.broker.forget_dead_letter(job_id)
    await backend.broker.enqueue(changed[1])


async def promote(backend: Backend, job_id: str) -> None:
    """Run a delayed job now (its schedule is removed)."""

    async def promoted(job: RawJob) -> RawJob:
        if job.state != JobState.DELAYED:
            raise InvalidState(f"job {job_id!r} is {job.state}, not delayed")
        return moved(job, JobState.WAITING, "promoted", run_at=None, enqueued=job.enqueued + 1)

    changed = await backend.store.transition(job_id, promoted, "promoted")
    assert changed is not None  # promoted() never leaves a job as it is
    await backend.broker.unschedule(job_id)
    await backend.broker.enqueue(changed[1])


async def remove(backend: Backend, job_id: str) -> RawJob:
    """Remove one job that is not running: its record (by compare-and-set on the revision read,
    so a worker that claimed it meanwhile wins and the removal is refused), its index entry,
    its messages (lane, schedule, run lane, held marker) and its dead letter. Returns the last
    record. InvalidState if it is active (cancel it first), JobNotFound if there is none.

    Its children that wait for it are looked at again: a removed parent counts as done.
    """
    names = backend.names
    for _ in range(CAS_TRIES):
        record = await backend.store.get(job_id, fresh=True)
        if record is None:
            raise JobNotFound(f"there is no job {job_id!r} in queue {names.queue!r}")
        job = record.job
        if job.state == JobState.ACTIVE:
            raise InvalidState(
                f"job {job_id!r} of queue {names.queue!r} is active; "
                "cancel it first, then remove it"
            )
        try:
            await backend.store.remove(job, record.revision)
        except CasConflict:
            continue  # it moved meanwhile (a worker claimed it?): decide again on what it is now
        break
    else:
        raise Unavailable(
            f"job {job_id!r} kept changing: {CAS_TRIES} removals in a row lost their "
            "compare-and-set to other writers"
        )
    await backend.broker.remove_messages(job_id)
    await backend.broker.forget_dead_letter(job_id)
    if backend.control.state.flows:
        await dag.notify_children(backend, job_id)
    log.info("job removed", job_id=job_id, queue=names.queue, state=str(job.state))
    return job


async def active_jobs(backend: Backend, claimed: Iterable[str] = ()) -> list[RawJob]:
    """The queue's running jobs: its active index entries and the jobs ``claimed`` (seen by
    their ``active`` event: the index lists a job as active only a moment after its claim,
    :mod:`.late_entry`), each checked against its record."""
    entries = await backend.store.index.newest(JobState.ACTIVE, ACTIVE_LIMIT)
    jobs = (await backend.store.listed(entries)).jobs
    for job_id in set(claimed) - {job.id for job in jobs}:
        record = await backend.store.get(job_id)
        if record is not None and record.job.state == JobState.ACTIVE:
            jobs.append(record.job)
    return jobs


async def running_jobs(backend: Backend) -> list[RawJob]:
    """The running jobs, those claimed too recently to be listed as active included: it
    listens to the claims for LISTED_WITHIN seconds first."""
    async with backend.store.events.listen(backend.names.events) as inbox:
        claimed: set[str] = set()
        await note_claims(inbox, claimed, LISTED_WITHIN)
        return await active_jobs(backend, claimed)


async def note_claims(
    inbox: asyncio.Queue[Event], claimed: set[str], seconds: float, *, until_end: bool = False
) -> None:
    """Add the jobs whose ``active`` event comes within ``seconds`` to ``claimed``; with
    ``until_end``, return at the first other event but progress (a job ended or moved)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                event = await inbox.get()
                if event.name == "active":
                    claimed.add(event.job_id)
                elif until_end and event.name != "progress":
                    return


def _now() -> datetime:
    return datetime.now(UTC)


async def obliterate(backend: Backend, force: bool = False) -> int:
    """Remove every job, record, message, schedule, lease, edge and dead letter of the queue
    (and its rejected-message samples and count).

    Refuses while jobs are active unless ``force``; then their handlers are told to stop
    (their ``ctx.signal`` fires) and none of their later writes can bring a record back (every
    write is a compare-and-set on a revision that no longer exists). Returns how many jobs went.
    """
    names = backend.names
    active = await running_jobs(backend)
    if active and not force:
        raise InvalidState(
            f"queue {names.queue!r} has {len(active)} active job(s); stop its workers, drain it, "
            "or obliterate(force=True)"
        )
    was_paused = backend.control.state.paused
    await pause(backend)  # nothing new starts while it goes
    removed = sum([await backend.store.index.count(state) for state in JobState])
    for job in active:
        await backend.control.tell_cancel(job.id)
    await backend.broker.remove_all()
    await backend.store.remove_all()
    await backend.leases.remove_all()
    await backend.edges.remove_all()
    await backend.store.index.remove_all()
    await backend.rejects.forget()
    if not was_paused:
        await resume(backend)
    log.warning("queue obliterated", queue=names.queue, jobs=removed)
    return removed
