"""The connected parts of one queue: record store, broker, control, leases, edges, telemetry.

A backend hands out these domain objects, never the connection: what the runtime needs to know
of the connection itself (is it up, did it come back, how large a message may be) it asks the
backend, and everything else goes through the object that owns the state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .._nats import Bucket, Nats
from .._nats.names import Names
from ..core.config import QueueConfig
from ..core.errors import ConfigError, ConsumerConflict, JetStreamError, PermissionDenied
from ..observe.events import EventBus
from ..observe.metrics import QueueMetrics
from ..observe.tracing import Tracing
from .admission import Admission
from .broker import Broker
from .control import Control
from .edges import Edges
from .index import StateIndex
from .lease import Leases
from .presence import Presence
from .rates import RateCounters
from .rejects import Rejects
from .schedules import Schedules
from .store import JobStore


class Consumers:
    """The queues that have a running consumer on one client: a second one is refused."""

    def __init__(self) -> None:
        self._queues: set[str] = set()

    def claim(self, queue: str) -> None:
        """Register a consumer of ``queue``; ConsumerConflict if it already has one."""
        if queue in self._queues:
            raise ConsumerConflict(
                f"queue {queue!r} already has a running consumer on this client; "
                "raise its concurrency instead of starting it twice"
            )
        self._queues.add(queue)

    def release(self, queue: str) -> None:
        """Forget a stopped consumer of ``queue``."""
        self._queues.discard(queue)


@dataclass(frozen=True, slots=True)
class Shared:
    """What every queue of one client shares: set on the client, handed to each backend."""

    replicas: int
    tracing: Tracing
    metrics_interval: float
    consumers: Consumers
    announce_always: bool = False
    """Publish events whether anyone listens or not (``Client(announce="always")``)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """Everything a queue talks to, created once it has connected."""

    shared: Shared
    names: Names
    store: JobStore
    broker: Broker
    leases: Leases
    tracing: Tracing
    metrics: QueueMetrics
    control: Control
    rejects: Rejects
    edges: Edges
    rates: RateCounters
    schedules: Schedules
    payload_limit: int
    _conn: Nats = field(repr=False, compare=False)
    """Only for the narrow facts below; never handed out."""
    admission: Admission | None = None
    """The bounds of a queue with max_jobs or max_bytes."""

    @property
    def connected(self) -> bool:
        """Whether the connection is up now."""
        return self._conn.is_connected

    @property
    def disconnects(self) -> int:
        """How many times the connection was lost so far (what was sent without waiting just
        before a loss may be lost with it)."""
        return self._conn.disconnects

    @property
    def max_payload(self) -> int:
        """The largest message the connected server accepts, in bytes."""
        return self._conn.max_payload

    def on_reconnect(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every reconnect; returns the call that stops it."""
        return self._conn.on_reconnect(listener)

    async def follow(self) -> Callable[[], Awaitable[None]]:
        """Follow what the queue's processes share (paused or not, who listens to its events)
        and read the state once (subscribed first: no change slips between the two); returns
        the stop call."""
        async with contextlib.AsyncExitStack() as following:  # undone if a step fails
            following.push_async_callback(await self.control.follow())
            if not self.shared.announce_always:  # not following: it announces always
                following.push_async_callback(await self.store.events.audience.follow())
            await self.control.read()
            stops = following.pop_all()
        return stops.aclose

    def presence(self, concurrency: int) -> Presence:
        """This process's presence key as a consumer of the queue (not started)."""
        return Presence(self._conn, self.names, concurrency)

    @classmethod
    async def open(
        cls,
        conn: Nats,
        names: Names,
        config: QueueConfig,
        shared: Shared,
        *,
        metrics: QueueMetrics,
        payload_limit: int,
    ) -> Backend:
        """Check the queue's prepared streams and buckets, and wire the parts."""
        await refuse_dropping_streams(conn, names)
        await refuse_shared_records(conn, names)
        replicated = shared.replicas > 1
        return cls(
            shared=shared,
            _conn=conn,
            names=names,
            store=JobStore(
                Bucket(conn, names.jobs_bucket),
                names,
                EventBus(conn, names),
                StateIndex(conn, names, confirm_final=replicated),
                replicated=replicated,
            ),
            broker=Broker(conn, names),
            leases=Leases(Bucket(conn, names.locks_bucket), names, config.lock_ttl),
            tracing=shared.tracing,
            metrics=metrics,
            control=Control(conn, names),
            rejects=Rejects(conn, names, metrics),
            edges=Edges(conn, names),
            rates=RateCounters(conn, names),
            schedules=Schedules(conn, names),
            payload_limit=payload_limit,
            admission=(
                Admission(conn, names, max_jobs=config.max_jobs, max_bytes=config.max_bytes)
                if config.max_jobs or config.max_bytes
                else None
            ),
        )


async def refuse_dropping_streams(conn: Nats, names: Names) -> None:
    """ConfigError if someone gave the queue's work stream limits under which the server drops
    the oldest messages (discard old): a dropped message is a job that never runs."""
    dropping = (await conn.stream_limits(names.stream)).drops_old
    if dropping:
        raise ConfigError(
            f"stream {names.stream} has {', '.join(dropping)} with discard=old: the server would "
            "drop the oldest job messages without a word, and those jobs would never run. Remove "
            "those limits (`nats stream edit`); bound a queue with max_jobs instead"
        )


async def refuse_shared_records(conn: Nats, names: Names) -> None:
    """ConfigError if oqron_nats 0.1.0 left records of this queue in the namespace's shared
    jobs bucket: they would be neither read nor run (each queue has its own bucket now)."""
    try:
        left = await Bucket(conn, names.shared_jobs_bucket).keys(names.keys)
    except (JetStreamError, PermissionDenied):  # no such bucket (or this user may not look)
        return
    if left:
        raise ConfigError(
            f"{len(left)} job record(s) of queue {names.queue!r} are in the bucket "
            f"{names.shared_jobs_bucket!r}, where oqron_nats 0.1.0 kept them; this version keeps "
            f"them in {names.jobs_bucket!r}. Drain the queue with 0.1.0 before upgrading, or "
            "delete those keys"
        )
