"""Messages on a queue's subjects that are not its jobs: removed, counted and sampled.

Anything with publish rights on a lane can put a message there: a body that is not a job id, an
id with no record, a schedule of its own (``Nats-Schedule`` on a lane, or a repeating schedule
that fires into one, other than the queue's own, see runtime/schedules.py). Such a message is
removed without running anything, and:

* a schedule behind it is deleted, so it does not fire again (a job's own delay is a one-shot
  ``@at`` schedule on the job's schedule subject; any other scheduler is foreign). Only that
  schedule message goes, never a subject: a foreign schedule may share its subject with a job;
* it is counted: the ``oqron.messages.rejected`` metric (by reason), and a counter in NATS that
  ``oqron queues`` shows (it starts again from 0 after a day without any);
* its latest sample per reason is kept in the dead-letter stream (subject, size, headers and the
  first ``SAMPLE_BYTES`` of its body), for ``oqron dlq rejected``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from .._nats import Delivery, Nats
from .._nats.names import (
    RECORD_HEADER,
    SCHEDULE_HEADER,
    SCHEDULE_NEXT_HEADER,
    SCHEDULER_HEADER,
    Names,
)
from ..core.errors import OqronError
from ..observe.log import logger
from ..observe.metrics import QueueMetrics

log = logger(__name__)

SAMPLE_BYTES = 256
"""How much of a rejected message's body its sample keeps."""
NOT_A_JOB_ID = "not-a-job-id"
NO_RECORD = "no-record"
FOREIGN_SCHEDULE = "foreign-schedule"
BAD_TICK = "bad-tick"
"""A message fired by a repeating schedule of the queue whose body is not that schedule."""
REASONS = (NOT_A_JOB_ID, NO_RECORD, FOREIGN_SCHEDULE, BAD_TICK)


class RejectedSample(msgspec.Struct, kw_only=True):
    """The latest message rejected for one reason, as kept in the dead-letter stream."""

    reason: str
    subject: str
    size: int
    """The body's length in bytes."""
    headers: dict[str, str]
    body: str
    """The first SAMPLE_BYTES of the body, as text (undecodable bytes replaced)."""
    at: datetime


def foreign_schedule(delivery: Delivery, names: Names, job_id: str | None) -> bool:
    """Whether the message is, or was fired by, a schedule that is not the job's own delay."""
    headers = delivery.raw_headers
    if not headers:
        return False
    if SCHEDULE_HEADER in headers:  # a schedule message itself, on a lane
        return True
    scheduler = headers.get(SCHEDULER_HEADER)
    if scheduler is None:
        return False
    own = job_id is not None and scheduler == names.schedule(job_id)
    return not own or headers.get(SCHEDULE_NEXT_HEADER) != "purge"


def sampled(headers: dict[str, str]) -> dict[str, str]:
    """A rejected message's headers as its sample keeps them: a copy of a job's record (its
    payload) is never kept, and no value beyond SAMPLE_BYTES."""
    return {name: _sampled_value(name, value) for name, value in headers.items()}


def _sampled_value(name: str, value: str) -> str:
    if name == RECORD_HEADER:
        return f"(a copy of a job record, {len(value)} characters: not kept)"
    return value if len(value) <= SAMPLE_BYTES else value[:SAMPLE_BYTES] + "…"


class Rejects:
    """Rejects the messages of one queue that are not its jobs."""

    def __init__(self, conn: Nats, names: Names, metrics: QueueMetrics) -> None:
        self.conn = conn
        self.names = names
        self.metrics = metrics

    async def reject(self, delivery: Delivery, reason: str) -> None:
        """Remove the message (and a schedule behind it); count it and keep a sample."""
        headers = dict(delivery.raw_headers or {})
        scheduler = headers.get(SCHEDULER_HEADER)
        await delivery.term()
        self.metrics.rejected(reason)
        log.warning(
            "message rejected: not a job of this queue",
            queue=self.names.queue, reason=reason, subject=delivery.subject,
            size=len(delivery.body), scheduler=scheduler,
        )  # fmt: skip
        sample = RejectedSample(
            reason=reason,
            subject=delivery.subject,
            size=len(delivery.body),
            headers=sampled(headers),
            body=delivery.body[:SAMPLE_BYTES].decode("utf-8", "replace"),
            at=datetime.now(UTC),
        )
        try:
            if scheduler is not None:
                await self._stop_schedule(scheduler)
            await self.conn.increment(self.names.rejections)
            await self.conn.publish(self.names.rejected(reason), msgspec.json.encode(sample))
        except OqronError as exc:  # removed all the same; the count and sample are for people
            log.warning("rejected message not counted", reason=reason, error=str(exc))

    async def forget(self) -> None:
        """Remove the queue's rejected-message samples and count."""
        await self.conn.purge_subject(self.names.dlq_stream, self.names.rejected_samples)
        await self.conn.purge_subject(self.names.rate_stream, self.names.rejections)

    async def _stop_schedule(self, scheduler: str) -> None:
        """Delete the schedule message on ``scheduler`` unless it is a job's own delay."""
        stored = await self.conn.direct_get(self.names.stream, last_by_subject=scheduler)
        if stored is None or SCHEDULE_HEADER not in stored.headers:
            return
        own = scheduler == self.names.schedule(stored.data.decode("utf-8", "replace"))
        if own and stored.headers[SCHEDULE_HEADER].startswith("@at "):
            return
        await self.conn.delete_msg(self.names.stream, stored.seq)
        log.warning("a foreign schedule on the queue's stream was deleted", subject=scheduler,
                    schedule=stored.headers[SCHEDULE_HEADER])  # fmt: skip


async def rejected_count(conn: Nats, names: Names) -> int:
    """How many messages the queue rejected (since a day went by without any)."""
    stored = await conn.direct_get_subject(names.rate_stream, names.rejections)
    if stored is None:
        return 0
    return int(msgspec.json.decode(stored.data).get("val", 0))


async def rejected_samples(conn: Nats, names: Names) -> list[RejectedSample]:
    """The latest rejected message of each reason, oldest first."""
    subjects = await conn.subjects(names.dlq_stream, names.rejected_samples)
    samples = []
    for subject in subjects:
        stored = await conn.direct_get_subject(names.dlq_stream, subject)
        if stored is not None:
            samples.append(msgspec.json.decode(stored.data, type=RejectedSample))
    return sorted(samples, key=lambda sample: sample.at)
