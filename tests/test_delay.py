"""Delayed jobs run through JetStream message schedules, never before their time."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from oqron_nats import Client, JobContext, JobState, queue

from .helpers import eventually, wait_for_state
from .support import Backstage


async def test_delayed_job_waits_visibly_and_never_starts_early(client: Client) -> None:
    started: dict[str, float] = {}

    async def handler(ctx: JobContext[Any]) -> None:
        started[ctx.id] = time.time()

    q = queue("later", handler, client=client)
    async with q:
        added_at = time.time()
        job = await q.add({"n": 1}, delay=1.5)
        waiting = await q.get_job(job.id)
        assert waiting is not None
        assert waiting.state == JobState.DELAYED
        assert waiting.run_at is not None
        assert abs(waiting.run_at.timestamp() - (added_at + 1.5)) < 0.2
        schedule = await Backstage(client, "later").schedule_message(job.id)
        assert schedule is not None, "the delay is a message schedule in the stream"
        assert schedule.headers["Nats-Schedule"].startswith("@at ")
        await asyncio.sleep(1.0)
        assert job.id not in started
        assert (await q.get_job(job.id)).state == JobState.DELAYED  # type: ignore[union-attr]
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=10)
    assert started[job.id] >= waiting.run_at.timestamp() - 0.01
    assert done.started_at is not None and done.started_at >= waiting.run_at.replace(microsecond=0)


async def test_delayed_jobs_run_in_due_order(client: Client) -> None:
    order: list[int] = []

    async def handler(ctx: JobContext[Any]) -> None:
        order.append(ctx.data)

    q = queue("due", handler, client=client, concurrency=1)
    async with q:
        for n, delay in [(3, 1.2), (1, 0.4), (2, 0.8)]:
            await q.add(n, delay=delay)
        await asyncio.sleep(0.1)
        assert await q.count("delayed") == 3
        for _ in range(100):
            if len(order) == 3:
                break
            await asyncio.sleep(0.05)
    assert order == [1, 2, 3]


async def test_an_early_copy_of_a_delayed_job_does_not_run_it_early(client: Client) -> None:
    started: list[float] = []

    async def handler(ctx: JobContext[Any]) -> None:
        started.append(time.time())

    q = queue("early", handler, client=client, lock_ttl=2, heartbeat=0.5)
    job = await q.add({"n": 1}, delay=2.0)
    behind = Backstage(client, "early")
    await behind.publish_on_lane(job.id, msg_id="stray-copy")
    async with q:
        await wait_for_state(q, job.id, JobState.COMPLETED, timeout=10)
        # a copy that met the lease of the running one comes back once more, then is acked
        await eventually(lambda: _empty(behind), what="both copies to be acked")
    assert job.run_at is not None
    assert len(started) == 1
    assert started[0] >= job.run_at.timestamp() - 0.01


async def _empty(behind: Backstage) -> bool:
    return await behind.work_messages() == 0


async def test_a_delay_in_the_past_runs_at_once(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        return "ran"

    q = queue("past", handler, client=client)
    async with q:
        job = await q.add({"n": 1}, delay=0.001)
        done = await wait_for_state(q, job.id, JobState.COMPLETED)
    assert done.result == "ran"
    assert done.finished_at is not None and done.finished_at <= datetime.now(UTC)
