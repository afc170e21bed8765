"""Cancel from any process, and the admin verbs: retry, rerun, promote, retry_all_failed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import (
    Client,
    InvalidState,
    JobContext,
    JobNotFound,
    JobState,
    Queue,
    RetryPolicy,
    queue,
)
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log, wait_for_state
from .support import Backstage

NO_RETRIES = RetryPolicy(max=0)


async def test_a_cancelled_waiting_or_delayed_job_never_runs(client: Client) -> None:
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    q = queue("cancel-queued", handler, client=client)
    waiting = await q.add({"n": 1})
    delayed = await q.add({"n": 2}, delay=0.5)
    assert await q.cancel(waiting.id)
    assert await q.cancel(delayed.id)
    assert await Backstage(client, "cancel-queued").work_messages() == 0
    async with q:
        other = await q.add({"n": 3})
        await wait_for_state(q, other.id, JobState.COMPLETED)
        await asyncio.sleep(1.0)  # past the delay
    assert ran == [other.id]
    for job in (waiting, delayed):
        record = await q.get_job(job.id)
        assert record is not None
        assert record.state == JobState.CANCELLED
        assert record.timeline[-1].state == JobState.CANCELLED
    assert not await q.cancel(waiting.id), "a finished job cannot be cancelled again"
    with pytest.raises(JobNotFound):
        await q.cancel("no-such-job")


async def test_a_running_job_is_cancelled_on_the_node_that_runs_it(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "log.jsonl"
    q = queue("cancel-running", client=client, retries=RetryPolicy(max=3))
    await q.add({"sleep": 0}, job_id="warmup")
    worker = WorkerProcess(nats_server.url, namespace, log, queue="cancel-running", sleep=30)
    try:
        job = await q.add({"sleep": 30})
        await eventually(lambda: _started(log, job.id), what="the worker to start the job")
        assert await q.cancel(job.id)
        done = await job.wait(10)
        assert done.state == JobState.CANCELLED
        await eventually(
            lambda: _stream_empty(client, "cancel-running"), what="the message to be acked"
        )
        await asyncio.sleep(0.5)
        record = await q.get_job(job.id)
        assert record is not None
        assert record.state == JobState.CANCELLED, "neither completed nor retried"
        assert record.result is None
        ends = [e for e in read_log(log) if e["event"] == "end" and e["job"] == job.id]
        assert ends == [], "the handler was stopped"
    finally:
        worker.close()


async def _started(log: Path, job_id: str) -> bool:
    return any(e["event"] == "start" and e["job"] == job_id for e in read_log(log))


async def _stream_empty(client: Client, name: str) -> bool:
    return await Backstage(client, name).work_messages() == 0


async def test_cancel_fires_the_signal_of_a_cooperative_handler(client: Client) -> None:
    reasons: list[str] = []

    async def handler(ctx: JobContext[Any]) -> str:
        reasons.append(await ctx.signal)
        return "too late"

    q = queue("cancel-signal", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        await eventually(lambda: _active(q, job.id), what="the job to run")
        assert await q.cancel(job.id)
        done = await job.wait(10)
    assert done.state == JobState.CANCELLED
    assert done.result is None
    assert reasons == ["cancelled"]


async def _active(q: Queue[Any], job_id: str) -> bool:
    job = await q.get_job(job_id)
    return job is not None and job.state == JobState.ACTIVE


async def test_retry_runs_a_failed_job_again_under_the_same_id(client: Client) -> None:
    runs: list[int] = []

    async def handler(ctx: JobContext[Any]) -> str:
        runs.append(ctx.attempt)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return "ok"

    q = queue("retry", handler, client=client, retries=NO_RETRIES)
    async with q:
        job = await q.add({"n": 1})
        failed = await job.wait(10)
        assert failed.state == JobState.FAILED
        with pytest.raises(InvalidState):
            await q.promote(job.id)
        await q.retry(job.id)
        done = await q.wait(job.id, 10)
    assert done.state == JobState.COMPLETED
    assert done.id == job.id
    assert done.attempt == 1, "attempts were reset"
    assert runs == [1, 1]
    states = [t.state for t in done.timeline]
    assert states == [
        JobState.WAITING, JobState.ACTIVE, JobState.FAILED,
        JobState.WAITING, JobState.ACTIVE, JobState.COMPLETED,
    ]  # fmt: skip
    with pytest.raises(InvalidState):
        await q.retry(job.id)  # completed: retry is for failed or cancelled jobs


async def test_rerun_runs_a_completed_job_again(client: Client) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> int:
        runs.append(ctx.id)
        return len(runs)

    q = queue("rerun", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        assert (await job.wait(10)).result == 1
        await q.rerun(job.id)
        done = await q.wait(job.id, 10)
    assert done.result == 2
    assert runs == [job.id, job.id]


async def test_promote_runs_a_delayed_job_now(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        return "ran"

    q = queue("promote", handler, client=client)
    async with q:
        job = await q.add({"n": 1}, delay=3600)
        await q.promote(job.id)
        done = await job.wait(10)
    assert done.state == JobState.COMPLETED
    assert done.timeline[1].reason == "promoted"


async def test_retry_all_failed_is_bounded_and_ends(client: Client) -> None:
    failing = True

    async def handler(ctx: JobContext[Any]) -> None:
        if failing:
            raise RuntimeError("down")

    q = queue("retry-all", handler, client=client, retries=NO_RETRIES, concurrency=10)
    async with q:
        jobs = (await q.add_bulk([{"data": n} for n in range(30)])).jobs
        for job in jobs:
            await job.wait(10)
        assert await q.count(JobState.FAILED) == 30
        failing = False
        assert await q.retry_all_failed() == 30
        for job in jobs:
            assert (await q.wait(job.id, 10)).state == JobState.COMPLETED
    assert await q.count(JobState.FAILED) == 0
    assert await q.retry_all_failed() == 0
