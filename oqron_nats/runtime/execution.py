"""One delivery of a job: claim, run, settle.

    checks (:mod:`.checks`): a job of the queue, its record runnable now, within the rate limit?
        │               no -> rejected, acked, or nak'd until it is due; stop
    claim: record -> active (CAS on the revision read, or on the message's copy of the record;
        │  a first claim's index entry is written a second later, if the job still runs:
        │  :mod:`.late_entry`)
        │  taking over a running or stalled job (guaranteed_worker): claimed less than lock_ttl
        │  ago -> nak until then; else its lease first (held by another -> ack or nak; stop),
        │  and a lease-less active record is a stall: stalled first, then active
    run: before_process; inside the middlewares' around_process (the tracing span first), the
        │  payload is decoded and the handler runs, while a heartbeat takes the lease (the
        │  first beat; a claim slower than a heartbeat takes it before the handler runs), then
        │  renews it (CAS), and the ack deadline, every `heartbeat`; lease lost or held by
        │  another -> ctx.signal fires, nothing is committed; after_process
    settle (:mod:`.settle`), outside the job's concurrency slot (it was freed when the handler
            returned): record -> completed | delayed (retry, via a schedule) | failed
            (+ dead letter) | waiting (handed back at shutdown), by CAS, with its retention's TTL;
            THEN ack, release the lease (if taken), retention, the outcome's log line and hooks

The terminal state is written before the ack, and every write is a compare-and-set on the
revision this execution holds (:mod:`.held`), so a worker that lost its job can never overwrite
the new holder's state (it finds a revision it does not expect). The outcome's log lines are
this module's (README, Tracing and logging).
Why the lease waits for the first heartbeat: :mod:`.heartbeat`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from .._nats import CasConflict, Delivery, on_critical_path
from ..core import redaction
from ..core.correlation import current_correlation_id
from ..core.encryption import prefixed
from ..core.errors import CodecError, PayloadError, Unavailable
from ..core.job import JobFailure, JobState, moved, with_data
from ..core.retry import retry_delay
from ..observe.log import logger
from ..storage.store import RawJob, Record
from . import dag
from .checks import RECOVERING, Checks, too_soon_to_judge
from .context import JobContext, Signal
from .heartbeat import Heartbeat, outlived_the_claim
from .held import Held
from .late_entry import LateEntry, lists_late
from .middlewares import Ran
from .progress import ProgressWriter
from .settle import Settle, stalled_too_often, utcnow
from .shared import Runtime

__all__ = ["ABORT_GRACE", "CANCELLED", "SHUTDOWN", "Discarded", "Execution", "Runtime"]

log = logger(__name__)

SHUTDOWN = "shutdown"
CANCELLED = "cancelled"
ABORT_GRACE = 1.0
"""Seconds an aborted async handler gets to return on its own before it is cancelled."""
REDELIVER_FAILED_AFTER = 2.0
"""Seconds until a delivery whose execution failed (NATS refused or did not answer a write
within the retry deadline) is delivered again, doubling with each delivery, at most its ack
deadline."""


def aborted_type(reason: str | None) -> str:
    """The ``error.type`` of an attempt stopped by its signal: cancelled, shutdown, lease_lost."""
    if reason is not None and reason in (CANCELLED, SHUTDOWN):
        return reason
    return "lease_lost"


class Discarded(Exception):
    """The handler called ``ctx.discard()``."""


class Execution:
    """Claims, runs and settles one delivered job."""

    def __init__(
        self, runtime: Runtime, delivery: Delivery, leave_slot: Callable[[float | None], None]
    ) -> None:
        self.rt = runtime
        self.delivery = delivery
        self._leave_slot: Callable[[float | None], None] | None = leave_slot
        """Called once, when the handler returned, with the seconds since this execution began
        (or when the run ended without it, with None): the settle writes that follow hold no
        handler slot."""
        self._began = runtime.loop.time()
        self.signal = Signal()
        self.held = Held(runtime.backend.store)
        self.settle = Settle(runtime, delivery, self.held)
        self.checks = Checks(runtime, delivery, self.settle)
        self._in_handler: asyncio.Task[Any] | None = None
        """This execution's task while it awaits an async handler (which runs in it: no task of
        its own), for abort() to cancel."""
        self._handler_cancelled = False
        self._progress: ProgressWriter | None = None
        """Made at the handler's first progress call (most never make one)."""
        self._discarded = False

    @property
    def job_id(self) -> str | None:
        """The id of the job once it is claimed."""
        return self.held.job_id

    async def run(self) -> None:
        """Process the delivery; never raises (a failure hands the message back for a later
        delivery; the record's compare-and-set fences whatever this one wrote)."""
        on_critical_path(self.rt.loop)  # this task runs one job: its awaited round trips count
        try:
            job_id = await self.checks.job_id()
            if job_id is None:
                return
            claimed_at = time.monotonic()
            copy = self.checks.copy(job_id)
            job = await (self._checked(job_id) if copy is None else self._copied(copy))
            if job is None:
                await self.held.release()
                return
            claimed = await self._claim(job, copied=copy is not None)
            if claimed and await self._lease_outlived(claimed_at):
                await self._run_claimed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, Unavailable):  # NATS did not answer in time: said, not a bug
                log.warning("job could not be run or settled; the message will be redelivered",
                            job_id=self.job_id, error=str(exc))  # fmt: skip
            else:
                log.exception(
                    "job execution failed; the message will be redelivered", job_id=self.job_id
                )
            await self.held.release()
            await self._redeliver_later()
        finally:
            self._handler_done(ran=False)
            self._progress = None  # it calls back into this execution: a reference cycle

    def _handler_done(self, *, ran: bool) -> None:
        leave, self._leave_slot = self._leave_slot, None
        if leave is not None:
            leave(self.rt.loop.time() - self._began if ran else None)

    async def _redeliver_later(self) -> None:
        """After a failure, have the message delivered again sooner than its ack deadline,
        later each time it fails; not if the attempt was aborted (its lease lost: another
        worker may hold the job now)."""
        if self.signal.aborted:
            return
        deliveries = min(self.delivery.num_delivered, 10)  # each one failed, as far as we know
        delay = min(REDELIVER_FAILED_AFTER * 2 ** (deliveries - 1), self.rt.config.ack_wait)
        with contextlib.suppress(Exception):  # else it comes back after its ack deadline
            await self.delivery.nak(delay=delay)

    def abort(self, reason: str) -> None:
        """Fire the signal; an async handler still running ABORT_GRACE seconds later is cancelled.

        The grace lets a handler that awaits ``ctx.signal`` return and clean up by itself.
        """
        self.signal.fire(reason)
        if self._in_handler is not None:
            self.rt.loop.call_later(ABORT_GRACE, self._cancel_handler)

    def _cancel_handler(self) -> None:
        task = self._in_handler
        if task is not None and not self._handler_cancelled:
            self._handler_cancelled = True
            task.cancel()  # lands inside the handler: it is suspended there

    # -- 1. claim: the checks, record -> active (the lease: at the first heartbeat) ----------

    @property
    def _leased(self) -> bool:
        return self.rt.config.guaranteed_worker

    async def _copied(self, copy: Record) -> RawJob | None:
        """The job as the message's copy of its record says, if this delivery runs it: no read
        (the claim's compare-and-set on the copy's revision proves the copy)."""
        self.held.revision = copy.revision
        return copy.job if await self.checks.admitted(copy.job) else None

    async def _checked(self, job_id: str, *, admit: bool = True) -> RawJob | None:
        """The record, if this delivery runs it; taking over a running or stalled job takes
        its lease first (guaranteed_worker), unless its claim is too recent to judge."""
        record = await self.checks.record(job_id)
        if record is None:
            return None
        self.held.revision = record.revision
        job = record.job
        if self._leased and job.state in RECOVERING:
            wait = too_soon_to_judge(job, self.rt.config.lock_ttl)
            if wait > 0:  # its worker takes the lease at its first heartbeat: look again then
                await self.delivery.nak(delay=wait)
                return None
            self.held.lease = await self.rt.backend.leases.acquire(job_id, self.rt.worker_id)
        return job if not admit or await self.checks.admitted(job) else None

    async def _claim(self, job: RawJob, *, copied: bool = False) -> bool:
        """Record -> active (CAS; a job taken over: its lease held); False if this delivery
        does not run the job. A ``copied`` record that the CAS finds outdated is read, and the
        claim decided again."""
        rt, held = self.rt, self.held
        recovering = job.state in RECOVERING
        attempt = job.attempt if recovering and job.attempt > 0 else job.attempt + 1
        if self._leased and recovering and held.lease is None:  # someone runs it right now
            await self.checks.lease_held(job.id)
            return False
        try:
            if job.state == JobState.ACTIVE:  # its worker died: record the stall before rerunning
                job = await self._stalled(job)
            if job.stalled_count > rt.config.max_stalled_count:  # a poison job: it kills workers
                held.job = job
                poison = stalled_too_often(job)  # holds no payload: stored readable
                await self._fail_for_good(self.rt.payload(job), poison, stored=poison)
                return False
            active = moved(
                job,
                JobState.ACTIVE,
                f"attempt {attempt} on {rt.worker_id}",
                attempt=attempt,
                started_at=utcnow(),
                run_at=None,
                worker=rt.worker_id,
                leased=self._leased,
                msg_seq=self.delivery.stream_seq,
                progress=0.0,
                progress_label=None,
            )
            listed_late = lists_late(job)
            await held.write(active, "active", job.state, index=not listed_late)
        except CasConflict:  # another writer moved the job
            if copied:  # since the message was sent: read the record and decide again
                again = await self._checked(job.id, admit=False)
                if again is not None:
                    return await self._claim(again)
                await held.release()
                return False
            await held.release()  # let the next delivery re-read it
            await self.delivery.nak()
            return False
        held.job = active
        if listed_late:
            self.settle.late = LateEntry(held, job.state)
            self.settle.late.start(rt.late_entries)
        return True

    async def _stalled(self, job: RawJob) -> RawJob:
        """Record the stall of a job whose worker died or lost the lease (CAS)."""
        stalled = moved(
            job,
            JobState.STALLED,
            "its worker died or lost the lease",
            stalled_count=job.stalled_count + 1,
            leased=False,
        )
        await self.held.write(stalled, "stalled", JobState.ACTIVE)
        self.rt.backend.metrics.stalled()
        await self.rt.middleware.run("on_stall", stalled, job_id=stalled.id)
        log.warning("job stalled", job_id=stalled.id, stalled_count=stalled.stalled_count)
        return stalled

    async def _lease_outlived(self, claimed_at: float) -> bool:
        """Whether the job is still ours after a slow claim (its writes waited out an election):
        a lease taken for a takeover is renewed, and a claim slower than a heartbeat takes the
        lease before the handler runs; False: run nothing."""
        config, held = self.rt.config, self.held
        if not self._leased:
            return True
        if held.lease is None:
            if time.monotonic() - claimed_at < config.heartbeat:
                return True  # the first heartbeat takes the lease
            try:
                await self._renew()
            except Exception as exc:  # LeaseLost, or no answer: leave it to its next delivery
                log.warning("the claim was slow and the lease is not ours; the job is left to "
                            "its next delivery", job_id=self.job_id, error=repr(exc))  # fmt: skip
                return False
            return True
        if await outlived_the_claim(
            claimed_at, config.heartbeat, config.lock_ttl, self._renew, self.job_id
        ):
            return True
        held.lease = None
        return False

    # -- 2. run the handler with heartbeats, inside the middlewares ---------------------------

    async def _run_claimed(self) -> None:
        rt, job = self.rt, self.held.job
        assert job is not None
        # this task runs one job: what it binds is gone with it (its queue: bound for every job)
        structlog.contextvars.bind_contextvars(
            job_id=job.id,
            correlation_id=job.correlation_id,
            attempt=job.attempt,
        )
        # the heartbeat goes on until the attempt's final record is written (Settle.commit):
        # that write may wait out an election, and the lease must not expire meanwhile
        heartbeat = Heartbeat(rt.first_beats, rt.config.lock_ttl, self._renew, self._lost)
        self.settle.heartbeat = heartbeat
        heartbeat.start()
        try:
            rt.backend.metrics.consumed()
            if rt.middleware.wants("before_process"):
                await rt.middleware.run("before_process", job, job_id=job.id)
            started = time.monotonic()
            ran = await rt.middleware.around(job, self.delivery.headers, lambda: self._attempt(job))
            duration = time.monotonic() - started
            self._handler_done(ran=True)
            if self.signal.aborted:
                outcome: str | None = aborted_type(self.signal.reason)
            else:
                outcome = None if ran.error is None else type(ran.error).__name__
            rt.backend.metrics.processed(duration, outcome)
            if rt.middleware.wants("after_process"):
                await rt.middleware.run("after_process", job, duration, outcome, job_id=job.id)
            await self._settle(ran, duration)
        finally:
            heartbeat.stop()

    async def _attempt(self, job: RawJob) -> Ran:
        """Decode the payload and run the handler: what it returned, or what it raised."""
        value: Any = job.data
        try:
            value = self.rt.decoded(job)
            if self.rt.config.secret_fields:  # masked in whatever this task logs from now
                redaction.hide(redaction.values_of(value, self.rt.config.secret_fields))
            return Ran(value, await self._call_handler(job, value))
        except Exception as exc:
            return Ran(value, error=exc)

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
            fencing_token=self.held.revision,  # the claim's write: every claim's is newer
            signal=self.signal,
            on_progress=self._update_progress,
            loop=rt.loop,
        )
        token = current_correlation_id.set(job.correlation_id)
        try:
            if rt.executor is None:
                result = await self._awaited(rt.handler(ctx))
            else:
                call = contextvars.copy_context().run
                result = await rt.loop.run_in_executor(rt.executor, call, rt.handler, ctx)
        finally:
            current_correlation_id.reset(token)
            self._discarded = ctx.discarded is not None
        if ctx.discarded is not None:
            raise Discarded(ctx.discarded)
        return result

    async def _awaited(self, handler_call: Awaitable[Any]) -> Any:
        """Await an async handler in this task (a task of its own per job cost 5 % of the
        worker's instructions); None if abort() had to cancel it (the signal says why)."""
        task = self._in_handler = asyncio.current_task(self.rt.loop)
        assert task is not None
        try:
            result = await handler_call
        except asyncio.CancelledError:
            if not self._handler_cancelled or task.uncancel() > 0:
                raise  # this task itself is cancelled (a stop that gave up waiting for it)
            return None
        finally:
            self._in_handler = None
        if self._handler_cancelled:  # the handler swallowed abort()'s cancel
            task.uncancel()
        return result

    async def _renew(self) -> None:
        """One heartbeat: take the lease (the first: :meth:`Held.take_lease`), or renew it
        (LeaseLost if it is gone, held by another, or the record moved on), and the ack
        deadline."""
        held = self.held
        if held.lease is not None:
            await held.lease.renew()
        elif self._leased and held.job is not None:
            await held.take_lease(self.rt.backend.leases, self.rt.worker_id)
        await self.delivery.in_progress()

    def _lost(self, why: str) -> None:
        if self.held.settling:  # the final write's compare-and-set fences it, not the lease
            message = "lease lost while the outcome is written; stored only if no other worker "
            message += "claimed the job meanwhile"
        else:
            message = "lease lost; this attempt will commit nothing"
        log.warning(message, job_id=self.job_id, reason=why)
        self.abort(f"lease lost: {why}")

    def _update_progress(self, percent: float, label: str | None) -> asyncio.Future[None]:
        if self._progress is None:
            self._progress = ProgressWriter(self._store_progress)
        return self._progress.update(percent, label)

    async def _store_progress(self, percent: float, label: str | None) -> bool:
        try:
            return await self.held.write_progress(percent, label, stopped=self.signal.aborted)
        except CasConflict:
            self._lost("the job record was changed by another writer")
            return False

    # -- 3. settle: the final record by CAS (runtime/settle.py), then the log line and hooks ---

    async def _settle(self, ran: Ran, duration: float) -> None:
        if self._progress is not None:  # one asked for just before the handler returned
            await self._progress.flushed()
        if self.signal.aborted:
            await self._on_aborted()
        elif ran.error is None:
            await self._complete(ran.value, ran.result, duration)
        else:
            await self._fail(ran.value, ran.error)

    async def _complete(self, value: Any, result: Any, duration: float) -> None:
        try:
            raw = self.settle.result_of(result)
        except (PayloadError, CodecError) as exc:
            await self._fail(value, exc)
            return
        done = await self.settle.complete(raw)
        if done is None:
            return
        log.debug(
            "job completed",
            job_id=done.id,
            queue=done.queue,
            attempt=done.attempt,
            seconds=round(duration, 4),
        )
        self.rt.backend.metrics.completed()
        if self.rt.middleware.wants("on_complete"):  # else no copy with the data is made
            job = with_data(done, value, result=result)
            await self.rt.middleware.run("on_complete", job, result, job_id=done.id)

    async def _fail(self, value: Any, error: BaseException) -> None:
        job, config = self.held.job, self.rt.config
        assert job is not None
        failure = self.settle.failure(error)
        # a codec's own error holds no payload (it could not open it): stored readable
        stored = failure if isinstance(error, CodecError) else self.settle.sealed(failure)
        if (
            self._discarded
            or isinstance(error, PayloadError | CodecError)  # not transient: never retried
            or job.attempt >= config.attempts_of(job.max_attempts)
        ):
            await self._fail_for_good(value, failure, stored=stored)
            return
        try:
            delay = retry_delay(config.retries, job.attempt)
        except Exception as exc:  # a broken custom backoff: fail for good rather than loop
            log.exception("the retry backoff failed; failing the job", job_id=job.id)
            await self._fail_for_good(value, self.settle.failure(exc))
            return
        retry = await self.settle.retry(failure, stored, delay)
        if retry is None:
            return
        log.warning(
            "job failed; will retry",
            job_id=retry.id, attempt=retry.attempt,
            max_attempts=config.attempts_of(retry.max_attempts),
            retry_in=round(delay, 3), error=stored.message,
        )  # fmt: skip
        await self.settle.schedule(retry)
        self.rt.backend.metrics.retried()
        await self.rt.middleware.run(
            "on_retry", with_data(retry, value, error=failure), failure, job_id=retry.id
        )

    async def _fail_for_good(
        self, value: Any, failure: JobFailure, *, stored: JobFailure | None = None
    ) -> None:
        """Fail the job for good; ``stored`` is the failure as written (default: sealed)."""
        failed = await self.settle.fail(failure, stored)
        if failed is None:
            return
        assert failed.error is not None
        log.error(
            "job failed", job_id=failed.id, queue=failed.queue, attempt=failed.attempt,
            error_type=failure.type, error=failed.error.message,
        )  # fmt: skip
        if not await self.settle.finish_failed(failed):
            return  # unacked: the redelivery writes the dead letter
        job = with_data(failed, value, error=failure)  # hooks see the plaintext
        self.rt.backend.metrics.failed()
        await self.rt.middleware.run("on_fail", job, failure, job_id=job.id)

    async def _on_aborted(self) -> None:
        if self.signal.reason == CANCELLED:  # the record says cancelled already
            await self.settle.cancelled()
            log.info("job cancelled while running", job_id=self.job_id)
        elif self.signal.reason == SHUTDOWN and await self.settle.hand_back():
            log.info("job handed back at shutdown", job_id=self.job_id)
        # else the lease was lost: the new holder owns the job; commit nothing, ack nothing
