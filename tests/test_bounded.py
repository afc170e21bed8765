"""No silent loss (issue 11, item 6): a waiting job whose message is gone is published again
by default, a work stream an operator gave discard=old limits is refused, and a queue bounded
with max_jobs refuses adds with QueueFull instead of dropping anything."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from oqron_nats import (
    Client,
    ConfigError,
    JobContext,
    JobState,
    OqronError,
    OrphanSweep,
    QueueFull,
    queue,
)
from oqron_nats.core.config import OPTIONS
from oqron_nats.queue import parse_options
from oqron_nats.runtime.maintenance import OrphanSweeper

from .helpers import wait_for_state
from .support import Backstage, leave_record_in_shared_bucket

FAST_SWEEP = OrphanSweep(interval=0.5, waiting_for=1.0)


async def done(ctx: JobContext[Any]) -> str:
    return "ok"


def test_the_orphan_sweep_is_on_by_default() -> None:
    assert OPTIONS["orphan_sweep"].default is True
    assert queue("q", done).config.orphan_sweep == OrphanSweep()
    assert queue("q", done, orphan_sweep=False).config.orphan_sweep is None


async def test_waiting_jobs_whose_messages_were_dropped_behind_our_back_run_anyway(
    client: Client,
) -> None:
    publisher = queue("dropped", client=client)
    jobs = [await publisher.add({"n": n}) for n in range(5)]
    behind = Backstage(client, "dropped")
    await behind.purge_lanes()  # an operator, or a bounded stream
    assert await behind.work_messages() == 0
    q = queue("dropped", done, client=client, orphan_sweep=FAST_SWEEP)
    async with q:
        for job in jobs:
            finished = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=15)
            assert finished.enqueued == 2, "published once more, by the sweep"
            assert finished.attempt == 1


async def test_a_record_stored_without_its_message_is_published_by_the_sweep(
    client: Client,
) -> None:
    """The add() that stopped between the record and the message (the process died)."""
    q = queue("half", done, client=client, orphan_sweep=FAST_SWEEP)
    backend = await client._open_queue(q.config)
    _, record = q._new_job({"n": 1}, parse_options({"job_id": "half-added"}))
    await backend.store.create(record)
    async with q:
        finished = await wait_for_state(q, "half-added", JobState.COMPLETED, timeout=15)
    assert finished.result == "ok"


async def test_the_sweep_leaves_queued_jobs_alone(client: Client) -> None:
    publisher = queue("healthy", client=client)
    jobs = [await publisher.add({"n": n}) for n in range(3)]
    q = queue("healthy", done, client=client, orphan_sweep=FAST_SWEEP, concurrency=1)
    backend = await client._open_queue(q.config)
    await asyncio.sleep(1.2)  # the jobs are older than waiting_for, their messages are there
    assert await OrphanSweeper(backend, FAST_SWEEP).sweep() == 0
    async with q:
        for job in jobs:
            finished = await wait_for_state(q, job.id, JobState.COMPLETED)
            assert finished.enqueued == 1


async def test_a_work_stream_with_discard_old_limits_is_refused(client: Client) -> None:
    publisher = queue("bounded-by-hand", client=client)
    await publisher.add({"n": 1})
    await Backstage(client, "bounded-by-hand").limit_work_stream(max_msgs=100)
    fresh = Client(client.urls, namespace=client.namespace)
    async with fresh:
        for q in (queue("bounded-by-hand", client=fresh),
                  queue("bounded-by-hand", done, client=fresh)):  # fmt: skip
            with pytest.raises(ConfigError, match="max_msgs=100 with discard=old"):
                await (q.add({"n": 2}) if q.handler is None else q.start())


async def test_max_jobs_refuses_adds_with_queue_full_and_stores_nothing(client: Client) -> None:
    q = queue("capped", client=client, max_jobs=5)
    jobs = [await q.add({"n": n}) for n in range(5)]
    with pytest.raises(QueueFull) as info:
        await q.add({"n": 5})
    assert isinstance(info.value, OqronError)
    assert "5" in str(info.value)
    assert await q.count() == 5
    result = await q.add_bulk([{"data": {"n": n}} for n in range(6, 9)])
    assert [type(item.error) for item in result] == [QueueFull] * 3
    assert await q.count() == 5, "nothing was stored"
    async with queue("capped", done, client=client) as worker:
        for job in jobs:
            await wait_for_state(worker, job.id, JobState.COMPLETED)
    await q.add(
        {"n": 9}
    )  # room again (read again, being near the bound): finished jobs do not count


async def test_max_bytes_bounds_the_storage_of_a_queue_s_records(client: Client) -> None:
    q = queue("heavy", client=client, max_bytes=20_000)
    stored, refused = 0, None
    for n in range(100):
        try:
            await q.add({"blob": "x" * 1000, "n": n})
        except QueueFull as exc:
            refused = exc
            break
        stored += 1
    assert refused is not None and "max_bytes" in str(refused)
    assert 10 <= stored < 20, stored
    assert await q.count() == stored, "nothing was stored for the refused add"
    light = queue("light", client=client, max_bytes=20_000)
    await light.add({"n": 1})  # another queue's records have a bucket of their own
    stored_bytes = await Backstage(client, "heavy").records_bytes()
    assert stored_bytes <= 20_000 + 2_000, "over by at most one record"


async def test_records_left_in_the_old_shared_bucket_are_refused_not_ignored(
    client: Client,
) -> None:
    """oqron_nats 0.1.0 kept every queue's records in one bucket per namespace: a queue whose
    records are still there must not start as if it had none."""
    await leave_record_in_shared_bucket(client, "upgraded", "old-job")
    with pytest.raises(ConfigError, match=r"0\.1\.0"):
        await queue("upgraded", client=client).add({"n": 1})
    await queue("fresh", client=client).add({"n": 1})  # another queue had none there: fine
