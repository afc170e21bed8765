"""Create the streams, buckets and consumers a queue needs; idempotent, safe to race."""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js import api

from .conn import JetStreamError, Nats


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable pull consumer of one queue."""

    stream: str
    durable: str
    filter_subject: str
    ack_wait: float
    replicas: int


def _error(exc: nats.js.errors.APIError) -> JetStreamError:
    return JetStreamError(exc.code or 0, exc.err_code or 0, exc.description or str(exc))


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
    try:
        await conn.js.stream_info(name)
        return
    except nats.js.errors.NotFoundError:
        pass
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
    try:
        await conn.js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:  # 10058: created meanwhile by another process
            raise _error(exc) from exc


async def ensure_bucket(conn: Nats, *, bucket: str, replicas: int, max_value_size: int) -> None:
    """Create the KV bucket (history 1, direct reads) unless it exists."""
    try:
        await conn.js.stream_info(f"KV_{bucket}")
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await conn.js.create_key_value(
            api.KeyValueConfig(
                bucket=bucket,
                history=1,
                direct=True,
                replicas=replicas,
                max_value_size=max_value_size,
            )
        )
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:
            raise _error(exc) from exc


async def ensure_consumer(conn: Nats, spec: ConsumerSpec, pause_until: str | None = None) -> None:
    """Create or update the durable pull consumer to match ``spec`` (paused until a time)."""
    config = api.ConsumerConfig(
        durable_name=spec.durable,
        filter_subject=spec.filter_subject,
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=spec.ack_wait,
        max_deliver=-1,
        max_ack_pending=-1,
        num_replicas=spec.replicas,
        pause_until=pause_until,
    )
    try:
        await conn.js.add_consumer(spec.stream, config)
    except nats.js.errors.APIError as exc:
        raise _error(exc) from exc


async def consumer_names(conn: Nats, stream: str) -> list[str]:
    """The names of the stream's consumers."""
    infos = await conn.js.consumers_info(stream)
    return [info.name for info in infos]
