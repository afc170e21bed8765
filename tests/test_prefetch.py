"""Prefetch: while its jobs are short, a fifo worker holds up to ``min(concurrency, 10)``
deliveries ready beyond its slots; it claims none of them before a slot frees up, hands them
back when it stops, when they waited ``MAX_WAIT`` or when the queue pauses, and holds none for
long jobs, for lifo and priority, or under a throttle."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from oqron_nats import (
    Client,
    Job,
    JobContext,
    JobState,
    Middleware,
    Queue,
    QueueOptions,
    Throttle,
    queue,
)
from oqron_nats.runtime import prefetch
from oqron_nats.testing.server import LocalServer

from .helpers import eventually, holds
from .proxy import TcpProxy
from .support import Backstage

WAIT = 10.0
WARM_UP = 20
"""Short jobs run first, so the worker judges its jobs short."""


class Handler:
    """Short jobs return after ``short_job`` seconds; a job whose data starts with "block"
    waits for ``release``."""

    def __init__(self, short_job: float = 0.0) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()
        self._short_job = short_job

    async def __call__(self, ctx: JobContext[str]) -> None:
        self.started.append(ctx.data)
        if ctx.data.startswith("block"):
            await asyncio.wait_for(self.release.wait(), 3 * WAIT)
        elif self._short_job:
            await asyncio.sleep(self._short_job)

    def blocked(self) -> list[str]:
        """The blocking jobs started so far."""
        return [name for name in self.started if name.startswith("block")]


@contextlib.asynccontextmanager
async def warm_worker(
    client: Client, name: str, handler: Handler, **options: Any
) -> AsyncIterator[Any]:
    """A started worker of queue ``name`` that has run WARM_UP short jobs to their end (so it
    judges its jobs short); released and closed on the way out."""
    q = queue(name, handler, client=client, **options)
    await q.start()
    try:
        for _ in range(WARM_UP):
            await q.add("short")
        await eventually(
            lambda: _at_least(handler.started, WARM_UP), timeout=WAIT, what="the short jobs"
        )
        yield q
    finally:
        handler.release.set()
        await q.close()


async def ack_pending(backstage: Backstage, consumer: str) -> int:
    """Messages delivered to the queue's consumer and not yet acked or handed back."""
    return int((await backstage.consumer_info(consumer)).num_ack_pending)


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_short_jobs_keep_deliveries_ready_unclaimed_and_a_stop_hands_them_back(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "MAX_WAIT", 60.0)  # handed back by the stop, not by age
    handler = Handler()
    backstage = Backstage(client, "prefetch")
    async with warm_worker(client, "prefetch", handler, concurrency=2) as q:
        blocks = [await q.add(f"block-{n}") for n in range(6)]
        await eventually(lambda: _at_least(handler.blocked(), 2), timeout=WAIT, what="2 running")
        pending = await eventually(
            lambda: _equal(ack_pending(backstage, "fifo"), 4), timeout=WAIT, what="2 held ready"
        )
        await asyncio.sleep(0.3)
        assert await ack_pending(backstage, "fifo") == 4, "no more than concurrency are ready"
        assert len(handler.blocked()) == 2 and pending
        states = [job.state for job in [await q.get_job(job.id) for job in blocks] if job]
        assert states.count(JobState.ACTIVE) == 2, "a job held ready is not claimed"
        assert states.count(JobState.WAITING) == 4
        consumer = q._consumer
        assert consumer is not None and consumer.ready == 2
        stopping = asyncio.create_task(q.stop(timeout=WAIT))
        await eventually(lambda: holds(consumer.ready == 0), timeout=2, what="handed back")
        handler.release.set()
        await asyncio.wait_for(stopping, WAIT)
    assert len(handler.blocked()) == 2, "a stopping worker started a job it held ready"
    # handed back (a nak'd message counts as ack pending until it is delivered again), not
    # left to their ack deadline, lock_ttl + heartbeat + 1 s away
    again = Handler()
    again.release.set()
    q2 = queue("prefetch", again, client=client, concurrency=2)
    async with q2:
        await eventually(lambda: _at_least(again.blocked(), 4), timeout=5, what="the other 4")
    assert sorted(again.blocked()) == [f"block-{n}" for n in range(2, 6)]


