"""oqron_nats workloads: enqueue, process, latency, scale, memory and idle CPU.

Every workload gets its own namespace, so runs never see each other's jobs. Jobs are processed
by separate worker processes (``bench/worker.py``) that time themselves.

The benchmark waits for the end of a run cheaply, so that its own checks add next to nothing to
the server's CPU: it polls the queue's WorkQueue stream for its message count (one O(1) request,
20 times a second) until it is empty, i.e. every job was acked, which a worker does after it
wrote the job's final record; only then does it count the completed jobs (a count is O(jobs in
the state) on the server), every 0.5 s until the count is reached (usually at once).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats

from oqron_nats import Client, JobState, Queue, queue
from oqron_nats.core.naming import PRIORITY_LEVELS

from .procs import STARTUP_TIMEOUT, BenchProcess, cpu_seconds

DONE_TIMEOUT = 600.0
DRAINED_POLL = 0.05
"""Seconds between two reads of the queue stream's message count (one O(1) request each)."""
COUNT_POLL = 0.5
"""Seconds between two counts of completed jobs (O(jobs in the state) on the server)."""
QUEUE = "bench"


@dataclass(frozen=True)
class ProcessRun:
    """One processing run: its throughput and what its workers measured."""

    per_s: float
    workers: list[dict[str, Any]]
    server_cpu_per_job: float
    """The nats-server's CPU seconds (user + system) from the resume to the last completion
    (the stream drained), per job: the workers' requests, acks and pulls, the records, leases,
    index entries and events they write, and the benchmark's few drained-polls; not what the
    server does later (the expiry of index delete markers, lease keys)."""

    def _per_job(self, key: str) -> float:
        weighted = sum(float(w[key]) * int(w["count"]) for w in self.workers)
        return weighted / sum(int(w["count"]) for w in self.workers)

    @property
    def requests_per_job(self) -> float:
        """Requests (awaited round trips, background ones too) per job, over all workers."""
        return self._per_job("requests_per_job")

    @property
    def critical_per_job(self) -> float | None:
        """Requests awaited on the critical path (by the job's own execution task) per job, over
        all workers; None if the library does not count them."""
        if any(w.get("critical_per_job") is None for w in self.workers):
            return None
        return self._per_job("critical_per_job")

    @property
    def cpu_per_job(self) -> float:
        """Worker CPU seconds per job, over all worker processes."""
        return self._per_job("cpu_per_job")

    @property
    def total_cpu_per_job(self) -> float:
        """Worker and server CPU seconds per job."""
        return self.cpu_per_job + self.server_cpu_per_job


def fresh_client(url: str) -> Client:
    """A client in a namespace of its own."""
    return Client(url, namespace=f"bench{uuid.uuid4().hex[:8]}")


@asynccontextmanager
async def fresh_queue(url: str) -> AsyncIterator[Queue[Any]]:
    """A publisher-only queue in a namespace of its own (``q.client``), both closed afterwards
    (closing the queue stops its following of the queue's state)."""
    async with fresh_client(url) as client, queue(QUEUE, client=client) as q:
        yield q


async def add_sequential(url: str, count: int) -> float:
    """``await q.add()`` one at a time: jobs per second."""
    async with fresh_queue(url) as q:
        await q.add({"n": -1})  # connect and create the streams outside the timing
        started = time.perf_counter()
        for n in range(count):
            await q.add({"n": n})
        return count / (time.perf_counter() - started)


async def add_bulk(url: str, count: int) -> float:
    """One ``add_bulk()`` of ``count`` jobs: jobs per second."""
    async with fresh_queue(url) as q:
        await q.add({"n": -1})
        started = time.perf_counter()
        await fill(q, count)
        return count / (time.perf_counter() - started)


