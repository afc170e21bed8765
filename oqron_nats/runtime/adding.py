"""The add path in the publisher's process, once the job is built (``core/records.py``).

While the queue is paused, its ``disabled_behavior`` decides; a bounded queue admits the job
or refuses it with QueueFull; then the record is stored first (a KV create, which fails if the
id exists) and the job's message published. A repeated id returns the existing job; if that job
was never claimed, its index entry and message are sent again (the same message id), which
finishes an add that failed half-way and is a no-op otherwise. An add whose message went
unanswered (a connection lost: the entry sent just before it may be lost with it) is finished
the same way. ``add_bulk`` sends a chunk's records at once, then their messages at once
(:func:`enqueue_many`). See the README's Guarantees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from .._nats import CasConflict, JetStreamError
from ..core.codec import check_size, stored_limit
from ..core.config import QueueConfig
from ..core.errors import EnqueueError, QueuePaused, Unavailable
from ..core.job import JobState, moved
from ..observe.tracing import mark_failed
from ..storage.backend import Backend
from ..storage.store import RawJob, Stored
from . import dag, management

if TYPE_CHECKING:
    from opentelemetry.trace import Span

SIMPLE_STATES = frozenset({JobState.WAITING, JobState.DELAYED})
"""The states of new jobs whose adds :func:`enqueue_many` makes at once: a record, then a
message (a paused queue's held job and a child waiting for its parents go their own way)."""


class Added(NamedTuple):
    """The job as stored, and whether this add created it (else it existed already)."""

    job: RawJob
    created: bool


def check_server_limit(backend: Backend, job: RawJob, *, sealed: bool) -> None:
    """Re-check the payload size against the connected server's limit (an encrypted one:
    its sealed size, the plaintext having been held to max_payload_size)."""
    if sealed:
        check_size(job.data, stored_limit(backend.max_payload), "the encrypted payload")
    else:
        check_size(job.data, backend.payload_limit)


async def admit(backend: Backend, config: QueueConfig, job: RawJob) -> RawJob | None:
    """The job to store, held if the queue is paused; None if a paused queue skips it.

    QueuePaused if a paused queue rejects it, QueueFull over the queue's bounds, and
    JobNotFound or InvalidState if a parent is missing or cannot finish.
    """
    if backend.control.state.paused:
        if config.disabled_behavior == "reject":
            raise QueuePaused(f"queue {config.name!r} is paused and rejects new jobs")
        if config.disabled_behavior == "skip":
            return None
        if not job.depends_on:  # a child waits for its parents either way
            job = moved(job, JobState.PAUSED, "held: the queue is paused")
    if backend.admission is not None:
        await backend.admission.admit(len(msgspec.json.encode(job)))
    if job.depends_on:
        await dag.check_parents(backend, job.id, job.depends_on)
        await backend.control.note_flows()
    return job


async def enqueue(backend: Backend, job: RawJob) -> Added:
    """Store and publish a job in its PRODUCER span, counted as one message sent."""
    span, job.trace = backend.tracing.start_publish(job.queue, job.id, job.correlation_id)
    try:
        added = await _store_and_publish(backend, job)
    except BaseException as exc:
        _sent(backend, span, exc)
        raise
    _sent(backend, span, added)
    return added


async def enqueue_many(backend: Backend, jobs: Sequence[RawJob]) -> list[Added | Exception]:
    """:func:`enqueue` of each job (a PRODUCER span each): for each, in order, what was added
    or what its enqueue raised. The records' first tries are sent at once, then the messages
    of those stored, at once: each job's message still goes after its record is stored."""
    spans = []
    for job in jobs:
        span, job.trace = backend.tracing.start_publish(job.queue, job.id, job.correlation_id)
        spans.append(span)
    try:
        results = await _store_and_publish_many(backend, jobs)
    except BaseException:
        for span in spans:
            span.end()
        raise
    for span, result in zip(spans, results, strict=True):
        _sent(backend, span, result)
    return results


def _sent(backend: Backend, span: Span, outcome: Added | BaseException) -> None:
    """End a job's PRODUCER span with its add's outcome, counted as one message sent (or
    failed); a cancelled add only ends it."""
    if isinstance(outcome, Exception):
        mark_failed(span, outcome)
        backend.metrics.sent(outcome)
    elif not isinstance(outcome, BaseException):
        backend.metrics.sent()
    span.end()


async def _store_and_publish_many(
    backend: Backend, jobs: Sequence[RawJob]
) -> list[Added | Exception]:
    # Each step's jobs that go on their own go side by side: each may take up to the retry
    # deadline (a full store, an election), and one after the other a chunk would take 64.
    ways: dict[int, Callable[[], Awaitable[Added]]] = {
        i: partial(_store_and_publish, backend, job)  # held, or waiting for its parents
        for i, job in enumerate(jobs)
        if job.state not in SIMPLE_STATES
    }
    at_once = [i for i, job in enumerate(jobs) if job.state in SIMPLE_STATES]
    created = await backend.store.create_many([jobs[i] for i in at_once])
    stored: list[tuple[int, Stored]] = []
    for i, record in zip(at_once, created, strict=True):
        if isinstance(record, Stored):
            stored.append((i, record))
        else:
            ways[i] = partial(_not_created, backend, jobs[i], record)
    published = await backend.broker.enqueue_at_once([(jobs[i], record) for i, record in stored])
    results: dict[int, Added | Exception] = {}
    for (i, _), sent in zip(stored, published, strict=True):
        if sent is True:  # the common case: no task of its own
            results[i] = Added(jobs[i], created=True)
        else:
            ways[i] = partial(_published, backend, jobs[i], sent)
    if ways:
        outcomes = await asyncio.gather(*(_outcome(way()) for way in ways.values()))
        results.update(zip(ways, outcomes, strict=True))
    return [results[i] for i in range(len(jobs))]


async def _outcome(adding: Awaitable[Added]) -> Added | Exception:
    """What ``adding`` returned, or the exception it raised."""
    try:
        return await adding
    except Exception as exc:
        return exc


async def _store_and_publish(backend: Backend, job: RawJob) -> Added:
    # The record first, then the message, never both at once: a worker that met the message
    # first could not tell how long to wait for the record (a server restart stretches its
    # write up to the publish deadline). Tried, measured 1.3x faster, and the chaos run lost
    # a job that way.
    try:
        stored = await backend.store.create(job)
    except (JetStreamError, Unavailable) as exc:  # CasConflict too
        return await _not_created(backend, job, exc)
    if job.state == JobState.WAITING_CHILDREN:
        await dag.link(backend, job)
        return Added(await _existing(backend, job.id), created=False)  # link may release it
    if job.state == JobState.PAUSED:
        await _hold(backend, job)
        return Added(job, created=True)
    (sent,) = await backend.broker.enqueue_at_once([(job, stored)])
    return await _published(backend, job, sent)


async def _published(backend: Backend, job: RawJob, sent: bool | EnqueueError) -> Added:
    """The add of a job whose record was created, once its message's first try is answered
    (``sent``, see :meth:`Broker.enqueue_at_once`): added; finished on its own if unanswered
    (:func:`_finish`); EnqueueError if the stream refused the message."""
    if isinstance(sent, EnqueueError):
        raise sent
    return Added(job, created=True) if sent else await _finish(backend, job)


async def _finish(backend: Backend, job: RawJob) -> Added:
    """The add of a job whose record was created and whose message's answer was lost: the
    message may be there or not, and its index entry, sent just before it without waiting,
    lost with it. Finished as a repeated add finishes it (see :func:`_existing`): the entry and
    the message again (the message id makes a second one a duplicate) if the job still waits;
    nothing if a worker took it meanwhile (its message was there)."""
    await _existing(backend, job.id)
    return Added(job, created=True)


async def _not_created(backend: Backend, job: RawJob, exc: Exception) -> Added:
    """An add whose record create raised ``exc``: the existing job if its id is taken (see
    :func:`_existing`), else EnqueueError (``exc`` itself if it is neither)."""
    if isinstance(exc, CasConflict):
        return Added(await _existing(backend, job.id), created=False)
    if isinstance(exc, Unavailable):
        raise EnqueueError(
            f"storing job {job.id} failed: {exc}",
            job_id=job.id,
            outcome_unknown=exc.outcome_unknown,
        ) from exc
    if isinstance(exc, JetStreamError):
        raise EnqueueError(
            f"storing job {job.id} failed: {exc}", job_id=job.id, outcome_unknown=False
        ) from exc
    raise exc


async def _hold(backend: Backend, job: RawJob) -> None:
    """Mark a job held; if the queue was resumed meanwhile, release it at once."""
    await backend.broker.hold(job)
    if not (await backend.control.read()).paused:  # resumed meanwhile: release it now
        await management.release(backend, job.id, purge_marker=False)


async def _existing(backend: Backend, job_id: str) -> RawJob:
    record = await backend.store.get(job_id, fresh=True)
    if record is None:  # deleted between our create and this read: a new add will do
        raise EnqueueError(
            f"job {job_id} was removed while it was being added; add it again",
            job_id=job_id,
            outcome_unknown=False,
        )
    if record.job.state in (JobState.WAITING, JobState.DELAYED):
        # finish an add that may have stopped half-way: its index entry and its message
        await backend.store.index.moved(record.job, None, record.job.state)
        copy = Stored(record.revision, msgspec.json.encode(record.job))
        await backend.broker.enqueue(record.job, copy)
    elif record.job.state == JobState.WAITING_CHILDREN:
        await dag.link(backend, record.job)  # idempotent: edges, then a decision
        record = await backend.store.get(job_id, fresh=True) or record
    return record.job


def not_opened(job_id: str, exc: Unavailable) -> EnqueueError:
    """The error of an add whose queue NATS did not open in time (its streams looked up or
    created): nothing was stored, as for any add that fails before its record."""
    return EnqueueError(
        f"adding job {job_id} failed: the queue could not be opened: {exc}",
        job_id=job_id,
        outcome_unknown=False,
    )
