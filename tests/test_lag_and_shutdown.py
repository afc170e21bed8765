"""Event-loop lag back-pressure and graceful shutdown, against a real nats-server.

Lag monitor: one blocked stretch of the loop keeps a worker from claiming for a whole window,
a loop that keeps lagging keeps it from claiming at all, and deliveries that arrive meanwhile are
handed back (never lost). Graceful shutdown: ``stop()`` lets running jobs finish within its
timeout and claims nothing new; past the timeout the jobs are handed back (waiting, attempt not
counted, lease released, message kept) and run again elsewhere; a worker process does the same on
SIGTERM.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import Client, JobContext, JobState, Queue, queue
from oqron_nats.core.config import LagMonitor
from oqron_nats.runtime.execution import ABORT_GRACE
from oqron_nats.runtime.lag import LagWatch
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log, wait_for_state
from .support import Backstage

WAIT = 10.0
"""Generous bound for anything that should happen within a second or two."""
LAG = LagMonitor(max_lag=0.2, sample_interval=0.02, window=1.0)
BLOCK = 0.6
"""Seconds the blocking handler holds the event loop."""
QUIET = (0.1, 0.8)
"""After a block ends, no job may start in this span (seconds after the end) under LAG."""


# -- helpers ----------------------------------------------------------------------------------


async def count_is(q: Queue[Any], state: JobState, n: int) -> bool:
    return await q.count(state) == n


async def states_of(q: Queue[Any], ids: list[str]) -> list[JobState]:
    jobs = [await q.get_job(i) for i in ids]
    return [j.state for j in jobs if j is not None]


async def deliveries(client: Client, name: str) -> int:
    """How many deliveries the queue's fifo consumer made so far (redeliveries included)."""
    info = await Backstage(client, name).consumer_info("fifo")
    return int(info.delivered.consumer_seq)


async def lease_of(client: Client, name: str, job_id: str) -> Any:
    return await Backstage(client, name).lease(job_id)


def starts_of(log: Path, pid: int | None = None) -> list[dict[str, Any]]:
    return [e for e in read_log(log) if e["event"] == "start" and (pid is None or e["pid"] == pid)]


async def started(log: Path, n: int) -> bool:
    return len(starts_of(log)) >= n


# -- 1. LagWatch.record: the window rule, without a loop ---------------------------------------


def new_watch(max_lag: float = 0.25, window: float = 1.0) -> tuple[LagWatch, list[bool]]:
    """A watch whose transitions are recorded (times and lags are exact binary fractions)."""
    changes: list[bool] = []
    policy = LagMonitor(max_lag=max_lag, sample_interval=0.02, window=window)
    return LagWatch(policy, changes.append), changes


def test_one_slow_sample_keeps_the_loop_lagging_for_exactly_one_window() -> None:
    watch, changes = new_watch()
    watch.record(10.0, 0.0)
    assert not watch.lagging and changes == []
    watch.record(10.25, 0.5)  # one sample over max_lag
    assert watch.lagging and changes == [True]
    for now in (10.5, 10.75, 11.0, 11.25):  # healthy samples; the slow one is <= window old
        watch.record(now, 0.0)
        assert watch.lagging, f"healthy again at {now} although the slow sample is in the window"
    assert changes == [True], "one callback per transition"
    watch.record(11.5, 0.0)  # the slow sample (10.25) is now older than the window
    assert not watch.lagging
    assert changes == [True, False]
    for now in (11.75, 12.0, 13.0):
        watch.record(now, 0.0)
    assert not watch.lagging and changes == [True, False]
    watch.record(13.25, 0.25)  # exactly max_lag counts as lagging ("at least")
    assert watch.lagging and changes == [True, False, True]


def test_repeated_slow_samples_keep_it_lagging_until_the_last_one_ages_out() -> None:
    watch, changes = new_watch()
    for now in (10.0, 10.5, 11.0, 11.5, 12.0, 12.5):  # a slow sample every half window
        watch.record(now, 0.5)
        watch.record(now + 0.25, 0.0)  # healthy samples in between do not clear it
        assert watch.lagging
    assert changes == [True]
    for now in (13.0, 13.25, 13.5):  # the last slow sample (12.5) is <= window old
        watch.record(now, 0.0)
        assert watch.lagging
    watch.record(13.75, 0.0)
    assert not watch.lagging
    assert changes == [True, False]


