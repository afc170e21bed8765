"""oqron_nats's workload run with its peers, taskiq-nats and FastStream, for the same-run figures.

On a given nats-server, for one peer:

- enqueue: the peer's own publish (taskiq ``await task.kiq(n)``, FastStream ``await
  broker.publish(n, subject, stream=...)``) into a JetStream stream, awaited one job at a time;
  jobs per second.
- process: N no-op jobs pre-filled with the same publish (gathered in windows, not timed), then
  consumed by one worker process (``bench/peer_worker.py``, which lists each peer's settings) at
  concurrency C; the worker times itself from its first handler start to its last handler end.
  The figure counts only if the worker handled exactly N jobs and the durable consumer then shows
  N deliveries (no redelivery), all acked, none pending.

Streams are JetStream defaults (file storage, limits retention), named with a fresh suffix so
runs do not collide, and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from importlib.util import find_spec
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from . import peer_worker
from .procs import BenchProcess

MODULES = {"taskiq": ("taskiq", "taskiq_nats"), "faststream": ("faststream",)}
PREFILL_WINDOW = 500  # publishes in flight while pre-filling
RUN_TIMEOUT = 300.0  # seconds for the worker to handle every job
ACK_SETTLE_TIMEOUT = 10.0  # seconds for the server to show the worker's last acks

Publish = Callable[[int], Awaitable[object]]


class PeerError(RuntimeError):
    """A peer's run failed or its figures cannot be trusted."""


@dataclass(frozen=True)
class PeerFigures:
    """One peer's figures from one run."""

    name: str
    enqueue_per_s: float
    process_per_s: float
    peak_rss_mb: float  # the worker process's peak RSS


def available() -> list[str]:
    """The peers whose packages are importable."""
    return [peer for peer, modules in MODULES.items() if all(find_spec(m) for m in modules)]


def peer_name(peer: str) -> str:
    """The peer's display name with its installed version."""
    if peer == "taskiq":
        return f"taskiq-nats {version('taskiq-nats')}"
    return f"FastStream {version('faststream')}"


@asynccontextmanager
async def publisher(peer: str, url: str, stream: str, subject: str) -> AsyncIterator[Publish]:
    """The peer's own publish of one no-op job to ``subject`` in ``stream``."""
    if peer == "taskiq":
        broker = peer_worker.taskiq_broker(url, stream, subject, batch=1)

        async def noop(n: int) -> None:
            """Never runs here: the worker process registers the same task name."""

        task = broker.register_task(noop, task_name=peer_worker.TASK_NAME)
        await broker.startup()
        try:
            yield task.kiq
        finally:
            await broker.shutdown()
        return

    from faststream.nats import NatsBroker

    fs_broker = NatsBroker(url, logger=None)
    await fs_broker.connect()

    async def publish(n: int) -> object:
        return await fs_broker.publish(n, subject, stream=stream, timeout=10.0)

    try:
        yield publish
    finally:
        await fs_broker.stop()


async def measure(
    peer: str, url: str, *, enqueue_jobs: int, process_jobs: int, concurrency: int = 100
) -> PeerFigures:
    """Measure one peer's enqueue and process throughput on the server at ``url``."""
    if peer not in MODULES:
        raise ValueError(f"unknown peer {peer!r}; known: {', '.join(MODULES)}")
    if enqueue_jobs < 1 or process_jobs < 1:
        raise ValueError("enqueue_jobs and process_jobs must be at least 1")
    suffix = uuid.uuid4().hex[:12]
    enqueue = (f"bench_{peer}_enqueue_{suffix}", f"bench.{peer}.enqueue.{suffix}")
    process = (f"bench_{peer}_process_{suffix}", f"bench.{peer}.process.{suffix}")
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for stream, subject in (enqueue, process):
            await js.add_stream(name=stream, subjects=[subject])

        async with publisher(peer, url, *enqueue) as publish:
            started = time.perf_counter()
            for n in range(enqueue_jobs):
                await publish(n)
            enqueue_per_s = enqueue_jobs / (time.perf_counter() - started)
        await expect_stored(js, enqueue[0], enqueue_jobs)

        async with publisher(peer, url, *process) as publish:
            for first in range(0, process_jobs, PREFILL_WINDOW):
                last = min(first + PREFILL_WINDOW, process_jobs)
                await asyncio.gather(*(publish(n) for n in range(first, last)))
        await expect_stored(js, process[0], process_jobs)

        result = await run_worker(peer, url, *process, jobs=process_jobs, concurrency=concurrency)
        await expect_all_acked(js, process[0], process_jobs)
    finally:
        for stream, _ in (enqueue, process):
            with suppress(NotFoundError):
                await js.delete_stream(stream)
        await nc.close()

    return PeerFigures(
        name=peer_name(peer),
        enqueue_per_s=enqueue_per_s,
        process_per_s=result["count"] / (result["last"] - result["first"]),
        peak_rss_mb=result["maxrss_kb"] / 1024,
    )


async def expect_stored(js: JetStreamContext, stream: str, jobs: int) -> None:
    """Fail unless ``stream`` holds exactly ``jobs`` messages."""
    stored = (await js.stream_info(stream)).state.messages
    if stored != jobs:
        raise PeerError(f"stream {stream} holds {stored} messages, expected {jobs}")


async def expect_all_acked(js: JetStreamContext, stream: str, jobs: int) -> None:
    """Fail unless the worker's consumer delivered every job once and has all acks."""
    deadline = time.monotonic() + ACK_SETTLE_TIMEOUT
    while True:
        info = await js.consumer_info(stream, peer_worker.DURABLE)
        state = (
            info.num_pending,
            info.num_ack_pending,
            info.delivered.consumer_seq,
            info.ack_floor.consumer_seq,
        )
        if state == (0, 0, jobs, jobs):
            return
        if time.monotonic() > deadline:
            raise PeerError(
                f"consumer on {stream} after the worker: pending {state[0]}, ack pending "
                f"{state[1]}, deliveries {state[2]}, ack floor {state[3]}; expected 0, 0, "
                f"{jobs}, {jobs}"
            )
        # the worker's last acks are in the server's queue: a server-side count, polled
        await asyncio.sleep(0.05)


async def run_worker(
    peer: str, url: str, stream: str, subject: str, *, jobs: int, concurrency: int
) -> dict[str, Any]:
    """Run the peer's worker process over the pre-filled stream; its result line, checked."""
    args = [peer, "--url", url, "--stream", stream, "--subject", subject]
    args += ["--jobs", str(jobs), "--concurrency", str(concurrency)]
    worker = BenchProcess("bench.peer_worker", *args)
    try:
        await asyncio.to_thread(worker.wait_ready)
        result = await asyncio.to_thread(worker.figures, RUN_TIMEOUT)
    except (TimeoutError, RuntimeError) as exc:
        raise PeerError(f"{peer} worker failed: {exc}") from None
    finally:
        worker.kill()
    if result["count"] != jobs or result["first"] is None or result["last"] <= result["first"]:
        raise PeerError(f"{peer} worker handled {result['count']} jobs, expected {jobs}: {result}")
    return result
