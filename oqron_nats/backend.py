"""The connected parts of one queue: connection, record store, broker, leases, telemetry."""

from __future__ import annotations

from dataclasses import dataclass

from ._nats import Bucket, Nats
from .broker import Broker
from .client import Client
from .config import QueueConfig
from .control import Control
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

    @classmethod
    async def open(cls, client: Client, config: QueueConfig) -> Backend:
        """Connect, create the queue's streams and buckets, and wire the parts."""
        names = client.names(config.name)
        conn = await client.prepare_queue(names)
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
        )