def test_samples_under_max_lag_never_trip_it() -> None:
    watch, changes = new_watch(max_lag=0.25)
    now = 10.0
    for lag in (0.0, 0.1, 0.2, 0.24, 0.2499, 0.0, 0.24) * 20:
        watch.record(now, lag)
        now += 0.125
        assert not watch.lagging
    assert changes == []


# -- 2. a blocked loop claims nothing for a window ----------------------------------------------


async def run_with_a_block(
    client: Client, name: str, lag_monitor: LagMonitor | None, mode: str
) -> tuple[float, dict[str, list[float]], list[str]]:
    """Run one job that blocks the loop for BLOCK seconds plus 24 quick jobs, with concurrency 2.

    ``backlog``: the quick jobs are queued before the block (the worker is busy with them when
    it blocks); ``arrivals``: they are added as soon as the block ends, so they are delivered to
    the idle slot's open pull while the loop counts as lagging. Returns the block's end, each
    quick job's start times and every job id; waits until every job completed.
    """
    blocked = asyncio.Event()
    block_end: list[float] = []
    starts: dict[str, list[float]] = {}

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data.get("block"):
            await asyncio.sleep(0.2)  # quick jobs (backlog) or an open pull (arrivals) meanwhile
            time.sleep(BLOCK)  # blocks the event loop on purpose
            block_end.append(time.monotonic())
            blocked.set()
            return "blocked"
        starts.setdefault(ctx.id, []).append(time.monotonic())
        await asyncio.sleep(0.05)
        return "quick"

    q = queue(name, handler, client=client, concurrency=2, lag_monitor=lag_monitor or False)
    quick = [{"data": {"n": n}} for n in range(24)]
    async with q:
        blocker = await q.add({"block": True})
        ids = [blocker.id]
        if mode == "backlog":
            added = await q.add_bulk(quick)
            assert added.ok
            ids += [j.id for j in added.jobs]
        await asyncio.wait_for(blocked.wait(), WAIT)
        if mode == "arrivals":
            added = await q.add_bulk(quick)
            assert added.ok
            ids += [j.id for j in added.jobs]
        await eventually(
            lambda: count_is(q, JobState.COMPLETED, len(ids)), WAIT, "every job to complete"
        )
        assert await Backstage(client, name).work_messages() == 0
    return block_end[0], starts, ids


@pytest.mark.parametrize("mode", ["backlog", "arrivals"])
async def test_a_blocked_loop_claims_nothing_for_a_window_then_runs_everything(
    client: Client, mode: str
) -> None:
    name = f"lag-{mode}"
    end, starts, ids = await run_with_a_block(client, name, LAG, mode)
    assert sorted(starts) == sorted(ids[1:]), "every quick job ran"
    assert all(len(s) == 1 for s in starts.values()), "each quick job ran once"
    offsets = sorted(t - end for s in starts.values() for t in s)
    in_quiet = [round(o, 3) for o in offsets if QUIET[0] <= o <= QUIET[1]]
    assert not in_quiet, (
        f"jobs started {in_quiet} s after the loop was blocked for {BLOCK} s, "
        f"while it still counted as lagging (window {LAG.window} s)"
    )
    assert offsets[-1] > QUIET[1], "the quick jobs ran after the window"
    if mode == "arrivals":
        assert await deliveries(client, name) > len(ids), (
            "a delivery arrived while the loop lagged and was handed back (then redelivered)"
        )


@pytest.mark.parametrize("mode", ["backlog", "arrivals"])
async def test_without_a_lag_monitor_jobs_start_right_after_a_block(
    client: Client, mode: str
) -> None:
    """The control: the same run without lag_monitor starts jobs inside the quiet span."""
    end, starts, ids = await run_with_a_block(client, f"nolag-{mode}", None, mode)
    assert sorted(starts) == sorted(ids[1:])
    offsets = [t - end for s in starts.values() for t in s]
    assert any(QUIET[0] <= o <= QUIET[1] for o in offsets), (
        f"no job started {QUIET} s after the block even without a lag monitor: {offsets}"
    )


