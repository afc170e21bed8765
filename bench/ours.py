"""oqron_nats workloads: enqueue, process, latency, scale, memory and idle CPU.

Every workload gets its own namespace, so runs never see each other's jobs. Jobs are processed
by separate worker processes (``bench/worker.py``) that time themselves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from oqron_nats import Client, JobState, Queue, queue

from .procs import STARTUP_TIMEOUT, BenchProcess

DONE_TIMEOUT = 600.0
QUEUE = "bench"


@dataclass(frozen=True)
class ProcessRun:
    """One processing run: its throughput and what its workers measured."""

    per_s: float
    workers: list[dict[str, Any]]

    @property
    def requests_per_job(self) -> float:
        """Requests (awaited round trips) per job, over all worker processes."""
        return sum(w["requests_per_job"] * w["count"] for w in self.workers) / sum(
            w["count"] for w in self.workers
        )

    @property
    def cpu_per_job(self) -> float:
        """Worker CPU seconds per job, over all worker processes."""
        return sum(w["cpu_per_job"] * w["count"] for w in self.workers) / sum(
            w["count"] for w in self.workers
        )


def fresh_client(url: str) -> Client:
    """A client in a namespace of its own."""
    return Client(url, namespace=f"bench{uuid.uuid4().hex[:8]}")


async def add_sequential(url: str, count: int) -> float:
    """``await q.add()`` one at a time: jobs per second."""
    async with fresh_client(url) as client:
        q = queue(QUEUE, client=client)
        await q.add({"n": -1})  # connect and create the streams outside the timing
        started = time.perf_counter()
        for n in range(count):
            await q.add({"n": n})
        return count / (time.perf_counter() - started)


async def add_bulk(url: str, count: int) -> float:
    """One ``add_bulk()`` of ``count`` jobs: jobs per second."""
    async with fresh_client(url) as client:
        q = queue(QUEUE, client=client)
        await q.add({"n": -1})
        started = time.perf_counter()
        await fill(q, count)
        return count / (time.perf_counter() - started)


async def fill(q: Queue[Any], count: int) -> None:
    """Add ``count`` jobs in one add_bulk()."""
    result = await q.add_bulk([{"data": {"n": n}} for n in range(count)])
    if not result.ok:
        raise RuntimeError(f"add_bulk failed: {list(result.errors.values())[:3]}")


@asynccontextmanager
async def paused_backlog(
    url: str,
    count: int,
    *,
    concurrency: int,
    guaranteed: bool,
    processes: int = 1,
    prefix: tuple[str, ...] = (),
    startup: float = STARTUP_TIMEOUT,
) -> AsyncIterator[tuple[Queue[Any], list[BenchProcess]]]:
    """``count`` jobs queued on a paused queue, and ready workers (run under ``prefix``, if
    given) waiting for it; the caller resumes the queue. The workers are killed afterwards."""
    async with fresh_client(url) as client:
        q = queue(QUEUE, client=client)
        await fill(q, count)
        await q.pause()
        workers = await _start_workers(
            client, processes, concurrency, guaranteed, prefix=prefix, startup=startup
        )
        try:
            yield q, workers
        finally:
            for w in workers:
                w.kill()


async def process(
    url: str, count: int, *, concurrency: int, guaranteed: bool, processes: int = 1
) -> ProcessRun:
    """Pre-fill ``count`` jobs, start the workers on the paused queue, resume, and time them."""
    async with paused_backlog(
        url, count, concurrency=concurrency, guaranteed=guaranteed, processes=processes
    ) as (q, workers):
        await q.resume()
        await until_completed(q, count)
        figures = [await asyncio.to_thread(w.finish) for w in workers]
    first = min(f["first"] for f in figures)
    last = max(f["last"] for f in figures)
    handled = sum(f["count"] for f in figures)
    return ProcessRun(handled / (last - first), figures)


async def latency(url: str, *, rate: float, seconds: float, concurrency: int) -> dict[str, float]:
    """Add jobs at a steady ``rate`` to a running worker; p50/p99 seconds to handler start."""
    async with fresh_client(url) as client:
        q = queue(QUEUE, client=client)
        await q.add({"n": -1})
        (w,) = await _start_workers(client, 1, concurrency, guaranteed=True)
        try:
            total = int(rate * seconds)
            started = time.perf_counter()
            adds = []
            for n in range(total):
                delay = started + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the publisher
                adds.append(asyncio.create_task(q.add({"n": n, "t": time.time()})))
            await asyncio.gather(*adds)
            await until_completed(q, total + 1)
            figures = await asyncio.to_thread(w.finish)
        finally:
            w.kill()
    cuts: dict[str, float] = figures["latencies"]
    return cuts


async def idle(url: str, seconds: float) -> dict[str, Any]:
    """A worker on an empty queue for ``seconds``: its CPU share and its figures."""
    async with fresh_client(url) as client:
        await queue(QUEUE, client=client).add({"n": -1})  # the streams exist, like in production
        (w,) = await _start_workers(client, 1, 100, guaranteed=True)
        try:
            await until_completed(queue(QUEUE, client=client), 1)
            await asyncio.sleep(seconds)  # the idle period being measured
            return await asyncio.to_thread(w.finish)
        finally:
            w.kill()


async def _start_workers(
    client: Client,
    processes: int,
    concurrency: int,
    guaranteed: bool,
    *,
    prefix: tuple[str, ...] = (),
    startup: float = STARTUP_TIMEOUT,
) -> list[BenchProcess]:
    args = worker_args(client, concurrency, guaranteed)
    workers = [BenchProcess("bench.worker", *args, prefix=prefix) for _ in range(processes)]
    for w in workers:
        await asyncio.to_thread(w.wait_ready, startup)
    return workers


def worker_args(client: Client, concurrency: int, guaranteed: bool) -> list[str]:
    """The command line of a bench worker on the client's namespace."""
    return ["--url", client.urls[0], "--namespace", client.namespace, "--queue", QUEUE,
            "--concurrency", str(concurrency), "--guaranteed", str(int(guaranteed))]  # fmt: skip


async def until_completed(q: Queue[Any], count: int) -> None:
    """Wait until ``count`` jobs of the queue are completed."""
    deadline = time.monotonic() + DONE_TIMEOUT
    while await q.count(JobState.COMPLETED) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} jobs not completed in {DONE_TIMEOUT} s")
        await asyncio.sleep(0.1)  # polling a count: the benchmark's own progress check
