"""A job's objects are freed by reference counting as soon as it is done, not left to the cycle
collector (issue 14): when every execution was a reference cycle (its heartbeat, its progress
writer and its task's context pointed back at it), some 40 objects per job outlived the job until
a collection found them, and the worker's collections cost it 25-30 % of its CPU per job.

Each test runs jobs with automatic collection off and counts what one collection then finds
unreachable: a few objects of the machinery at most, never some per job."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from oqron_nats import Client, JobContext, JobState, Queue, RetryPolicy, queue

from .helpers import eventually

JOBS = 60
PER_JOB = 0.5
"""Fewer unreachable objects than this per job: no job's objects are left in a cycle."""
WAIT = 30.0


@asynccontextmanager
async def collector_off() -> AsyncIterator[Callable[[], int]]:
    """Automatic collection off inside; yields what counts the unreachable objects since."""
    gc.collect()
    gc.disable()
    try:
        yield gc.collect
    finally:
        gc.enable()


async def garbage_per_job(
    client: Client,
    name: str,
    handler: Callable[[JobContext[Any]], Awaitable[Any]],
    *,
    ending: JobState = JobState.COMPLETED,
    **options: Any,
) -> float:
    """Unreachable objects per job left by JOBS jobs run to their ``ending`` (after a warm-up)."""
    q = queue(name, handler, concurrency=10, client=client, **options)
    async with q:
        await run_all(q, 10, ending, 10)  # warm-up: what is made once is not counted
        async with collector_off() as unreachable:
            await run_all(q, JOBS, ending, 10 + JOBS)
            found = unreachable()
    return found / JOBS


async def run_all(q: Queue[Any], count: int, ending: JobState, total: int) -> None:
    """Add ``count`` jobs and wait until the queue holds ``total`` in state ``ending``."""
    await q.add_bulk([{"data": {"n": n}} for n in range(count)])

    async def ended() -> bool:
        return await q.count(ending) == total

    await eventually(ended, WAIT, f"{total} {ending} jobs")


async def test_completed_jobs_leave_no_cycles(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> int:
        return int(ctx.data["n"])

    assert await garbage_per_job(client, "done", handler) < PER_JOB


async def test_unguaranteed_jobs_leave_no_cycles(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        return None

    found = await garbage_per_job(client, "loose", handler, guaranteed_worker=False)
    assert found < PER_JOB


async def test_jobs_reporting_progress_leave_no_cycles(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        await ctx.progress(50, "half")

    assert await garbage_per_job(client, "progress", handler) < PER_JOB


async def test_jobs_longer_than_a_heartbeat_leave_no_cycles(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        await asyncio.sleep(1.2)  # the heartbeat takes the lease, then it is released

    found = await garbage_per_job(client, "beat", handler, heartbeat=1, lock_ttl=3)
    assert found < PER_JOB


async def test_failing_and_retried_jobs_leave_no_cycles(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        raise ValueError(f"attempt {ctx.attempt} fails")

    retry = RetryPolicy(max=1, strategy="fixed", base_delay=0.05)
    found = await garbage_per_job(client, "fails", handler, ending=JobState.FAILED, retries=retry)
    assert found < PER_JOB
