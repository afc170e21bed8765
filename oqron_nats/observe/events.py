"""Job lifecycle events on core NATS subjects, for listeners in any process.

Every record write announces what happened on ``oqron.<ns>.ev.<queue>.<job_id>.<event>``:
``added``, ``active``, ``progress``, ``completed``, ``failed``, ``retried`` (failed, another
attempt is scheduled), ``stalled``, ``waiting`` (handed back, or re-enqueued), ``cancelled``,
``paused``, ``resumed``, ``promoted``, ``removed``. Events are notifications, sent after the
write (at most once, not persisted): the record stays the truth, so a listener that must not miss
a job's end reads the record after subscribing, as ``Queue.wait`` does. They are sent only while
some process listens (:mod:`.audience`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

import msgspec

from .._nats import Msg, Nats
from .._nats.names import Names
from ..core.errors import Unavailable
from ..core.job import Job, JobFailure, JobState
from .audience import Audience
from .log import logger

log = logger(__name__)

TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled", "removed"})


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Something that happened to a job."""

    name: str
    queue: str
    job_id: str
    state: JobState
    at: datetime
    attempt: int = 0
    progress: float | None = None
    error: JobFailure | None = None


_decoder = msgspec.json.Decoder(Event)


class EventBus:
    """Publishes and receives one queue's events."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self.conn = conn
        self.names = names
        self.audience = Audience(conn, names)

    async def announce(self, job: Job[msgspec.Raw], name: str) -> None:
        """Publish that ``name`` happened to ``job`` if someone listens (best effort: never
        raises)."""
        if not self.audience.present:
            return
        at = job.timeline[-1].at if job.timeline else job.created_at
        event = Event(
            name=name,
            queue=job.queue,
            job_id=job.id,
            state=job.state,
            at=at,
            attempt=job.attempt,
            progress=job.progress if name == "progress" else None,
            error=job.error if name in ("failed", "retried") else None,
        )
        try:
            await self.conn.publish_core(self.names.event(job.id, name), msgspec.json.encode(event))
        except (Unavailable, OSError) as exc:
            log.debug("event not published", job_id=job.id, name=name, error=repr(exc))

    @contextlib.asynccontextmanager
    async def listen(self, subject: str) -> AsyncIterator[asyncio.Queue[Event]]:
        """Receive the events on ``subject`` into a queue while the context is open (this
        process counted among the queue's listeners)."""
        inbox: asyncio.Queue[Event] = asyncio.Queue()

        async def received(msg: Msg) -> None:
            try:
                inbox.put_nowait(_decoder.decode(msg.data))
            except msgspec.DecodeError:
                log.warning("undecodable event ignored", subject=msg.subject)

        sub = await self.conn.subscribe(subject, received)
        try:
            await self.audience.join()  # counted at once: leave() below balances it
            yield inbox
        finally:
            self.audience.leave()
            with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                await sub.unsubscribe()