# -- 3. a loop that keeps lagging claims nothing at all -----------------------------------------


async def test_a_loop_that_keeps_lagging_claims_nothing_until_it_recovers(client: Client) -> None:
    lagger_started = asyncio.Event()
    blocks: list[float] = []
    starts: dict[str, list[float]] = {}

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data.get("lagger"):
            lagger_started.set()
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                time.sleep(0.3)  # blocks the event loop on purpose
                blocks.append(time.monotonic())
                await asyncio.sleep(0.1)
            return "lagged"
        starts.setdefault(ctx.id, []).append(time.monotonic())
        await asyncio.sleep(0.02)
        return "quick"

    name = "lag-sustained"
    q = queue(name, handler, client=client, concurrency=2, lag_monitor=LAG)
    async with q:
        lagger = await q.add({"lagger": True})
        await asyncio.wait_for(lagger_started.wait(), WAIT)  # wakes after its first block
        added = await q.add_bulk([{"data": {"n": n}} for n in range(10)])
        assert added.ok
        ids = [j.id for j in added.jobs]
        done = await wait_for_state(q, lagger.id, JobState.COMPLETED, timeout=WAIT)
        assert done.result == "lagged"
        assert len(blocks) >= 4, "the handler blocked the loop again and again"
        early = {i: s for i, s in starts.items() if s[0] <= blocks[-1] + QUIET[0]}
        assert not early, (
            f"{len(early)} jobs started while the loop kept lagging (blocks ended at "
            f"{[round(b - blocks[0], 2) for b in blocks]}, starts at "
            f"{[round(s[0] - blocks[0], 2) for s in early.values()]})"
        )
        await eventually(lambda: count_is(q, JobState.COMPLETED, 11), WAIT, "the other jobs")
    assert sorted(starts) == sorted(ids)
    assert all(len(s) == 1 for s in starts.values()), "each job ran once"
    assert min(s[0] for s in starts.values()) > blocks[-1] + QUIET[1], (
        "the first claim came only once the last block had left the window"
    )
    assert await deliveries(client, name) > 11, "deliveries during the lag were handed back"


# -- 4. stop(timeout) lets running jobs finish and claims nothing new ----------------------------


async def test_stop_waits_for_running_jobs_and_claims_nothing_new(client: Client) -> None:
    runs: Counter[str] = Counter()
    ended: dict[str, float] = {}
    three_running = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> str:
        runs[ctx.id] += 1
        if sum(runs.values()) >= 3:
            three_running.set()
        await asyncio.sleep(ctx.data["sleep"])
        ended[ctx.id] = time.monotonic()
        return "done"

    name = "stop-graceful"
    # concurrency 4 with 3 running: one slot is free and holds an open pull during stop()
    q = queue(name, handler, client=client, concurrency=4)
    try:
        await q.start()
        first = await q.add_bulk([{"data": {"sleep": 0.5}} for _ in range(3)])
        running = [j.id for j in first.jobs]
        await asyncio.wait_for(three_running.wait(), WAIT)
        began = time.monotonic()
        stopping = asyncio.create_task(q.stop(timeout=2))
        await asyncio.sleep(0.05)  # stop() has begun: jobs added now must not be claimed
        late = await q.add_bulk([{"data": {"sleep": 0.01}} for _ in range(4)])
        queued = [j.id for j in late.jobs]
        await asyncio.wait_for(stopping, WAIT)
        took = time.monotonic() - began

        assert set(ended) == set(running), "stop() returned after the running jobs finished"
        assert max(ended.values()) <= began + took
        assert took < 1.5, f"stop(timeout=2) took {took:.2f}s for jobs of 0.5s"
        for job_id in running:
            job = await q.get_job(job_id)
            assert job is not None
            assert job.state == JobState.COMPLETED, f"{job_id} is {job.state}"
            assert job.result == "done"
            assert job.attempt == 1
            assert job.error is None
        assert [runs[i] for i in running] == [1, 1, 1], "each ran once"
        assert not any(runs[i] for i in queued), "nothing was claimed after stop() began"
        assert await states_of(q, queued) == [JobState.WAITING] * 4
        for job_id in queued:
            job = await q.get_job(job_id)
            assert job is not None and job.attempt == 0 and job.worker is None
        assert await Backstage(client, name).work_messages() == 4, "their messages are kept"

        # a restart runs them at once (none is held by a pull the stopped worker left behind)
        await q.start()
        for job_id in queued:
            done = await wait_for_state(q, job_id, JobState.COMPLETED, timeout=5)
            assert done.attempt == 1
    finally:
        await q.close()
    assert all(runs[i] == 1 for i in running + queued), "every job ran exactly once"


