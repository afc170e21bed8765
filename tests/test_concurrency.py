"""Concurrency: at most ``concurrency`` handlers per process, N processes give N x concurrency,
a free slot is refilled at once, and an idle worker holds a long pull instead of polling."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import Client, Job, JobContext, JobState, Middleware, queue, worker
from oqron_nats._nats import Nats
from oqron_nats.core.job import Strategy
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, holds, read_log
from .support import Backstage

WAIT = 10.0
STRATEGIES = ["fifo", "priority", "lifo"]


class Gauge:
    """How many handlers run right now, and the most that ever ran at once (thread-safe)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.done = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1
            self.done += 1


def max_overlap(entries: list[dict[str, Any]]) -> int:
    """The most [start, end] intervals of a worker log open at one time."""
    points = sorted((e["t"], 1 if e["event"] == "start" else 0) for e in entries)
    current = peak = 0
    for _, is_start in points:  # at equal times an end sorts (and closes) before a start
        current += 1 if is_start else -1
        peak = max(peak, current)
    return peak


def count_pulls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    """Record every pull request (CONSUMER.MSG.NEXT) this process sends, with its time."""
    pulls: list[tuple[float, str]] = []
    original = Nats.publish_core

    async def publish_core(self: Nats, subject: str, payload: bytes = b"", **kw: Any) -> None:
        if "CONSUMER.MSG.NEXT" in subject:
            pulls.append((time.monotonic(), subject))
        await original(self, subject, payload, **kw)

    monkeypatch.setattr(Nats, "publish_core", publish_core)
    return pulls