async def test_a_ready_delivery_waits_at_most_max_wait_then_another_worker_takes_it(
    client: Client,
) -> None:
    """A job held ready behind a job that turned long goes to an idle worker after MAX_WAIT,
    and the busy worker holds none again until a job of its ends."""
    first, second = Handler(), Handler()
    backstage = Backstage(client, "hand-over")
    other = Client(client.urls, namespace=client.namespace)
    try:
        async with warm_worker(client, "hand-over", first, concurrency=1) as q:
            await q.add("block-long")
            await q.add("block-next")
            await eventually(
                lambda: _at_least(first.blocked(), 1), timeout=WAIT, what="one running"
            )
            await eventually(lambda: _equal(ack_pending(backstage, "fifo"), 2), what="one ready")
            second.release.set()
            q2 = queue("hand-over", second, client=other, concurrency=1)
            async with q2:
                await eventually(
                    lambda: _at_least(second.started, 1),
                    timeout=prefetch.MAX_WAIT + 3,
                    what="the other worker took the job held ready",
                )
                assert second.started == ["block-next"]
            await q.add("block-after")  # the busy worker is the only one left
            await asyncio.sleep(0.5)
            assert await ack_pending(backstage, "fifo") == 1, "the busy worker holds none again"
            assert first.blocked() == ["block-long"]
    finally:
        await other.close()


async def test_ready_deliveries_are_handed_back_when_the_queue_pauses(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "MAX_WAIT", 60.0)  # handed back by the pause, not by age
    handler = Handler()
    backstage = Backstage(client, "prefetch-paused")
    async with warm_worker(client, "prefetch-paused", handler, concurrency=1) as q:
        await q.add("block-1")
        await q.add("block-2")
        await eventually(lambda: _equal(ack_pending(backstage, "fifo"), 2), what="one ready")
        assert q._consumer is not None and q._consumer.ready == 1
        await q.pause()
        consumer = q._consumer
        await eventually(lambda: holds(consumer.ready == 0), timeout=2, what="handed back")
        handler.release.set()
        await asyncio.sleep(0.5)
        assert handler.blocked() == ["block-1"], "a job held ready started on a paused queue"
        await q.resume()
        await eventually(lambda: _at_least(handler.blocked(), 2), timeout=WAIT, what="resumed")


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("fifo", {"short_job": 0.1}),
        ("lifo", {}),
        ("priority", {}),
        ("fifo", {"throttle": Throttle(1000, 1.0)}),
    ],
    ids=["long-jobs", "lifo", "priority", "throttle"],
)
async def test_no_deliveries_are_held_ready_for_long_jobs_lanes_or_a_throttle(
    client: Client, strategy: str, options: dict[str, Any]
) -> None:
    handler = Handler(short_job=options.get("short_job", 0.0))
    backstage = Backstage(client, "no-prefetch")
    async with warm_worker(
        client, "no-prefetch", handler, concurrency=2, strategy=strategy,
        throttle=options.get("throttle"),
    ) as q:  # fmt: skip
        for n in range(4):
            await q.add(f"block-{n}")
        await eventually(lambda: _at_least(handler.blocked(), 2), timeout=WAIT, what="2 running")
        await eventually(lambda: _equal(ack_pending(backstage, strategy), 2), what="2 delivered")
        await asyncio.sleep(0.3)
        assert await ack_pending(backstage, strategy) == 2, "a delivery was held ready"


async def _equal(count: Any, expected: int) -> bool:
    return bool(await count == expected)


SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("SEEN")


async def test_each_job_starts_in_a_context_of_its_own(client: Client) -> None:
    """A job started from the deliveries held ready starts in a copy of the context the worker
    was started in, not in the context of the job whose slot it takes (a context variable a
    handler set, structlog's bound values, the current span, are that job's alone)."""
    seen: list[str | None] = []

    async def handler(ctx: JobContext[int]) -> None:
        seen.append(SEEN.get(None))
        SEEN.set(f"job {ctx.data}")

    q = queue("own-context", handler, client=client, concurrency=1)
    for n in range(40):
        await q.add(n)
    SEEN.set("the starter's")
    try:
        async with q:
            await eventually(lambda: _at_least(seen, 40), timeout=WAIT, what="40 jobs")
    finally:
        SEEN.set("")
    assert set(seen) == {"the starter's"}, seen


