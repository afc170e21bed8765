"""Cluster-wide maintenance of a queue: the cross-node stall scanner and reconciliation.

Every worker that enables a pass runs its timer, but only one acts at a time: before each pass
a worker takes (or renews) the role's lease in the locks bucket, and one that does not hold it
skips the pass. Every change a pass makes is a compare-and-set on the revision it read, so a
pass racing with a worker (or with a stale leader) changes nothing the worker already moved.

Normal operation needs none of them: a crashed worker's job comes back through the consumer's
redelivery. The passes heal what redelivery cannot:

* **orphan sweep** (on by default): a waiting record whose message is gone (its add stopped
  between record and message, or the message was removed behind the library's back),
  waiting for longer than ``waiting_for``: published again. It reads the waiting jobs through
  the state index, ``batch`` of them per pass, so its cost does not grow with the queue.
* **stall scanner**: a record that is active and held a lease that is now gone, whose claimed
  message is no longer in the stream (an ack that landed for the wrong delivery, a message
  removed by hand, a broker that lost it): marked stalled and re-enqueued.
* **reconciliation**, case 1: a record waiting (longer than ``waiting_threshold``), stalled
  (as long) or delayed past ``run_at + delayed_grace``, with no message or schedule in the
  stream (an add or re-enqueue that stopped half-way): re-enqueued.
* **reconciliation**, case 2: a message whose record is missing or already terminal (a job
  removed while queued, a duplicate nobody will consume): removed from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .._nats import CasConflict
from ..core.background import STOP_GRACE, finish
from ..core.config import OrphanSweep, Reconciliation, seconds
from ..core.job import JobState, moved
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.lease import Lease, LeaseLost
from ..storage.store import RawJob, settled
from . import dag
from .checks import too_soon_to_judge

log = logger(__name__)


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What one reconciliation pass healed."""

    requeued: int
    """Records waiting, stalled or overdue that had no message: enqueued again."""
    removed: int
    """Messages whose record was missing or terminal: removed."""
    reindexed: int = 0
    """Jobs whose state index entry disagreed with their record (a crash cut a move short)."""


async def scan_stalls(backend: Backend) -> int:
    """One stall-scanner pass; returns how many orphaned active jobs it re-enqueued."""
    healed = 0
    async for record in backend.store.scan():
        job = record.job
        if job.state != JobState.ACTIVE or not job.leased:
            continue  # only jobs that take a lease can be judged by its absence
        if too_soon_to_judge(job, backend.leases.ttl):
            continue  # its worker takes the lease at its first heartbeat: too early to judge
        if await backend.leases.is_held(job.id):
            continue  # a live lease: its worker is running it
        if job.msg_seq and await backend.broker.has_message(job.msg_seq):
            continue  # the consumer will redeliver its message
        if await _requeue(
            backend, job, record.revision, JobState.STALLED, "orphaned: lease and message gone"
        ):
            log.warning("stall scanner re-enqueued an orphaned job", job_id=job.id, queue=job.queue)
            backend.metrics.stalled()
            healed += 1
    return healed


class OrphanSweeper:
    """Publishes waiting jobs again that have no message, a batch of the backlog per pass."""

    def __init__(self, backend: Backend, policy: OrphanSweep) -> None:
        self.backend = backend
        self.interval = seconds(policy.interval, "orphan_sweep.interval")
        self.waiting_for = timedelta(seconds=seconds(policy.waiting_for, "waiting_for"))
        self.batch = policy.batch
        self._next_seq = 0
        """Where the next pass goes on reading the waiting index (0: from its start)."""

    async def sweep(self) -> int:
        """One pass; returns how many jobs it published again."""
        index = self.backend.store.index
        entries, self._next_seq = await index.read_on(JobState.WAITING, self._next_seq, self.batch)
        due = datetime.now(UTC) - self.waiting_for
        healed = 0
        for entry in entries:
            if entry.entered_at < due and await self._requeue_if_orphaned(entry.job_id):
                healed += 1
        return healed

    async def _requeue_if_orphaned(self, job_id: str) -> bool:
        backend = self.backend
        if await backend.broker.has_message_of(job_id):
            return False
        record = await backend.store.get(job_id, fresh=True)
        if record is None or record.job.state != JobState.WAITING:
            return False
        changed = record.job.timeline[-1].at if record.job.timeline else record.job.created_at
        just_moved = changed > datetime.now(UTC) - self.waiting_for
        if just_moved or await backend.broker.has_message_of(job_id, fresh=True):
            return False  # it moved (and came back) meanwhile, or its message just landed
        if not await _requeue(
            backend, record.job, record.revision, JobState.WAITING, "no message: published again"
        ):
            return False
        log.warning("orphan sweep published a waiting job again", job_id=job_id,
                    queue=backend.names.queue)  # fmt: skip
        return True


