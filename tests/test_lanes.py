"""Moving jobs from the lanes to the run lane (lifo, priority): one consumer per queue, whatever
its strategy; moves that race other workers; a lost bell; the per-lane consumers of 0.1."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

import pytest
from nats.js import api
from structlog.testing import capture_logs

from oqron_nats import Client, JobContext, JobState, queue
from oqron_nats.core.job import Strategy
from oqron_nats.runtime import claiming
from oqron_nats.runtime.claiming import Claimer
from oqron_nats.storage.broker import LIFO_WINDOW
from oqron_nats.testing.server import LocalServer

from .helpers import eventually, holds, wait_for_state
from .support import Backstage

STRATEGIES = ["fifo", "lifo", "priority"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_every_strategy_consumes_a_queue_through_one_consumer(
    client: Client, strategy: Strategy
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        return None

    q = queue(f"one-{strategy}", handler, client=client, strategy=strategy)
    async with q:
        job = await q.add({}, priority=7)
        await wait_for_state(q, job.id, JobState.COMPLETED)
        assert await Backstage(client, q.name).consumer_names() == [strategy]


async def test_a_message_deleted_meanwhile_is_no_error(client: Client) -> None:
    """Two workers moving the same lane message both delete it: the second finds it gone (for a
    message between others the server says "sequence not found", err_code 10043) and must take
    the next one."""
    q = queue("gone", client=client)
    jobs = [await q.add({}, priority=3) for _ in range(3)]
    behind = Backstage(client, q.name)
    middle = await behind.lane_message(jobs[1].id, 3)
    assert middle is not None
    conn = await behind._conn()
    assert await conn.delete_msg(behind.names.stream, middle.seq) is True
    assert await conn.delete_msg(behind.names.stream, middle.seq) is False


@pytest.mark.parametrize("strategy", ["lifo", "priority"])
async def test_workers_moving_from_the_same_lanes_run_every_job_once(
    nats_server: LocalServer, namespace: str, strategy: Strategy
) -> None:
    """Three workers race for the same oldest (newest) message of each move; every job runs
    once, and no move is reported as a failure (a lost race is not one)."""
    runs: collections.Counter[str] = collections.Counter()

    async def handler(ctx: JobContext[Any]) -> None:
        runs[ctx.id] += 1
        await asyncio.sleep(0.002)

    items = [{"data": n, "opts": {"priority": n % 10}} for n in range(300)]
    with capture_logs() as logs:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                c = await stack.enter_async_context(Client(nats_server.url, namespace=namespace))
                w = queue("race", handler, client=c, concurrency=4, strategy=strategy)
                await stack.enter_async_context(w)
            await w.add_bulk(items)
            await eventually(lambda: holds(len(runs) == 300), timeout=60, what="300 jobs run")
            await eventually(lambda: _counted(w, JobState.COMPLETED, 300), what="300 completed")
    assert set(runs.values()) == {1}
    failures = [e for e in logs if e["event"].startswith("claiming failed")]
    assert failures == []


@pytest.mark.parametrize("strategy", ["lifo", "priority"])
async def test_a_lost_bell_is_made_up_for_by_looking_again(
    client: Client, monkeypatch: pytest.MonkeyPatch, strategy: Strategy
) -> None:
    """The bell is core NATS (at most once): a worker that found every lane empty and missed
    the bell of a new job reads the lanes again after a quiet while (LOOK_AGAIN)."""

    async def handler(ctx: JobContext[Any]) -> None:
        return None

    monkeypatch.setattr(claiming, "LOOK_AGAIN", 0.3)
    monkeypatch.setattr(Claimer, "_on_bell", lambda self, subject, seq: None)  # every bell lost
    q = queue("deaf", handler, client=client, strategy=strategy)
    async with q:
        await asyncio.sleep(0.2)  # the worker has found every lane empty
        job = await q.add({}, priority=6)
        await wait_for_state(q, job.id, JobState.COMPLETED, timeout=5)


async def test_lifo_finds_the_newest_jobs_beyond_what_it_was_told_of(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lifo worker reads the lanes down from the newest sequence it knows of; with every bell
    lost, more jobs than one read takes land above it: it asks the stream for its last
    sequence and still runs the newest first."""
    order: list[Any] = []
    first_running, go_on = asyncio.Event(), asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        order.append(ctx.data)
        if ctx.data == "first":
            first_running.set()
            await asyncio.wait_for(go_on.wait(), 10)

    monkeypatch.setattr(Claimer, "_on_bell", lambda self, subject, seq: None)  # every bell lost
    q = queue("beyond", handler, client=client, strategy="lifo", concurrency=1)
    for n in range(5):
        await q.add(f"old-{n}")
    await q.add("first")
    async with q:
        await asyncio.wait_for(first_running.wait(), 10)  # the worker now reads from old-4 down
        await q.add_bulk([{"data": n} for n in range(LIFO_WINDOW + 50)])
        go_on.set()
        total = LIFO_WINDOW + 56
        await eventually(lambda: holds(len(order) == total), timeout=30, what="every job")
    newest = LIFO_WINDOW + 49
    assert order[1:4] == [newest, newest - 1, newest - 2]
    assert order[-5:] == [f"old-{n}" for n in reversed(range(5))]


