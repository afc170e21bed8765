"""The claim's state-index entry, written late (runtime/late_entry.py): a job that ends within
LIST_AFTER seconds of its claim costs three index messages fewer, one that runs on is listed as
active, and a job that another writer moved meanwhile is not."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec

from oqron_nats import Client, Job, JobContext, JobState, RetryPolicy, queue
from oqron_nats.core.job import moved
from oqron_nats.runtime.late_entry import LIST_AFTER, lists_late

from .helpers import eventually, listed_active
from .support import Backstage

WAIT = 10.0


async def counts(q: Any, *states: JobState) -> list[int]:
    return [await q.count(state) for state in states]


async def test_a_short_job_moves_the_index_from_waiting_to_completed_in_two_messages(
    client: Client,
) -> None:
    q = queue("late-short", lambda ctx: None, client=client)
    behind = Backstage(client, "late-short")
    job = await q.add({"n": 1})
    before = await behind.index_writes()  # the waiting entry
    async with q:
        assert (await job.wait(WAIT)).state == JobState.COMPLETED
        await eventually(lambda: _writes(behind, before + 2), what="the end's index messages")
    await asyncio.sleep(0.3)
    assert await behind.index_writes() == before + 2, "the completed entry and a marker only"
    states = (JobState.WAITING, JobState.ACTIVE, JobState.COMPLETED)
    await eventually(lambda: _counts(q, states, [0, 0, 1]), what="the counts")


async def test_a_job_still_running_after_list_after_is_listed_as_active(client: Client) -> None:
    release = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        await asyncio.wait_for(release.wait(), WAIT)

    q = queue("late-long", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        await listed_active(q, 1)
        assert await q.count(JobState.WAITING) == 0
        [listed] = await q.get_jobs(JobState.ACTIVE)
        assert listed.id == job.id
        release.set()
        assert (await job.wait(WAIT)).state == JobState.COMPLETED
    states = (JobState.WAITING, JobState.ACTIVE, JobState.COMPLETED)
    await eventually(lambda: _counts(q, states, [0, 0, 1]), what="the counts")


async def test_a_job_cancelled_before_it_is_listed_is_never_listed_as_active(
    client: Client,
) -> None:
    started = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        started.set()
        await ctx.signal

    q = queue("late-cancelled", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        await asyncio.wait_for(started.wait(), WAIT)
        assert await q.cancel(job.id)
        await asyncio.sleep(LIST_AFTER + 1.0)  # the late write came due meanwhile
        states = (JobState.WAITING, JobState.ACTIVE, JobState.CANCELLED)
        await eventually(lambda: _counts(q, states, [0, 0, 1]), what="the counts")
        assert await q.get_jobs(JobState.ACTIVE) == []


async def test_a_retry_is_listed_at_its_claim_and_ends_unlisted_everywhere_else(
    client: Client,
) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return "done"

    q = queue("late-retry", handler, client=client, retries=RetryPolicy(max=1, base_delay=0.1))
    async with q:
        job = await q.add({"n": 1})
        assert (await job.wait(WAIT)).state == JobState.COMPLETED
    states = (JobState.WAITING, JobState.ACTIVE, JobState.DELAYED, JobState.COMPLETED)
    await eventually(lambda: _counts(q, states, [0, 0, 0, 1]), what="the counts")


def test_only_a_job_never_active_is_listed_late() -> None:
    job = Job(id="j", queue="q", data=msgspec.Raw(b"1"), state=JobState.WAITING,
              created_at=datetime.now(UTC), correlation_id="c")  # fmt: skip
    assert lists_late(job)
    retried = moved(moved(job, JobState.ACTIVE, "attempt 1"), JobState.DELAYED, "retry")
    assert not lists_late(retried)


async def _writes(behind: Backstage, at_least: int) -> bool:
    return await behind.index_writes() >= at_least


async def _counts(q: Any, states: tuple[JobState, ...], expected: list[int]) -> bool:
    return await counts(q, *states) == expected
