"""Queue.remove(job_id) and ``oqron jobs remove``: one job that is not running goes, with its
record, index entry, messages and dead letter; an active one is refused; a worker claiming it
meanwhile is never overwritten."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any

import pytest

from oqron_nats import (
    Client,
    DeadLetter,
    InvalidState,
    JobContext,
    JobNotFound,
    JobState,
    Queue,
    RetryPolicy,
    queue,
)
from oqron_nats.ops import admin
from oqron_nats.testing.server import LocalServer

from .helpers import eventually, wait_for_state
from .support import Backstage
from .test_cli import oqron, oqron_json


async def _counts(q: Queue[Any]) -> dict[JobState, int]:
    return {state: await q.count(state) for state in JobState if await q.count(state)}


async def test_remove_a_waiting_delayed_paused_failed_and_completed_job(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        if ctx.data.get("fail"):
            raise RuntimeError("boom")

    q = queue("rm-states", handler, client=client, retries=RetryPolicy(max=0),
              dead_letter=DeadLetter(enabled=True))  # fmt: skip
    async with q:
        done = await q.add({"n": 1})
        failed = await q.add({"fail": True})
        await wait_for_state(q, done.id, JobState.COMPLETED)
        await wait_for_state(q, failed.id, JobState.FAILED)
    waiting = await q.add({"n": 2})
    delayed = await q.add({"n": 3}, delay=timedelta(hours=1))
    await q.pause()
    held = await q.add({"n": 4})
    stored = await q.get_job(held.id)
    assert stored is not None and stored.state == JobState.PAUSED
    backstage = Backstage(client, "rm-states")
    await eventually(lambda: _one_dead_letter(client), what="the dead letter")
    assert await backstage.work_messages() == 3  # waiting's lane, delayed's schedule, held marker

    for job in (done, failed, waiting, delayed, held):
        await q.remove(job.id)
        assert await q.get_job(job.id) is None
    assert await backstage.work_messages() == 0
    assert await admin.dead_letters(client, "rm-states", 10) == []
    await eventually(lambda: _empty(q), what="every index entry to go")
    with pytest.raises(JobNotFound):
        await q.remove(done.id)  # twice
    with pytest.raises(JobNotFound):
        await q.remove("no-such-job")
    await q.resume()
    assert await backstage.work_messages() == 0


async def _one_dead_letter(client: Client) -> bool:
    return len(await admin.dead_letters(client, "rm-states", 10)) == 1


async def _empty(q: Queue[Any]) -> bool:
    return await _counts(q) == {}


async def test_an_active_job_is_refused_until_it_is_cancelled(client: Client) -> None:
    started = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        started.set()
        await asyncio.sleep(30)

    q = queue("rm-active", handler, client=client, retries=RetryPolicy(max=0))
    async with q:
        job = await q.add({})
        await asyncio.wait_for(started.wait(), 10)
        with pytest.raises(InvalidState, match="cancel it first"):
            await q.remove(job.id)
        stored = await q.get_job(job.id)
        assert stored is not None and stored.state == JobState.ACTIVE  # untouched
        assert await q.cancel(job.id)
        await wait_for_state(q, job.id, JobState.CANCELLED)
        await q.remove(job.id)
        assert await q.get_job(job.id) is None
        await asyncio.sleep(0.5)  # the cancelled handler's last writes lose their CAS
        assert await q.get_job(job.id) is None, "a removed record came back"
    await eventually(lambda: _empty(q), what="every index entry to go")


async def test_remove_while_workers_claim(client: Client) -> None:
    """Removals race a worker's claims (16 at a time): each job is either removed (and no later
    write of a worker brings it back) or refused because it was claimed, and then it completes."""
    ran: set[str] = set()

    async def handler(ctx: JobContext[Any]) -> None:
        ran.add(ctx.id)
        await asyncio.sleep(0.01)

    publisher = queue("rm-race", client=client)
    workers = [queue("rm-race", handler, client=client, concurrency=16)]
    for w in workers:
        await w.start()
    rng = random.Random(15)

    async def add_then_remove(n: int) -> tuple[str, BaseException | None]:
        job = await publisher.add({"n": n})
        await asyncio.sleep(rng.uniform(0, 0.05))
        try:
            await publisher.remove(job.id)
        except (InvalidState, JobNotFound) as exc:
            return job.id, exc
        return job.id, None

    try:
        outcomes = await asyncio.gather(*(add_then_remove(n) for n in range(200)))
        removed = {job_id for job_id, out in outcomes if out is None}
        refused = {job_id for job_id, out in outcomes if isinstance(out, InvalidState)}
        assert len(removed) + len(refused) == 200, "JobNotFound: nobody else removes them"
        for job_id in refused:
            await wait_for_state(publisher, job_id, JobState.COMPLETED)
            assert job_id in ran
        await asyncio.sleep(1.0)  # late writes of workers that lost their claim
        for job_id in removed:
            assert await publisher.get_job(job_id) is None, "a removed job came back"
        await eventually(
            lambda: _only_completed(publisher, len(refused)), what="the index to agree"
        )
    finally:
        for w in workers:
            await w.stop()
    assert await Backstage(client, "rm-race").work_messages() == 0
    assert await admin.rejected(client, "rm-race") == [], "a removed job's message is no reject"


async def _only_completed(q: Queue[Any], count: int) -> bool:
    counts = await _counts(q)
    return counts == ({JobState.COMPLETED: count} if count else {})


async def test_oqron_jobs_remove(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    q = queue("rm-cli", client=client)
    first, second = await q.add({"n": 1}), await q.add({"n": 2})
    done = await oqron_json(capsys, nats_server, namespace, "jobs", "remove", "rm-cli", first.id)
    assert done == {"job_id": first.id, "queue": "rm-cli", "done": "remove"}
    assert await q.get_job(first.id) is None
    argv = ("jobs", "remove", "rm-cli", second.id)
    code, out, _ = await oqron(capsys, nats_server, namespace, *argv)
    assert code == 0 and out.strip() == (
        f"job {second.id} of queue rm-cli removed (record, index entry, messages and dead letter)"
    )
    # twice, unknown, no such queue: exit 1 with the reason; a malformed id: exit 2
    code, _, err = await oqron(capsys, nats_server, namespace, "jobs", "remove", "rm-cli", first.id)
    assert code == 1 and first.id in err
    code, _, err = await oqron(capsys, nats_server, namespace, "jobs", "remove", "nope", first.id)
    assert code == 1 and "nope" in err
    code, _, err = await oqron(capsys, nats_server, namespace, "jobs", "remove", "rm-cli", "a.b")
    assert code == 2 and "job id" in err
