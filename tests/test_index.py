"""get_jobs() and count() read the state index, not every record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from oqron_nats import Client, InvalidOption, JobContext, JobState, Queue, RetryPolicy, queue
from oqron_nats._nats import Msg, StoredMsg
from oqron_nats._nats.kv import ttl_seconds
from oqron_nats.storage.index import MARKER_SLACK, MARKER_TTL
from oqron_nats.storage.store import JobStore, Record

from .helpers import eventually
from .support import Backstage


async def test_counts_follow_every_state_change(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
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


async def _counts(q: Queue[Any], **expected: int) -> bool:
    return all([await q.count(state) == n for state, n in expected.items()])


async def test_pages_are_newest_first_and_offset_skips(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = queue("paged", client=client)
    jobs = [await q.add({"n": n}) for n in range(30)]

    async def no_scan(self: JobStore) -> AsyncIterator[Record]:
        # the index must answer without reading every record
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


@pytest.mark.parametrize("healer", ["listing", "reconciliation"])
async def test_an_entry_filed_by_a_repair_expires_with_its_record(
    client: Client, healer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair files the entry of the state the record is in with the time its record has
    left (else the entry of an expiring record would be counted after the record is gone)."""
    from datetime import timedelta

    from oqron_nats.core.config import Reconciliation
    from oqron_nats.runtime.maintenance import reconcile
    from oqron_nats.storage import store

    monkeypatch.setattr(store, "INDEX_SETTLE", 0.0)  # judge the job that just ended at once

    async def handler(ctx: JobContext[Any]) -> None:
        pass

    q = queue(f"expiring-{healer}", handler, client=client, remove_on_complete=timedelta(hours=1))
    backend = await q._open()
    job = await q.add({"n": 1})
    async with q:
        await eventually(lambda: _counts(q, completed=1), what="the job to complete")
    await backend.store.index.repair(job.id, JobState.ACTIVE)  # a move cut short, as it were
    await eventually(lambda: _counts(q, active=1, completed=0), what="the drift to show")
    if healer == "listing":
        assert await q.get_jobs(JobState.ACTIVE) == []
    else:
        healed = await reconcile(backend, Reconciliation(waiting_threshold=0, delayed_grace=0))
        assert healed.reindexed == 1
    await eventually(lambda: _counts(q, active=0, completed=1), what="the repair")
    filed = await Backstage(client, q.name).index_entry(job.id, JobState.COMPLETED)
    assert filed is not None
    left = ttl_seconds(filed.headers.get("Nats-TTL", "never"))
    assert left is not None and 3500 < left <= 3600, filed.headers


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("90", 90.0), ("1500ms", 1.5), ("1h30m", 5400.0), ("2m0.5s", 120.5), ("never", None),
     ("", None), ("1x", None), ("ms", None), ("5s junk", None)],
)  # fmt: skip
def test_a_ttl_header_reads_as_seconds(header: str, seconds: float | None) -> None:
    assert ttl_seconds(header) == seconds


async def test_drain_and_obliterate_look_past_a_stale_active_entry(client: Client) -> None:
    q = queue("stale-active", client=client)
    await _finished_long_ago_but_listed_active(q, "done-long-ago")
    await eventually(lambda: _counts(q, active=1, completed=1), what="the drift to show")
    await q.drain(timeout=5)  # the record says completed: nothing is running
    assert await q.obliterate() == 1


async def _finished_long_ago_but_listed_active(q: Queue[Any], job_id: str) -> None:
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


