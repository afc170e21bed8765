"""remove_on_complete / remove_on_fail: True, a count N, or an age; per queue and per job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from oqron_nats import (
    Client,
    ConfigError,
    InvalidOption,
    JobContext,
    JobNotFound,
    JobState,
    Queue,
    RetryPolicy,
    queue,
)
from oqron_nats.storage.store import JobStore, Record

from .helpers import eventually
from .support import Backstage


async def ok(ctx: JobContext[Any]) -> str:
    return "done"


async def boom(ctx: JobContext[Any]) -> None:
    raise RuntimeError("boom")


async def test_true_removes_finished_jobs_at_once(client: Client) -> None:
    q = queue("gone", ok, client=client, remove_on_complete=True)
    async with q:
        job = await q.add({"n": 1})
        assert (await job.wait(10)).state == JobState.COMPLETED
        await eventually(lambda: _missing(q, job.id), what="the record to be removed")
    assert await q.count() == 0


async def test_wait_returns_a_job_already_removed_as_it_finished(client: Client) -> None:
    q = queue("gone-before", ok, client=client, remove_on_complete=True)
    async with q:
        job = await q.add({"n": 1})
        await eventually(lambda: _missing(q, job.id), what="the job to run and be removed")
    finished = await job.wait(1)  # the record is gone; its tombstone keeps the last record
    assert (finished.state, finished.result) == (JobState.COMPLETED, "done")
    with pytest.raises(JobNotFound):
        await q.wait("never-added", 1)


async def _missing(q: Queue[Any], job_id: str) -> bool:
    return await q.get_job(job_id) is None


async def test_per_job_retention_overrides_the_queue(client: Client) -> None:
    q = queue("mixed", ok, client=client, remove_on_complete=True)
    async with q:
        kept = await q.add({"n": 1}, remove_on_complete=False)
        removed = await q.add({"n": 2})
        await kept.wait(10)
        await removed.wait(10)
        await eventually(lambda: _missing(q, removed.id), what="the queue default to apply")
    assert await q.get_job(kept.id) is not None
    with pytest.raises(InvalidOption):
        await q.add({"n": 3}, remove_on_complete=-1)


async def test_a_count_keeps_the_newest_n_without_scanning(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_scan(self: JobStore) -> AsyncIterator[Record]:
        raise AssertionError("retention scanned every record")
        yield

    monkeypatch.setattr(JobStore, "scan", no_scan)
    q = queue("newest", ok, client=client, remove_on_complete=5, concurrency=1)
    async with q:
        jobs = [await q.add({"n": n}) for n in range(12)]
        await eventually(lambda: _all_done_and_trimmed(q), what="12 finished, 5 kept")
    kept = {j.id for j in await q.get_jobs(JobState.COMPLETED)}
    assert kept == {j.id for j in jobs[-5:]}, "the newest five are kept"


async def _all_done_and_trimmed(q: Queue[Any]) -> bool:
    waiting, active = await q.count(JobState.WAITING), await q.count(JobState.ACTIVE)
    return waiting == 0 and active == 0 and await q.count(JobState.COMPLETED) == 5


async def _count(q: Queue[Any], state: JobState, n: int) -> bool:
    return await q.count(state) == n


async def test_an_age_removes_each_job_that_much_later(client: Client) -> None:
    q = queue("aged", ok, client=client, remove_on_complete=timedelta(seconds=1))
    async with q:
        job = await q.add({"n": 1})
        done = await job.wait(10)
    assert done.state == JobState.COMPLETED
    assert await q.get_job(job.id) is not None, "kept until its age is reached"
    await eventually(lambda: _missing(q, job.id), timeout=10, what="the record to expire")
    await eventually(lambda: _count(q, JobState.COMPLETED, 0), what="its index entry to expire")


async def test_remove_on_fail_removes_the_record_but_keeps_the_dead_letter(client: Client) -> None:
    q = queue("fails", boom, client=client, retries=RetryPolicy(max=0), remove_on_fail=True)
    async with q:
        job = await q.add({"n": 1})
        assert (await job.wait(10)).state == JobState.FAILED
        await eventually(lambda: _missing(q, job.id), what="the failed record to be removed")
    assert await Backstage(client, "fails").dead_letter(job.id)


async def test_a_publishers_setting_travels_with_the_job(client: Client) -> None:
    publisher = queue("stamped", client=client, remove_on_complete=True)
    job = await publisher.add({"n": 1})
    assert job.remove_on_complete is True
    worker = queue("stamped", ok, client=client)
    async with worker:
        await job.wait(10)
        await eventually(lambda: _missing(worker, job.id), what="the stamped retention to apply")
    await asyncio.sleep(0)


def test_bad_retention_settings_are_refused() -> None:
    for bad in (-1, timedelta(0), "1h", 1.5):
        with pytest.raises(ConfigError):
            queue("bad", remove_on_complete=bad)  # type: ignore[arg-type]


async def _stored_ttl(client: Client, name: str, job_id: str) -> str | None:
    """The Nats-TTL a job's record was written with (None: kept until removed)."""
    return await Backstage(client, name).record_ttl(job_id)


async def test_unset_retention_keeps_finished_jobs_a_day_or_two_weeks(client: Client) -> None:
    """By default the job store does not grow without bound: a finished record expires."""
    q = queue("defaults", ok, client=client)
    failing = queue("defaults-fail", boom, client=client, retries=RetryPolicy(max=0))
    kept = queue("kept", ok, client=client, remove_on_complete=False)
    async with q, failing, kept:
        done = await (await q.add({})).wait(10)
        failed = await (await failing.add({})).wait(10)
        forever = await (await kept.add({})).wait(10)
        per_job = await (await q.add({}, remove_on_complete=False)).wait(10)
    assert await _stored_ttl(client, "defaults", done.id) == f"{24 * 3600 * 1000}ms"
    assert await _stored_ttl(client, "defaults-fail", failed.id) == f"{14 * 24 * 3600 * 1000}ms"
    assert await _stored_ttl(client, "kept", forever.id) is None
    assert await _stored_ttl(client, "defaults", per_job.id) is None, "the job's own setting wins"