async def reconcile(backend: Backend, policy: Reconciliation) -> Reconciled:
    """One reconciliation pass over the queue's records and stream messages."""
    subjects = await backend.broker.subjects()  # listed before the records are read
    queued = {subject.rsplit(".", 1)[1] for subject in subjects}
    now = datetime.now(UTC)
    waited = timedelta(seconds=seconds(policy.waiting_threshold, "waiting_threshold"))
    grace = timedelta(seconds=seconds(policy.delayed_grace, "delayed_grace"))
    states: dict[str, JobState] = {}
    requeued = 0
    async for record in backend.store.scan():
        job = record.job
        states[job.id] = job.state
        if job.state == JobState.WAITING_CHILDREN:
            await dag.resolve(backend, job.id)  # a parent's end may have gone unnoticed
            continue
        if job.id in queued or not _overdue(job, now, waited, grace):
            continue
        if await _requeue(
            backend, job, record.revision, JobState.WAITING, "no message: re-enqueued"
        ):
            log.warning("reconciliation re-enqueued a job without message", job_id=job.id)
            requeued += 1
    removed = 0
    for subject in subjects:
        state = states.get(subject.rsplit(".", 1)[1])
        if state is None or state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
            await backend.broker.remove(subject)
            log.warning("reconciliation removed a message without live job", subject=subject)
            removed += 1
    return Reconciled(requeued=requeued, removed=removed, reindexed=await reindex(backend, states))


async def reindex(backend: Backend, states: dict[str, JobState]) -> int:
    """Repair the state index where it disagrees with the records (``states``, just read)."""
    index = backend.store.index
    listed: dict[str, set[JobState]] = {}
    for state in JobState:
        for job_id in await index.listed(state):
            listed.setdefault(job_id, set()).add(state)
    suspects = {i for i, seen in listed.items() if seen != {states.get(i)}}
    suspects |= {i for i, state in states.items() if listed.get(i) != {state}}
    repaired = 0
    for job_id in suspects:
        record = await backend.store.get(job_id, fresh=True)  # now, not as scanned
        if record is None or settled(record.job):
            await backend.store.refile(job_id, record)
            repaired += 1
    if repaired:
        log.warning("reconciliation repaired the state index", jobs=repaired)
    return repaired


def _overdue(job: RawJob, now: datetime, waited: timedelta, grace: timedelta) -> bool:
    """Whether a job should have a message by now (it is pending, and not just added)."""
    if job.state == JobState.DELAYED:
        return job.run_at is not None and now > job.run_at + grace
    since = job.started_at if job.state == JobState.STALLED and job.started_at else job.created_at
    return job.state in (JobState.WAITING, JobState.STALLED) and now - since > waited


async def _requeue(
    backend: Backend, job: RawJob, revision: int, state: JobState, reason: str
) -> bool:
    """Move the record (CAS) and publish it again under a new message id; False if it moved."""
    stalled = state == JobState.STALLED
    again = moved(
        job,
        state,
        reason,
        run_at=None,
        worker=None,
        leased=False,
        enqueued=job.enqueued + 1,
        msg_seq=0,  # it holds no claimed message now: its new message is not a duplicate
        stalled_count=job.stalled_count + 1 if stalled else job.stalled_count,
    )
    try:
        await backend.store.update(again, revision, str(state), job.state)
    except CasConflict:
        return False
    await backend.broker.enqueue(again)
    return True


class Maintenance:
    """Runs a queue's enabled passes on their timers, acting only while holding the role."""

    def __init__(self, backend: Backend, worker_id: str) -> None:
        self.backend = backend
        self.worker_id = worker_id
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._leases: dict[str, Lease] = {}

    def start(self, role: str, interval: float, one_pass: Callable[[], Awaitable[object]]) -> None:
        """Run ``one_pass`` every ``interval`` seconds while this worker holds ``role``."""
        task = asyncio.create_task(self._every(role, interval, one_pass), name=f"oqron-{role}")
        self._tasks.append(task)

    async def _every(
        self, role: str, interval: float, one_pass: Callable[[], Awaitable[object]]
    ) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            if self._stopping.is_set():
                return
            try:
                if await self._lead(role, ttl=2 * interval + 5):
                    await one_pass()
            except Exception as exc:  # the next tick tries again
                log.warning("maintenance pass failed", role=role, error=repr(exc))

    async def _lead(self, role: str, ttl: float) -> bool:
        lease = self._leases.get(role)
        if lease is not None:
            try:
                await lease.renew()
                return True
            except LeaseLost:
                del self._leases[role]
        lease = await self.backend.leases.acquire_role(role, self.worker_id, ttl)
        if lease is None:
            return False
        self._leases[role] = lease
        return True

    async def stop(self) -> None:
        """Stop the timers and hand the roles back."""
        self._stopping.set()
        for task in self._tasks:
            await finish(task, grace=STOP_GRACE if self.backend.connected else 0)
        for lease in self._leases.values():
            with contextlib.suppress(Exception):
                await lease.release()
        self._leases.clear()