async def test_a_move_is_stored_messages_only_and_counts_skip_standing_markers(
    client: Client,
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        if ctx.data["fail"]:
            raise RuntimeError("no")

    again = RetryPolicy(max=1, strategy="fixed", base_delay=0)
    q = queue("markers", handler, client=client, retries=again, concurrency=4)
    behind = Backstage(client, q.name)
    await q._open()
    requests: list[str] = []

    async def seen(msg: Msg) -> None:
        requests.append(msg.subject)

    watch = await behind.watch_index_requests(seen)
    jobs = await q.add_bulk([{"data": {"fail": n % 3 == 0}} for n in range(12)])
    cancelled = [await q.add({"fail": False}, delay=3600) for _ in range(3)]
    for job in cancelled:
        await q.cancel(job.id)
    async with q:
        await eventually(lambda: _counts(q, completed=8, failed=4), what="the jobs to end")
    await watch.unsubscribe()
    # counted while the delete markers of waiting, active and delayed still stand
    expected = {"waiting": 0, "active": 0, "delayed": 0, "completed": 8, "failed": 4,
                "cancelled": 3}  # fmt: skip
    assert {s: await q.count(JobState(s)) for s in expected} == expected
    assert await q.count() == 15
    assert len(await q.get_jobs(JobState.COMPLETED, limit=50)) == 8
    assert await q.get_jobs(JobState.WAITING) == []
    assert [r for r in requests if ".PURGE." in r or ".DELETE." in r] == []
    assert jobs.ok
    # the markers expire; what stays is one entry per job
    await eventually(lambda: _index_holds(behind, 15), what="the delete markers to expire")
    assert {s: await q.count(JobState(s)) for s in expected} == expected


async def _index_holds(behind: Backstage, messages: int) -> bool:
    return await behind.index_messages() == messages


async def test_a_count_is_never_high_while_markers_expire(client: Client) -> None:
    q = queue("expiring", client=client)
    jobs = [await q.add({"n": n}) for n in range(10)]
    for job in jobs[:6]:
        await q.cancel(job.id)
    await Backstage(client, q.name).file_in_index(jobs[-1].id, JobState.WAITING)  # stored
    for _ in range(30):  # across the markers' second and their removal
        assert await q.count(JobState.WAITING) == 4
        assert await q.count(JobState.CANCELLED) == 6
        await asyncio.sleep(0.1)


async def test_a_count_taken_while_its_markers_expire_is_not_low(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count reads the state's messages and the markers among them apart: markers that
    expire between the two reads (here the first read of the messages waits until they have)
    would make it low (0 here: 4 entries less 6 markers); the markers are counted again after,
    and the count taken again."""
    q = queue("expiring-slowly", client=client)
    jobs = [await q.add({"n": n}) for n in range(10)]
    for job in jobs[:6]:
        await q.cancel(job.id)
    index = (await q._open()).store.index
    read = index.conn.direct_batch
    waited: list[bool] = []

    async def first_read_late(stream: str, **kwargs: Any) -> tuple[list[StoredMsg], int]:
        if kwargs.get("batch") == 1 and not waited:  # the count's read of the messages
            waited.append(True)
            await asyncio.sleep(MARKER_TTL + MARKER_SLACK + 1)
        return await read(stream, **kwargs)

    monkeypatch.setattr(index.conn, "direct_batch", first_read_late)
    assert await q.count(JobState.WAITING) == 4
    assert waited


async def test_a_repair_marks_every_stale_entry_and_files_the_right_one(client: Client) -> None:
    q = queue("repaired", client=client)
    backend = await q._open()
    behind = Backstage(client, q.name)
    job = await q.add({"n": 1})
    for state in (JobState.ACTIVE, JobState.FAILED, JobState.DELAYED):
        await behind.file_in_index(job.id, state)
    await eventually(lambda: _counts(q, waiting=1, active=1, failed=1, delayed=1),
                     what="the drift to show")  # fmt: skip
    await backend.store.index.repair(job.id, JobState.WAITING)
    await eventually(lambda: _counts(q, waiting=1, active=0, failed=0, delayed=0),
                     what="the repair")  # fmt: skip
    await backend.store.index.repair(job.id, None)  # gone: no entry at all
    await eventually(lambda: _counts(q, waiting=0), what="the entry to go")


async def test_a_queue_indexed_by_the_0_1_layout_is_migrated_at_start(client: Client) -> None:
    q = queue("legacy", client=client)
    jobs = [await q.add({"n": n}) for n in range(5)]
    for job in jobs[:2]:
        await q.cancel(job.id)
    waiting, cancelled = [j.id for j in jobs[2:]], [j.id for j in jobs[:2]]
    behind = Backstage(client, q.name)
    await behind.make_legacy_index({JobState.WAITING: waiting, JobState.CANCELLED: cancelled})
    assert len(await behind.legacy_index_streams()) == 9

    async with Client(client.urls[0], namespace=client.namespace) as restarted:
        again = queue("legacy", client=restarted)
        await again._open()  # what a worker's start does: the old streams are migrated
        assert await behind.legacy_index_streams() == []
        assert await again.count(JobState.WAITING) == 3
        assert await again.count(JobState.CANCELLED) == 2
        newest = [j.id for j in await again.get_jobs(JobState.WAITING)]
        assert newest == list(reversed(waiting))
        assert {j.id for j in await again.get_jobs(limit=10)} == {j.id for j in jobs}
        moved = await again.cancel(waiting[0])  # and moves go on in the new layout
        assert moved
        await eventually(lambda: _counts(again, waiting=2, cancelled=3), what="the move")
