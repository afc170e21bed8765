"""The floor: what raw nats-py does on the same server, with nothing of a job framework on top.

Each workload gets its own WorkQueue stream on file storage (what a queue's stream is), and
publishes the same small JSON payload the job benchmarks enqueue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

FETCH_BATCH = 100


def payload(n: int) -> bytes:
    """The job data every workload sends."""
    return b'{"n":%d}' % n


@dataclass(frozen=True)
class Scratch:
    """A connection and a fresh WorkQueue stream of its own, for one workload."""

    nc: NatsClient
    js: JetStreamContext
    stream: str
    subject: str


@asynccontextmanager
async def scratch(url: str) -> AsyncIterator[Scratch]:
    """Connect and create a stream; delete it and close the connection afterwards."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        name = f"FLOOR_{uuid.uuid4().hex[:8]}"
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"floor.{name}"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
        yield Scratch(nc, js, name, f"floor.{name}")
        await js.delete_stream(name)
    finally:
        await nc.close()


async def publish_sequential(url: str, count: int) -> float:
    """``await js.publish()`` one at a time: messages per second."""
    async with scratch(url) as s:
        started = time.perf_counter()
        for n in range(count):
            await s.js.publish(s.subject, payload(n))
        return count / (time.perf_counter() - started)


async def publish_async(url: str, count: int) -> float:
    """``js.publish_async`` for every message, then wait for all acks: messages per second."""
    async with scratch(url) as s:
        started = time.perf_counter()
        await _publish_all(s, count)
        return count / (time.perf_counter() - started)


async def _publish_all(s: Scratch, count: int) -> None:
    futures = [await s.js.publish_async(s.subject, payload(n)) for n in range(count)]
    await s.js.publish_async_completed()
    for future in futures:
        future.result()  # a failed publish raises here


async def fetch_and_ack(url: str, count: int) -> tuple[float, float]:
    """Pre-fill ``count`` messages, then ``fetch(100)`` + ``ack()`` them all: messages per second,
    and this process's CPU seconds per message meanwhile.

    Timed from the first fetch to the last ack, like the job benchmarks (from the first handler
    start to the last handler end).
    """
    async with scratch(url) as s:
        await _publish_all(s, count)
        durable = ConsumerConfig(durable_name="floor", ack_policy=AckPolicy.EXPLICIT)
        await s.js.add_consumer(s.stream, durable)
        sub = await s.js.pull_subscribe(s.subject, "floor", stream=s.stream)
        done = 0
        started, cpu = time.perf_counter(), time.process_time()
        while done < count:
            for msg in await sub.fetch(FETCH_BATCH, timeout=5):
                await msg.ack()
                done += 1
        await s.nc.flush()
        rate = count / (time.perf_counter() - started)
        return rate, (time.process_time() - cpu) / count


async def measure(url: str, *, sequential: int, bulk: int, process: int) -> dict[str, float]:
    """Every floor figure, one workload after the other."""
    fetch_ack, fetch_ack_cpu = await fetch_and_ack(url, process)
    return {
        "raw_publish": await publish_sequential(url, sequential),
        "raw_publish_async": await publish_async(url, bulk),
        "raw_fetch_ack": fetch_ack,
        "raw_fetch_ack_cpu": fetch_ack_cpu,
    }


if __name__ == "__main__":  # a quick look: python -m bench.floor nats://127.0.0.1:4222
    import sys

    print(asyncio.run(measure(sys.argv[1], sequential=2000, bulk=10000, process=20000)))
