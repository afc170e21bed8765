"""Publisher-only queues: add and read jobs without consuming; a worker elsewhere runs them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import (
    Client,
    ConfigError,
    ConnectionFailed,
    InvalidOption,
    JobContext,
    JobState,
    Queue,
    queue,
)
from oqron_nats._nats import Nats
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log, wait_for_state
from .support import Backstage


def count_pulls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the subject of every pull request (CONSUMER.MSG.NEXT) this process sends."""
    pulls: list[str] = []
    original = Nats.publish_core

    async def publish_core(self: Nats, subject: str, payload: bytes = b"", **kw: Any) -> None:
        if "MSG.NEXT" in subject:
            pulls.append(subject)
        await original(self, subject, payload, **kw)

    monkeypatch.setattr(Nats, "publish_core", publish_core)
    return pulls


async def assert_not_consumed(client: Client, name: str, pulls: list[str]) -> None:
    """No consumer on the queue's stream, no pull request sent, no lease ever written."""
    behind = Backstage(client, name)
    assert await behind.consumer_names() == [], "a publisher-only queue created a consumer"
    assert pulls == [], "a publisher-only queue sent pull requests"
    leases = (await behind.lease_history()).messages
    assert leases == 0, "a publisher-only queue took leases"


async def _count_is(q: Queue[Any], status: JobState, n: int) -> bool:
    return await q.count(status) == n


# -- a publisher-only queue never consumes ---------------------------------------------------


