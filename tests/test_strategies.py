"""fifo, priority and lifo ordering."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from oqron_nats import Client, JobContext, JobState, Queue, queue
from oqron_nats.core.job import Strategy
from oqron_nats.runtime.lanes import FAIRNESS_EVERY, PriorityPlan

from .helpers import eventually


async def _run(q: Queue[Any], order: list[int], n: int) -> list[int]:
    async with q:
        await eventually(lambda: _done(order, n), timeout=30, what=f"{n} jobs to run")
    return order


async def _done(order: list[int], n: int) -> bool:
    return len(order) >= n


async def add_in_order(
    client: Client, name: str, items: list[tuple[int, int]], strategy: Strategy
) -> tuple[Queue[Any], list[int]]:
    order: list[int] = []

    async def handler(ctx: JobContext[Any]) -> None:
        order.append(ctx.data)

    q = queue(name, handler, client=client, concurrency=1, strategy=strategy)
    for value, priority in items:
        await q.add(value, priority=priority)
    return q, order


async def test_fifo_runs_jobs_in_add_order(client: Client) -> None:
    items = [(n, random.randrange(10)) for n in range(40)]  # priorities do not reorder fifo
    q, order = await add_in_order(client, "fifo", items, "fifo")
    assert await _run(q, order, 40) == list(range(40))


async def test_lifo_runs_the_newest_of_a_backlog_first(client: Client) -> None:
    items = [(n, random.randrange(10)) for n in range(30)]
    q, order = await add_in_order(client, "lifo", items, "lifo")
    assert await _run(q, order, 30) == list(reversed(range(30)))


async def test_lifo_new_job_jumps_ahead_of_the_backlog(client: Client) -> None:
    order: list[int] = []
    started = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        order.append(ctx.data)
        started.set()
        await asyncio.sleep(0.02)

    q = queue("lifo2", handler, client=client, concurrency=1, strategy="lifo")
    for n in range(20):
        await q.add(n)
    async with q:
        await started.wait()
        await q.add(100)
        await eventually(lambda: _done(order, 21), timeout=30)
    assert order[0] == 19
    assert order.index(100) <= 2, order


def priority_inversions(order: list[tuple[int, int]], backlog: list[tuple[int, int]]) -> int:
    """How many claims took a job while a job of a better (lower) priority was waiting."""
    waiting = list(backlog)
    inversions = 0
    for item in order:
        best = min(p for _, p in waiting)
        if item[1] > best:
            inversions += 1
        waiting.remove(item)
    return inversions


async def test_priority_runs_lower_numbers_first(client: Client) -> None:
    backlog = [(n, n % 5) for n in range(50)]
    random.shuffle(backlog)
    q, order = await add_in_order(client, "prio", backlog, "priority")
    ran = await _run(q, order, 50)
    prio = dict(backlog)
    ran_items = [(v, prio[v]) for v in ran]
    assert [p for _, p in ran_items[: FAIRNESS_EVERY - 1]] == [0] * (FAIRNESS_EVERY - 1)
    # strict order except the anti-starvation round every FAIRNESS_EVERY claims
    assert priority_inversions(ran_items, backlog) <= len(backlog) // FAIRNESS_EVERY
    by_priority = [v for v, p in sorted(backlog, key=lambda x: x[1])]
    within = {p: [v for v, q in ran_items if q == p] for p in range(5)}
    for p in range(5):  # fifo within a lane
        assert within[p] == [v for v in by_priority if prio[v] == p]


async def test_a_late_high_priority_job_jumps_the_backlog(client: Client) -> None:
    order: list[int] = []
    third = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        order.append(ctx.data)
        if len(order) == 3:
            third.set()
        await asyncio.sleep(0.02)

    q = queue("jump", handler, client=client, concurrency=1, strategy="priority")
    for n in range(40):
        await q.add(n, priority=5)
    async with q:
        await third.wait()
        await q.add(999, priority=0)
        await eventually(lambda: _done(order, 41), timeout=30)
    assert order.index(999) <= 4, order


async def test_low_priorities_are_not_starved(client: Client) -> None:
    order: list[int] = []

    async def handler(ctx: JobContext[Any]) -> None:
        order.append(ctx.data)

    q = queue("starve", handler, client=client, concurrency=1, strategy="priority")
    await q.add(-1, priority=9)
    for n in range(60):
        await q.add(n, priority=0)
    await _run(q, order, 61)
    assert order.index(-1) < 2 * FAIRNESS_EVERY, order


def test_priority_plan_rotates_a_fairness_round() -> None:
    plan = PriorityPlan(levels=10, every=10)
    orders = [plan.order() for _ in range(100)]
    strict = list(range(10))
    assert orders[:9] == [strict] * 9
    assert orders[9] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert orders[19] == [2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert orders[89] == [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert orders[99] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert all(sorted(o) == strict for o in orders)


async def test_every_strategy_delivers_every_priority(client: Client) -> None:
    for strategy in ("fifo", "lifo", "priority"):
        q, order = await add_in_order(
            client, f"all-{strategy}", [(p, p) for p in range(10)], strategy
        )
        assert sorted(await _run(q, order, 10)) == list(range(10))
        assert await q.count(JobState.COMPLETED) == 10


async def test_a_second_strategy_on_one_queue_is_refused(client: Client) -> None:
    from oqron_nats import ConsumerConflict

    async def handler(ctx: JobContext[Any]) -> None:
        return None

    fifo = queue("mixed", handler, client=client)
    async with fifo:
        pass
    other = queue("mixed", handler, client=client, strategy="priority")
    with pytest.raises(ConsumerConflict, match="already consumed with strategy 'fifo'"):
        await other.start()
    assert not other.is_consuming
    async with queue("mixed", handler, client=client):  # the failed start left nothing behind
        pass
