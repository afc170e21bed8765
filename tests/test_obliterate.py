"""obliterate(): everything of a queue goes, and in-flight handlers cannot bring records back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from oqron_nats import Client, InvalidState, JobContext, JobState, Queue, RetryPolicy, queue

from .helpers import eventually
from .support import Backstage


async def test_obliterate_removes_every_job_message_schedule_and_dead_letter(
    client: Client,
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        if ctx.data.get("fail"):
            raise RuntimeError("dead")

    q = queue("doomed", handler, client=client, retries=RetryPolicy(max=0))
    neighbour = queue("neighbour", client=client)
    kept = await neighbour.add({"n": 1})
    behind = Backstage(client, "doomed")
    async with q:
        done = await q.add({"n": 1})
        failed = await q.add({"fail": True})
        await done.wait(10)
        await failed.wait(10)
        await behind.publish_on_lane("junk", b"not a job!")
        await eventually(lambda: _rejected(behind), what="the junk to be rejected")
    waiting = await q.add({"n": 2})
    delayed = await q.add({"n": 3}, delay=3600)
    assert await behind.dead_letter(failed.id)
    assert await q.obliterate() == 4
    for job in (done, failed, waiting, delayed):
        assert await q.get_job(job.id) is None
    assert await q.count() == 0
    assert await behind.work_messages() == 0, "lane messages and schedules"
    assert await behind.dead_letter(failed.id) is None
    assert not await _rejected(behind), "the rejected count and sample went too"
    assert await neighbour.get_job(kept.id) is not None, "other queues keep their jobs"
    assert not await q.is_paused()
    again = await q.add({"n": 4}, job_id=done.id)  # the ids are free again
    assert again.state == JobState.WAITING


async def _rejected(behind: Backstage) -> bool:
    return bool(await behind.rejected_count() or await behind.rejected_samples())


async def test_obliterate_refuses_active_jobs_unless_forced(client: Client) -> None:
    reasons: list[str] = []

    async def handler(ctx: JobContext[Any]) -> str:
        reasons.append(await ctx.signal)
        return "late result"

    q = queue("busy", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        await eventually(lambda: _active(q), what="the job to run")
        with pytest.raises(InvalidState, match="active"):
            await q.obliterate()
        assert await q.get_job(job.id) is not None
        assert await q.obliterate(force=True) == 1
        await eventually(lambda: _signalled(reasons), what="the handler to be told")
        await asyncio.sleep(0.5)
        assert await q.get_job(job.id) is None, "the in-flight handler did not re-create it"
    assert reasons == ["cancelled"]


async def test_obliterate_refuses_a_job_claimed_a_moment_ago(client: Client) -> None:
    """A job is listed as active a moment after its claim (runtime/late_entry.py): obliterate
    counts the claims it hears meanwhile, so a job that just started is not missed."""
    started = asyncio.Event()
    reasons: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        started.set()
        reasons.append(await ctx.signal)

    q = queue("just-started", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        await asyncio.wait_for(started.wait(), 10)
        assert await q.count(JobState.ACTIVE) == 0, "not listed as active yet"
        with pytest.raises(InvalidState, match="1 active"):
            await q.obliterate()
        assert await q.get_job(job.id) is not None
        assert await q.obliterate(force=True) == 1
        await eventually(lambda: _signalled(reasons), what="the handler to be told")
    assert reasons == ["cancelled"]


async def _active(q: Queue[Any]) -> bool:
    return await q.count(JobState.ACTIVE) == 1


async def _signalled(reasons: list[str]) -> bool:
    return bool(reasons)
