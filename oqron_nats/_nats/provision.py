"""Create the streams, buckets and consumers a queue needs; idempotent, safe to race.

The configurations are built with nats-py's typed ``nats.js.api`` classes (which know the wire
format); they are sent through :class:`.facade.Nats`, so a creation rides out an election like
every other request.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import api

from ..core.errors import JetStreamError
from .facade import Nats
from .replies import ALREADY_EXISTS


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer of one queue."""

    stream: str
    durable: str
    filter_subject: str
    ack_wait: float
    replicas: int


async def ensure_stream(
    conn: Nats,
    *,
    name: str,
    subjects: list[str],
    replicas: int,
    work_queue: bool,
    schedules: bool = False,
    republish: tuple[str, str] | None = None,
    max_msgs_per_subject: int = -1,
    max_msg_size: int = -1,
    ttl: bool = False,
    counter: bool = False,
    max_age: float | None = None,
) -> None:
    """Create the stream unless it exists; an existing stream is left as it is."""
    config = api.StreamConfig(
        name=name,
        subjects=subjects,
        retention=api.RetentionPolicy.WORK_QUEUE if work_queue else api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        discard=api.DiscardPolicy.OLD,
        max_msgs_per_subject=max_msgs_per_subject,
        max_msg_size=max_msg_size,
        allow_direct=True,
        allow_msg_schedules=schedules or None,
        allow_msg_ttl=schedules or ttl or None,
        allow_msg_counter=counter or None,
        max_age=max_age,
        allow_rollup_hdrs=schedules,
        republish=(
            api.RePublish(src=republish[0], dest=republish[1], headers_only=True)
            if republish
            else None
        ),
    )
    await _create_unless_exists(conn, config)


async def ensure_bucket(conn: Nats, *, bucket: str, replicas: int, max_value_size: int) -> None:
    """Create the KV bucket (history 1, direct reads, per-key TTLs) unless it exists."""
    config = api.StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=1,
        max_msg_size=max_value_size,
        discard=api.DiscardPolicy.NEW,
        allow_direct=True,
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        duplicate_window=120.0,
        max_consumers=-1,
        max_msgs=-1,
    )
    await _create_unless_exists(conn, config)


async def _create_unless_exists(conn: Nats, config: api.StreamConfig) -> None:
    assert config.name is not None
    if await conn.stream_exists(config.name):
        return
    try:
        await conn.create_stream(config.as_dict())
    except JetStreamError as exc:
        if exc.err_code != ALREADY_EXISTS:  # created meanwhile by another process
            raise


def consumer_config(spec: ConsumerSpec, pause_until: str | None) -> dict[str, object]:
    """The wire configuration of a queue's durable pull consumer."""
    return api.ConsumerConfig(
        name=spec.durable,
        durable_name=spec.durable,
        filter_subject=spec.filter_subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=spec.ack_wait,
        max_deliver=-1,
        max_ack_pending=-1,
        num_replicas=spec.replicas,
        pause_until=pause_until,
    ).as_dict()


async def ensure_consumer(
    conn: Nats, spec: ConsumerSpec, pause_until: str | None = None, *, deadline: float | None = None
) -> None:
    """Create or update the durable pull consumer to match ``spec`` (paused until a time);
    ``deadline`` bounds the tries (default: the connection's retry deadline)."""
    await conn.create_consumer(spec.stream, consumer_config(spec, pause_until), deadline=deadline)
