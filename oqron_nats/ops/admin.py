"""What the admin commands of the CLI read and do, on any queue of a namespace.

Every function takes a connected :class:`Client` and works from what NATS holds, so it sees the
queues of every service in the cluster, not only those this process defined. A function that
names a queue acts only on a queue that exists (QueueNotFound otherwise): a queue's streams are
created by ``provision`` (or its first publisher or worker), never by looking at it.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import msgspec

from .._nats.names import Names
from ..client import Client
from ..core.encryption import Sealer
from ..core.errors import CorruptRecord, JobNotFound, QueueNotFound
from ..core.job import Job, JobFailure, JobState
from ..core.naming import check_name
from ..queue import Queue, queue
from ..storage.presence import workers_online
from ..storage.rejects import RejectedSample, rejected_count, rejected_samples
from ..storage.store import CorruptJob, decode_record

DLQ_BATCH = 256


class QueueSummary(msgspec.Struct, kw_only=True):
    """One queue at a glance."""

    name: str
    waiting: int
    active: int
    delayed: int
    completed: int
    """Completed jobs still kept (see retention: a day by default)."""
    failed: int
    paused_jobs: int
    """Jobs added while the queue was paused (held until resume)."""
    paused: bool
    """Whether the queue itself is paused."""
    oldest_waiting_seconds: float | None
    workers: int
    """Worker processes consuming it now."""
    rejected: int
    """Messages on its subjects that were not its jobs, removed unrun (see ``dlq rejected``)."""


class DeadLetter(msgspec.Struct, kw_only=True):
    """A job in the dead-letter stream."""

    id: str
    queue: str
    attempts: int
    failed_at: datetime | None
    error: JobFailure | None
    correlation_id: str


async def queue_names(client: Client) -> list[str]:
    """The queues of the client's namespace that exist in NATS, sorted."""
    conn = await client._connection()
    prefix = Names(client.namespace, "x").stream.removesuffix("x")  # OQRON_<ns>_Q_
    names = await conn.stream_names(subject=f"oqron.{client.namespace}.q.>")
    return sorted(n.removeprefix(prefix) for n in names if n.startswith(prefix))


async def summary(client: Client, name: str) -> QueueSummary:
    """Counts, pause state, the oldest waiting job's age and the workers online of one queue."""
    q = admin_queue(client, name)  # listed by queue_names: it exists
    conn, names = await client._connection(), client.names(name)
    states = (
        JobState.WAITING, JobState.ACTIVE, JobState.DELAYED, JobState.COMPLETED, JobState.FAILED,
        JobState.PAUSED,
    )  # fmt: skip
    counts = await asyncio.gather(*(q.count(s) for s in states))
    oldest = await q.oldest_waiting()
    age = (datetime.now(UTC) - oldest).total_seconds() if oldest else None
    return QueueSummary(
        name=name,
        waiting=counts[0],
        active=counts[1],
        delayed=counts[2],
        completed=counts[3],
        failed=counts[4],
        paused_jobs=counts[5],
        paused=await q.is_paused(),
        oldest_waiting_seconds=round(age, 3) if age is not None else None,
        workers=await workers_online(conn, names),
        rejected=await rejected_count(conn, names),
    )


async def find_job(client: Client, job_id: str) -> tuple[Queue[Any], Job[Any]]:
    """The job ``job_id`` and the queue that holds it, wherever it is; JobNotFound if none."""
    check_name(job_id, "job id")
    for name in await queue_names(client):  # a bucket of records per queue
        q = admin_queue(client, name)
        job = await q.get_job(job_id)
        if job is not None:
            return q, job
    raise JobNotFound(f"there is no job {job_id!r} in namespace {client.namespace!r}")


async def list_jobs(
    client: Client, name: str, status: str | None, limit: int, offset: int = 0
) -> list[Job[Any] | CorruptJob]:
    """The newest jobs of a queue (see Queue.get_jobs), then the listed records that do not
    decode, shown as such."""
    q = await existing_queue(client, name)
    jobs, corrupt = await q._listing(status, limit, offset)
    return [*jobs, *corrupt]


async def dead_letters(client: Client, name: str, limit: int) -> list[DeadLetter]:
    """The queue's dead letters, oldest first."""
    names = await existing(client, name)
    conn = await client._connection()
    sealer = Sealer(client.codec, client.namespace, name)  # opens the errors it can
    found: list[DeadLetter] = []
    start = 1
    while len(found) < limit:
        batch, more = await conn.direct_batch(
            names.dlq_stream,
            start=start,
            batch=min(DLQ_BATCH, limit - len(found)),
            subject=names.dead_letter("*"),
        )
        found += [_dead_letter(name, msg.subject, msg.data, sealer) for msg in batch]
        if not batch or not more:
            return found
        start = batch[-1].seq + 1
    return found


def _dead_letter(queue_name: str, subject: str, data: bytes, sealer: Sealer) -> DeadLetter:
    """A dead letter as listed; one that does not decode is shown as such, an encrypted error
    is shown decrypted if the client holds its key (else as "(encrypted)")."""
    try:
        job = decode_record(subject, data)
    except CorruptRecord as exc:
        failure = JobFailure(type="CorruptRecord", message=f"{exc.size} bytes: {exc.reason}")
        return DeadLetter(id=subject.rsplit(".", 1)[-1], queue=queue_name, attempts=0,
                          failed_at=None, error=failure, correlation_id="")  # fmt: skip
    error = job.error
    if error is not None and error.sealed is not msgspec.UNSET:
        with contextlib.suppress(Exception):
            error = sealer.open_failure(job.id, error)
    return DeadLetter(
        id=job.id,
        queue=job.queue,
        attempts=job.attempt,
        failed_at=job.finished_at,
        error=error,
        correlation_id=job.correlation_id,
    )


async def rejected(client: Client, name: str) -> list[RejectedSample]:
    """The latest message of each reason that the queue rejected (not one of its jobs)."""
    names = await existing(client, name)
    return await rejected_samples(await client._connection(), names)


async def replay(client: Client, name: str, job_ids: list[str] | None = None) -> list[str]:
    """Run dead-lettered jobs again (all of the queue's, or ``job_ids``); returns their ids."""
    q = await existing_queue(client, name)
    ids = job_ids or [d.id for d in await dead_letters(client, name, limit=1_000_000)]
    for job_id in ids:
        await q.retry(job_id)
    return ids


async def provision(client: Client, name: str) -> None:
    """Create the streams and buckets of queue ``name`` where missing (consumers come with the
    workers, which know the strategy)."""
    await client._prepare_queue(client.names(check_name(name)))


async def existing(client: Client, name: str) -> Names:
    """The names of queue ``name``, which must exist: QueueNotFound if its work stream does not
    (a queue that was never provisioned, or a typo)."""
    names = client.names(check_name(name))
    conn = await client._connection()
    if not await conn.stream_exists(names.stream):
        raise QueueNotFound(
            f"no such queue {name!r} in namespace {client.namespace!r} (`oqron queues` lists "
            f"them; `oqron provision {name}` creates one)"
        )
    return names


async def existing_queue(client: Client, name: str) -> Queue[Any]:
    """A publisher-only handle on queue ``name``, which must exist (QueueNotFound otherwise):
    a Queue creates its streams on first use, and looking must not create a queue."""
    await existing(client, name)
    return admin_queue(client, name)


def admin_queue(client: Client, name: str) -> Queue[Any]:
    """A publisher-only handle on queue ``name`` (payloads stay raw JSON values); its first use
    creates the queue's streams if missing, so check first with ``existing_queue``."""
    return queue(check_name(name), client=client)