# -- 5. stop(timeout) hands a job back when the timeout is over ----------------------------------


async def redelivered_promptly(client: Client, q: Queue[Any], name: str, job_id: str) -> Any:
    """The job once completed; a handed-back job must run again at once, not after ack_wait."""
    try:
        return await wait_for_state(q, job_id, JobState.COMPLETED, timeout=5)
    except AssertionError:
        info = await Backstage(client, name).consumer_info("fifo")
        raise AssertionError(
            f"job {job_id} was handed back at stop() but did not run again within 5 s of a "
            f"restart (ack_wait is {q.config.ack_wait} s): consumer delivered "
            f"{info.delivered.consumer_seq} times, {info.num_ack_pending} ack pending, "
            f"{info.num_pending} pending (a redelivery was sent to the stopped worker's pull)"
        ) from None


@pytest.mark.parametrize("style", ["ignores-signal", "awaits-signal"])
async def test_stop_hands_back_jobs_that_outlive_the_timeout(client: Client, style: str) -> None:
    """Jobs of 30 s on a worker with free slots (so it holds an open pull while it stops).

    Three rounds of stop(timeout=0.5) and restart, four jobs each: every handed-back job must
    run again at once after the restart.
    """
    runs: Counter[str] = Counter()
    attempts: dict[str, list[int]] = {}
    running: set[str] = set()

    async def handler(ctx: JobContext[Any]) -> str:
        runs[ctx.id] += 1
        attempts.setdefault(ctx.id, []).append(ctx.attempt)
        if runs[ctx.id] > 1:
            return "second-run"
        running.add(ctx.id)
        if style == "awaits-signal":
            await ctx.signal  # returns at once when stop() hands the job back
        else:
            await asyncio.sleep(30)  # ignores the signal: cancelled after ABORT_GRACE
        return "must-not-be-stored"

    async def all_running(ids: list[str]) -> bool:
        return running.issuperset(ids)

    name = f"stop-{style}"
    q = queue(name, handler, client=client, concurrency=20)
    every: list[str] = []
    try:
        await q.start()
        for _round in range(3):
            ids = [j.id for j in (await q.add_bulk([{"data": {"n": n}} for n in range(4)])).jobs]
            every += ids
            await eventually(partial(all_running, ids), WAIT, "four jobs to start")
            began = time.monotonic()
            await q.stop(timeout=0.5)
            took = time.monotonic() - began
            bound = 0.5 + (ABORT_GRACE if style == "ignores-signal" else 0.0)
            assert bound - 0.1 <= took < bound + 1.5, f"stop(timeout=0.5) took {took:.2f}s"

            for job_id in ids:
                back = await q.get_job(job_id)
                assert back is not None
                assert back.state == JobState.WAITING, f"handed back, not {back.state}"
                assert back.attempt == 0, "an attempt stopped by shutdown does not count"
                assert back.error is None and back.result is None and back.worker is None
                assert not back.leased
                assert await lease_of(client, name, job_id) is None, "the lease is released"
            assert await Backstage(client, name).work_messages() == 4, "messages are kept"
            assert await q.count(JobState.FAILED) == 0

            await q.start()
            for job_id in ids:
                done = await redelivered_promptly(client, q, name, job_id)
                assert done.result == "second-run"
                assert done.attempt == 1
    finally:
        await q.close()
    assert attempts == {i: [1, 1] for i in every}, "each ran twice, both times as attempt 1"


