"""Job messages: published to a lane now, through a message schedule later, held while the
queue is paused, or copied to the DLQ; and removed again. The broker also hands a worker what
it claims through: the work stream's consumers, their pullers, and the lifo lanes and bell.

A job message carries the job id; the record in KV is the truth. Sent right after a write of
the record, it also carries a copy of that record and its revision (``Oqron-Record``,
``Oqron-Record-Revision``; up to RECORD_COPY_MAX bytes), which lets a worker claim the job by
compare-and-set without reading the record first: a copy that is not the stored record any more
(the job moved since) fails that write, and the worker reads the record. Its ``Nats-Msg-Id`` is
``<job_id>:<enqueued>`` so a publish retried after a timeout cannot queue the job twice, while a
later re-enqueue (a retry, an admin rerun) gets a new generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec

from .._nats import (
    ConsumerSpec,
    Delivery,
    JetStreamError,
    Msg,
    Nats,
    Puller,
    StoredMsg,
    ensure_consumer,
)
from .._nats.names import (
    CORRELATION_HEADER,
    KEPT_SCHEDULE_NEXT_HEADER,
    KEPT_SCHEDULER_HEADER,
    MSG_ID_HEADER,
    RECORD_HEADER,
    RECORD_REVISION_HEADER,
    SCHEDULE_HEADER,
    SCHEDULE_NEXT_HEADER,
    SCHEDULE_TARGET_HEADER,
    SCHEDULER_HEADER,
    Names,
)
from ..core.errors import EnqueueError, Unavailable
from ..core.job import JobState
from .control import PAUSED_FOREVER
from .store import CorruptRecord, RawJob, Record, Stored, decode_record

LIFO_WINDOW = 100
"""Sequences of the work stream a lifo move reads at once, down from the newest it knows of."""
RECORD_COPY_MAX = 4096
"""The largest record (encoded, in bytes) a job message carries a copy of: a bigger one (a big
payload) is read by the worker, whose read costs little beside handling such a payload."""


def schedule_at(when: datetime) -> str:
    """A ``Nats-Schedule`` value firing once at ``when`` (millisecond precision, UTC)."""
    utc = when.astimezone(UTC)
    return "@at " + utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def carried_record(delivery: Delivery, job_id: str) -> Record | None:
    """The copy of the job's record a message carries, with its revision; None if it carries
    none, or one that does not decode or is another job's. Only a compare-and-set on that
    revision proves it is still the stored record."""
    headers = delivery.raw_headers
    if not headers or RECORD_HEADER not in headers:
        return None
    try:
        job = decode_record(job_id, headers[RECORD_HEADER].encode())
        revision = int(headers.get(RECORD_REVISION_HEADER, ""))
    except (CorruptRecord, ValueError):
        return None
    return Record(job, revision) if job.id == job_id and revision > 0 else None


def job_headers(job: RawJob) -> dict[str, str]:
    """The headers every message of ``job`` carries: trace context and correlation id."""
    headers = dict(job.trace)
    headers[CORRELATION_HEADER] = job.correlation_id
    headers[MSG_ID_HEADER] = f"{job.id}:{job.enqueued}"
    return headers


class Broker:
    """Sends and removes one queue's job messages (its work stream and dead letters)."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self.conn = conn
        self.names = names

    async def enqueue(self, job: RawJob, stored: Stored | None = None) -> None:
        """Publish the job: on its lane now, or as a schedule that fires at ``run_at``; given
        its record as just ``stored``, the message carries a copy of it."""
        await self._publish(job.id, *self._message(job, stored))

    async def enqueue_at_once(
        self, jobs: Sequence[tuple[RawJob, Stored]]
    ) -> list[bool | EnqueueError]:
        """The first try of :meth:`enqueue` for each job just stored, all sent at once: for
        each, in order, True once published, the EnqueueError the stream refused it with, or
        False if it was not plainly answered (the message may have landed or not, and what was
        sent before it without waiting may be lost: the caller finishes that add on its own)."""
        answers = await self.conn.publish_at_once([self._message(j, s) for j, s in jobs])
        return [
            _refused(job.id, answer) if isinstance(answer, JetStreamError) else answer is not None
            for (job, _), answer in zip(jobs, answers, strict=True)
        ]

    def _message(self, job: RawJob, stored: Stored | None) -> tuple[str, bytes, dict[str, str]]:
        """The job's message: on its lane, or its schedule; with a copy of the record."""
        headers = job_headers(job)
        if stored is not None and len(stored.value) <= RECORD_COPY_MAX:
            headers[RECORD_HEADER] = stored.value.decode()
            headers[RECORD_REVISION_HEADER] = str(stored.revision)
        subject = self.names.lane(job.priority, job.id)
        if job.state == JobState.DELAYED and job.run_at is not None:
            headers[SCHEDULE_HEADER] = schedule_at(job.run_at)
            headers[SCHEDULE_TARGET_HEADER] = subject
            subject = self.names.schedule(job.id)
        return subject, job.id.encode(), headers

    async def hold(self, job: RawJob) -> None:
        """Mark the job as held while the queue is paused (resume releases it)."""
        await self._publish(job.id, self.names.held(job.id), job.id.encode(), job_headers(job))

    async def dead_letter(self, job: RawJob) -> None:
        """Copy the failed record to the dead-letter stream (one entry per job id)."""
        headers = job_headers(job)
        headers[MSG_ID_HEADER] += ":dead"
        await self._publish(
            job.id, self.names.dead_letter(job.id), msgspec.json.encode(job), headers
        )

    async def has_message(self, seq: int) -> bool:
        """Whether the work stream still holds the message with sequence ``seq``."""
        return await self.conn.has_message(self.names.stream, seq)

    async def has_message_of(self, job_id: str, *, fresh: bool = False) -> bool:
        """Whether the job has a message on a lane or on the run lane (lifo); ``fresh`` asks the
        stream's leader (a replica may be behind)."""
        for subject in (self.names.lane_of(job_id), self.names.run(job_id)):
            if fresh:
                found = await self.conn.leader_get(self.names.stream, subject)
            else:
                found = await self.conn.direct_get(self.names.stream, last_by_subject=subject)
            if found is not None:
                return True
        return False

    async def subjects(self) -> list[str]:
        """Every subject of the work stream that holds a job's message (the job id comes last):
        not the repeating schedules nor their ticks (see :mod:`.schedules`)."""
        subjects = await self.conn.subjects(self.names.stream, ">")
        return [subject for subject in subjects if not self.names.is_repeating(subject)]

    async def remove(self, subject: str) -> None:
        """Remove the messages on one subject of the work stream."""
        await self.conn.purge_subject(self.names.stream, subject)

    async def held_jobs(self) -> list[str]:
        """The ids of the jobs held while the queue was paused."""
        subjects = await self.conn.subjects(self.names.stream, self.names.helds)
        return [subject.rsplit(".", 1)[1] for subject in subjects]

    async def forget_held(self, job_id: str) -> None:
        """Remove a job's held marker."""
        await self.conn.purge_subject(self.names.stream, self.names.held(job_id))

    async def unschedule(self, job_id: str) -> None:
        """Remove a delayed job's schedule."""
        await self.conn.purge_subject(self.names.stream, self.names.schedule(job_id))

    async def remove_messages(self, job_id: str) -> None:
        """Remove every message of a job (lane, schedule, run lane, held marker)."""
        names = self.names
        for subject in (
            names.lane_of(job_id),
            names.schedule(job_id),
            names.run(job_id),
            names.held(job_id),
        ):
            await self.conn.purge_subject(names.stream, subject)

    async def forget_dead_letter(self, job_id: str) -> None:
        """Remove a job's dead letter (it runs again)."""
        await self.conn.purge_subject(self.names.dlq_stream, self.names.dead_letter(job_id))

    async def remove_all(self) -> None:
        """Remove every message and dead letter of the queue."""
        await self.conn.purge_subject(self.names.stream, ">")
        await self.conn.purge_subject(self.names.dlq_stream, self.names.dead_letter("*"))

    # -- claiming ---------------------------------------------------------------------------

    async def consumer_names(self) -> list[str]:
        """The names of the work stream's consumers."""
        return await self.conn.consumer_names(self.names.stream)

    async def delete_consumer(self, name: str) -> bool:
        """Delete a consumer of the work stream; False if it does not exist."""
        return await self.conn.delete_consumer(self.names.stream, name)

    async def ensure_consumer(
        self, spec: ConsumerSpec, *, paused: bool, deadline: float | None = None
    ) -> None:
        """Create (or update) one consumer of the work stream, paused for good if ``paused``;
        ``deadline`` bounds the tries (default: the connection's retry deadline)."""
        pause_until = PAUSED_FOREVER if paused else None
        await ensure_consumer(self.conn, spec, pause_until, deadline=deadline)

    def puller(
        self,
        spec: ConsumerSpec,
        *,
        on_delivery: Callable[[Delivery], None],
        on_change: Callable[[], None],
        on_alive: Callable[[], None],
    ) -> Puller:
        """Pull requests on one consumer of the work stream (call ``start`` before use)."""
        return Puller(
            self.conn,
            spec.stream,
            spec.durable,
            on_delivery=on_delivery,
            on_change=on_change,
            on_alive=on_alive,
        )

    async def move_oldest(self, lane: str, from_seq: int, most: int) -> tuple[int, int, int]:
        """Move up to ``most`` of the oldest messages on ``lane`` (a wildcard) from sequence
        ``from_seq`` on to the run lane (priority): one read, one round of copies, one purge.

        Messages only ever land at a lane's end, so once the ones read are copied, every
        message of the lane below the last one read is copied (by this worker, or moved by
        another first): the purge of the lane below it removes only those. Returns how many
        this call removed, the sequence to read the lane from next time (-1: it was empty), and
        how many more the lane held after the ones read.
        """
        found, more = await self.conn.direct_batch(
            self.names.stream, start=from_seq, batch=most, subject=lane
        )
        if not found:
            return 0, -1, 0
        await asyncio.gather(*(self._copy(message) for message in found))
        after = found[-1].seq + 1
        return await self.conn.purge_before(self.names.stream, lane, after), after, more

    async def move_newest(self, top: int, most: int) -> tuple[int, int]:
        """Move up to ``most`` of the newest lane messages to the run lane, newest first (lifo):
        one read of the lanes from LIFO_WINDOW sequences below ``top`` (the newest sequence a
        lane message may have) on, one round of copies, one round of deletes.

        Returns how many this call removed, and the newest sequence a lane message may still
        have below the ones moved (0: none up to ``top``), or -1 when lane messages lie beyond
        the ones read (``top`` was too low: ask :meth:`last_seq`). A window with none is
        skipped at once to the newest lane message (a read over every lane's subjects, which
        costs the server more the more jobs wait: only when lane messages are sparse).
        """
        start = max(1, top - LIFO_WINDOW + 1)
        found, more = await self.conn.direct_batch(
            self.names.stream, start=start, batch=LIFO_WINDOW, subject=self.names.lanes
        )
        if more:
            return 0, -1
        if not found:
            if start == 1:
                return 0, 0
            last = await self.conn.direct_get(self.names.stream, last_by_subject=self.names.lanes)
            return 0, 0 if last is None else last.seq
        newest = found[-most:][::-1]  # the run lane delivers them in the order copied
        await asyncio.gather(*(self._copy(message) for message in newest))
        stream = self.names.stream
        removed = await asyncio.gather(*(self.conn.delete_msg(stream, m.seq) for m in newest))
        below = found[-most - 1].seq if len(found) > most else start - 1
        return sum(removed), below

    async def last_seq(self) -> int:
        """The work stream's last sequence: no lane message is newer."""
        return (await self.conn.stream_state(self.names.stream)).last_seq

    async def _copy(self, top: StoredMsg) -> None:
        """Publish a lane message's copy to the run lane, before its original is deleted: the
        job is always in the stream. Two workers moving the same message make one copy (its
        message id)."""
        headers = {k: v for k, v in top.headers.items() if not k.startswith("Nats-")}
        headers[MSG_ID_HEADER] = f"pop-{top.seq}"
        if SCHEDULER_HEADER in top.headers:  # a tick of a repeating schedule: keep its time
            headers[KEPT_SCHEDULER_HEADER] = top.headers[SCHEDULER_HEADER]
            headers[KEPT_SCHEDULE_NEXT_HEADER] = top.headers.get(SCHEDULE_NEXT_HEADER, "")
        token = top.subject.rsplit(".", 1)[-1]  # the job id, or =<name> for a tick
        await self.conn.publish(self.names.run(token), top.data, headers)

    async def listen_bell(self, rang: Callable[[str, int], None]) -> Callable[[], Awaitable[None]]:
        """Call ``rang`` with the bell's subject (the lane's, under the bell) and the message's
        stream sequence whenever a job message lands on a lane; returns the stop call."""

        async def heard(msg: Msg) -> None:
            seq = (msg.headers or {}).get("Nats-Sequence", "")
            rang(msg.subject, int(seq) if seq.isdigit() else 0)

        sub = await self.conn.subscribe(self.names.bell, heard)
        return sub.unsubscribe

    async def listen_elected(
        self, durable: str, elected: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``elected`` whenever the consumer ``durable`` has a new leader (the server's
        advisory); returns the stop call."""

        async def heard(msg: Msg) -> None:
            elected()

        sub = await self.conn.subscribe(self.names.consumer_elected(durable), heard)
        return sub.unsubscribe

    async def _publish(
        self, job_id: str, subject: str, body: bytes, headers: dict[str, str]
    ) -> None:
        try:
            await self.conn.publish(subject, body, headers)
        except Unavailable as exc:
            maybe = "; it may still have been queued" if exc.outcome_unknown else ""
            raise EnqueueError(
                f"publishing job {job_id} failed: {exc}{maybe}",
                job_id=job_id,
                outcome_unknown=exc.outcome_unknown,
            ) from exc
        except JetStreamError as exc:
            raise _refused(job_id, exc) from exc


def _refused(job_id: str, exc: JetStreamError) -> EnqueueError:
    """The error of a job message the stream refused: nothing was queued."""
    return EnqueueError(
        f"publishing job {job_id} failed: {exc}", job_id=job_id, outcome_unknown=False
    )
