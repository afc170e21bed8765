"""pause / resume / drain across processes, and what add() does while a queue is paused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from oqron_nats import Client, JobContext, JobState, QueuePaused, Skipped, queue
from oqron_nats.storage import control as queue_control
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log, wait_for_state
from .support import Backstage


def starts(log: Path) -> list[dict[str, Any]]:
    return [e for e in read_log(log) if e["event"] == "start"]


async def test_pause_stops_every_worker_and_resume_lets_them_go_on(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "log.jsonl"
    q = queue("paused", client=client)
    await q.add({"sleep": 0.1})  # creates the stream
    workers = [
        WorkerProcess(nats_server.url, namespace, log, queue="paused", concurrency=2, sleep=0.1)
        for _ in range(2)
    ]
    try:
        long = await q.add({"sleep": 2.0})
        await eventually(lambda: _started(log, long.id), what="the long job to start")
        backlog = [await q.add({"sleep": 1.0}) for _ in range(12)]  # 4 slots: most must queue
        await eventually(lambda: _count_starts(log, 4), what="every slot to be busy")
        await q.pause()
        assert await q.is_paused()
        other = queue("paused", client=Client(nats_server.url, namespace=namespace))
        assert await other.is_paused(), "another client sees the persisted state"
        await other.close()
        paused_at = time.time()
        queued = [await q.add({"sleep": 0.0}) for _ in range(6)]
        done = await wait_for_state(q, long.id, JobState.COMPLETED, timeout=10)
        assert done.attempt == 1, "the running job was not interrupted"
        await asyncio.sleep(1.5)
        late = [e for e in starts(log) if e["t"] > paused_at + 1.0]
        assert late == [], f"jobs started on a paused queue: {late}"
        for job in queued:
            assert (await q.get_job(job.id)).state == JobState.PAUSED  # type: ignore[union-attr]
        still_queued = [j for j in backlog if (await q.get_job(j.id)).state == JobState.WAITING]  # type: ignore[union-attr]
        assert len(still_queued) >= 6, "queued jobs stay queued while paused"
        assert await Backstage(client, "paused").work_messages() >= 6
        assert await q.resume() == 6
        assert not await q.is_paused()
        for job in [*queued, *backlog]:
            await wait_for_state(q, job.id, JobState.COMPLETED, timeout=20)
        assert {e["pid"] for e in starts(log)} <= {w.pid for w in workers}
    finally:
        for worker in workers:
            worker.close()


async def _count_starts(log: Path, n: int) -> bool:
    return len(starts(log)) >= n + 1


async def _started(log: Path, job_id: str) -> bool:
    return any(e["job"] == job_id for e in starts(log))


async def test_held_jobs_keep_their_delay_and_priority_and_are_never_dropped(
    client: Client,
) -> None:
    q = queue("held", client=client)
    await q.pause()
    delayed = await q.add({"n": 0}, delay=30, priority=3)
    assert delayed.state == JobState.PAUSED
    assert delayed.run_at is not None
    many = await q.add_bulk([{"data": {"n": n}} for n in range(150)])
    assert many.ok
    assert await q.count(JobState.PAUSED) == 151, "no held job is deleted (OqronKit kept 100)"
    behind = Backstage(client, "held")
    assert await behind.lane_subjects() == {}, "held jobs are not on any lane"
    assert await q.resume() == 151
    released = await q.get_job(delayed.id)
    assert released is not None
    assert released.state == JobState.DELAYED
    assert released.run_at == delayed.run_at
    assert released.priority == 3
    assert await q.count(JobState.WAITING) == 150
    assert await behind.held_subjects() == {}


async def test_reject_raises_and_stores_nothing(client: Client) -> None:
    q = queue("reject", client=client, disabled_behavior="reject")
    await q.add({"n": 0})
    await q.pause()
    with pytest.raises(QueuePaused):
        await q.add({"n": 1})
    assert await q.count() == 1
    await q.resume()
    assert (await q.add({"n": 2})).state == JobState.WAITING


async def test_skip_returns_skipped_and_stores_nothing(client: Client) -> None:
    q = queue("skip", client=client, disabled_behavior="skip")
    await q.add({"n": 0})
    await q.pause()
    outcome = await q.add({"n": 1}, job_id="skipped-1")
    assert isinstance(outcome, Skipped)
    assert outcome.job_id == "skipped-1"
    bulk = await q.add_bulk([{"data": 1}, {"data": 2}])
    assert [o.skipped for o in bulk] == [True, True]
    assert not bulk.ok
    assert await q.count() == 1
    assert await q.get_job("skipped-1") is None


async def test_drain_waits_for_active_jobs_and_leaves_the_queue_paused(client: Client) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        started.append(ctx.id)
        await release.wait()

    q = queue("drained", handler, client=client, concurrency=2)
    async with q:
        running = [await q.add({"n": n}) for n in range(2)]
        await eventually(lambda: _count(started, 2), what="both jobs to start")
        draining = asyncio.create_task(q.drain(timeout=10))
        await asyncio.sleep(0.5)
        assert not draining.done(), "drain waits for the active jobs"
        waiting = await q.add({"n": 9})
        release.set()
        await draining
        for job in running:
            assert (await q.get_job(job.id)).state == JobState.COMPLETED  # type: ignore[union-attr]
        assert await q.is_paused()
        await asyncio.sleep(0.5)
        assert waiting.id not in started
        assert (await q.get_job(waiting.id)).state == JobState.PAUSED  # type: ignore[union-attr]
        await q.resume()
        await wait_for_state(q, waiting.id, JobState.COMPLETED)


async def _count(items: list[str], n: int) -> bool:
    return len(items) >= n


async def test_a_worker_started_while_paused_claims_nothing(client: Client) -> None:
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    publisher = queue("late", client=client)
    job = await publisher.add({"n": 1})
    await publisher.pause()
    q = queue("late", handler, client=client)
    async with q:
        await asyncio.sleep(1.0)
        assert ran == []
        assert await Backstage(client, "late").work_messages() == 1
        await publisher.resume()
        await wait_for_state(q, job.id, JobState.COMPLETED)
    assert ran == [job.id]


async def test_drain_waits_for_jobs_running_in_other_processes(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "log.jsonl"
    q = queue("drain-remote", client=client)
    await q.add({"sleep": 0}, job_id="warmup")
    worker = WorkerProcess(nats_server.url, namespace, log, queue="drain-remote", concurrency=2)
    try:
        long = [await q.add({"sleep": 1.5}) for _ in range(2)]
        await eventually(lambda: _count_starts(log, 2), what="the worker to start both jobs")
        await q.drain(timeout=20)
        for job in long:
            assert (await q.get_job(job.id)).state == JobState.COMPLETED  # type: ignore[union-attr]
        assert await q.count(JobState.ACTIVE) == 0
        assert await q.is_paused()
    finally:
        worker.close()


async def test_racing_pauses_and_resumes_leave_the_consumers_as_the_state_ends(
    nats_server: LocalServer, client: Client, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pause and a resume from two processes can reach the consumers in the other order than
    they reached the state (here the pauser is held up between the two); the consumers must end
    as the state ended, or a running queue's workers would get nothing from the server."""

    async def handler(ctx: JobContext[Any]) -> None:
        return None

    other = Client(nats_server.url, namespace=namespace)
    pauser, resumer = queue("race", client=client), queue("race", client=other)
    worker = queue("race", handler, client=client, strategy="priority")
    control = (await pauser._open()).control
    apply = control.apply_to_consumers

    async def held_up() -> None:
        await asyncio.sleep(0.5)  # the resume's state write and consumer updates go first
        await apply()

    monkeypatch.setattr(control, "apply_to_consumers", held_up)
    behind = Backstage(client, "race")

    async def consumers_agree() -> bool:
        paused = await resumer.is_paused()
        infos = await behind.consumer_infos()
        return len(infos) == 1 and all(bool(info.paused) == paused for info in infos)

    async with other, worker:
        pausing = asyncio.create_task(pauser.pause())
        await asyncio.sleep(0.1)  # the pause's state write lands first
        await resumer.resume()
        await pausing
        assert not await resumer.is_paused()
        await asyncio.sleep(0.5)
        assert await consumers_agree(), "the consumers stayed paused on a running queue"


async def test_a_queue_left_open_stops_following_its_state_once_its_client_closes(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queue_control, "RECHECK_RUNNING", 0.1)  # it reads the state again at once
    client = Client(nats_server.url, namespace=namespace)
    publisher = queue("left-open", client=client)
    await publisher.add({})  # opens the queue, which follows its state; never closed
    with capture_logs() as logs:
        await client.close()
        await asyncio.sleep(1.0)  # several re-reads would have failed by now
    assert not [e for e in logs if e["event"] == "queue state not read; trying again"]