# -- 6./7. a worker process on SIGTERM ----------------------------------------------------------


async def test_sigterm_lets_running_jobs_finish_and_leaves_the_rest_queued(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions.jsonl"
    name = "sigterm-graceful"
    options = {"queue": name, "concurrency": 3, "shutdown_timeout": 5}
    first = WorkerProcess(nats_server.url, namespace, log, sleep=1.0, **options)
    second = None
    try:
        q = queue(name, client=client)
        running = [j.id for j in (await q.add_bulk([{"data": {"n": n}} for n in range(3)])).jobs]
        await eventually(lambda: started(log, 3), WAIT, "three jobs to start")
        queued = [j.id for j in (await q.add_bulk([{"data": {"n": n}} for n in range(4)])).jobs]
        began = time.monotonic()
        code = await asyncio.to_thread(first.terminate, 10)
        took = time.monotonic() - began
        assert code == 0, f"the worker exited with {code}"
        assert took < 5, f"SIGTERM with shutdown_timeout 5 took {took:.2f}s"

        for job_id in running:
            job = await q.get_job(job_id)
            assert job is not None and job.state == JobState.COMPLETED, job
            assert job.result == {"pid": first.pid}
            assert job.attempt == 1 and job.error is None
        assert await states_of(q, queued) == [JobState.WAITING] * 4
        assert await q.count(JobState.FAILED) == 0
        assert sorted(e["job"] for e in starts_of(log)) == sorted(running), "each ran once"

        second = WorkerProcess(nats_server.url, namespace, log, sleep=0, **options)
        for job_id in queued:
            done = await wait_for_state(q, job_id, JobState.COMPLETED, timeout=WAIT)
            assert done.result == {"pid": second.pid}
            assert done.attempt == 1
        assert sorted(e["job"] for e in starts_of(log, second.pid)) == sorted(queued)
        assert sorted(e["job"] for e in starts_of(log, first.pid)) == sorted(running)
    finally:
        first.close()
        if second is not None:
            second.close()


async def test_sigterm_past_the_timeout_hands_jobs_back_to_another_worker(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions.jsonl"
    name = "sigterm-handback"
    options = {"queue": name, "concurrency": 3, "shutdown_timeout": 1}
    first = WorkerProcess(nats_server.url, namespace, log, sleep=20, **options)
    second = None
    try:
        q = queue(name, client=client)
        ids = [j.id for j in (await q.add_bulk([{"data": {"n": n}} for n in range(2)])).jobs]
        await eventually(lambda: started(log, 2), WAIT, "both jobs to start")
        began = time.monotonic()
        code = await asyncio.to_thread(first.terminate, 15)
        took = time.monotonic() - began
        assert code == 0, f"the worker exited with {code}"
        expected = 1 + ABORT_GRACE
        assert expected - 0.2 <= took < expected + 2.0, (
            f"exit took {took:.2f}s; expected about shutdown_timeout + ABORT_GRACE = {expected}s"
        )
        for job_id in ids:
            job = await q.get_job(job_id)
            assert job is not None
            assert job.state == JobState.WAITING, f"handed back, not {job.state}"
            assert job.attempt == 0 and job.error is None and job.worker is None
            assert await lease_of(client, name, job_id) is None, "lease released"
        assert await Backstage(client, name).work_messages() == 2

        second = WorkerProcess(nats_server.url, namespace, log, sleep=0, **options)
        for job_id in ids:
            done = await wait_for_state(q, job_id, JobState.COMPLETED, timeout=WAIT)
            assert done.result == {"pid": second.pid}
            assert done.attempt == 1
        entries = read_log(log)
        for job_id in ids:
            starts = [e["pid"] for e in entries if e["event"] == "start" and e["job"] == job_id]
            ends = [e["pid"] for e in entries if e["event"] == "end" and e["job"] == job_id]
            assert starts == [first.pid, second.pid], f"{job_id} started by {starts}"
            assert ends == [second.pid], f"{job_id} finished by {ends}"
        assert await q.count(JobState.FAILED) == 0
    finally:
        first.close()
        if second is not None:
            second.close()