async def test_a_delivery_ready_too_long_is_handed_back_and_jobs_are_no_longer_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The age limit on its own (no server needed: deliveries are only held and handed back)."""
    monkeypatch.setattr(prefetch, "MAX_WAIT", 0.05)
    handed_back: list[Any] = []
    config = queue("unit", concurrency=4).config
    ready = prefetch.Prefetch(config, handed_back.append)
    assert ready.room == 0, "no prefetch before a job ended"
    ready.ended(0.001)
    assert ready.room == 4
    first, second = object(), object()
    assert ready.hold(first) and ready.hold(second)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert handed_back == [first, second] and len(ready) == 0
    assert ready.room == 0, "jobs are not judged short again until one ends"
    ready.ended(0.001)
    assert ready.room == 4
    ready.ended(1.0)  # the average moves towards long jobs
    ready.ended(1.0)
    assert ready.room == 0


class Completions(Middleware):
    """Counts each job's success hooks, on every worker it is given to."""

    def __init__(self) -> None:
        self.counted: Counter[str] = Counter()

    def on_complete(self, job: Job[Any], result: Any) -> None:
        """Count one completion of ``job``."""
        self.counted[job.id] += 1


async def test_a_worker_cut_off_while_holding_deliveries_loses_none_and_completes_none_twice(
    nats_server: LocalServer, namespace: str
) -> None:
    """A network partition between a worker and the server while it runs two jobs and holds two
    more ready: the cut-off worker cannot renew its leases, so its running attempts stop and
    commit nothing, and the server gives all four jobs to another worker after their ack
    deadline. Every job completes once, none is lost, and the cut-off worker carries on once
    the link is back."""
    handler, other_handler, completions = Handler(), Handler(), Completions()
    other_handler.release.set()
    options = QueueOptions(concurrency=2, lock_ttl=2, heartbeat=0.5, middleware=[completions])
    assert nats_server.port is not None
    async with TcpProxy(nats_server.port) as proxy:
        cut_off = Client(proxy.url, namespace=namespace)
        direct = Client(nats_server.url, namespace=namespace)
        async with cut_off, direct, warm_worker(cut_off, "cut", handler, **options) as q:
            publisher = queue("cut", client=direct)
            blocks = [await q.add(f"block-{n}") for n in range(4)]
            backstage = Backstage(direct, "cut")
            await eventually(lambda: _at_least(handler.blocked(), 2), timeout=WAIT, what="2 run")
            await eventually(lambda: _equal(ack_pending(backstage, "fifo"), 4), what="2 ready")
            await asyncio.sleep(0.7)  # the running jobs' first heartbeat took their leases
            proxy.stall()  # the partition: nothing goes through, both ways
            async with queue("cut", other_handler, client=direct, **options):
                await eventually(
                    lambda: _at_least(other_handler.blocked(), 4), timeout=3 * WAIT,
                    what="the other worker ran the four jobs",
                )  # fmt: skip
                for job in blocks:
                    await _completed(publisher, job.id)
                handler.release.set()  # whatever still runs on the cut-off worker returns
                await asyncio.sleep(1.5)  # past MAX_WAIT: it holds nothing ready any more
                proxy.flow()  # the link is back: what it sent meanwhile arrives late
                await eventually(lambda: holds(cut_off.connected), timeout=WAIT, what="back")
                await asyncio.sleep(2.0)
            await q.add("after")  # the other worker is gone: the cut-off one must run it
            await eventually(
                lambda: holds("after" in handler.started), timeout=WAIT, what="it runs again"
            )
            await _completed(publisher, None)
    assert sorted(other_handler.blocked()) == [f"block-{n}" for n in range(4)]
    twice = {job: n for job, n in completions.counted.items() if n > 1}
    assert twice == {}, "a job completed twice"
    assert len(completions.counted) == CUT_JOBS


CUT_JOBS = WARM_UP + 4 + 1
"""The jobs of the partition test: the warm-up, the four blocking ones and the one after."""


async def _completed(q: Queue[Any], job_id: str | None) -> None:
    """Wait until ``job_id`` (None: every job of queue "cut") is completed."""

    async def done() -> bool:
        if job_id is None:
            return await q.count(JobState.COMPLETED) == CUT_JOBS
        job = await q.get_job(job_id)
        return job is not None and job.state == JobState.COMPLETED

    await eventually(done, timeout=WAIT, what=f"{job_id or 'every job'} completed")
