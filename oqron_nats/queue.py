"""Queue: add jobs, look them up, and (with a handler) consume them.

``queue(name)`` without a handler is publisher-only: it adds jobs and reads records, and never
creates a consumer, pulls or takes a lease. With a handler it also consumes while started
(``async with q:`` or ``await q.start()``).

The methods' work is done below the public face: a job is built in ``core/records.py`` and
added along ``runtime/adding.py`` (the record first, then the message; a repeated ``job_id``
returns the existing job), listed in ``runtime/listing.py``, waited for in ``runtime/waiting.py``
and managed in ``runtime/management.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Literal, Never, Unpack, cast, overload

from typing_extensions import TypeVar

from .bulk import AddOutcome, BulkResult, ItemResult, add_prepared, prepare
from .client import Client
from .core.checks import check_handler
from .core.codec import PayloadCodec
from .core.config import DisabledBehavior, Duration, QueueConfig, QueueOptions, make_config, seconds
from .core.encryption import Sealer
from .core.errors import (
    ConfigError,
    ConnectionFailed,
    InvalidState,
    JobNotFound,
    OqronError,
    Unavailable,
)
from .core.job import (
    TERMINAL_STATES,
    AddKeywords,
    AddOptions,
    Job,
    JobState,
    Retention,
    bind,
    with_data,
)
from .core.naming import check_name
from .core.records import job_ids, new_job, new_job_id, opened, parse_options, parse_status
from .core.schedules import Schedule, described, new_spec
from .observe.events import Event
from .observe.log import logger
from .runtime import adding, listing, management, waiting
from .runtime.consumer import Consumer
from .runtime.context import JobContext
from .storage.backend import Backend
from .storage.store import CorruptJob, RawJob

__all__ = ["Handler", "Queue", "Skipped", "new_job_id", "parse_options", "queue"]
"""new_job_id and parse_options are defined in core/records.py; tests import them from here."""

log = logger(__name__)

T = TypeVar("T", default=Any)
"""The payload type; Any for a queue defined without one."""
S = TypeVar("S", default=Never)
"""What add() returns instead of a job while the queue is paused: Skipped for "skip" queues."""
Handler = Callable[[JobContext[T]], Awaitable[Any]] | Callable[[JobContext[T]], Any]


@dataclass(frozen=True, slots=True)
class Skipped:
    """What add() returns on a paused queue whose disabled_behavior is "skip": nothing stored."""

    queue: str
    job_id: str
    reason: str = "the queue is paused"


class Queue(Generic[T, S]):
    """A named job queue; created with :func:`queue`."""

    def __init__(
        self, config: QueueConfig, handler: Handler[T] | None = None, client: Client | None = None
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
        self._opening: asyncio.Future[Backend] | None = None

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
        """The queue's backend, opened at first use; the uses that come while it opens wait for
        the same opening (two would follow the queue twice, and close() would stop only one)."""
        if self._backend is not None:
            return self._backend
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open_once())
            self._opening.add_done_callback(_retrieved)
        return await asyncio.shield(self._opening)  # a cancelled use leaves the others theirs

    async def _open_once(self) -> Backend:
        backend = await self.client._open_queue(self.config)
        self._unfollow = await backend.follow()
        self._backend = backend
        return backend

    # -- adding ---------------------------------------------------------------------------

    async def add(self, data: T | Any, **options: Unpack[AddKeywords]) -> Job[T] | S:
        """Add one job; return it (or the existing job if ``job_id`` is taken). The options:
        ``job_id``, ``delay``, ``priority``, ``attempts``, ``correlation_id``,
        ``remove_on_complete``, ``remove_on_fail``, ``depends_on``, ``parent_failure_policy``.

        While the queue is paused, disabled_behavior decides: "hold" stores the job as paused
        (resume() releases it), "reject" raises QueuePaused, "skip" stores nothing and returns
        Skipped.
        """
        parsed = parse_options({**options, "depends_on": job_ids(options.get("depends_on"))})
        value, job = self._new_job(data, parsed)
        backend = await self._open_to_add()
        if isinstance(backend, Unavailable):
            raise adding.not_opened(job.id, backend) from backend
        return await self._add(backend, value, job)

    async def _open_to_add(self) -> Backend | Unavailable:
        """The backend, or why NATS did not open the queue in time: an add then fails as not
        added (EnqueueError); a first connection that failed (ConnectionFailed) is raised."""
        try:
            return await self._open()
        except ConnectionFailed:
            raise  # no server reachable at all: said as for every first use
        except Unavailable as exc:
            return exc

    async def _add(self, backend: Backend, value: T, job: RawJob) -> Job[T] | S:
        admitted = await self._admitted(backend, job)
        if admitted is None:
            return cast(S, Skipped(self.name, job.id))
        return self._returned(await adding.enqueue(backend, admitted), value)

    def _admitted(self, backend: Backend, job: RawJob) -> Awaitable[RawJob | None]:
        """The job to store (see :func:`adding.admit`), its size checked against the server's
        limit first; None if the paused queue skips it."""
        adding.check_server_limit(backend, job, sealed=self._sealing().active)
        return adding.admit(backend, self.config, job)

    def _returned(self, added: adding.Added, value: T) -> Job[T]:
        """The job an add returns: as added, with its payload; or as it existed already."""
        return bind(with_data(added.job, value), self) if added.created else self._typed(added.job)

    async def add_bulk(self, items: Iterable[Mapping[str, Any]]) -> BulkResult[T]:
        """Add many jobs, pipelined; each item is ``{"data": ..., "opts": {...}}``.

        A bad item is reported in its outcome and does not stop the others.
        """
        outcomes, prepared = prepare(items, self._new_job)
        if not prepared:
            return BulkResult(outcomes)
        backend = await self._open_to_add()
        if isinstance(backend, Unavailable):  # each item fails as its own add() would
            for index, _, job in prepared:
                outcomes[index] = AddOutcome(index, error=adding.not_opened(job.id, backend))
            return BulkResult(outcomes)
        await add_prepared(outcomes, prepared, functools.partial(self._add_many, backend))
        return BulkResult(outcomes)

    async def _add_many(
        self, backend: Backend, items: list[tuple[T, RawJob]]
    ) -> list[ItemResult[T]]:
        """Jobs of add_bulk(), admitted one by one, then added at once (``enqueue_many``): for
        each, in order, the job, why it was not added, or None if the queue skipped it."""
        results: dict[int, ItemResult[T]] = {}
        admitted: list[tuple[int, T, RawJob]] = []
        for k, (value, job) in enumerate(items):
            try:
                to_add = await self._admitted(backend, job)
            except OqronError as exc:
                results[k] = exc
                continue
            if to_add is None:
                results[k] = None  # skipped: the queue is paused
            else:
                admitted.append((k, value, to_add))
        added = await adding.enqueue_many(backend, [job for _, _, job in admitted])
        for (k, value, _), outcome in zip(admitted, added, strict=True):
            if isinstance(outcome, OqronError):
                results[k] = outcome
            elif isinstance(outcome, Exception):
                raise outcome  # not an add's error: a bug, raised as add() would
            else:
                results[k] = self._returned(outcome, value)
        return [results[k] for k in range(len(items))]

    def _new_job(self, data: object, options: AddOptions) -> tuple[T, RawJob]:
        """Validate and encode a job (no I/O)."""
        return new_job(self.config, self._codec, self._sealing(), data, options)

    # -- reading --------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job[T] | None:
        """The job's record, or None if there is no such job (CorruptRecord if its stored
        record does not decode); on a cluster, as the leader of the records has it."""
        check_name(job_id, "job id")
        backend = await self._open()
        record = await backend.store.get(job_id, fresh=True)
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
        listing.check_page(limit, offset)
        page = await listing.newest(await self._open(), state, limit, offset)
        return [self._typed(job) for job in page.jobs], page.corrupt

    async def count(self, status: JobState | str | None = None) -> int:
        """How many jobs the queue holds, optionally only those in ``status`` (from the index)."""
        state = parse_status(status)
        return await listing.count(await self._open(), state)

    async def oldest_waiting(self) -> datetime | None:
        """When the job that has waited longest became waiting; None if none waits."""
        return await (await self._open()).store.entered_first(JobState.WAITING)

    def _typed(self, job: RawJob) -> Job[T]:
        """The job decoded for the caller, who can await ``job.wait()`` (bound to this queue)."""
        return bind(opened(job, self._codec, self._sealing()), self)

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
        async with asyncio.timeout(timeout):
            await waiting.until_idle(backend)

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

    async def remove(self, job_id: str) -> None:
        """Remove one job that is not running (waiting, delayed, paused, failed, finished ...)
        with its record, index entry, messages and dead letter.

        InvalidState if it is active (cancel it first; a worker that claims it while this
        runs wins), JobNotFound if there is no such job (or it is already removed).
        """
        check_name(job_id, "job id")
        await management.remove(await self._open(), job_id)

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

    # -- repeating jobs (storage/schedules.py, runtime/schedules.py) ---------------------------

    async def schedule(
        self,
        name: str,
        data: T | Any = None,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        tz: str | None = None,
        priority: int | None = None,
        attempts: int | None = None,
        remove_on_complete: Retention | None = None,
        remove_on_fail: Retention | None = None,
    ) -> Schedule:
        """Define (or replace) the repeating schedule ``name``: a job of ``data`` at every tick of
        ``cron`` (5 or 6 fields, in ``tz``) or ``every`` (whole seconds, at least 1), fired by
        the server itself; each tick's job id is ``<name>-<tick time>``."""
        spec = new_spec(
            self.config, self._codec, self._sealing(), name, data, cron=cron, every=every,
            tz=tz, priority=priority, attempts=attempts,
            remove_on_complete=remove_on_complete, remove_on_fail=remove_on_fail,
        )  # fmt: skip
        backend = await self._open()
        lane = self.config.priority if priority is None else priority
        await backend.schedules.define(spec, lane)
        return described(spec, self._codec, self._sealing())

    async def unschedule(self, name: str) -> bool:
        """Stop the repeating schedule ``name``; False if there was none (jobs made stay)."""
        check_name(name, "schedule name")
        return await (await self._open()).schedules.remove(name)

    async def schedules(self) -> list[Schedule]:
        """The queue's repeating schedules, by name."""
        specs = await (await self._open()).schedules.list()
        return [described(spec, self._codec, self._sealing()) for spec in specs]

    # -- events ---------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every lifecycle event of the queue's jobs, from any process, as it happens."""
        backend = await self._open()
        async with contextlib.aclosing(waiting.events(backend, self._sealing())) as stream:
            async for event in stream:
                yield event

    async def wait(self, job_id: str, timeout: float | None = None) -> Job[T]:
        """Wait until the job is completed, failed or cancelled, and return it (no polling).

        A job removed as it finished (``remove_on_complete=True``) is still returned for
        TOMBSTONE_TTL seconds after. Raises TimeoutError after ``timeout`` seconds, and
        JobNotFound for an unknown job.
        """
        check_name(job_id, "job id")
        backend = await self._open()
        async with asyncio.timeout(timeout):
            return self._typed(await waiting.finished(backend, job_id))

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
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()  # an opening under way would follow the queue after this
            await asyncio.wait({self._opening})
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


def _retrieved(opening: asyncio.Future[Backend]) -> None:
    """Mark a failed opening's error as seen: every use that awaited it got it raised, and a use
    cancelled meanwhile must not leave it to be logged as never retrieved."""
    if not opening.cancelled():
        opening.exception()
