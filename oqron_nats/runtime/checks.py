"""The checks before a claim: is the message a job of the queue, and does its record say that
this delivery runs it now?

    a tick of one of the queue's repeating schedules ──> its job (made once, see .schedules)
    body not a job id, or fired by a foreign schedule ──> rejected (removed, counted, sampled)
    no record ──> rejected;  a record that does not decode ──> removed
    finished ──> acked (a redelivery first redoes what comes after the final write, see
                 :meth:`.settle.Settle.finish_again`)
    another message of a running job, or a job not runnable ──> acked
    delayed and not due yet ──> nak until ``run_at``
    over the cluster-wide rate limit ──> nak until its window ends
    lease held by another worker ──> acked if the job is done, else nak for a heartbeat

Any replica of a replicated bucket answers a read, and one lagging behind may show an older
revision: a message is dropped only on what the bucket's leader says.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .._nats import Delivery
from ..core.errors import CodecError, InvalidName, PayloadError
from ..core.job import CLAIMABLE_STATES, JobState
from ..core.naming import check_name
from ..observe.log import logger
from ..storage.broker import carried_record
from ..storage.rejects import FOREIGN_SCHEDULE, NO_RECORD, NOT_A_JOB_ID, foreign_schedule
from ..storage.store import CorruptRecord, RawJob, Record
from . import schedules
from .settle import Settle
from .shared import Runtime

log = logger(__name__)


RECOVERING = frozenset({JobState.ACTIVE, JobState.STALLED})
"""States of a job that a claimed message runs (or ran, on a worker that died since)."""


def is_duplicate(job: RawJob, stream_seq: int) -> bool:
    """Whether a delivery is another message of a job that a claimed message already runs."""
    return job.state in RECOVERING and job.msg_seq not in (0, stream_seq)


def too_soon_to_judge(job: RawJob, lock_ttl: float) -> float:
    """Seconds until an active job's claim is ``lock_ttl`` old (0: it is, or the job is not
    active): until then its worker may not have taken the lease yet (it does at its first
    heartbeat), so the lease's absence proves nothing."""
    if job.state != JobState.ACTIVE or job.started_at is None:
        return 0.0
    age = (datetime.now(UTC) - job.started_at).total_seconds()
    return max(0.0, lock_ttl - age)


class Checks:
    """The checks of one delivery before its claim."""

    def __init__(self, runtime: Runtime, delivery: Delivery, settle: Settle) -> None:
        self.rt = runtime
        self.delivery = delivery
        self.settle = settle

    async def job_id(self) -> str | None:
        """The job id the message carries; a message that is not a job of the queue (no id,
        or fired by a foreign schedule) is rejected: removed, counted and sampled."""
        rejects = self.rt.backend.rejects
        if schedules.is_tick(self.delivery, self.rt.backend.names):
            return await schedules.materialize(self.rt, self.delivery)
        try:
            job_id = check_name(self.delivery.body.decode("utf-8", "replace"), "job id")
        except InvalidName:
            await rejects.reject(self.delivery, NOT_A_JOB_ID)
            return None
        if foreign_schedule(self.delivery, self.rt.backend.names, job_id):
            await rejects.reject(self.delivery, FOREIGN_SCHEDULE)
            return None
        return job_id

    def copy(self, job_id: str) -> Record | None:
        """The copy of the record the message carries, if it says the job runs now (waiting,
        or delayed and due): the claim's compare-and-set on its revision then proves it is
        still the record. Any other copy is left to :meth:`record` (it reads the record)."""
        copy = carried_record(self.delivery, job_id)
        if copy is None or copy.job.queue != self.rt.config.name:
            return None
        job = copy.job
        if job.state == JobState.WAITING:
            return copy
        due = job.run_at is None or job.run_at <= datetime.now(UTC)
        return copy if job.state == JobState.DELAYED and due else None

    async def record(self, job_id: str) -> Record | None:
        """The job's record if this delivery may claim it; else the message is settled here
        (rejected, acked or put back) and None."""
        store = self.rt.backend.store
        try:
            record = await store.get(job_id)
        except CorruptRecord as exc:
            log.error("job record does not decode; message removed", job_id=job_id, error=str(exc))
            await self.delivery.term()
            return None
        if record is not None and self._would_drop(record.job) and store.replicated:
            record = await store.get(job_id, fresh=True)
        if record is None and await store.removed(job_id) is not None:
            log.debug("message of a job removed meanwhile; acked", job_id=job_id)
            await self.delivery.ack()  # Queue.remove() or retention, while it was in flight
            return None
        if record is None:
            await self.rt.backend.rejects.reject(self.delivery, NO_RECORD)
            return None
        return record if await self._runs_now(record.job) else None

    async def _runs_now(self, job: RawJob) -> bool:
        if job.is_terminal:
            await self.settle.finish_again(job)
            return False
        if is_duplicate(job, self.delivery.stream_seq):
            log.debug("duplicate message of a running job; acked", job_id=job.id)
            await self.delivery.ack()  # another message of a running job: the holder's backs it
            return False
        if job.state not in CLAIMABLE_STATES:
            log.warning(
                "message for a job that is not runnable; removed",
                job_id=job.id,
                state=str(job.state),
            )
            await self.delivery.ack()
            return False
        early = (
            (job.run_at - datetime.now(UTC)).total_seconds()
            if job.state == JobState.DELAYED and job.run_at
            else 0.0
        )
        if early > 0.001:
            await self.delivery.nak(delay=early)  # a stray early copy: come back when it is due
            return False
        return True

    def _would_drop(self, job: RawJob) -> bool:
        """Whether this record makes the delivery be acked without running."""
        return (
            job.is_terminal
            or is_duplicate(job, self.delivery.stream_seq)
            or job.state not in CLAIMABLE_STATES
        )

    async def admitted(self, job: RawJob) -> bool:
        """Within the cluster-wide rate limit? If not, the job goes back until its window ends."""
        if self.rt.limiter is None:
            return True
        try:
            data = self.rt.decoded(job)
        except (PayloadError, CodecError):  # the run fails it at once, saying why
            return True
        wait = await self.rt.limiter.admit(data)
        if wait is None:
            return True
        await self.delivery.nak(delay=wait)
        return False

    async def lease_held(self, job_id: str) -> None:
        """Another worker holds the lease: ack if the job is done, else look again soon."""
        # a rare path that may ack: read at the leader when a replica could lag (see above)
        record = await self.rt.backend.store.get(job_id, fresh=True)
        if (
            record is None
            or record.job.is_terminal
            or is_duplicate(record.job, self.delivery.stream_seq)
        ):
            await self.delivery.ack()
        else:  # the holder is claiming it, or its own message came back early
            await self.delivery.nak(delay=self.rt.config.heartbeat)