def count_pops(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every read of the lanes a move makes (lifo: the newest message; priority: a
    batch of the oldest on the work stream), with its time."""
    pops: list[float] = []
    newest, batch = Nats.direct_get, Nats.direct_batch

    async def direct_get(self: Nats, stream: str, *, last_by_subject: str) -> Any:
        pops.append(time.monotonic())
        return await newest(self, stream, last_by_subject=last_by_subject)

    async def direct_batch(self: Nats, stream: str, **query: Any) -> Any:
        if "_Q_" in stream:  # the work stream's lanes, not the records (maintenance passes)
            pops.append(time.monotonic())
        return await batch(self, stream, **query)

    monkeypatch.setattr(Nats, "direct_get", direct_get)
    monkeypatch.setattr(Nats, "direct_batch", direct_batch)
    return pops


# -- one process: never more than `concurrency` at once -------------------------------------


@pytest.mark.parametrize(
    ("strategy", "sync"),
    [("fifo", False), ("priority", False), ("lifo", False), ("fifo", True)],
    ids=["fifo", "priority", "lifo", "fifo-sync-handler"],
)
async def test_one_process_runs_at_most_concurrency_handlers(
    client: Client, strategy: Strategy, sync: bool
) -> None:
    gauge = Gauge()

    async def handler(ctx: JobContext[Any]) -> None:
        gauge.enter()
        try:
            await asyncio.sleep(0.2)
        finally:
            gauge.leave()

    def sync_handler(ctx: JobContext[Any]) -> None:  # runs in the worker's thread pool
        gauge.enter()
        try:
            time.sleep(0.2)
        finally:
            gauge.leave()

    q = queue(
        "conc",
        sync_handler if sync else handler,
        client=client,
        concurrency=3,
        strategy=strategy,
    )
    result = await q.add_bulk([{"data": n, "opts": {"priority": n % 10}} for n in range(15)])
    assert result.ok
    async with q:
        await eventually(
            lambda: _at_least(q.count(JobState.COMPLETED), 15), timeout=30, what="15 jobs"
        )
    assert gauge.done == 15
    assert gauge.peak == 3, f"expected exactly 3 handlers at once at the peak, saw {gauge.peak}"


async def _at_least(value: Awaitable[int], n: int) -> bool:
    return await value >= n


# -- N processes: N x concurrency ------------------------------------------------------------


async def test_two_processes_run_twice_the_concurrency(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions.jsonl"
    options = {"queue": "multi", "concurrency": 3, "sleep": 1.0}
    procs: list[WorkerProcess] = []
    try:
        procs.append(WorkerProcess(nats_server.url, namespace, log, **options))
        procs.append(WorkerProcess(nats_server.url, namespace, log, **options))
        q = queue("multi", client=client)
        assert (await q.add_bulk([{"data": {"n": n}} for n in range(12)])).ok
        await eventually(
            lambda: _at_least(q.count(JobState.COMPLETED), 12), timeout=30, what="12 jobs"
        )
        entries = read_log(log)
        starts = [e for e in entries if e["event"] == "start"]
        assert len(starts) == 12 and len({e["job"] for e in starts}) == 12
        by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for entry in entries:
            by_pid[entry["pid"]].append(entry)
        assert set(by_pid) == {p.pid for p in procs}, "both processes ran jobs"
        per_pid = {pid: max_overlap(e) for pid, e in by_pid.items()}
        assert per_pid == {p.pid: 3 for p in procs}, f"each process runs 3 at once: {per_pid}"
        assert max_overlap(entries) == 6, "two processes of concurrency 3 run 6 jobs at once"
        for proc in procs:
            assert proc.terminate() == 0
    finally:
        for proc in procs:
            proc.close()


# -- a free slot is refilled at once ---------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_free_slot_keeps_claiming_while_a_long_job_runs(
    client: Client, strategy: Strategy
) -> None:
    shorts = 20
    short_ends: list[float] = []
    long_started = asyncio.Event()
    long_end: list[float] = []

    async def handler(ctx: JobContext[Any]) -> None:
        if ctx.data == "long":
            long_started.set()
            await asyncio.sleep(2.0)
            long_end.append(time.monotonic())
        else:
            await asyncio.sleep(0.02)
            short_ends.append(time.monotonic())

    q = queue("refill", handler, client=client, concurrency=2, strategy=strategy)
    # the long job is the first one claimed: fifo by add order, priority by its better
    # lane, lifo because it is the newest
    if strategy != "lifo":
        await q.add("long", priority=0)
    for n in range(shorts):
        await q.add(n, priority=5)
    if strategy == "lifo":
        await q.add("long", priority=0)
    async with q:
        await asyncio.wait_for(long_started.wait(), 10)
        started = time.monotonic()
        await eventually(lambda: _length(short_ends, shorts), timeout=15, what="short jobs")
        assert not long_end, "the long job ended before every short job had run"
        elapsed = time.monotonic() - started
        await eventually(lambda: _length(long_end, 1), timeout=10, what="the long job")
    assert max(short_ends) < long_end[0]
    assert elapsed < 2.0, f"20 short jobs through one slot took {elapsed:.2f}s"


async def _length(items: list[Any], n: int) -> bool:
    return len(items) >= n


# -- a slot is a handler's: the outcome is written outside it -------------------------------


class HeldOutcome(Middleware):
    """Holds back the settle of every attempt (its after_process hook waits) until released."""

    def __init__(self) -> None:
        self.waiting: list[str] = []
        self.release = asyncio.Event()

    async def after_process(self, job: Job[Any], seconds: float, outcome: str | None) -> None:
        self.waiting.append(job.data)
        await asyncio.wait_for(self.release.wait(), WAIT)


async def test_a_slot_frees_when_its_handler_returns_and_stop_waits_for_the_outcome(
    client: Client,
) -> None:
    """concurrency=1: the next handler starts while the last job's outcome is being written;
    at most ``concurrency`` jobs wait to settle (no third start), and stop() waits for them."""
    started: list[str] = []

    async def handler(ctx: JobContext[str]) -> None:
        started.append(ctx.data)

    held = HeldOutcome()
    q = queue("settle-outside", handler, client=client, concurrency=1, middleware=[held])
    a, b, c = [await q.add(name) for name in "abc"]
    try:
        await q.start()
        await eventually(lambda: _length(held.waiting, 2), what="two handlers returned")
        assert started == ["a", "b"], "b ran while a's outcome was still being written"
        job_a = await q.get_job(a.id)
        assert job_a is not None and job_a.state == JobState.ACTIVE
        await asyncio.sleep(0.5)  # room for a third start, were settles unbounded
        assert started == ["a", "b"], "a third job started while two were settling"
        stopping = asyncio.create_task(q.stop(timeout=WAIT))
        await asyncio.sleep(0.3)
        assert not stopping.done(), "stop() waits for the outcomes being written"
        held.release.set()
        await asyncio.wait_for(stopping, WAIT)
        jobs = [await q.get_job(job.id) for job in (a, b, c)]
        assert [job.state if job else None for job in jobs] == [
            JobState.COMPLETED, JobState.COMPLETED, JobState.WAITING
        ]  # fmt: skip
        assert started == ["a", "b"]
    finally:
        held.release.set()
        await q.close()


# -- idle: one long pull, no poll tick, no busy loop ------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_an_idle_worker_holds_a_long_pull_and_costs_nothing(
    client: Client, monkeypatch: pytest.MonkeyPatch, strategy: Strategy
) -> None:
    pulls = count_pulls(monkeypatch)
    pops = count_pops(monkeypatch)
    started: list[float] = []

    async def handler(ctx: JobContext[Any]) -> None:
        started.append(time.monotonic())

    q = queue("idle", handler, client=client, concurrency=5, strategy=strategy)
    async with q:
        await asyncio.sleep(0.3)  # let the first claim round open its pulls
        at_start, pops_at_start = len(pulls), len(pops)
        assert 1 <= at_start <= 2, f"{at_start} pulls to start"
        cpu = time.process_time()
        await asyncio.sleep(2.0)
        cpu = time.process_time() - cpu
        idle = len(pulls) - at_start
        assert idle <= 1, f"{idle} pull requests in 2 s of idleness"
        assert len(pops) == pops_at_start, "an idle worker kept looking at its lanes"
        assert cpu < 0.2, f"an idle worker used {cpu:.3f}s of CPU in 2 s"
        assert len(pulls) <= 2

        added = time.monotonic()
        await q.add({"n": 1}, priority=7)
        await eventually(lambda: _length(started, 1), timeout=5, what="the job to start")
        latency = started[0] - added
        assert latency < 1.0, f"a job added to an idle worker started after {latency:.2f}s"


# -- stopping an idle worker -----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_an_idle_queue_stops_promptly(client: Client, strategy: Strategy) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        return None

    q = queue("stopq", handler, client=client, strategy=strategy)
    await q.start()
    await asyncio.sleep(0.3)  # the long pulls are open
    began = time.monotonic()
    await asyncio.wait_for(q.stop(), 10)
    took = time.monotonic() - began
    assert took < 1.0, f"stop() of an idle queue took {took:.2f}s"
    assert not q.is_consuming


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_an_idle_worker_run_returns_promptly_when_asked_to_stop(
    client: Client, strategy: Strategy
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        return None

    w = worker("stopw", handler, client=client, strategy=strategy)
    run = asyncio.create_task(w.run())
    try:
        await asyncio.wait_for(w.ready.wait(), 10)
        await asyncio.sleep(0.3)
        began = time.monotonic()
        w.request_stop()
        await asyncio.wait_for(asyncio.shield(run), 10)
        took = time.monotonic() - began
    finally:
        if not run.done():
            run.cancel()
    assert took < 1.0, f"an idle worker took {took:.2f}s to stop"
    assert not w.queue.is_consuming
    # the worker released the queue on this client: it can be consumed again
    again = queue("stopw", handler, client=client, strategy=strategy)
    async with again:
        assert again.is_consuming


async def test_a_deleted_consumer_is_recreated_and_claiming_goes_on(client: Client) -> None:
    done = asyncio.Event()

    async def handler(ctx: Any) -> None:
        done.set()

    q = queue("phoenix", handler, client=client)
    async with q:
        behind = Backstage(client, "phoenix")
        await behind.delete_consumer("fifo")
        await eventually(lambda: _has_consumer(behind, "fifo"), what="the consumer to be recreated")
        await q.add({"n": 1})
        await asyncio.wait_for(done.wait(), 10)


async def test_a_new_consumer_leader_makes_the_worker_pull_again_at_once(client: Client) -> None:
    """A cluster whose consumer's leader changes may drop the open pull requests without a word
    (the same node elected again after a heal); the server's advisory of the new leader makes
    the worker forget them and pull again now, not once its check of their heartbeats gives up
    (seconds later)."""

    async with idle_worker_pulls(client, "elected") as (behind, pulls):
        before = len(pulls)
        await behind.announce_new_leader("fifo")
        await eventually(lambda: holds(len(pulls) > before), timeout=1.5,
                         what="a new pull request after the advisory")  # fmt: skip


async def test_a_new_leaders_409_then_its_advisory_make_one_new_pull(client: Client) -> None:
    """A new consumer leader tells the open pulls (409 Leadership Change) and the server also
    sends its advisory, in either order: the worker pulls again once, not once for each (the
    advisory right after the 409 would drop the pull sent for it, and the server would hold
    twice the worker's room)."""

    async with idle_worker_pulls(client, "told") as (behind, pulls):
        await behind.announce_new_leader("fifo")  # a pull whose reply subject we know
        await eventually(lambda: holds(len(pulls) == 1), timeout=2, what=f"a pull {pulls}")
        await behind.answer_pull(pulls[0], "409", "Leadership Change")
        await eventually(lambda: holds(len(pulls) == 2), timeout=2, what="a pull after the 409")
        await behind.announce_new_leader("fifo")
        await asyncio.sleep(0.5)
        assert len(pulls) == 2, "the advisory after the 409 made a second pull"


@contextlib.asynccontextmanager
async def idle_worker_pulls(
    client: Client, name: str
) -> AsyncIterator[tuple[Backstage, list[str]]]:
    """A worker of a no-op queue ``name``, started and idle (its first pull open), and the
    reply subjects of the pull requests it sends from then on, as they are sent."""

    async def handler(ctx: Any) -> None:
        pass

    async with queue(name, handler, client=client):
        behind = Backstage(client, name)
        pulls: list[str] = []

        async def pulled(msg: Any) -> None:
            pulls.append(msg.reply)

        watch = await behind.watch_pulls("fifo", pulled)
        try:
            await asyncio.sleep(0.5)  # started: its first pull is open and idle
            yield behind, pulls
        finally:
            await watch.unsubscribe()


async def _has_consumer(behind: Backstage, name: str) -> bool:
    return name in await behind.consumer_names()
