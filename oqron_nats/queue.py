"""Queue: add jobs, look them up, and (with a handler) consume them.

``queue(name)`` without a handler is publisher-only: it adds jobs and reads records, and never
creates a consumer, pulls or takes a lease. With a handler it also consumes while started
(``async with q:`` or ``await q.start()``).

``add`` stores the record first (a KV create, which fails if the id exists) and then publishes
the job id. A repeated ``job_id`` returns the existing job; if that job was never claimed, its
message is sent again with the same message id, which finishes an add that failed half-way and
is a no-op otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Literal, Never, Unpack, cast, overload

import msgspec
from typing_extensions import TypeVar

from ._nats import CasConflict, JetStreamError
from .bulk import AddOutcome, BulkResult, split_item
from .client import Client
from .core.checks import check_handler, check_priority, check_retention
from .core.codec import PayloadCodec, check_size, stored_limit
from .core.config import (
    DisabledBehavior,
    Duration,
    QueueConfig,
    QueueOptions,
    make_config,
    seconds,
)
from .core.correlation import current_correlation_id
from .core.encryption import Sealer, unreadable
from .core.errors import (
    ConfigError,
    EnqueueError,
    InvalidInput,
    InvalidOption,
    InvalidState,
    JobNotFound,
    OqronError,
    QueuePaused,
    Unavailable,
)
from .core.job import (
    TERMINAL_STATES,
    AddOptions,
    Job,
    JobState,
    ParentFailurePolicy,
    Retention,
    bind,
    moved,
    with_data,
)
from .core.naming import check_name
from .observe.events import TERMINAL_EVENTS, Event
from .observe.log import logger
from .observe.tracing import mark_failed
from .runtime import dag, management
from .runtime.consumer import Consumer
from .runtime.context import JobContext
from .storage.backend import Backend
from .storage.index import newest_across
from .storage.store import CorruptJob, RawJob

log = logger(__name__)

T = TypeVar("T", default=Any)
"""The payload type; Any for a queue defined without one."""
S = TypeVar("S", default=Never)
"""What add() returns instead of a job while the queue is paused: Skipped for "skip" queues."""
Handler = Callable[[JobContext[T]], Awaitable[Any]] | Callable[[JobContext[T]], Any]

PAGE_SLACK = 16
"""Extra index entries read per page, for entries of jobs that moved on meanwhile."""
BULK_WINDOW = 512
"""How many add_bulk() jobs are in flight at once."""
MAX_CORRELATION_ID = 128
MAX_DELAY = 100 * 365.25 * 86400
"""The longest delay add() takes, in seconds: a run time far inside what a schedule can name."""


def new_job_id() -> str:
    """A unique, time-ordered job id: 12 hex digits of milliseconds, 20 of randomness."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """What add() returns on a paused queue whose disabled_behavior is "skip": nothing stored."""

    queue: str
    job_id: str
    reason: str = "the queue is paused"


class Queue(Generic[T, S]):
    """A named job queue; created with :func:`queue`."""

    def __init__(
        self,
        config: QueueConfig,
        handler: Handler[T] | None = None,
        client: Client | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self._client = client
        self._owns_client = client is None
        self._codec: PayloadCodec[T] = PayloadCodec(config.payload, config.max_payload_size)
        self._sealer: Sealer | None = None
        self._backend: Backend | None = None
        self._consumer: Consumer | None = None
        self._stopping_consumer: Consumer | None = None
        self._unfollow: Callable[[], Awaitable[None]] | None = None

    @property
    def name(self) -> str:
        """The queue's name."""
        return self.config.name

    @property
    def client(self) -> Client:
        """The client this queue uses (from OQRON_NATS_URL unless one was given)."""
        if self._client is None:
            self._client = Client()
        return self._client

    @property
    def is_consuming(self) -> bool:
        """Whether this queue's handler is running in this process."""
        return self._consumer is not None

    def _sealing(self) -> Sealer:
        """What seals and opens this queue's stored values: its codec, else its client's."""
        if self._sealer is None:
            codec = self.config.codec if self.config.codec is not None else self.client.codec
            self._sealer = Sealer(codec, self.client.namespace, self.name)
            self._codec.sealer = self._sealer
        return self._sealer

    async def _open(self) -> Backend:
        if self._backend is None:
            backend = await self.client._open_queue(self.config)
            self._unfollow = await backend.control.follow()
            await backend.control.read()  # subscribed first: no change slips between the two
            self._backend = backend
        return self._backend

    # -- adding ---------------------------------------------------------------------------

    async def add(
        self,
        data: T | Any,
        *,
        job_id: str | None = None,
        delay: Duration | None = None,
        priority: int | None = None,
        attempts: int | None = None,
        correlation_id: str | None = None,
        remove_on_complete: Retention | None = None,
        remove_on_fail: Retention | None = None,
        depends_on: Sequence[str] | None = None,
        parent_failure_policy: ParentFailurePolicy | None = None,
    ) -> Job[T] | S:
        """Add one job; return it (or the existing job if ``job_id`` is taken).

        While the queue is paused, disabled_behavior decides: "hold" stores the job as paused
        (resume() releases it), "reject" raises QueuePaused, "skip" stores nothing and returns
        Skipped.
        """
        options = parse_options(
            {"job_id": job_id, "delay": delay, "priority": priority, "attempts": attempts,
             "correlation_id": correlation_id, "remove_on_complete": remove_on_complete,
             "remove_on_fail": remove_on_fail,
             "depends_on": _job_ids(depends_on),
             "parent_failure_policy": parent_failure_policy}
        )  # fmt: skip
        value, job = self._new_job(data, options)
        backend = await self._open()
        self._check_server_limit(backend, job)
        return await self._add(backend, value, job)

    async def _add(self, backend: Backend, value: T, job: RawJob) -> Job[T] | S:
        if backend.control.state.paused:
            if self.config.disabled_behavior == "reject":
                raise QueuePaused(f"queue {self.name!r} is paused and rejects new jobs")
            if self.config.disabled_behavior == "skip":
                return cast(S, Skipped(self.name, job.id))
            if not job.depends_on:  # a child waits for its parents either way
                job = moved(job, JobState.PAUSED, "held: the queue is paused")
        if backend.admission is not None:
            await backend.admission.admit(len(msgspec.json.encode(job)))
        if job.depends_on:
            await dag.check_parents(backend, job.id, job.depends_on)
            await backend.control.note_flows()
        return await self._enqueue(backend, value, job)

    async def add_bulk(self, items: Iterable[Mapping[str, Any]]) -> BulkResult[T]:
        """Add many jobs, pipelined; each item is ``{"data": ..., "opts": {...}}``.

        A bad item is reported in its outcome and does not stop the others.
        """
        outcomes: list[AddOutcome[T]] = []
        prepared: list[tuple[int, T, RawJob]] = []
        for index, item in enumerate(items):
            try:
                data, opts = split_item(item)
                value, job = self._new_job(data, parse_options(opts))
            except InvalidInput as exc:
                outcomes.append(AddOutcome(index, error=exc))
                continue
            outcomes.append(AddOutcome(index))
            prepared.append((index, value, job))
        if not prepared:
            return BulkResult(outcomes)
        backend = await self._open()
        window = asyncio.Semaphore(BULK_WINDOW)

        async def add_one(index: int, value: T, job: RawJob) -> None:
            async with window:
                try:
                    self._check_server_limit(backend, job)
                    added = await self._add(backend, value, job)
                    if isinstance(added, Skipped):
                        outcomes[index] = AddOutcome(index, skipped=True)
                    else:
                        outcomes[index] = AddOutcome(index, job=cast("Job[T]", added))
                except OqronError as exc:
                    outcomes[index] = AddOutcome(index, error=exc)

        await asyncio.gather(*(add_one(*p) for p in prepared))
        return BulkResult(outcomes)

    def _new_job(self, data: object, options: AddOptions) -> tuple[T, RawJob]:
        """Validate and encode a job (no I/O)."""
        job_id = (
            check_name(options.job_id, "job id") if options.job_id is not None else new_job_id()
        )
        value, raw = self._codec.encode(data)  # the size limit applies to this plaintext
        raw = self._sealing().seal(job_id, "data", raw)
        now = datetime.now(UTC)
        delay = 0.0 if options.delay is None else _delay_seconds(options.delay)
        priority = (
            self.config.priority
            if options.priority is None
            else check_priority(options.priority, InvalidOption)
        )
        if options.attempts is not None and options.attempts < 1:
            raise InvalidOption(f"attempts must be at least 1, not {options.attempts}")
        parents = [check_name(p, "parent job id") for p in dict.fromkeys(options.depends_on or [])]
        state = JobState.DELAYED if delay > 0 else JobState.WAITING
        job: RawJob = Job(
            id=job_id,
            queue=self.name,
            state=JobState.WAITING_CHILDREN if parents else state,
            data=msgspec.Raw(raw),
            created_at=now,
            run_at=now + timedelta(seconds=delay) if delay > 0 else None,
            correlation_id=_correlation_id(options.correlation_id),
            max_attempts=options.attempts or self.config.stamped_attempts,
            priority=priority,
            tags=list(self.config.tags),
            remove_on_complete=_retention(
                options.remove_on_complete, self.config.remove_on_complete
            ),
            remove_on_fail=_retention(options.remove_on_fail, self.config.remove_on_fail),
            depends_on=parents,
            parent_failure_policy=options.parent_failure_policy or "block",
        )
        return value, moved(job, job.state, "added")

    def _check_server_limit(self, backend: Backend, job: RawJob) -> None:
        """Re-check the payload size against the connected server's limit (an encrypted one:
        its sealed size, the plaintext having been held to max_payload_size)."""
        if self._sealing().active:
            check_size(job.data, stored_limit(backend.conn.max_payload), "the encrypted payload")
        else:
            check_size(job.data, backend.payload_limit)

    async def _enqueue(self, backend: Backend, value: T, job: RawJob) -> Job[T]:
        """Store and publish a job in its PRODUCER span, counted as one message sent."""
        span, job.trace = backend.tracing.start_publish(self.name, job.id, job.correlation_id)
        try:
            added = await self._store_and_publish(backend, value, job)
        except Exception as exc:
            mark_failed(span, exc)
            backend.metrics.sent(exc)
            raise
        finally:
            span.end()
        backend.metrics.sent()
        return added

    async def _store_and_publish(self, backend: Backend, value: T, job: RawJob) -> Job[T]:
        # The record first, then the message, never both at once: a worker that met the message
        # first could not tell how long to wait for the record (a server restart stretches its
        # write up to the publish deadline). Tried, measured 1.3x faster, and the chaos run lost
        # a job that way.
        try:
            await backend.store.create(job)
        except CasConflict:
            return await self._existing(backend, job.id)
        except Unavailable as exc:
            raise EnqueueError(
                f"storing job {job.id} failed: {exc}",
                job_id=job.id,
                outcome_unknown=exc.outcome_unknown,
            ) from exc
        except JetStreamError as exc:
            raise EnqueueError(
                f"storing job {job.id} failed: {exc}", job_id=job.id, outcome_unknown=False
            ) from exc
        if job.state == JobState.WAITING_CHILDREN:
            await dag.link(backend, job)
            return await self._existing(backend, job.id)  # link may have released it
        if job.state == JobState.PAUSED:
            await self._hold(backend, job)
        else:
            await backend.broker.enqueue(job)
        return self._own(with_data(job, value))

    async def _hold(self, backend: Backend, job: RawJob) -> None:
        """Mark a job held; if the queue was resumed meanwhile, release it at once."""
        await backend.broker.hold(job)
        if not (await backend.control.read()).paused:  # resumed meanwhile: release it now
            await management.release(backend, job.id, purge_marker=False)

    async def _existing(self, backend: Backend, job_id: str) -> Job[T]:
        record = await backend.store.get(job_id)
        if record is None:  # deleted between our create and this read: a new add will do
            raise EnqueueError(
                f"job {job_id} was removed while it was being added; add it again",
                job_id=job_id,
                outcome_unknown=False,
            )
        if record.job.state in (JobState.WAITING, JobState.DELAYED):
            # finish an add that may have stopped half-way: its index entry and its message
            await backend.store.index.moved(record.job, None, record.job.state)
            await backend.broker.enqueue(record.job)
        elif record.job.state == JobState.WAITING_CHILDREN:
            await dag.link(backend, record.job)  # idempotent: edges, then a decision
            record = await backend.store.get(job_id) or record
        return self._typed(record.job)

    # -- reading --------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job[T] | None:
        """The job's record, or None if there is no such job (CorruptRecord if its stored
        record does not decode)."""
        check_name(job_id, "job id")
        backend = await self._open()
        record = await backend.store.get(job_id)
        return None if record is None else self._typed(record.job)

    async def get_jobs(
        self, status: JobState | str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Job[T]]:
        """Jobs of the queue, the most recent first, optionally only those in ``status``.

        "Recent" is when a job entered its current state (read from the state index, not by
        scanning records); ``offset`` skips that many of the most recent. A record that does
        not decode is left out with a warning (``oqron jobs list`` shows it); a job whose
        payload does not match the queue's type is listed with ``data_error`` set.
        """
        jobs, corrupt = await self._listing(status, limit, offset)
        for bad in corrupt:  # shown as such by `oqron jobs list`; here they are left out
            log.warning("corrupt job record left out", job_id=bad.id, size=bad.size,
                        error=bad.error)  # fmt: skip
        return jobs

    async def _listing(
        self, status: JobState | str | None, limit: int, offset: int
    ) -> tuple[list[Job[T]], list[CorruptJob]]:
        """A page of jobs (see get_jobs), and the records on it that do not decode."""
        state = parse_status(status)
        for name, value in (("limit", limit), ("offset", offset)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidOption(f"{name} must be an int >= 0, not {value!r}")
        backend = await self._open()
        states = [state] if state is not None else list(JobState)
        want = offset + limit + PAGE_SLACK  # a few entries may belong to jobs that moved on
        pages = await asyncio.gather(*(backend.store.index.newest(s, want) for s in states))
        listing = await backend.store.listed(newest_across(pages, want))
        page = [self._typed(job) for job in listing.jobs[offset : offset + limit]]
        return page, listing.corrupt

    async def count(self, status: JobState | str | None = None) -> int:
        """How many jobs the queue holds, optionally only those in ``status`` (from the index)."""
        state = parse_status(status)
        backend = await self._open()
        states = [state] if state is not None else list(JobState)
        return sum(await asyncio.gather(*(backend.store.index.count(s) for s in states)))

    async def oldest_waiting(self) -> datetime | None:
        """When the job that has waited longest became waiting; None if none waits."""
        return await (await self._open()).store.entered_first(JobState.WAITING)

    def _typed(self, job: RawJob) -> Job[T]:
        """The job with its payload decoded (and its result and error decrypted); a payload
        that does not match the payload type (it failed for that) or cannot be decrypted keeps
        its raw JSON value, with ``data_error`` saying why (a result: ``result_error``)."""
        sealer = self._sealing()
        changes: dict[str, Any] = {}
        raw: bytes | msgspec.Raw = job.data
        try:
            raw = sealer.open(job.id, "data", job.data)
            data = self._codec.decode(raw)
        except Exception as exc:  # CodecError, PayloadError, or whatever a codec raised
            changes["data_error"] = unreadable(exc)
            try:
                data = msgspec.json.decode(raw)
            except msgspec.DecodeError:  # a codec that opened it into something else
                data = msgspec.json.decode(job.data)
        if job.result is not None:
            try:
                changes["result"] = sealer.open_value(job.id, "result", job.result)
            except Exception as exc:
                changes["result_error"] = unreadable(exc)
        if job.error is not None and job.error.sealed is not msgspec.UNSET:
            with contextlib.suppress(Exception):  # unopened, it reads "(encrypted)"
                changes["error"] = sealer.open_failure(job.id, job.error)
        return self._own(with_data(job, data, **changes))

    def _own(self, job: Job[T]) -> Job[T]:
        return bind(job, self)  # lets the caller await job.wait()

    # -- managing -------------------------------------------------------------------------

    async def pause(self) -> None:
        """Pause the queue in the whole cluster: running jobs finish, nothing new starts."""
        await management.pause(await self._open())

    async def resume(self) -> int:
        """Resume the queue in the whole cluster; returns how many held jobs it released."""
        return await management.resume(await self._open())

    async def is_paused(self) -> bool:
        """Whether the queue is paused (read from the cluster's shared state)."""
        return (await (await self._open()).control.read()).paused

    async def drain(self, timeout: float | None = None) -> None:
        """Pause the queue, then wait until no job of it is active; it stays paused.

        Raises TimeoutError after ``timeout`` seconds (the queue stays paused).
        """
        backend = await self._open()
        await management.pause(backend)
        async with (
            asyncio.timeout(timeout),
            backend.store.events.listen(backend.names.events) as inbox,
        ):
            while await management.active_jobs(backend):  # listening first: no end slips by
                with contextlib.suppress(TimeoutError):  # re-count now and then regardless
                    async with asyncio.timeout(1.0):
                        while (await inbox.get()).name == "progress":
                            pass

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job from any process; False if it had already finished.

        A queued or delayed job never runs; a running job's ``ctx.signal`` fires on the node
        that runs it, and the job ends cancelled, neither completed nor retried.
        """
        check_name(job_id, "job id")
        return await management.cancel(await self._open(), job_id)

    async def retry(self, job_id: str) -> None:
        """Run a failed or cancelled job again: same id, attempts reset, timeline kept."""
        check_name(job_id, "job id")
        allowed = frozenset({JobState.FAILED, JobState.CANCELLED})
        await management.run_again(await self._open(), job_id, "retried", allowed=allowed)

    async def rerun(self, job_id: str) -> None:
        """Run a finished job (completed, failed or cancelled) again under the same id."""
        check_name(job_id, "job id")
        await management.run_again(await self._open(), job_id, "rerun", allowed=TERMINAL_STATES)

    async def promote(self, job_id: str) -> None:
        """Run a delayed job now."""
        check_name(job_id, "job id")
        await management.promote(await self._open(), job_id)

    async def obliterate(self, force: bool = False) -> int:
        """Remove every job of the queue, with its records, schedules and dead letters.

        Refuses (InvalidState) while jobs are active, unless ``force``; returns how many went.
        """
        return await management.obliterate(await self._open(), force)

    async def retry_all_failed(self) -> int:
        """Retry every job that is failed now (a snapshot, so it ends); returns how many."""
        failed = [job.id for job in await self.get_jobs(JobState.FAILED, limit=sys.maxsize)]
        retried = 0
        for job_id in failed:
            with contextlib.suppress(InvalidState, JobNotFound):  # changed meanwhile
                await self.retry(job_id)
                retried += 1
        return retried

    # -- events ---------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every lifecycle event of the queue's jobs, from any process, as it happens."""
        backend = await self._open()
        sealer = self._sealing()
        async with backend.store.events.listen(backend.names.events) as inbox:
            while True:
                event = await inbox.get()
                if event.error is not None and event.error.sealed is not msgspec.UNSET:
                    with contextlib.suppress(Exception):  # unopened, it reads "(encrypted)"
                        error = sealer.open_failure(event.job_id, event.error)
                        event = msgspec.structs.replace(event, error=error)
                yield event

    async def wait(self, job_id: str, timeout: float | None = None) -> Job[T]:
        """Wait until the job is completed, failed or cancelled, and return it (no polling).

        A job removed as it finished (``remove_on_complete=True``) is still returned for
        TOMBSTONE_TTL seconds after. Raises TimeoutError after ``timeout`` seconds, and
        JobNotFound for an unknown job.
        """
        check_name(job_id, "job id")
        backend = await self._open()
        async with (
            asyncio.timeout(timeout),
            backend.store.events.listen(backend.names.job_events(job_id)) as inbox,
        ):
            while True:  # subscribed first, then read: the end cannot slip between the two
                record = await backend.store.get(job_id)
                if record is None:
                    return self._typed(await self._removed(backend, job_id))
                if record.job.is_terminal:
                    return self._typed(record.job)
                while (await inbox.get()).name not in TERMINAL_EVENTS:
                    pass

    async def _removed(self, backend: Backend, job_id: str) -> RawJob:
        """The last record of a job removed when it finished (retention); JobNotFound if none."""
        last = await backend.store.removed(job_id)
        if last is None:
            raise JobNotFound(f"there is no job {job_id!r} in queue {self.name!r}")
        return last

    # -- consuming ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming with the handler (connects first)."""
        if self.handler is None:
            raise ConfigError(f"queue {self.name!r} is publisher-only: it has no handler to run")
        if self._consumer is not None:
            return
        self._sealing()  # the consumer seals with it; a bad keys file fails before connecting
        backend = await self._open()
        consumer = Consumer(self.config, backend, self._codec, self.handler)
        await consumer.start()
        self._consumer = consumer

    async def stop(self, timeout: Duration = 25.0) -> None:
        """Stop consuming: running jobs get ``timeout`` seconds to finish, then are handed back."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._stopping_consumer = consumer
            try:
                await consumer.stop(seconds(timeout, "timeout"))
            finally:
                self._stopping_consumer = None

    def hurry(self) -> None:
        """Cut a running stop() short: the jobs still running are handed back now."""
        if self._stopping_consumer is not None:
            self._stopping_consumer.hurry()

    async def close(self) -> None:
        """Stop consuming and close the connection if this queue opened it."""
        await self.stop()
        if self._unfollow is not None:
            await self._unfollow()
            self._unfollow = None
        self._backend = None
        if self._owns_client and self._client is not None:
            await self._client.close()

    async def __aenter__(self) -> Queue[T, S]:
        if self.handler is not None:
            await self.start()
        else:
            await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        kind = "consumer" if self.handler else "publisher-only"
        return f"<Queue {self.name!r} {kind} strategy={self.config.strategy}>"


@overload
def queue(
    name: str,
    handler: Handler[T] | None = None,
    *,
    disabled_behavior: Literal["skip"],
    payload: type[T] | None = None,
    client: Client | None = None,
    **options: Unpack[QueueOptions],
) -> Queue[T, Skipped]: ...
@overload
def queue(
    name: str,
    handler: Handler[T] | None = None,
    *,
    disabled_behavior: Literal["hold", "reject"] = "hold",
    payload: type[T] | None = None,
    client: Client | None = None,
    **options: Unpack[QueueOptions],
) -> Queue[T]: ...
def queue(
    name: str,
    handler: Handler[T] | None = None,
    *,
    disabled_behavior: DisabledBehavior = "hold",
    payload: type[T] | None = None,
    client: Client | None = None,
    **options: Unpack[QueueOptions],
) -> Queue[T, Any]:
    """Define a queue; without a handler it is publisher-only. Does no I/O.

    ``payload`` is the job data's type (validated on add, decoded strictly for the handler);
    ``client`` the connection (default: from OQRON_NATS_URL); ``disabled_behavior`` what add()
    does while the queue is paused; ``options`` are QueueOptions.
    """
    if handler is not None:
        check_handler(handler)
    return Queue(make_config(name, payload, options, disabled_behavior), handler, client)


def parse_options(options: Mapping[str, Any] | None) -> AddOptions:
    """Typed add() options from a mapping (unknown keys and wrong types are InvalidOption)."""
    given = {k: v for k, v in (options or {}).items() if v is not None}
    try:
        return msgspec.convert(given, AddOptions)
    except msgspec.ValidationError as exc:
        raise InvalidOption(f"invalid add option: {exc}") from None


def parse_status(status: JobState | str | None) -> JobState | None:
    """A JobState from a state or its value; None means every state."""
    if status is None:
        return None
    try:
        return JobState(status)
    except ValueError:
        states = ", ".join(s.value for s in JobState)
        raise InvalidOption(f"unknown status {status!r}; expected one of: {states}") from None


def _retention(given: Retention | None, queue_wide: Retention | None) -> Retention | None:
    """A job's retention: its own option, else the adding queue's setting (None: the worker's)."""
    if given is None:
        return queue_wide
    return check_retention(given, "remove_on_complete/remove_on_fail", InvalidOption)


def _job_ids(ids: Sequence[str] | None) -> list[str] | None:
    if isinstance(ids, str):
        raise InvalidOption("depends_on must be a list of job ids, not a string")
    return None if ids is None else list(ids)


def _delay_seconds(value: float | timedelta) -> float:
    try:
        delay = seconds(value, "delay")
    except ConfigError as exc:
        raise InvalidOption(str(exc)) from None
    if delay > MAX_DELAY:
        raise InvalidOption(
            f"delay must be at most {MAX_DELAY:.0f} seconds (100 years), not {value!r}"
        )
    return delay


def _correlation_id(given: str | None) -> str:
    value = given if given is not None else current_correlation_id.get() or uuid.uuid4().hex
    if not (
        0 < len(value) <= MAX_CORRELATION_ID
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        raise InvalidOption(
            f"correlation_id must be 1-{MAX_CORRELATION_ID} printable ASCII characters, no spaces"
        )
    return value