async def fill(q: Queue[Any], count: int, lanes: int = 1) -> None:
    """Add ``count`` jobs in one add_bulk(), spread over the first ``lanes`` priorities."""
    items = [{"data": {"n": n}, "opts": {"priority": n % lanes}} for n in range(count)]
    result = await q.add_bulk(items)
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
    strategy: str = "fifo",
) -> AsyncIterator[tuple[Queue[Any], list[BenchProcess]]]:
    """``count`` jobs queued on a paused queue (over every lane for lifo and priority), and
    ready workers (run under ``prefix``, if given) waiting for it; the caller resumes the
    queue. The workers are killed afterwards."""
    async with fresh_queue(url) as q:
        await fill(q, count, lanes=1 if strategy == "fifo" else PRIORITY_LEVELS)
        await q.pause()
        workers = await _start_workers(
            q.client, processes, concurrency, guaranteed, prefix=prefix, startup=startup,
            strategy=strategy,
        )  # fmt: skip
        try:
            yield q, workers
        finally:
            for w in workers:
                w.kill()


async def process(
    url: str,
    count: int,
    *,
    concurrency: int,
    guaranteed: bool,
    server_pid: int,
    processes: int = 1,
    strategy: str = "fifo",
) -> ProcessRun:
    """Pre-fill ``count`` jobs, start the workers on the paused queue, resume, and time them;
    the server's CPU (process ``server_pid``) is read at the resume and once the stream drained."""
    async with paused_backlog(
        url, count, concurrency=concurrency, guaranteed=guaranteed, processes=processes,
        strategy=strategy,
    ) as (q, workers):  # fmt: skip
        server_cpu = cpu_seconds(server_pid)
        await q.resume()
        await until_drained(q)
        server_cpu = cpu_seconds(server_pid) - server_cpu
        await until_completed(q, count)
        figures = [await asyncio.to_thread(w.finish) for w in workers]
    first = min(f["first"] for f in figures)
    last = max(f["last"] for f in figures)
    handled = sum(f["count"] for f in figures)
    return ProcessRun(handled / (last - first), figures, server_cpu / count)


async def latency(url: str, *, rate: float, seconds: float, concurrency: int) -> dict[str, float]:
    """Add jobs at a steady ``rate`` to a running worker; p50/p99 seconds to handler start."""
    async with fresh_queue(url) as q:
        await q.add({"n": -1})
        (w,) = await _start_workers(q.client, 1, concurrency, guaranteed=True)
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
    async with fresh_queue(url) as q:
        await q.add({"n": -1})  # the streams exist, like in production
        (w,) = await _start_workers(q.client, 1, 100, guaranteed=True)
        try:
            await until_completed(q, 1)
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
    strategy: str = "fifo",
) -> list[BenchProcess]:
    args = [*worker_args(client, concurrency, guaranteed), "--strategy", strategy]
    workers = [BenchProcess("bench.worker", *args, prefix=prefix) for _ in range(processes)]
    for w in workers:
        await asyncio.to_thread(w.wait_ready, startup)
    return workers


def worker_args(
    client: Client, concurrency: int, guaranteed: bool, queues: tuple[str, ...] = (QUEUE,)
) -> list[str]:
    """The command line of a bench worker serving ``queues`` of the client's namespace."""
    args = ["--url", ",".join(client.urls), "--namespace", client.namespace,
            "--replicas", str(client.replicas), "--concurrency", str(concurrency),
            "--guaranteed", str(int(guaranteed))]  # fmt: skip
    for name in queues:
        args += ["--queue", name]
    return args


async def until_drained(q: Queue[Any]) -> None:
    """Wait until the queue's WorkQueue stream holds no message: every job was acked (a worker
    acks after the job's final record is written). Read on a plain nats-py connection."""
    nc = await nats.connect(q.client.urls)
    try:
        js = nc.jetstream()
        stream = q.client.names(q.name).stream
        deadline = time.monotonic() + DONE_TIMEOUT
        while (await js.stream_info(stream)).state.messages:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} not drained in {DONE_TIMEOUT} s")
            await asyncio.sleep(DRAINED_POLL)  # the benchmark's own progress check
    finally:
        await nc.close()


async def until_completed(q: Queue[Any], count: int) -> None:
    """Wait until ``count`` jobs of the queue are completed: until its stream drained, then
    until a count of its completed jobs reaches ``count`` (see the module's docstring)."""
    await until_drained(q)
    deadline = time.monotonic() + DONE_TIMEOUT
    while await q.count(JobState.COMPLETED) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} jobs not completed in {DONE_TIMEOUT} s")
        await asyncio.sleep(COUNT_POLL)  # the benchmark's own progress check
