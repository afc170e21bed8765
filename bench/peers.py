"""oqron_nats's workload run with its peers, taskiq-nats and FastStream, for the same-run figures.

On a given nats-server, for one peer:

- enqueue (``enqueue_rate``): the peer's own publish (taskiq ``await task.kiq(n)``, FastStream
  ``await broker.publish(n, subject, stream=...)``) into a JetStream stream, awaited one job at
  a time; jobs per second.
- process (``process_rate``): N no-op jobs pre-filled with the same publish (gathered in windows,
  not timed), then consumed by one worker process (``bench/peer_worker.py``, which lists each
  peer's settings) at concurrency C in one configuration (a ``Setup``); the worker times itself
  from its first handler start to its last handler end. The figure counts only if the worker
  handled exactly N jobs and the durable consumer then shows N deliveries (no redelivery), all
  acked, none pending.
- best configuration (``best_process``): every setup of the peer at the same concurrency, the
  fastest first. taskiq-nats: pull batch 100. FastStream: pull batch 100, and push.

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
from typing import Any, Literal

import nats
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from . import peer_worker
from .procs import BenchProcess

MODULES = {"taskiq": ("taskiq", "taskiq_nats"), "faststream": ("faststream",)}
PREFILL_WINDOW = 500  # publishes in flight while pre-filling
RUN_TIMEOUT = 300.0  # seconds for the worker to handle every job
ACK_SETTLE_TIMEOUT = 10.0  # seconds for the server to show the worker's last acks
BEST_BATCH = 100  # messages per pull in each peer's best configuration

Publish = Callable[[int], Awaitable[object]]


class PeerError(RuntimeError):
    """A peer's run failed or its figures cannot be trusted."""


@dataclass(frozen=True)
class Setup:
    """One configuration of a peer's worker (see bench/peer_worker.py)."""

    peer: str
    mode: Literal["pull", "push"] = "pull"
    batch: int = BEST_BATCH

    @property
    def label(self) -> str:
        """How the table names it."""
        return f"pull batch {self.batch}" if self.mode == "pull" else "push"


SETUPS = {
    "taskiq": (Setup("taskiq"),),
    "faststream": (Setup("faststream"), Setup("faststream", "push")),
}
"""Each peer's candidates for its best configuration."""


@dataclass(frozen=True)
class ProcessFigures:
    """One processing run of a peer in one setup."""

    setup: Setup
    per_s: float
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


@dataclass(frozen=True)
class Scratch:
    """A fresh stream and its subject for one workload, and a connection to check it."""

    js: JetStreamContext
    stream: str
    subject: str


@asynccontextmanager
async def scratch_stream(url: str, peer: str, kind: str) -> AsyncIterator[Scratch]:
    """A fresh stream for one workload, deleted afterwards."""
    suffix = uuid.uuid4().hex[:12]
    nc = await nats.connect(url)
    s = Scratch(nc.jetstream(), f"bench_{peer}_{kind}_{suffix}", f"bench.{peer}.{kind}.{suffix}")
    try:
        await s.js.add_stream(name=s.stream, subjects=[s.subject])
        yield s
    finally:
        with suppress(NotFoundError):
            await s.js.delete_stream(s.stream)
        await nc.close()


async def enqueue_rate(peer: str, url: str, jobs: int) -> float:
    """The peer's publish, awaited one job at a time: jobs per second."""
    async with scratch_stream(url, peer, "enqueue") as s:
        async with publisher(peer, url, s.stream, s.subject) as publish:
            started = time.perf_counter()
            for n in range(jobs):
                await publish(n)
            per_s = jobs / (time.perf_counter() - started)
        await expect_stored(s, jobs)
    return per_s


async def process_rate(setup: Setup, url: str, jobs: int, concurrency: int) -> ProcessFigures:
    """Pre-fill ``jobs`` and time the peer's worker in ``setup`` over them."""
    async with scratch_stream(url, setup.peer, "process") as s:
        async with publisher(setup.peer, url, s.stream, s.subject) as publish:
            for first in range(0, jobs, PREFILL_WINDOW):
                last = min(first + PREFILL_WINDOW, jobs)
                await asyncio.gather(*(publish(n) for n in range(first, last)))
        await expect_stored(s, jobs)
        result = await run_worker(setup, url, s, jobs=jobs, concurrency=concurrency)
        await expect_all_acked(s, jobs)
    per_s = result["count"] / (result["last"] - result["first"])
    return ProcessFigures(setup, per_s, result["maxrss_kb"] / 1024)


async def best_process(peer: str, url: str, jobs: int, concurrency: int) -> list[ProcessFigures]:
    """Every setup of ``peer`` at ``concurrency``, the fastest first."""
    if peer not in MODULES:
        raise ValueError(f"unknown peer {peer!r}; known: {', '.join(MODULES)}")
    runs = [await process_rate(setup, url, jobs, concurrency) for setup in SETUPS[peer]]
    return sorted(runs, key=lambda run: run.per_s, reverse=True)


async def expect_stored(s: Scratch, jobs: int) -> None:
    """Fail unless the stream holds exactly ``jobs`` messages."""
    stored = (await s.js.stream_info(s.stream)).state.messages
    if stored != jobs:
        raise PeerError(f"stream {s.stream} holds {stored} messages, expected {jobs}")


async def expect_all_acked(s: Scratch, jobs: int) -> None:
    """Fail unless the worker's consumer delivered every job once and has all acks."""
    deadline = time.monotonic() + ACK_SETTLE_TIMEOUT
    while True:
        info = await s.js.consumer_info(s.stream, peer_worker.DURABLE)
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
                f"consumer on {s.stream} after the worker: pending {state[0]}, ack pending "
                f"{state[1]}, deliveries {state[2]}, ack floor {state[3]}; expected 0, 0, "
                f"{jobs}, {jobs}"
            )
        # the worker's last acks are in the server's queue: a server-side count, polled
        await asyncio.sleep(0.05)


async def run_worker(
    setup: Setup, url: str, s: Scratch, *, jobs: int, concurrency: int
) -> dict[str, Any]:
    """Run the peer's worker process over the pre-filled stream; its result line, checked."""
    args = [setup.peer, "--url", url, "--stream", s.stream, "--subject", s.subject]
    args += ["--jobs", str(jobs), "--concurrency", str(concurrency)]
    args += ["--mode", setup.mode, "--batch", str(setup.batch)]
    worker = BenchProcess("bench.peer_worker", *args)
    name = f"{setup.peer} ({setup.label})"
    try:
        await asyncio.to_thread(worker.wait_ready)
        result = await asyncio.to_thread(worker.figures, RUN_TIMEOUT)
    except (TimeoutError, RuntimeError) as exc:
        raise PeerError(f"{name} worker failed: {exc}") from None
    finally:
        worker.kill()
    if result["count"] != jobs or result["first"] is None or result["last"] <= result["first"]:
        raise PeerError(f"{name} worker handled {result['count']} jobs, expected {jobs}: {result}")
    return result