async def test_a_lifo_read_that_finds_no_lane_message_skips_to_the_newest(client: Client) -> None:
    """A window of sequences without lane messages (jobs moved and run, other traffic) is
    skipped at once to the newest lane message, however far below it lies."""
    q = queue("sparse", client=client, strategy="lifo")
    jobs = [await q.add(n) for n in range(3)]
    behind = Backstage(client, q.name)
    newest = await behind.lane_message(jobs[-1].id)
    assert newest is not None
    broker = await behind._broker()
    far_above = newest.seq + 50 * LIFO_WINDOW
    assert await broker.move_newest(far_above, 2) == (0, newest.seq)
    moved, below = await broker.move_newest(newest.seq, 2)
    oldest = await behind.lane_message(jobs[0].id)
    assert oldest is not None
    assert moved == 2 and below == oldest.seq, "the two newest moved, the oldest left"
    assert await broker.move_newest(below, 2) == (1, 0), "the last one moved: nothing below"
    assert await broker.move_newest(newest.seq + 10, 2) == (0, 0), "the lanes are empty"
    assert await behind.lane_subjects() == {}


async def test_the_per_lane_consumers_of_an_earlier_version_go_and_their_jobs_run(
    client: Client,
) -> None:
    """oqron_nats 0.1 consumed a priority queue through ``p0``..``p9``; a worker of this
    version deletes them and runs every job, one that a crashed old worker held unacked too."""
    ran: list[Any] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.data)

    publisher = queue("legacy", client=client)
    await publisher.add("first", priority=3)  # provisions the queue's streams
    behind = Backstage(client, publisher.name)
    js = (await behind._conn()).js
    for level in range(10):
        await js.add_consumer(
            behind.names.stream,
            api.ConsumerConfig(
                durable_name=f"p{level}",
                filter_subject=behind.names.lane_filter(level),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=60,
            ),
        )
    held = await js.pull_subscribe_bind("p3", stream=behind.names.stream)
    taken = await held.fetch(1, timeout=5)  # an old worker took it, then died: never acked
    assert len(taken) == 1
    await publisher.add_bulk([{"data": f"job{n}", "opts": {"priority": n}} for n in range(10)])

    worker = queue("legacy", handler, client=client, strategy="priority")
    async with worker:
        await eventually(lambda: holds(len(ran) == 11), timeout=20, what="every job run")
        assert await behind.consumer_names() == ["priority"]
    assert sorted(map(str, ran)) == sorted(["first", *(f"job{n}" for n in range(10))])


async def _counted(q: Any, state: JobState, n: int) -> bool:
    return bool(await q.count(state) == n)


@pytest.mark.parametrize("strategy", ["lifo", "priority"])
async def test_foreign_messages_on_the_lanes_are_moved_and_removed_like_any_other(
    client: Client, strategy: Strategy
) -> None:
    """Garbage on a lane (a body that is no job id, a job with no record, a big body) is copied
    to the run lane and rejected there; the jobs around it run and the stream ends empty."""
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    publisher = queue("foreign", client=client)
    before = await publisher.add({"n": 1}, priority=3)
    behind = Backstage(client, publisher.name)
    await behind.publish_on_lane("a", b"\x00\xff not an id", priority=3)
    await behind.publish_on_lane("b", b"x" * 9_000, priority=0)
    await behind.publish_on_lane("c", b"no-such-job", priority=3)
    after = await publisher.add({"n": 2}, priority=3)
    q = queue("foreign", handler, client=client, strategy=strategy)
    async with q:
        for job in (before, after):
            await wait_for_state(q, job.id, JobState.COMPLETED)
        await eventually(lambda: _counted_messages(behind, 0), what="the garbage removed")
    assert sorted(ran) == sorted([before.id, after.id])


async def _counted_messages(behind: Backstage, n: int) -> bool:
    return await behind.work_messages() == n
