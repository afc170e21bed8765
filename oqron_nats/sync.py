"""The blocking publisher, for synchronous code: Django and Flask views, scripts, a Celery task.

    from oqron_nats.sync import queue

    emails = queue("emails")                      # no I/O; connects on first use
    job = emails.add({"to": "a@example.com"}, delay=60, correlation_id=request_id)
    emails.get_job(job.id), emails.count("waiting")

The same options, errors and trace headers as the async API: each call runs the async
:class:`~oqron_nats.queue.Queue`'s method on one background event loop per process
(:mod:`oqron_nats.loop_thread`), in the calling thread's context, so the caller's correlation id
and OpenTelemetry span reach the job. Any number of threads may call at once. Every call waits at
most ``timeout`` seconds: an add that did not finish by then raises EnqueueError with
``outcome_unknown`` (added again with the same ``job_id``, it is stored once).

Safe under forking servers (gunicorn, uWSGI): a queue defined before the fork connects again in
each worker process on its first call there, and never touches the parent's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Never, Unpack, overload

from typing_extensions import TypeVar

from . import loop_thread
from .bulk import BulkResult
from .client import Client
from .core.config import DisabledBehavior, QueueConfig, QueueOptions, make_config
from .core.errors import ConfigError, EnqueueError, Unavailable
from .core.job import WAITER, AddKeywords, Job, JobState
from .core.records import new_job_id
from .queue import Queue, Skipped

__all__ = ["DEFAULT_TIMEOUT", "Skipped", "SyncQueue", "queue", "shutdown"]

T = TypeVar("T", default=Any)
S = TypeVar("S", default=Never)
R = TypeVar("R")
V = TypeVar("V")

DEFAULT_TIMEOUT = 60.0
"""Seconds a blocking call waits at most (the client's own retry deadline is 30 s)."""

shutdown = loop_thread.shutdown
"""Close the blocking API's connections and stop its loop (done at exit; a later call restarts)."""


@dataclass(eq=False)
class _Bound(Generic[T, S]):
    """A sync queue's async queue on one process's loop, opened once."""

    runtime: loop_thread.LoopThread
    queue: Queue[T, S]
    opening: asyncio.Lock | None = None
    opened: bool = False

    async def ready(self) -> Queue[T, S]:
        """The queue, opened (on the loop: one opening at a time, however many callers)."""
        if not self.opened:
            if self.opening is None:
                self.opening = asyncio.Lock()
            async with self.opening:
                if not self.opened:
                    await self.queue.__aenter__()
                    self.runtime.closers.append(self.queue.close)
                    self.opened = True
        return self.queue


class SyncQueue(Generic[T, S]):
    """A publisher-only queue with blocking methods; created with :func:`queue`."""

    def __init__(
        self,
        config: QueueConfig,
        connect: Callable[[], Client],
        key: object,
        timeout: float,
    ) -> None:
        self.config = config
        self.timeout = timeout
        self._connect = connect
        self._key = key
        self._bound: _Bound[T, S] | None = None

    @property
    def name(self) -> str:
        """The queue's name."""
        return self.config.name

    def _binding(self) -> _Bound[T, S]:
        """This queue on this process's loop (bound again after a fork or a shutdown)."""
        runtime = loop_thread.current()
        bound = self._bound
        if bound is not None and bound.runtime is runtime:
            return bound
        with loop_thread.lock():
            if self._bound is None or self._bound.runtime is not runtime:
                client = runtime.client(self._key, self._connect)
                self._bound = _Bound(runtime, Queue(self.config, None, client))
            return self._bound

    def _call(self, method: Callable[[Queue[T, S]], Coroutine[Any, Any, R]], timeout: float) -> R:
        bound = self._binding()

        async def run() -> R:
            return await method(await bound.ready())

        return bound.runtime.call(run(), timeout)

    def add(self, data: T | Any, **options: Unpack[AddKeywords]) -> Job[T] | S:
        """Add one job and return it (or the existing job if ``job_id`` is taken); see
        ``Queue.add``. EnqueueError with ``outcome_unknown`` if it did not finish in time."""
        job_id = options.get("job_id")
        if job_id is None:  # known, should it time out
            job_id = options["job_id"] = new_job_id()
        try:
            added = self._call(
                lambda q: q.add(data, **options),
                self.timeout,
            )  # fmt: skip
        except loop_thread.CallTimeout:
            raise EnqueueError(
                f"adding job {job_id} to queue {self.name!r} did not finish within "
                f"{self.timeout:g} s; it may still be added: add it again with "
                f"job_id={job_id!r} (stored once)",
                job_id=job_id,
                outcome_unknown=True,
            ) from None
        return _unbound(added)

    def add_bulk(self, items: Iterable[Mapping[str, Any]]) -> BulkResult[T]:
        """Add many jobs, pipelined; each item is ``{"data": ..., "opts": {...}}`` (see
        ``Queue.add_bulk``). Unavailable with ``outcome_unknown`` if it did not finish in time:
        items with a ``job_id`` can be sent again, and are stored once."""
        listed = list(items)
        try:
            result = self._call(lambda q: q.add_bulk(listed), self.timeout)
        except loop_thread.CallTimeout:
            raise Unavailable(
                f"adding {len(listed)} jobs to queue {self.name!r} did not finish within "
                f"{self.timeout:g} s; some may have been added",
                outcome_unknown=True,
            ) from None
        for outcome in result:
            if outcome.job is not None:
                _unbound(outcome.job)
        return result

    def get_job(self, job_id: str) -> Job[T] | None:
        """The job's record, or None if there is no such job (see ``Queue.get_job``)."""
        job = self._read(lambda q: q.get_job(job_id), f"reading job {job_id}")
        return None if job is None else _unbound(job)

    def get_jobs(
        self, status: JobState | str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Job[T]]:
        """Jobs of the queue, the most recent first (see ``Queue.get_jobs``)."""
        jobs = self._read(lambda q: q.get_jobs(status, limit, offset), "listing jobs")
        return [_unbound(job) for job in jobs]

    def count(self, status: JobState | str | None = None) -> int:
        """How many jobs the queue holds, optionally only those in ``status``."""
        return self._read(lambda q: q.count(status), "counting jobs")

    def wait(self, job_id: str, timeout: float) -> Job[T]:
        """Block until the job is completed, failed or cancelled, and return it (no polling);
        TimeoutError after ``timeout`` seconds, JobNotFound for an unknown job."""
        limit = _timeout(timeout, "timeout")
        try:
            job = self._call(lambda q: q.wait(job_id, limit), limit + self.timeout)
        except loop_thread.CallTimeout:
            raise TimeoutError(f"job {job_id} did not finish within {limit:g} s") from None
        return _unbound(job)

    def _read(self, method: Callable[[Queue[T, S]], Coroutine[Any, Any, R]], what: str) -> R:
        try:
            return self._call(method, self.timeout)
        except loop_thread.CallTimeout:
            raise Unavailable(
                f"{what} in queue {self.name!r}: no answer within {self.timeout:g} s"
            ) from None

    def close(self) -> None:
        """Forget this queue's subscriptions (the shared connection stays for other queues)."""
        bound, self._bound = self._bound, None
        if bound is not None and bound.opened and not bound.runtime.closed:
            with contextlib.suppress(loop_thread.CallTimeout):  # nothing of the job's is lost
                bound.runtime.call(bound.queue.close(), self.timeout)

    def __repr__(self) -> str:
        return f"<SyncQueue {self.name!r} publisher-only>"


def _unbound(job: V) -> V:
    """A job as the blocking API returns it: ``job.wait()`` is async, so it is not offered
    (it says to use ``queue.wait(job_id, timeout)``)."""
    if isinstance(job, Job):
        job.__dict__.pop(WAITER, None)
    return job


def _timeout(value: float, what: str) -> float:
    if not (isinstance(value, int | float) and 0 < value < math.inf):
        raise ConfigError(f"{what} must be a positive, finite number of seconds, not {value!r}")
    return float(value)


@overload
def queue(
    name: str,
    *,
    disabled_behavior: Literal["skip"],
    payload: type[T] | None = None,
    url: str | Sequence[str] | None = None,
    namespace: str | None = None,
    client: Callable[[], Client] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Unpack[QueueOptions],
) -> SyncQueue[T, Skipped]: ...
@overload
def queue(
    name: str,
    *,
    disabled_behavior: Literal["hold", "reject"] = "hold",
    payload: type[T] | None = None,
    url: str | Sequence[str] | None = None,
    namespace: str | None = None,
    client: Callable[[], Client] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Unpack[QueueOptions],
) -> SyncQueue[T]: ...
def queue(
    name: str,
    *,
    disabled_behavior: DisabledBehavior = "hold",
    payload: type[T] | None = None,
    url: str | Sequence[str] | None = None,
    namespace: str | None = None,
    client: Callable[[], Client] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Unpack[QueueOptions],
) -> SyncQueue[T, Any]:
    """Define a blocking publisher-only queue; does no I/O (options are checked now).

    The connection is ``Client(url, namespace=namespace)`` (default: ``OQRON_NATS_URL``),
    shared by the sync queues that name the same ones; or, for credentials and the rest,
    ``client``: a function that makes a Client, called once per process (a Client holds its
    process's connection, so it cannot be passed itself). ``timeout`` bounds every call.
    """
    if isinstance(client, Client):
        raise ConfigError(
            "the sync API takes a function that makes the Client (client=lambda: Client(...)): "
            "each process, after a fork too, makes its own connection"
        )
    if client is not None and (url is not None or namespace is not None):
        raise ConfigError("give the connection either as url=/namespace= or as client=, not both")
    config = make_config(name, payload, options, disabled_behavior)
    limit = _timeout(timeout, "timeout")
    if client is None:
        key: object = (None if url is None else tuple([url] if isinstance(url, str) else url),
                       namespace)  # fmt: skip

        def connect() -> Client:
            return Client(url, namespace=namespace)

        return SyncQueue(config, connect, key, limit)
    return SyncQueue(config, client, client, limit)