async def test_a_publisher_only_queue_adds_and_reads_without_consuming(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    pulls = count_pulls(monkeypatch)
    q = queue("pub", client=client)
    assert not q.is_consuming
    jobs = [await q.add({"n": n}) for n in range(5)]
    bulk = await q.add_bulk([{"data": {"n": n}} for n in range(5, 8)])
    assert bulk.ok
    one = await q.get_job(jobs[2].id)
    assert one is not None and one.data == {"n": 2} and one.state == JobState.WAITING
    assert await q.get_job("no-such-job") is None
    listed = await q.get_jobs()
    assert len(listed) == 8
    assert [j.id for j in listed[-5:]] == [j.id for j in reversed(jobs)], "newest first"
    assert await q.count() == 8
    assert await q.count(JobState.WAITING) == 8
    # the jobs wait in the stream, unclaimed
    assert await Backstage(client, "pub").work_messages() == 8
    await asyncio.sleep(0.3)  # anything a consumer would do has had time to happen
    assert await q.count(JobState.WAITING) == 8
    await assert_not_consumed(client, "pub", pulls)

    with pytest.raises(ConfigError, match="publisher-only"):
        await q.start()
    assert not q.is_consuming

    async with q as opened:  # opens the connection, starts no consumer
        assert opened is q
        assert not q.is_consuming
        await q.add({"n": 8})
        await asyncio.sleep(0.3)
        assert await q.count(JobState.WAITING) == 9
    assert client.connected, "closing a queue does not close a client it was given"
    await assert_not_consumed(client, "pub", pulls)
    assert "publisher-only" in repr(q)


# -- a worker in another process runs what the publisher added -------------------------------


async def test_a_worker_process_runs_what_a_publisher_only_queue_added(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions.jsonl"
    proc = WorkerProcess(nats_server.url, namespace, log, queue="handoff", concurrency=3)
    try:
        q = queue("handoff", client=client)
        jobs = [await q.add({"n": n}) for n in range(10)]
        await eventually(
            lambda: _count_is(q, JobState.COMPLETED, 10), timeout=20, what="10 completed jobs"
        )
        for job in jobs:
            done = await q.get_job(job.id)
            assert done is not None
            assert done.state == JobState.COMPLETED
            assert done.result == {"pid": proc.pid}
            assert done.attempt == 1
        starts = [e for e in read_log(log) if e["event"] == "start"]
        assert sorted(e["job"] for e in starts) == sorted(j.id for j in jobs), "each ran once"
        assert {e["pid"] for e in starts} == {proc.pid}

        # SIGTERM while a job runs: the job finishes, then the worker exits 0
        slow = await q.add({"sleep": 1.0})
        await wait_for_state(q, slow.id, JobState.ACTIVE, timeout=10)
        assert proc.terminate() == 0, "SIGTERM is a graceful shutdown"
        finished = await q.get_job(slow.id)
        assert finished is not None and finished.state == JobState.COMPLETED
        assert finished.result == {"pid": proc.pid}
    finally:
        proc.close()


# -- get_jobs and count --------------------------------------------------------------------


async def test_get_jobs_is_newest_first_and_filters_by_state(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data.get("fail"):
            raise RuntimeError("boom")
        return "ok"

    publisher = queue("states", client=client)
    # one at a time: "most recent" is when a job entered its state, here its end
    consumer = queue("states", handler, client=client, concurrency=1)
    done = [await publisher.add({"n": n}) for n in range(3)]
    failed = await publisher.add({"fail": True}, attempts=1)  # the record holds the attempts
    async with consumer:
        for job in done:
            await wait_for_state(publisher, job.id, JobState.COMPLETED)
        await wait_for_state(publisher, failed.id, JobState.FAILED)
    waiting = [await publisher.add({"n": n}) for n in range(4)]
    delayed = [await publisher.add({"n": n}, delay=3600) for n in range(2)]
    added = [*done, failed, *waiting, *delayed]

    everything = await publisher.get_jobs()
    assert [j.id for j in everything] == [j.id for j in reversed(added)]
    created = [j.created_at for j in everything]
    assert created == sorted(created, reverse=True)
    assert [j.id for j in await publisher.get_jobs(limit=3)] == [j.id for j in added[::-1][:3]]
    assert await publisher.get_jobs(limit=0) == []

    by_state = {
        JobState.COMPLETED: done,
        JobState.FAILED: [failed],
        JobState.WAITING: waiting,
        JobState.DELAYED: delayed,
    }
    for state, jobs in by_state.items():
        listed = await publisher.get_jobs(status=state)
        assert [j.id for j in listed] == [j.id for j in reversed(jobs)], state
        assert all(j.state == state for j in listed)
        assert [j.id for j in await publisher.get_jobs(status=state.value)] == [
            j.id for j in listed
        ], "a status may be given by its string value"
        assert await publisher.count(state) == len(jobs)
        assert await publisher.count(state.value) == len(jobs)
    newest_waiting = await publisher.get_jobs(status="waiting", limit=2)
    assert [j.id for j in newest_waiting] == [waiting[3].id, waiting[2].id]
    assert (await publisher.get_jobs(status="completed"))[0].result == "ok"
    assert await publisher.get_jobs(status=JobState.ACTIVE) == []
    assert await publisher.count(JobState.ACTIVE) == 0
    assert await publisher.count() == len(added)

    for bad in ("done", "WAITING", "complete"):
        with pytest.raises(InvalidOption, match="unknown status"):
            await publisher.get_jobs(status=bad)
        with pytest.raises(InvalidOption, match="unknown status"):
            await publisher.count(bad)
    with pytest.raises(InvalidOption):
        await publisher.get_jobs(limit=-1)


# -- defining a queue does no I/O ------------------------------------------------------------


async def test_defining_a_queue_does_no_io_and_the_first_add_fails() -> None:
    began = time.monotonic()
    nowhere = Client("nats://127.0.0.1:1", namespace="nope")  # nothing listens on port 1
    q = queue("x", client=nowhere)
    w = queue("x", lambda ctx: None, client=nowhere)
    assert time.monotonic() - began < 0.1
    assert not nowhere.connected
    assert not q.is_consuming and not w.is_consuming
    try:
        async with asyncio.timeout(10):
            with pytest.raises(
                ConnectionFailed, match=r"could not connect to NATS at nats://127\.0\.0\.1:1"
            ):
                await q.add({"n": 1})
    except TimeoutError:
        pytest.fail("the first add() to an unreachable server never gave up (10 s)")
    finally:
        await nowhere.close()
    assert not nowhere.connected
