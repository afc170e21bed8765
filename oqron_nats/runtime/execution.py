"""One delivery of a job, from the record check to the ack.

    read record ── missing/terminal/too early ──> ack (or nak until run_at) and stop
        │
    lease (guaranteed_worker) ── held by another ──> nak(lock_ttl) and stop
        │
    record -> active (CAS; a lease-less active record is a stall: stalled first, then active)
        │
    claim took longer than lock_ttl - heartbeat (an election)? renew the lease first;
        │                     not ours any more -> run nothing, commit nothing
    handler, with a heartbeat renewing the lease (CAS) + in_progress() every `heartbeat`
        │                     lease lost -> ctx.signal fires, nothing is committed
    settle: record -> completed | delayed (retry, via a schedule) | failed (+ dead letter), by CAS,
            THEN ack, release the lease, run hooks

The terminal state is written before the ack, and every write is a compare-and-set on the
revision this execution holds, so a worker that lost its job can never overwrite the new
holder's state (it finds a revision it does not expect).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog

from .._nats import CasConflict, Delivery
from ..core import redaction
from ..core.codec import PayloadCodec, check_size, encode_value, stored_limit
from ..core.config import QueueConfig
from ..core.correlation import current_correlation_id
from ..core.encryption import Sealer, is_sealed, prefixed
from ..core.errors import CodecError, EnqueueError, InvalidName, PayloadError
from ..core.job import CLAIMABLE_STATES, JobFailure, JobState, moved, with_data
from ..core.naming import check_name
from ..core.retry import retry_delay
from ..observe.log import logger
from ..observe.tracing import mark_failed
from ..storage.backend import Backend
from ..storage.lease import Lease
from ..storage.rejects import FOREIGN_SCHEDULE, NO_RECORD, NOT_A_JOB_ID, foreign_schedule
from ..storage.store import CorruptRecord, RawJob
from . import dag, retention
from .context import JobContext, Signal
from .heartbeat import Heartbeat
from .middlewares import Chain
from .progress import ProgressWriter
from .ratelimit import ClusterRateLimit

log = logger(__name__)

MAX_ERROR_MESSAGE = 2000
MAX_TRACEBACK = 8000
SHUTDOWN = "shutdown"
CANCELLED = "cancelled"
ABORT_GRACE = 1.0
"""Seconds an aborted async handler gets to return on its own before it is cancelled."""


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


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every execution of one consumer shares."""

    config: QueueConfig
    backend: Backend
    codec: PayloadCodec[Any]
    handler: Callable[[JobContext[Any]], Any]
    worker_id: str
    consumer: str
    executor: ThreadPoolExecutor | None
    limiter: ClusterRateLimit | None = None
    middleware: Chain = field(default_factory=lambda: Chain([]))
    """Metrics, the user's callbacks and middlewares (see :mod:`oqron_nats.core.middleware`)."""
    sealer: Sealer = field(init=False)
    """Seals and opens the queue's stored values (the codec's, set by the queue)."""

    def __post_init__(self) -> None:
        if self.codec.sealer is None:  # never write a result unsealed by a wiring mistake
            raise RuntimeError("the queue's sealer was not set before consuming")
        object.__setattr__(self, "sealer", self.codec.sealer)

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function (else it runs in a thread)."""
        return self.executor is None


def stalled_too_often(job: RawJob) -> JobFailure:
    """The failure of a job whose attempts kept dying with their workers."""
    return JobFailure(
        type="Stalled",
        message=f"the job stalled {job.stalled_count} times (its worker died or lost the lease "
        "each time); it is failed as a poison job",
    )


def is_duplicate(job: RawJob, stream_seq: int) -> bool:
    """Whether a delivery is another message of a job that a claimed message already runs."""
    running = job.state in (JobState.ACTIVE, JobState.STALLED)
    return running and job.msg_seq not in (0, stream_seq)


def aborted_type(reason: str | None) -> str:
    """The ``error.type`` of an attempt stopped by its signal: cancelled, shutdown, lease_lost."""
    if reason is not None and reason in (CANCELLED, SHUTDOWN):
        return reason
    return "lease_lost"


class Discarded(Exception):
    """The handler called ``ctx.discard()``."""


class Execution:
    """Claims, runs and settles one delivered job."""

    def __init__(self, runtime: Runtime, delivery: Delivery) -> None:
        self.rt = runtime
        self.delivery = delivery
        self.signal = Signal()
        self._job: RawJob | None = None
        self._revision = 0
        self._lease: Lease | None = None
        self._handler_task: asyncio.Future[Any] | None = None
        self._lock = asyncio.Lock()
        self._progress = ProgressWriter(self._store_progress)
        self._settling = False
        self._ctx: JobContext[Any] | None = None
        self._heartbeat: Heartbeat | None = None

    @property
    def job_id(self) -> str | None:
        """The id of the job once its record was read."""
        return self._job.id if self._job else None

    async def run(self) -> None:
        """Process the delivery; never raises (a failure leaves the message for redelivery)."""
        try:
            job_id = await self._job_id()
            if job_id is None:
                return
            # the lease is asked for while the record is read: one round trip less per job
            claimed_at = time.monotonic()
            leasing = asyncio.create_task(self._acquire_lease(job_id)) if self._leased else None
            try:
                job = await self._check_record(job_id)
            finally:
                self._lease = await leasing if leasing is not None else None
            if job is None or not await self._admitted(job):
                await self._release()
                return
            if await self._claim(job) and await self._lease_outlived(claimed_at):
                await self._run_claimed()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "job execution failed; the message will be redelivered", job_id=self.job_id
            )
            await self._release()

    def abort(self, reason: str) -> None:
        """Fire the signal; an async handler still running ABORT_GRACE seconds later is cancelled.

        The grace lets a handler that awaits ``ctx.signal`` return and clean up by itself.
        """
        self.signal.fire(reason)
        task = self._handler_task
        if task is not None and not task.done() and self.rt.is_async:
            asyncio.get_running_loop().call_later(ABORT_GRACE, task.cancel)

    # -- 1. the record decides whether this delivery runs ------------------------------------

    @property
    def _leased(self) -> bool:
        return self.rt.config.guaranteed_worker

    async def _job_id(self) -> str | None:
        """The job id the message carries; a message that is not a job of the queue (no id,
        or fired by a foreign schedule) is rejected: removed, counted and sampled."""
        rejects = self.rt.backend.rejects
        try:
            job_id = check_name(self.delivery.body.decode("utf-8", "replace"), "job id")
        except InvalidName:
            await rejects.reject(self.delivery, NOT_A_JOB_ID)
            return None
        if foreign_schedule(self.delivery, self.rt.backend.names, job_id):
            await rejects.reject(self.delivery, FOREIGN_SCHEDULE)
            return None
        return job_id

    async def _acquire_lease(self, job_id: str) -> Lease | None:
        return await self.rt.backend.leases.acquire(job_id, self.rt.worker_id)

    async def _check_record(self, job_id: str) -> RawJob | None:  # noqa: PLR0911 - one per verdict
        try:
            record = await self.rt.backend.store.get(job_id)
        except CorruptRecord as exc:
            log.error("job record does not decode; message removed", job_id=job_id, error=str(exc))
            await self.delivery.term()
            return None
        if record is None:
            await self.rt.backend.rejects.reject(self.delivery, NO_RECORD)
            return None
        job, self._revision = record
        if self._would_drop(job) and self.rt.backend.store.replicated:
            # any replica answers a read, and one lagging behind may show an older revision:
            # the message is dropped only on what the bucket's leader says
            record = await self.rt.backend.store.get(job_id, fresh=True)
            if record is None:
                await self.rt.backend.rejects.reject(self.delivery, NO_RECORD)
                return None
            job, self._revision = record
        if job.is_terminal:
            if self.delivery.num_delivered > 1:  # a crash may have come before these
                if job.state == JobState.FAILED:
                    await self._dead_letter(job)
                await self.rt.backend.store.index.repair(job.id, job.state)
                await self._notify_children(job)
            await self.delivery.ack()
            return None
        if is_duplicate(job, self.delivery.stream_seq):
            log.debug("duplicate message of a running job; acked", job_id=job_id)
            await self.delivery.ack()  # another message of a running job: the holder's backs it
            return None
        if job.state not in CLAIMABLE_STATES:
            log.warning(
                "message for a job that is not runnable; removed",
                job_id=job_id,
                state=str(job.state),
            )
            await self.delivery.ack()
            return None
        early = (
            (job.run_at - utcnow()).total_seconds()
            if job.state == JobState.DELAYED and job.run_at
            else 0.0
        )
        if early > 0.001:
            await self.delivery.nak(delay=early)  # a stray early copy: come back when it is due
            return None
        return job

    def _would_drop(self, job: RawJob) -> bool:
        """Whether this record makes the delivery be acked without running."""
        return (
            job.is_terminal
            or is_duplicate(job, self.delivery.stream_seq)
            or job.state not in CLAIMABLE_STATES
        )

    async def _admitted(self, job: RawJob) -> bool:
        """Within the cluster-wide rate limit? If not, the job goes back until its window ends."""
        if self.rt.limiter is None:
            return True
        try:
            data = self._decoded(job)
        except (PayloadError, CodecError):  # the run fails it at once, saying why
            return True
        wait = await self.rt.limiter.admit(data)
        if wait is None:
            return True
        await self.delivery.nak(delay=wait)
        return False

    # -- 2. claim: lease, then record -> active ----------------------------------------------

    async def _claim(self, job: RawJob) -> bool:
        rt = self.rt
        recovering = job.state in (JobState.ACTIVE, JobState.STALLED)
        attempt = job.attempt if recovering and job.attempt > 0 else job.attempt + 1
        if self._leased and self._lease is None:  # someone runs it right now
            await self._on_lease_held(job.id)
            return False
        try:
            if job.state == JobState.ACTIVE:  # its worker died: record the stall before rerunning
                job = moved(
                    job,
                    JobState.STALLED,
                    "its worker died or lost the lease",
                    stalled_count=job.stalled_count + 1,
                    leased=False,
                )
                self._revision = await rt.backend.store.update(
                    job, self._revision, "stalled", JobState.ACTIVE
                )
                await rt.middleware.run("on_stall", job, job_id=job.id)
                log.warning("job stalled", job_id=job.id, stalled_count=job.stalled_count)
            if job.stalled_count > rt.config.max_stalled_count:  # a poison job: it kills workers
                self._job = job
                poison = stalled_too_often(job)  # holds no payload: stored readable
                await self._fail_for_good(self._payload(job), poison, stored=poison)
                return False
            active = moved(
                job,
                JobState.ACTIVE,
                f"attempt {attempt} on {rt.worker_id}",
                attempt=attempt,
                started_at=utcnow(),
                run_at=None,
                worker=rt.worker_id,
                leased=self._lease is not None,
                msg_seq=self.delivery.stream_seq,
                progress=0.0,
                progress_label=None,
            )
            self._revision = await rt.backend.store.update(
                active, self._revision, "active", job.state
            )
        except CasConflict:  # another writer moved the job: let the next delivery re-read it
            await self._release()
            await self.delivery.nak()
            return False
        self._job = active
        return True

    async def _lease_outlived(self, claimed_at: float) -> bool:
        """Whether the lease outlived the claim; False means the handler must not run.

        The lease was created with ``lock_ttl`` when the claim began, and the first heartbeat
        renews it ``heartbeat`` seconds after the handler starts. A claim slowed down past
        ``lock_ttl - heartbeat`` (its writes waited out an election) may have let the lease
        expire and another worker take the job meanwhile, so the lease is renewed (a
        compare-and-set on its revision) before the handler runs.
        """
        config = self.rt.config
        took = time.monotonic() - claimed_at
        if self._lease is None or took < config.lock_ttl - config.heartbeat:
            return True
        try:
            async with asyncio.timeout(config.heartbeat):
                await self._renew()
        except Exception as exc:  # LeaseLost, or no answer: the job may be another worker's
            log.warning(
                "the claim took longer than the lease; the job is left to its next delivery",
                job_id=self.job_id, error=repr(exc),
            )  # fmt: skip
            self._lease = None
            return False
        return True

    def _decoded(self, job: RawJob) -> Any:
        """The payload, decrypted and decoded (CodecError or PayloadError if it cannot be)."""
        return self.rt.codec.decode(self.rt.sealer.open(job.id, "data", job.data))

    def _payload(self, job: RawJob) -> Any:
        """The decoded payload for hooks, or the raw bytes if it does not decode."""
        try:
            return self._decoded(job)
        except (PayloadError, CodecError):
            return job.data

    async def _on_lease_held(self, job_id: str) -> None:
        # a rare path that may ack: read at the leader when a replica could lag (see _would_drop)
        record = await self.rt.backend.store.get(job_id, fresh=True)
        if (
            record is None
            or record.job.is_terminal
            or is_duplicate(record.job, self.delivery.stream_seq)
        ):
            await self.delivery.ack()
        else:  # the holder is claiming it, or its own message came back early: look again soon
            await self.delivery.nak(delay=self.rt.config.heartbeat)

    # -- 3. run the handler with heartbeats ---------------------------------------------------

    async def _run_claimed(self) -> None:
        rt, job = self.rt, self._job
        assert job is not None
        # this task runs one job: what it binds is gone with it
        structlog.contextvars.bind_contextvars(
            job_id=job.id,
            queue=rt.config.name,
            correlation_id=job.correlation_id,
            attempt=job.attempt,
        )
        # the heartbeat goes on until the attempt's final record is written (see _commit): that
        # write may wait out an election, and the lease must not expire meanwhile
        heartbeat = Heartbeat(rt.config.heartbeat, rt.config.lock_ttl, self._renew, self._lost)
        self._heartbeat = heartbeat
        heartbeat.start()
        try:
            await self._run_and_settle(job)
        finally:
            heartbeat.stop()

    async def _run_and_settle(self, job: RawJob) -> None:
        rt = self.rt
        await rt.middleware.run("before_process", job, job_id=job.id)
        started = time.monotonic()
        value: Any = job.data
        with rt.backend.tracing.processing(
            queue=rt.config.name,
            job_id=job.id,
            correlation_id=job.correlation_id,
            attempt=job.attempt,
            consumer=rt.consumer,
            carrier=self.delivery.headers or job.trace,
        ) as span:
            try:
                value = self._decoded(job)
                if rt.config.secret_fields:  # masked in whatever this task logs from now
                    redaction.hide(redaction.values_of(value, rt.config.secret_fields))
                result, error = await self._call_handler(job, value), None
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                result, error = None, None  # the handler was stopped by abort()
            except Exception as exc:
                result, error = None, exc
            if error is not None:  # an encrypted queue's error text stays out of traces
                mark_failed(span, error, detail=not rt.sealer.active)
        duration = time.monotonic() - started
        if self.signal.aborted:
            outcome: str | None = aborted_type(self.signal.reason)
        else:
            outcome = None if error is None else type(error).__name__
        await rt.middleware.run("after_process", job, duration, outcome, job_id=job.id)
        if self.signal.aborted:
            await self._on_aborted()
        elif error is None:
            await self._complete(value, result, duration)
        else:
            await self._fail(value, error, duration)

    async def _call_handler(self, job: RawJob, value: Any) -> Any:
        rt = self.rt
        parents = await dag.parent_results(rt.backend, job) if job.depends_on else {}
        for parent_id, result in parents.items():
            try:
                parents[parent_id] = rt.sealer.open_value(parent_id, "result", result)
            except CodecError as exc:  # the handler does not run without its inputs
                raise prefixed(exc, f"parent job {parent_id}") from None
        ctx = JobContext(
            id=job.id,
            parent_results=parents,
            queue=rt.config.name,
            data=value,
            attempt=job.attempt,
            max_attempts=rt.config.attempts_of(job.max_attempts),
            correlation_id=job.correlation_id,
            created_at=job.created_at,
            priority=job.priority,
            tags=list(job.tags),
            fencing_token=self._lease.revision if self._lease else self._revision,
            signal=self.signal,
            on_progress=self._progress.update,
            loop=asyncio.get_running_loop(),
        )
        self._ctx = ctx
        token = current_correlation_id.set(job.correlation_id)
        try:
            if rt.executor is None:
                self._handler_task = asyncio.ensure_future(rt.handler(ctx))
            else:
                call = contextvars.copy_context().run
                self._handler_task = asyncio.get_running_loop().run_in_executor(
                    rt.executor, call, rt.handler, ctx
                )
            result = await self._handler_task
        finally:
            current_correlation_id.reset(token)
        if ctx.discarded is not None:
            raise Discarded(ctx.discarded)
        return result

    async def _renew(self) -> None:
        """One heartbeat: renew the lease (LeaseLost if it is gone) and the ack deadline."""
        if self._lease is not None:
            await self._lease.renew()
        await self.delivery.in_progress()

    def _lost(self, why: str) -> None:
        log.warning("lease lost; this attempt will commit nothing", job_id=self.job_id, reason=why)
        self.abort(f"lease lost: {why}")

    async def _store_progress(self, percent: float, label: str | None) -> bool:
        async with self._lock:
            if self._settling or self._job is None or self.signal.aborted:
                return False
            updated = msgspec.structs.replace(self._job, progress=percent, progress_label=label)
            try:
                self._revision = await self.rt.backend.store.update(
                    updated, self._revision, "progress", JobState.ACTIVE
                )
            except CasConflict:
                self._lost("the job record was changed by another writer")
                return False
            self._job = updated
            return True

    # -- 4. settle ------------------------------------------------------------------------------

    async def _commit(
        self, state: JobState, event: str, reason: str | None = None, **changes: Any
    ) -> RawJob | None:
        """Write the attempt's final record (CAS); None if the job is no longer ours.

        A final state kept for an age (retention) is written with that TTL.
        """
        async with self._lock:
            self._settling = True
            assert self._job is not None
            final = moved(self._job, state, reason, **changes)
            ttl = retention.ttl_of(retention.policy_for(final, state, self.rt.config))
            try:
                self._revision = await self.rt.backend.store.update(
                    final, self._revision, event, self._job.state, ttl=ttl
                )
            except CasConflict:
                await self._lost_the_record(final.id)
                return None
            finally:  # settled (or taken over): the ack or release comes next
                if self._heartbeat is not None:
                    self._heartbeat.stop()
            self._job = final
            return final

    async def _lost_the_record(self, job_id: str) -> None:
        """Someone else wrote the record: a new holder (commit nothing), or a cancel (clean up)."""
        record = await self.rt.backend.store.get(job_id)
        if record is not None and record.job.state == JobState.CANCELLED:
            log.info("job was cancelled meanwhile; its result is dropped", job_id=job_id)
            await self.delivery.ack()
            await self._release()
        else:
            log.warning("job was taken over; this attempt commits nothing", job_id=job_id)

    async def _complete(self, value: Any, result: Any, duration: float) -> None:
        backend, sealer, job = self.rt.backend, self.rt.sealer, self._job
        assert job is not None
        try:
            raw = encode_value(result, "the handler's result")
            check_size(raw, backend.payload_limit)  # the plaintext, as for payloads
            raw = sealer.seal(job.id, "result", raw)
            if sealer.active:
                check_size(raw, stored_limit(backend.max_payload), "the encrypted result")
        except (PayloadError, CodecError) as exc:
            await self._fail(value, exc, duration)
            return
        done = await self._commit(
            JobState.COMPLETED,
            "completed",
            result=msgspec.Raw(raw),
            error=None,
            finished_at=utcnow(),
        )
        if done is None:
            return
        await self._notify_children(done)
        await self.delivery.ack()
        await self._release()
        await self._retain(done)
        log.debug(
            "job completed",
            job_id=done.id,
            queue=done.queue,
            attempt=done.attempt,
            seconds=round(duration, 4),
        )
        await self.rt.middleware.run(
            "on_complete", with_data(done, value, result=result), result, job_id=done.id
        )

    async def _fail(self, value: Any, error: BaseException, duration: float) -> None:
        job = self._job
        assert job is not None
        failure = self._failure(error)
        # a codec's own error holds no payload (it could not open it): stored readable
        stored = failure if isinstance(error, CodecError) else self._sealed(failure)
        discarded = self._ctx is not None and self._ctx.discarded is not None
        final = (
            discarded
            or isinstance(error, PayloadError | CodecError)  # not transient: never retried
            or job.attempt >= self.rt.config.attempts_of(job.max_attempts)
        )
        if final:
            await self._fail_for_good(value, failure, stored=stored)
            return
        try:
            delay = retry_delay(self.rt.config.retries, job.attempt)
        except Exception as exc:  # a broken custom backoff: fail for good rather than loop
            log.exception("the retry backoff failed; failing the job", job_id=job.id)
            await self._fail_for_good(value, self._failure(exc))
            return
        retry = await self._commit(
            JobState.DELAYED,
            "retried",
            f"{failure.type}: retry in {delay:.3g}s",
            error=stored,
            run_at=utcnow() + timedelta(seconds=delay),
            enqueued=job.enqueued + 1,
            worker=None,
            leased=False,
        )
        if retry is None:
            return
        log.warning(
            "job failed; will retry",
            job_id=retry.id, attempt=retry.attempt,
            max_attempts=self.rt.config.attempts_of(retry.max_attempts),
            retry_in=round(delay, 3), error=stored.message,
        )  # fmt: skip
        try:
            await self.rt.backend.broker.enqueue(retry)
        except EnqueueError as exc:  # the unacked message comes back and runs once due
            self.rt.backend.metrics.sent(exc)
            log.warning(
                "retry could not be scheduled; relying on redelivery",
                job_id=retry.id,
                error=str(exc),
            )
            await self._release()
        else:
            self.rt.backend.metrics.sent()
            await self.delivery.ack()
            await self._release()
        await self.rt.middleware.run(
            "on_retry", with_data(retry, value, error=failure), failure, job_id=retry.id
        )

    def _failure(self, exc: BaseException) -> JobFailure:
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

    def _sealed(self, failure: JobFailure) -> JobFailure:
        """The failure as stored: its message and traceback sealed on an encrypted queue."""
        assert self._job is not None
        return self.rt.sealer.seal_failure(self._job.id, failure)

    async def _fail_for_good(
        self, value: Any, failure: JobFailure, *, stored: JobFailure | None = None
    ) -> None:
        """Fail the job for good; ``stored`` is the failure as written (default: sealed)."""
        stored = self._sealed(failure) if stored is None else stored
        failed = await self._commit(
            JobState.FAILED, "failed", failure.type, error=stored, finished_at=utcnow()
        )
        if failed is None:
            return
        log.error(
            "job failed", job_id=failed.id, queue=failed.queue, attempt=failed.attempt,
            error_type=failure.type, error=stored.message,
        )  # fmt: skip
        dead = await self._dead_letter(failed)
        if not dead:
            await self._release()
            return  # unacked: the redelivery writes the dead letter
        await self._notify_children(failed)
        await self.delivery.ack()
        await self._release()
        await self._retain(failed)
        job = with_data(failed, value, error=failure)  # hooks see the plaintext
        await self.rt.middleware.run("on_fail", job, failure, job_id=job.id)

    async def _notify_children(self, job: RawJob) -> None:
        """Let the job's children (flows) react to its end, before the ack (redelivery retries)."""
        if self.rt.backend.control.state.flows:
            await dag.notify_children(self.rt.backend, job.id)

    async def _retain(self, job: RawJob) -> None:
        """Apply the finished job's retention (remove it, or trim its state); best effort."""
        policy = retention.policy_for(job, job.state, self.rt.config)
        try:
            await retention.apply(self.rt.backend, job, self._revision, policy)
        except Exception as exc:  # the next finish trims again; a kept record harms nobody
            log.warning("retention not applied", job_id=job.id, error=repr(exc))

    async def _dead_letter(self, job: RawJob) -> bool:
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
        await self.rt.middleware.run("on_dead_letter", job, job_id=job.id)
        return True

    async def _on_aborted(self) -> None:
        if self.signal.reason == CANCELLED:  # the record says cancelled already
            await self.delivery.ack()
            await self._release()
            log.info("job cancelled while running", job_id=self.job_id)
            return
        if self.signal.reason != SHUTDOWN:
            return  # lease lost: the new holder owns the job; commit nothing, ack nothing
        job = self._job
        assert job is not None
        handed_back = await self._commit(
            JobState.WAITING,
            "waiting",
            "handed back at shutdown",
            attempt=job.attempt - 1,
            worker=None,
            leased=False,
        )
        # released (and stored) before the nak: the worker the job goes to finds it free
        await self._release(confirmed=True)
        if handed_back is not None:
            await self.delivery.nak()
            log.info("job handed back at shutdown", job_id=job.id)

    async def _release(self, *, confirmed: bool = False) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                await lease.release(confirmed=confirmed)
            except Exception as exc:  # it expires on its own after lock_ttl
                log.warning("lease release failed", job_id=self.job_id, error=repr(exc))
