"""The writes that settle one attempt, each a compare-and-set on the revision the execution
holds (:mod:`.held`); :mod:`.execution` decides which, logs the outcome and runs the hooks.

    complete        record -> completed (result), THEN flows, ack, release the lease, retention
    retry           record -> delayed (run_at), THEN the next run's schedule, ack, release
    fail for good   record -> failed (error), THEN the dead letter, flows, ack, release, retention
    hand back       record -> waiting (at shutdown), release the lease, THEN nak
    cancelled       (the record says so already) ack, release

The final record is written before the ack, with the TTL its retention asks for (:mod:`.retention`):
a crash between the two redelivers the message, and :meth:`Settle.finish_again` redoes what
comes after the write. A write that finds another revision commits nothing: the job was taken
over, or cancelled meanwhile (then the message is acked and the lease released).
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from .._nats import CasConflict, Delivery
from ..core import redaction
from ..core.codec import check_size, encode_value, stored_limit
from ..core.encryption import is_sealed
from ..core.errors import EnqueueError
from ..core.job import AttemptError, JobFailure, JobState, moved, shortened, with_attempt_error
from ..observe.log import logger
from ..storage.store import RawJob, Stored
from . import dag
from .heartbeat import Heartbeat
from .held import Held
from .late_entry import LateEntry
from .shared import Runtime

log = logger(__name__)

MAX_ERROR_MESSAGE = 2000
MAX_TRACEBACK = 8000


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def failure_of(exc: BaseException) -> JobFailure:
    """The stored description of an exception: type, message, truncated traceback (no locals)."""
    text = "".join(traceback.format_exception(exc))
    return JobFailure(
        type=type(exc).__qualname__,
        message=str(exc)[:MAX_ERROR_MESSAGE],
        traceback=text[-MAX_TRACEBACK:],
    )


def stalled_too_often(job: RawJob) -> JobFailure:
    """The failure of a job whose attempts kept dying with their workers."""
    return JobFailure(
        type="Stalled",
        message=f"the job stalled {job.stalled_count} times (its worker died or lost the lease "
        "each time); it is failed as a poison job",
    )


class Settle:
    """The settle writes of one execution."""

    def __init__(self, runtime: Runtime, delivery: Delivery, held: Held) -> None:
        self.rt = runtime
        self.delivery = delivery
        self.held = held
        self.heartbeat: Heartbeat | None = None
        """The attempt's heartbeat: it renews the lease until the final write is done."""
        self.late: LateEntry | None = None
        """The claim's index entry, if it is written late (:mod:`.late_entry`)."""
        self._disconnects = 0
        """The connection's losses before the final write (see :meth:`_index_lost`)."""

    async def commit(
        self, state: JobState, event: str, reason: str | None = None, **changes: Any
    ) -> RawJob | None:
        """Write the attempt's final record (CAS, with its retention's TTL); None if the job is
        no longer ours."""
        held = self.held
        async with held.lock:
            held.settling = True
            assert held.job is not None
            final = moved(held.job, state, reason, **changes)
            listed, unlisted = held.job.state, frozenset[JobState]()
            if self.late is not None:
                listed, unlisted = self.late.listed()
            self._disconnects = self.rt.backend.disconnects
            try:
                await held.write(
                    final, event, listed, ttl=self.rt.retention.ttl(final), unlisted=unlisted
                )
            except CasConflict:
                await self._lost_the_record(final.id)
                return None
            finally:  # settled (or taken over): the ack or release comes next
                if self.heartbeat is not None:
                    self.heartbeat.stop()
            held.job = final
            return final

    async def _lost_the_record(self, job_id: str) -> None:
        """Someone else wrote the record: a new holder (commit nothing), or a cancel (clean up)."""
        record = await self.rt.backend.store.get(job_id, fresh=True)
        if record is not None and record.job.state == JobState.CANCELLED:
            log.info("job was cancelled meanwhile; its result is dropped", job_id=job_id)
            await self.cancelled()
        else:
            log.warning("job was taken over; this attempt commits nothing", job_id=job_id)

    def result_of(self, result: Any) -> bytes:
        """The handler's result as stored: encoded, within the limits, sealed on an encrypted
        queue (PayloadError or CodecError if it cannot be)."""
        backend, sealer, job = self.rt.backend, self.rt.sealer, self.held.job
        assert job is not None
        raw = encode_value(result, "the handler's result")
        check_size(raw, backend.payload_limit)  # the plaintext, as for payloads
        raw = sealer.seal(job.id, "result", raw)
        if sealer.active:
            check_size(raw, stored_limit(backend.max_payload), "the encrypted result")
        return raw

    async def complete(self, raw: bytes) -> RawJob | None:
        """Store the result (``result_of``): completed, then flows, ack, release, retention."""
        done = await self.commit(
            JobState.COMPLETED,
            "completed",
            result=msgspec.Raw(raw),
            error=None,
            finished_at=utcnow(),
        )
        if done is not None:
            await self._finish(done)
        return done

    async def retry(self, failure: JobFailure, stored: JobFailure, delay: float) -> RawJob | None:
        """Store the failed attempt as delayed by ``delay`` seconds (``stored``: the failure as
        written); :meth:`schedule` publishes the next run."""
        job = self.held.job
        assert job is not None
        return await self.commit(
            JobState.DELAYED,
            "retried",
            f"{failure.type}: retry in {delay:.3g}s",
            error=stored,
            errors=self.attempt_errors(failure, stored),
            run_at=utcnow() + timedelta(seconds=delay),
            enqueued=job.enqueued + 1,
            worker=None,
            leased=False,
        )

    async def schedule(self, retry: RawJob) -> None:
        """Publish the retry's next run, then ack; if that fails, the unacked message comes
        back and runs once due."""
        backend = self.rt.backend
        try:
            stored = Stored(self.held.revision, msgspec.json.encode(retry))
            await backend.broker.enqueue(retry, stored)
        except EnqueueError as exc:
            backend.metrics.sent(exc)
            log.warning(
                "retry could not be scheduled; relying on redelivery",
                job_id=retry.id,
                error=str(exc),
            )
            await self.held.release()
        else:
            backend.metrics.sent()
            if self._index_lost():
                await self._file_again(retry)
            await self.delivery.ack()
            await self.held.release()

    async def fail(self, failure: JobFailure, stored: JobFailure | None = None) -> RawJob | None:
        """Store the job failed for good; ``stored`` is the failure as written (default:
        sealed); :meth:`finish_failed` comes next."""
        stored = self.sealed(failure) if stored is None else stored
        return await self.commit(
            JobState.FAILED, "failed", failure.type, error=stored, finished_at=utcnow(),
            errors=self.attempt_errors(failure, stored),
        )  # fmt: skip

    async def finish_failed(self, failed: RawJob) -> bool:
        """The dead letter, then flows, ack, release, retention; False if the dead letter could
        not be written (the message is left unacked: its redelivery writes it)."""
        if not await self.dead_letter(failed):
            await self.held.release()
            return False
        await self._finish(failed)
        return True

    async def _finish(self, job: RawJob) -> None:
        await self._notify_children(job)
        if self._index_lost():
            await self._file_again(job)
        await self.delivery.ack()
        await self.held.release()
        if (removal := self.rt.retention.beside(job, self.held.revision)) is not None:
            await removal

    async def finish_again(self, job: RawJob) -> None:
        """A redelivered message of a finished job: a crash may have come between the final
        write and the ack, so redo the dead letter, the index entry and flows, then ack."""
        if self.delivery.num_delivered > 1:
            if job.state == JobState.FAILED:
                await self.dead_letter(job)
            await self._file_again(job)
            await self._notify_children(job)
        await self.delivery.ack()

    def _index_lost(self) -> bool:
        """Before the ack: whether the final write's index entry and markers (sent without
        waiting) may have been lost with a connection lost since, while the requests that came
        after (the dead letter, the retry's message, flows), asked again, and the ack go through
        on the next one; then the job is filed again, since no redelivery would come to repair
        it. (With no loss between, the ack rides the same connection after them: lost with
        them, if at all.)"""
        return self.rt.backend.disconnects != self._disconnects

    async def _file_again(self, job: RawJob) -> None:
        """Make the job's index entries say its state, its entry expiring with its record."""
        await self.rt.backend.store.index.repair(job.id, job.state, self.rt.retention.ttl(job))

    async def dead_letter(self, job: RawJob) -> bool:
        """Write the job's dead letter (where enabled), secret fields masked; False if it could
        not be written yet."""
        if not self.rt.config.dead_letter.enabled:
            return True
        fields = self.rt.config.secret_fields
        if fields and not is_sealed(job.data):  # the copy is for people and tools to read
            job = msgspec.structs.replace(
                job, data=msgspec.Raw(redaction.masked_json(job.data, fields))
            )
        try:
            await self.rt.backend.broker.dead_letter(job)
        except EnqueueError as exc:
            log.warning("dead letter could not be written yet", job_id=job.id, error=str(exc))
            return False
        self.rt.backend.metrics.dead_lettered()
        await self.rt.middleware.run("on_dead_letter", job, job_id=job.id)
        return True

    async def _notify_children(self, job: RawJob) -> None:
        """Let the job's children (flows) react to its end, before the ack (redelivery retries)."""
        if self.rt.backend.control.state.flows:
            await dag.notify_children(self.rt.backend, job.id)

    async def hand_back(self) -> bool:
        """At shutdown: store the job waiting again, release the lease, then nak; False if it
        was no longer ours."""
        job = self.held.job
        assert job is not None
        handed_back = await self.commit(
            JobState.WAITING,
            "waiting",
            "handed back at shutdown",
            attempt=job.attempt - 1,
            worker=None,
            leased=False,
        )
        # released (and stored) before the nak: the worker the job goes to finds it free
        await self.held.release(confirmed=True)
        if handed_back is None:
            return False
        await self.delivery.nak()
        return True

    async def cancelled(self) -> None:
        """The record says cancelled: ack the message and release the lease."""
        await self.delivery.ack()
        await self.held.release()

    def failure(self, exc: BaseException) -> JobFailure:
        """The stored description of ``exc``, with the job's secret values masked (those this
        task hid when it decoded the payload)."""
        failure = failure_of(exc)
        values = redaction.hidden()
        if not values:
            return failure
        return msgspec.structs.replace(
            failure,
            message=redaction.scrub(failure.message, values),
            traceback=redaction.scrub(failure.traceback, values),
        )

    def attempt_errors(self, failure: JobFailure, stored: JobFailure) -> list[AttemptError]:
        """The job's attempt history with this attempt's failure, shortened: sealed as
        ``stored`` is (readable where ``stored`` is the failure itself: it holds no payload)."""
        job = self.held.job
        assert job is not None
        short = shortened(failure)
        kept = short if stored is failure else self.sealed(short)
        return with_attempt_error(job.errors, job.attempt, kept)

    def sealed(self, failure: JobFailure) -> JobFailure:
        """The failure as stored: its message and traceback sealed on an encrypted queue."""
        assert self.held.job is not None
        return self.rt.sealer.seal_failure(self.held.job.id, failure)
