"""depends_on: children wait for their parents; failure policies; results; cycles."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import (
    Client,
    InvalidOption,
    JobContext,
    JobNotFound,
    JobState,
    RetryPolicy,
    queue,
)
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log, wait_for_state

NO_RETRIES = RetryPolicy(max=0)


async def test_a_child_runs_after_all_its_parents_and_reads_their_results(client: Client) -> None:
    seen: dict[str, Any] = {}

    async def handler(ctx: JobContext[Any]) -> Any:
        if ctx.data["role"] == "child":
            seen.update(ctx.parent_results)
            return "child done"
        return {"made": ctx.data["role"]}

    q = queue("flow", handler, client=client, concurrency=1)
    a = await q.add({"role": "a"})
    b = await q.add({"role": "b"})
    child = await q.add({"role": "child"}, depends_on=[a.id, b.id])
    assert child.state == JobState.WAITING_CHILDREN
    assert await q.count(JobState.WAITING_CHILDREN) == 1
    async with q:
        done = await child.wait(10)
    assert done.state == JobState.COMPLETED
    assert seen == {a.id: {"made": "a"}, b.id: {"made": "b"}}
    parents_done = [(await q.get_job(p.id)).finished_at for p in (a, b)]  # type: ignore[union-attr]
    assert done.started_at is not None
    assert all(t is not None and t <= done.started_at for t in parents_done)


async def test_a_child_added_after_its_parents_finished_resolves_at_once(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        return "ok"

    q = queue("late-child", handler, client=client)
    async with q:
        parent = await q.add({"n": 1})
        await parent.wait(10)
        child = await q.add({"n": 2}, depends_on=[parent.id])
        assert child.state in (JobState.WAITING, JobState.ACTIVE, JobState.COMPLETED)
        assert (await child.wait(10)).state == JobState.COMPLETED


async def test_two_parents_finishing_together_release_the_child_once(client: Client) -> None:
    go = asyncio.Event()
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.data["role"])
        if ctx.data["role"] != "child":
            await go.wait()

    q = queue("together", handler, client=client, concurrency=4)
    async with q:
        for _ in range(5):  # a few rounds to give the race a chance
            runs.clear()
            go.clear()
            a = await q.add({"role": "a"})
            b = await q.add({"role": "b"})
            child = await q.add({"role": "child"}, depends_on=[a.id, b.id])
            await eventually(lambda: _running(runs, 2), what="both parents to run")
            go.set()
            await child.wait(10)
            await asyncio.sleep(0.2)
            assert runs.count("child") == 1
            done = await q.get_job(child.id)
            assert done is not None
            assert [t.state for t in done.timeline].count(JobState.WAITING) == 1


async def _running(runs: list[str], n: int) -> bool:
    return len(runs) >= n


@pytest.mark.parametrize("ending", ["fails", "is cancelled"])
async def test_cascade_fail_fails_children_and_grandchildren(client: Client, ending: str) -> None:
    gate = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> None:
        if ctx.data["role"] == "parent":
            await gate.wait()
            raise RuntimeError("parent broke")

    q = queue("cascade", handler, client=client, retries=NO_RETRIES)
    async with q:
        parent = await q.add({"role": "parent"})
        child = await q.add(
            {"role": "child"}, depends_on=[parent.id], parent_failure_policy="cascade-fail"
        )
        grandchild = await q.add(
            {"role": "grandchild"}, depends_on=[child.id], parent_failure_policy="cascade-fail"
        )
        if ending == "fails":
            gate.set()
        else:
            await q.cancel(parent.id)
        for job in (child, grandchild):
            done = await job.wait(10)
            assert done.state == JobState.FAILED
            assert done.error is not None
            assert done.error.type == "ParentFailed"
        gate.set()


async def test_block_keeps_the_child_until_a_retried_parent_completes(client: Client) -> None:
    attempts: list[str] = []

    async def handler(ctx: JobContext[Any]) -> str:
        attempts.append(ctx.data["role"])
        if ctx.data["role"] == "parent" and attempts.count("parent") == 1:
            raise RuntimeError("first try fails")
        return "ok"

    q = queue("block", handler, client=client, retries=NO_RETRIES)
    async with q:
        parent = await q.add({"role": "parent"})
        child = await q.add({"role": "child"}, depends_on=[parent.id])  # block is the default
        assert (await parent.wait(10)).state == JobState.FAILED
        await asyncio.sleep(0.5)
        assert (await q.get_job(child.id)).state == JobState.WAITING_CHILDREN  # type: ignore[union-attr]
        await q.retry(parent.id)
        assert (await child.wait(10)).state == JobState.COMPLETED
    assert attempts == ["parent", "parent", "child"]


async def test_ignore_runs_the_child_whatever_its_parents_did(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data["role"] == "parent":
            raise RuntimeError("no")
        return "ran anyway"

    q = queue("ignore", handler, client=client, retries=NO_RETRIES)
    async with q:
        parent = await q.add({"role": "parent"})
        child = await q.add(
            {"role": "child"}, depends_on=[parent.id], parent_failure_policy="ignore"
        )
        assert (await child.wait(10)).result == "ran anyway"


async def test_a_delayed_child_keeps_its_delay(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        return "ok"

    q = queue("delayed-child", handler, client=client)
    async with q:
        parent = await q.add({"n": 1})
        child = await q.add({"n": 2}, depends_on=[parent.id], delay=1.5)
        await parent.wait(10)
        waiting = await wait_for_state(q, child.id, JobState.DELAYED, JobState.COMPLETED)
        assert waiting.run_at == child.run_at
        done = await child.wait(10)
    assert done.started_at is not None
    assert child.run_at is not None
    assert done.started_at >= child.run_at


async def test_missing_parents_and_cycles_are_refused(client: Client) -> None:
    q = queue("cycles", client=client)
    with pytest.raises(JobNotFound):
        await q.add({"n": 1}, depends_on=["no-such-job"])
    with pytest.raises(InvalidOption, match="itself"):
        await q.add({"n": 1}, job_id="self", depends_on=["self"])
    with pytest.raises(InvalidOption):
        await q.add({"n": 1}, depends_on="a-string")
    a = await q.add({"n": 1}, job_id="a")
    b = await q.add({"n": 2}, job_id="b", depends_on=[a.id])
    # "a" is removed and re-added depending on "b": a -> b -> a would be a cycle
    await q.cancel(a.id)
    backend = await q._open()
    record = await backend.store.get("a")
    assert record is not None
    await backend.store.remove(record.job, record.revision)
    with pytest.raises(InvalidOption, match="itself"):
        await q.add({"n": 3}, job_id="a", depends_on=[b.id])
    assert await q.get_job("a") is None


async def test_parents_and_child_run_by_a_worker_in_another_process(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "log.jsonl"
    q = queue("remote-flow", client=client)
    a = await q.add({"sleep": 0.3})
    child = await q.add({"sleep": 0}, depends_on=[a.id])
    worker = WorkerProcess(nats_server.url, namespace, log, queue="remote-flow", concurrency=2)
    try:
        done = await child.wait(15)
        assert done.state == JobState.COMPLETED
        order = [e["job"] for e in read_log(log) if e["event"] == "start"]
        assert order.index(a.id) < order.index(child.id)
    finally:
        worker.close()
