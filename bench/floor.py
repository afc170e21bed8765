"""The floor: what raw nats-py does on the same server, with nothing of a job framework on top.

Each workload gets its own WorkQueue stream on file storage (what a queue's stream is), and
publishes the same small JSON payload the job benchmarks enqueue.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

FETCH_BATCH = 100


def payload(n: int) -> bytes:
    """The job data every workload sends."""
    return b'{"n":%d}' % n


async def _fresh_stream(nc: NatsClient) -> tuple[str, str]:
    name = f"FLOOR_{uuid.uuid4().hex[:8]}"
    subject = f"floor.{name}"
    await nc.jetstream().add_stream(
        StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
        )
    )
    return name, subject


async def publish_sequential(url: str, count: int) -> float:
    """``await js.publish()`` one at a time: messages per second."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream, subject = await _fresh_stream(nc)
        started = time.perf_counter()
        for n in range(count):
            await js.publish(subject, payload(n))
        rate = count / (time.perf_counter() - started)
        await js.delete_stream(stream)
        return rate
    finally:
        await nc.close()


async def publish_async(url: str, count: int) -> float:
    """``js.publish_async`` for every message, then wait for all acks: messages per second."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream, subject = await _fresh_stream(nc)
        started = time.perf_counter()
        rate = count / await _publish_all(js, subject, count, started)
        await js.delete_stream(stream)
        return rate
    finally:
        await nc.close()


async def _publish_all(js: nats.js.JetStreamContext, subject: str, count: int, t0: float) -> float:
    futures = [await js.publish_async(subject, payload(n)) for n in range(count)]
    await js.publish_async_completed()
    for future in futures:
        future.result()  # a failed publish raises here
    return time.perf_counter() - t0


async def fetch_and_ack(url: str, count: int) -> tuple[float, float]:
    """Pre-fill ``count`` messages, then ``fetch(100)`` + ``ack()`` them all: messages per second,
    and this process's CPU seconds per message meanwhile.

    Timed from the first fetch to the last ack, like the job benchmarks (from the first handler
    start to the last handler end).
    """
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream, subject = await _fresh_stream(nc)
        await _publish_all(js, subject, count, time.perf_counter())
        await js.add_consumer(
            stream, ConsumerConfig(durable_name="floor", ack_policy=AckPolicy.EXPLICIT)
        )
        sub = await js.pull_subscribe(subject, "floor", stream=stream)
        done = 0
        started, cpu = time.perf_counter(), time.process_time()
        while done < count:
            for msg in await sub.fetch(FETCH_BATCH, timeout=5):
                await msg.ack()
                done += 1
        await nc.flush()
        rate = count / (time.perf_counter() - started)
        cpu_per_msg = (time.process_time() - cpu) / count
        await js.delete_stream(stream)
        return rate, cpu_per_msg
    finally:
        await nc.close()


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
