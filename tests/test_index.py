"""get_jobs() and count() read the state index, not every record."""

from __future__ import annotations

import pytest

from oqron_nats import Client, InvalidOption, JobState, RetryPolicy, queue
from oqron_nats.storage.store import JobStore

from .helpers import eventually
from .support import Backstage


async def test_counts_follow_every_state_change(client: Client) -> None:
    async def handler(ctx) -> None:
        if ctx.data["fail"]:
            raise RuntimeError("no")

    q = queue("counted", handler, client=client, retries=RetryPolicy(max=0), concurrency=4)
    await q.add_bulk([{"data": {"fail": n % 4 == 0}} for n in range(20)])
    await q.add({"fail": False}, delay=3600)
    assert await q.count(JobState.WAITING) == 20
    assert await q.count(JobState.DELAYED) == 1
    async with q:
        await eventually(lambda: _counts(q, completed=15, failed=5), what="the counts to settle")
    assert await q.count(JobState.WAITING) == 0
    assert await q.count(JobState.ACTIVE) == 0
    assert await q.count() == 21


async def _counts(q, **expected: int) -> bool:
    return all([await q.count(state) == n for state, n in expected.items()])


async def test_pages_are_newest_first_and_offset_skips(client: Client, monkeypatch) -> None:
    q = queue("paged", client=client)
    jobs = [await q.add({"n": n}) for n in range(30)]

    async def no_scan(self):  # the index must answer without reading every record
        raise AssertionError("get_jobs/count scanned the records")
        yield

    monkeypatch.setattr(JobStore, "scan", no_scan)
    newest = [job.id for job in reversed(jobs)]
    assert [j.id for j in await q.get_jobs(JobState.WAITING, limit=10)] == newest[:10]
    assert [j.id for j in await q.get_jobs(JobState.WAITING, limit=10, offset=10)] == newest[10:20]
    assert [j.id for j in await q.get_jobs(limit=5)] == newest[:5]
    assert [j.id for j in await q.get_jobs(JobState.WAITING, limit=50, offset=25)] == newest[25:]
    assert await q.get_jobs(JobState.FAILED) == []
    assert await q.count(JobState.WAITING) == 30
    with pytest.raises(InvalidOption):
        await q.get_jobs(offset=-1)


async def test_a_job_that_moved_on_is_not_listed_in_its_old_state(client: Client) -> None:
    q = queue("moved", client=client)
    job = await q.add({"n": 1})
    await q.cancel(job.id)
    await eventually(lambda: _counts(q, waiting=0, cancelled=1), what="the index to follow")
    assert await q.get_jobs(JobState.WAITING) == []
    assert [j.id for j in await q.get_jobs(JobState.CANCELLED)] == [job.id]


async def test_a_stale_entry_is_repaired_by_a_listing_and_by_reconciliation(client: Client) -> None:
    from oqron_nats.core.config import Reconciliation
    from oqron_nats.runtime.maintenance import reconcile

    q = queue("drifted", client=client)
    backend = await q._open()

    await _finished_long_ago_but_listed_active(q, "one")
    await eventually(lambda: _counts(q, active=1, completed=1), what="the drift to show")
    assert await q.get_jobs(JobState.ACTIVE) == []  # the listing drops and repairs it
    await eventually(lambda: _counts(q, active=0, completed=1), what="the listing to repair it")

    await _finished_long_ago_but_listed_active(q, "two")
    await eventually(lambda: _counts(q, active=1, completed=2), what="the drift to show")
    healed = await reconcile(backend, Reconciliation(waiting_threshold=0, delayed_grace=0))
    assert healed.reindexed == 1
    await eventually(lambda: _counts(q, active=0, completed=2), what="reconciliation to repair it")


async def test_drain_and_obliterate_look_past_a_stale_active_entry(client: Client) -> None:
    q = queue("stale-active", client=client)
    await _finished_long_ago_but_listed_active(q, "done-long-ago")
    await eventually(lambda: _counts(q, active=1, completed=1), what="the drift to show")
    await q.drain(timeout=5)  # the record says completed: nothing is running
    assert await q.obliterate() == 1


async def _finished_long_ago_but_listed_active(q, job_id: str) -> None:
    """A job that completed an hour ago, still listed as active: a crash cut its move short."""
    from datetime import UTC, datetime, timedelta

    import msgspec

    from oqron_nats.core.job import Job, moved

    backend = await q._open()
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    job: Job[msgspec.Raw] = Job(
        id=job_id, queue=q.name, state=JobState.ACTIVE, data=msgspec.Raw(b"1"),
        created_at=long_ago, correlation_id="c", max_attempts=1,
    )  # fmt: skip
    job = moved(job, JobState.COMPLETED, "done")
    job.timeline[-1] = msgspec.structs.replace(job.timeline[-1], at=long_ago)
    await backend.store.create(job)
    await Backstage(q.client, q.name).file_in_index(job_id, JobState.ACTIVE)
