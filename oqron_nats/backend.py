"""The connected parts of one queue: connection, record store, broker, leases, telemetry."""

from __future__ import annotations

from dataclasses import dataclass

from ._nats import Bucket, Nats
from .admission import Admission
from .broker import Broker
from .client import Client
from .config import QueueConfig
from .control import Control
from .errors import ConfigError, JetStreamError, PermissionDenied
from .events import EventBus
from .index import StateIndex
from .lease import Leases
from .metrics import QueueMetrics
from .names import Names
from .rejects import Rejects
from .store import JobStore
from .tracing import Tracing


@dataclass(frozen=True, slots=True)
class Backend:
    """Everything a queue talks to, created once it has connected."""

    client: Client
    conn: Nats
    names: Names
    store: JobStore
    broker: Broker
    leases: Leases
    tracing: Tracing
    metrics: QueueMetrics
    control: Control
    rejects: Rejects
    payload_limit: int
    admission: Admission | None = None
    """The bounds of a queue with max_jobs or max_bytes."""

    @classmethod
    async def open(cls, client: Client, config: QueueConfig) -> Backend:
        """Connect, create the queue's streams and buckets, and wire the parts."""
        names = client.names(config.name)
        conn = await client._prepare_queue(names)
        await refuse_dropping_streams(conn, names)
        await refuse_shared_records(conn, names)
        replicated = client.replicas > 1
        metrics = client.metrics.queue(config.name, consumer_group=config.strategy)
        return cls(
            client=client,
            conn=conn,
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
            tracing=client.tracing,
            metrics=metrics,
            control=Control(conn, names),
            rejects=Rejects(conn, names, metrics),
            payload_limit=client.payload_limit(conn, config.max_payload_size),
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
