"""A guaranteed job takes its lease at its first heartbeat (issue 14): most jobs end before it
and never touch the locks bucket. Until then the job is held by its record (the claim's
compare-and-set names its message) and by the message's ack deadline; a delivery that finds it
active within lock_ttl of its claim (a server that redelivered early) waits instead of taking
it over, and the stall scanner does not judge it by a lease it has not taken yet."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from oqron_nats import Client, JobContext, JobState, queue
from oqron_nats.runtime.maintenance import scan_stalls
from oqron_nats.storage.store import JobStore

from .helpers import eventually, holds, wait_for_state
from .support import Backstage

WAIT = 20.0


async def test_a_job_longer_than_a_heartbeat_takes_its_lease_then(client: Client) -> None:
    started, finish = asyncio.Event(), asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> int:
        started.set()
        await asyncio.wait_for(finish.wait(), WAIT)
        return ctx.fencing_token

    behind = Backstage(client, "lazy-lease")
    q = queue("lazy-lease", handler, lock_ttl=3, heartbeat=1, client=client)
    async with q:
        job = await q.add({})
        await asyncio.wait_for(started.wait(), WAIT)
        claimed = await behind.record(job.id)
        assert await behind.lease(job.id) is None, "no lease before the first heartbeat"
        await eventually(lambda: behind.lease(job.id), WAIT, "the lease of the first heartbeat")
        running = await q.get_job(job.id)
        assert running is not None and running.state == JobState.ACTIVE and running.leased
        finish.set()
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
        await eventually(lambda: _released(behind, job.id), WAIT, "the lease to be released")
    assert done.result == claimed.revision, "the fencing token is the claim's write"
    assert done.stalled_count == 0 and done.attempt == 1


async def test_an_early_redelivery_does_not_take_over_a_job_before_its_lease(
    client: Client,
) -> None:
    runs: list[int] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.attempt)
        await asyncio.sleep(2.0)  # shorter than the heartbeat: it never takes a lease

    behind = Backstage(client, "early")
    q = queue("early", handler, lock_ttl=4, heartbeat=3, concurrency=2, client=client)
    async with q:
        await behind.set_ack_wait(0.5)  # the message comes back while its job runs
        job = await q.add({})
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
        await eventually(lambda: _settled(behind), WAIT, "the early copy to be settled")
    assert runs == [1], "the job ran once"
    assert done.stalled_count == 0, "nobody took it over"


async def test_a_claim_answered_after_a_takeover_runs_nothing(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's write is stored but its answer comes late (an election): meanwhile the
    message comes back, another execution takes the job over, runs and completes it, and gives
    the lease up. The late claim then gets the lease, but the record has moved on: it must run
    nothing (found by the cluster chaos suite, scenario startup)."""
    lock_ttl, heartbeat = 2.0, 0.5
    update = JobStore.update
    held_back: list[str] = []

    async def late_answer(self: JobStore, job: Any, *args: Any, **kwargs: Any) -> int:
        revision = await update(self, job, *args, **kwargs)
        if args[1] == "active" and not held_back:
            held_back.append(job.id)
            await asyncio.sleep(lock_ttl + heartbeat + 1 + 2.0)  # past ack_wait: it comes back
        return revision

    monkeypatch.setattr(JobStore, "update", late_answer)
    runs: list[int] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.fencing_token)

    q = queue("late-claim", handler, lock_ttl=lock_ttl, heartbeat=heartbeat, concurrency=2,
              client=client)  # fmt: skip
    async with q:
        job = await q.add({})
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
        await eventually(lambda: holds(len(held_back) == 1), WAIT, "the late claim")
        await asyncio.sleep(lock_ttl + heartbeat + 1 + 2.5)  # the late claim's answer came
    assert len(runs) == 1, f"the handler ran {len(runs)} times"
    assert done.stalled_count == 1, "the second delivery took the job over"


async def test_the_stall_scanner_leaves_a_job_alone_before_its_lease(client: Client) -> None:
    started, finish = asyncio.Event(), asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        started.set()
        await asyncio.wait_for(finish.wait(), WAIT)

    behind = Backstage(client, "scanned")
    q = queue("scanned", handler, lock_ttl=10, heartbeat=5, client=client)
    async with q:
        job = await q.add({})
        await asyncio.wait_for(started.wait(), WAIT)
        await behind.purge_lanes()  # its message is gone too: only the record holds the job
        assert q._consumer is not None
        assert await scan_stalls(q._consumer.backend) == 0
        running = await q.get_job(job.id)
        assert running is not None and running.state == JobState.ACTIVE
        finish.set()
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    assert done.stalled_count == 0


async def _released(behind: Backstage, job_id: str) -> bool:
    return await behind.lease(job_id) is None


async def _settled(behind: Backstage) -> bool:
    return await behind.work_messages() == 0
