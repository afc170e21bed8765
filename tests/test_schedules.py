"""Repeating jobs on the server's own clock (issue 16, part 1), against a real nats-server."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from oqron_nats import Client, InvalidOption, Job, JobContext, JobState, PayloadError, Queue, queue
from oqron_nats._nats.names import KEPT_SCHEDULE_NEXT_HEADER, KEPT_SCHEDULER_HEADER
from oqron_nats.core.cron import parse
from oqron_nats.core.schedules import (
    ScheduleSpec,
    catch_up,
    missed,
    slot,
    tick_id,
    tick_job_id,
    tick_time,
)
from oqron_nats.testing import LocalServer

from .helpers import WorkerProcess, eventually, read_log


def tick_of(job_id: str) -> datetime:
    return datetime.strptime(job_id.rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


async def completed(q: Queue[Any]) -> list[Job[Any]]:
    return await q.get_jobs(JobState.COMPLETED, limit=10_000)


# -- definitions: checked before anything is written ----------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "minute '61': out of range"),
        ({"cron": "* * *"}, "must have 5 fields"),
        ({"cron": "0 0 3 * * * *"}, "must have 5 fields"),
        ({"cron": "*/0 * * * *"}, "step must be at least 1"),
        ({"cron": "0 3 * * funday"}, "day of week 'funday'"),
        ({"cron": "0 0 30 2 *"}, "the server refused"),  # parses, but February has no 30th
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "0 3 * * *", "tz": "+02:00"}, "IANA time zone"),
        ({"every": 1.5}, "whole seconds"),
        ({"every": timedelta(milliseconds=100)}, "at least 1"),
        ({"every": 5, "tz": "Europe/Berlin"}, "cron schedules only"),
        ({"every": 5, "cron": "* * * * *"}, "exactly one"),
        ({}, "exactly one"),
        ({"every": 5, "priority": 12}, "priority"),
        ({"every": 5, "attempts": 0}, "attempts"),
    ],
)
async def test_a_bad_definition_is_invalid_option_and_writes_nothing(
    client: Client, options: dict[str, Any], message: str
) -> None:
    q = queue("defs", client=client)
    await q.add({"n": 0})  # provisions the queue
    with pytest.raises(InvalidOption, match=message):
        await q.schedule("nightly", {"n": 1}, **options)
    assert await q.schedules() == []


async def test_bad_names_and_payloads_are_refused(client: Client) -> None:
    class Report(msgspec.Struct):
        day: str

    q = queue("names", client=client, payload=Report)
    await q.add(Report(day="x"))
    with pytest.raises(InvalidOption, match="schedule name"):
        await q.schedule("has.dot", Report(day="x"), every=5)
    with pytest.raises(InvalidOption, match="longer than 47"):
        await q.schedule("n" * 48, Report(day="x"), every=5)
    with pytest.raises(PayloadError):
        await q.schedule("typed", {"day": 3}, every=5)
    with pytest.raises(InvalidOption, match="at most"):
        await q.schedule("big", Report(day="x" * 20_000), every=5)
    assert await q.schedules() == []


async def test_redefining_replaces_and_unschedule_removes(client: Client) -> None:
    q = queue("redef", client=client)
    await q.add({"n": 0})
    await q.schedule("report", {"v": 1}, cron="0 3 * * *", tz="Europe/Berlin")
    await q.schedule("report", {"v": 2}, every=timedelta(minutes=5))
    await q.schedule("other", {"v": 3}, cron="@hourly")
    listed = {s.name: s for s in await q.schedules()}
    assert sorted(listed) == ["other", "report"]
    assert listed["report"].data == {"v": 2} and listed["report"].every == timedelta(minutes=5)
    assert listed["report"].tz is None and listed["report"].pattern == "@every 300s"
    assert listed["other"].pattern == "@hourly"
    assert await q.unschedule("report") is True
    assert await q.unschedule("report") is False
    assert [s.name for s in await q.schedules()] == ["other"]
    await q.schedule("report", {"v": 4}, cron="30 2 * * mon-fri")  # defined again after removal
    assert {s.name: s.pattern for s in await q.schedules()}["report"] == "0 30 2 * * mon-fri"


# -- ticks become jobs ------------------------------------------------------------------------


async def test_every_second_for_ten_seconds_makes_one_job_per_tick_with_3_workers(
    nats_server: LocalServer, namespace: str, client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "runs.jsonl"
    q = queue("ticks", client=client)
    await q.add({"n": 0}, job_id="warm")  # provisions the queue before the workers bind
    workers = [
        WorkerProcess(nats_server.url, namespace, log, queue="ticks", concurrency=2)
        for _ in range(3)
    ]
    try:
        await q.schedule("beat", {"hello": "world"}, every=1)
        await asyncio.sleep(10)
        assert await q.unschedule("beat")
        await asyncio.sleep(1.5)  # a tick fired just before the removal still runs
        jobs = await eventually(
            lambda: _settled(q), timeout=15, what="the ticks' jobs to be completed"
        )
    finally:
        for w in workers:
            w.close()
    ids = [job.id for job in jobs if job.id != "warm"]
    assert 9 <= len(ids) <= 12, ids  # 10 +- 1, and the one the removal may have raced
    assert len(set(ids)) == len(ids)
    ticks = sorted(tick_of(i) for i in ids)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))
    starts = Counter(r["job"] for r in read_log(log) if r["event"] == "start")
    assert all(starts[i] == 1 for i in ids), "every tick's job ran exactly once"
    assert len({r["pid"] for r in read_log(log)}) >= 2, "the ticks were shared by the workers"
    job = await q.get_job(ids[0])
    assert job is not None and job.data == {"hello": "world"}
    assert job.triggered_by == "schedule:beat"


async def _settled(q: Any) -> list[Any] | None:
    if await q.count(JobState.WAITING) or await q.count(JobState.ACTIVE):
        return None
    return await completed(q)


async def test_a_tick_delivered_again_runs_its_job_once(client: Client) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.id)

    q = queue("again", handler, client=client, strategy="lifo")
    async with q:
        await q.schedule("pulse", {"n": 1}, every=1)
        await eventually(lambda: _count_completed(q, 2), timeout=10, what="two ticks")
        await q.unschedule("pulse")
    assert len(runs) == len(set(runs)), runs
    assert all(r.startswith("pulse-") for r in runs)


async def _count_completed(q: Queue[Any], n: int) -> bool:
    return await q.count(JobState.COMPLETED) >= n


async def test_a_paused_queue_holds_its_ticks_and_runs_them_on_resume(client: Client) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.id)

    q = queue("paused", handler, client=client)
    async with q:
        await q.pause()
        await q.schedule("pulse", None, every=1)
        await asyncio.sleep(3.5)
        assert runs == []
        await q.unschedule("pulse")
        await q.resume()
        await eventually(lambda: _count_completed(q, 3), timeout=10, what="the held ticks")
    assert len(runs) == len(set(runs)) >= 3


FULL = os.environ.get("OQRON_CHAOS_FULL") == "1"
"""Every outage variant; CI runs two (~22 s each): a clean stop with a cron schedule, where the
server fires the catch-up, and a kill of an `every` schedule, where a worker fires it; the same
kill of a whole 3-node cluster (below) runs at full size only (``OQRON_CHAOS_FULL=1`` or
``OQRON_CLUSTER_FULL=1``)."""
LONG = pytest.mark.skipif(not FULL, reason="OQRON_CHAOS_FULL=1 runs every outage variant")


@pytest.mark.parametrize(
    ("stop", "timing"),
    [pytest.param("stop", {"every": 2}, marks=LONG),
     ("kill", {"every": 2}), ("stop", {"cron": "*/2 * * * * *"}),
     pytest.param("kill", {"cron": "*/2 * * * * *"}, marks=LONG)],
    ids=["every-stop", "every-kill", "cron-stop", "cron-kill"],
)  # fmt: skip
async def test_ticks_missed_while_the_server_was_down_become_exactly_one_job(
    tmp_path: Path, stop: str, timing: dict[str, Any]
) -> None:
    """The missed-tick policy, run once on recovery, the same after a clean stop (the server
    fires its own catch-up) and after kill -9 (it does not: a worker fires it): the ticks due
    while the server was down become exactly one job, in the slot the server came back in;
    every tick after it becomes its job; none twice, with 3 workers (2 processes)."""
    log = tmp_path / "runs.jsonl"
    with LocalServer(store_dir=tmp_path / "store") as server:
        runs: list[str] = []

        async def handler(ctx: JobContext[Any]) -> None:
            runs.append(ctx.id)

        client = Client(server.url, namespace="restart", retry_deadline=30.0)
        async with client, queue("restart", handler, client=client) as q:
            workers = [
                WorkerProcess(server.url, "restart", log, queue="restart", concurrency=2)
                for _ in range(2)
            ]
            try:
                await q.schedule("beat", None, **timing)
                await eventually(lambda: _count_completed(q, 3), timeout=15, what="3 ticks")
                await asyncio.to_thread(server.stop if stop == "stop" else server.kill)
                down_at = datetime.now(UTC)
                await asyncio.sleep(7)  # three ticks are missed
                await _early_in_a_slot(2)  # so that the server is back within the slot
                await asyncio.to_thread(server.start)
                up_at = datetime.now(UTC)
                await asyncio.sleep(7)
                await q.unschedule("beat")
                await eventually(
                    lambda: _ticks_up_to(q, up_at + timedelta(seconds=5)), timeout=20,
                    what="the ticks after the restart",
                )  # fmt: skip
                await asyncio.sleep(1)  # the last ticks' jobs finish
                jobs = [j for s in JobState for j in await q.get_jobs(s, limit=1000)]
            finally:
                for w in workers:
                    w.close()
        ids = sorted(job.id for job in jobs)
        assert len(ids) == len(set(ids)), "one job per tick"
        ticks = sorted(tick_of(i) for i in ids)
        started = Counter(runs + [r["job"] for r in read_log(log) if r["event"] == "start"])
        assert all(starts == 1 for i, starts in started.items() if tick_of(i) > down_at), started
        assert all(t.timestamp() % 2 == 0 for t in ticks), "every job is a slot of the grid"
        before = [t for t in ticks if t <= down_at]
        missed = [t for t in ticks if down_at < t <= up_at]
        after = [t for t in ticks if t > down_at]
        assert len(before) >= 3
        assert len(missed) == 1, (missed, down_at, up_at)  # the catch-up, whoever made it
        assert up_at - missed[0] < timedelta(seconds=2), (missed, up_at)  # the slot of return
        steps = {b - a for a, b in itertools.pairwise(after)}
        assert steps == {timedelta(seconds=2)}, after  # from it on, every tick, none twice
        assert after[-1] >= up_at + timedelta(seconds=5)


@pytest.mark.cluster
@pytest.mark.timeout(150)
@pytest.mark.skipif(
    not FULL and os.environ.get("OQRON_CLUSTER_FULL") != "1",
    reason="OQRON_CHAOS_FULL=1 or OQRON_CLUSTER_FULL=1 (CI kills one server instead)",
)
async def test_a_whole_cluster_killed_and_started_again_makes_one_catch_up_job(
    tmp_path: Path,
) -> None:
    """The same policy on a 3-node cluster (R3) whose three nodes are all killed at once."""
    from oqron_nats.testing.cluster import LocalCluster

    with LocalCluster(3) as cluster:
        runs: list[str] = []

        async def handler(ctx: JobContext[Any]) -> None:
            runs.append(ctx.id)

        client = Client(cluster.urls, namespace="outage", replicas=3, retry_deadline=60.0)
        async with client, queue("outage", handler, client=client) as q:
            await q.schedule("beat", None, every=2)
            await eventually(lambda: _count_completed(q, 2), timeout=20, what="2 ticks")
            for node in cluster.nodes:
                node.kill()
            down_at = datetime.now(UTC)
            await asyncio.sleep(7)
            await _early_in_a_slot(2)
            start_at = datetime.now(UTC)
            await asyncio.to_thread(cluster.start)  # the nodes come back one by one
            up_at = datetime.now(UTC)
            await eventually(
                lambda: _ticks_up_to(q, up_at + timedelta(seconds=8)), timeout=60,
                what="the ticks after the restart",
            )  # fmt: skip
            await q.unschedule("beat")
            await asyncio.sleep(2)
            jobs = [j for s in JobState for j in await q.get_jobs(s, limit=1000)]
        ids = sorted(job.id for job in jobs)
        assert len(ids) == len(set(ids))
        assert all(n == 1 for i, n in Counter(runs).items() if tick_of(i) > down_at), runs
        after = sorted(t for t in (tick_of(i) for i in ids) if t > down_at)
        # the first job after the outage stands for every missed tick: the latest tick due
        # when the cluster answered again; from it on, every tick, none twice
        assert after and start_at - timedelta(seconds=2) < after[0], (after, start_at)
        assert after[0] - up_at < timedelta(seconds=10), (after, up_at)
        assert {b - a for a, b in itertools.pairwise(after)} == {timedelta(seconds=2)}, after


async def _early_in_a_slot(every: int) -> None:
    now = datetime.now(UTC).timestamp()
    await asyncio.sleep(every - now % every + 0.1)


async def _ticks_up_to(q: Any, until: datetime) -> bool:
    return any(tick_of(job.id) >= until for job in await completed(q))


# -- tick ids ---------------------------------------------------------------------------------


def test_tick_ids_come_from_the_next_tick() -> None:
    every = ScheduleSpec(name="b", queue="q", data=msgspec.Raw(b"null"),
                         defined_at=datetime.now(UTC), every=300)  # fmt: skip
    nxt = datetime(2026, 1, 1, 3, 5, tzinfo=UTC)
    assert tick_job_id("b", tick_time(every, nxt)) == "b-20260101T030000Z"
    berlin = ScheduleSpec(name="n", queue="q", data=msgspec.Raw(b"null"),
                          defined_at=datetime.now(UTC), cron=parse("0 3 * * *").expression,
                          tz="Europe/Berlin")  # fmt: skip
    nxt = datetime(2026, 7, 2, 1, 0, tzinfo=UTC)  # 03:00 in Berlin, summer time
    assert tick_job_id("n", tick_time(berlin, nxt)) == "n-20260701T010000Z"
    assert tick_job_id("n", datetime(2026, 1, 1, 0, 0, 0, 999_000, tzinfo=UTC)).endswith("01Z")


def test_cron_previous_follows_the_server_day_rule() -> None:
    either = parse("30 4 1,15 * 5")  # the 1st and 15th, and every Friday
    before = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    assert either.previous(before) == datetime(2026, 2, 27, 4, 30, tzinfo=UTC)  # a Friday
    both = parse("0 0 * * 5")
    assert both.previous(datetime(2026, 3, 1, tzinfo=UTC)) == datetime(2026, 2, 27, tzinfo=UTC)
    assert parse("0 0 29 2 *").previous(datetime(2026, 3, 1, tzinfo=UTC)) == datetime(
        2024, 2, 29, tzinfo=UTC
    )


def test_the_grid_and_the_catch_up_rule() -> None:
    every = ScheduleSpec(name="b", queue="q", data=msgspec.Raw(b"null"),
                         defined_at=datetime.now(UTC), every=300)  # fmt: skip
    at = datetime(2026, 1, 1, 3, 7, 12, 400_000, tzinfo=UTC)
    assert slot(every, at) == datetime(2026, 1, 1, 3, 5, tzinfo=UTC)
    assert tick_id(every, at) == "b-20260101T030500Z"
    last = datetime(2026, 1, 1, 3, 0, 41, tzinfo=UTC)  # the server's own clock, off the grid
    assert not missed(every, last, last + timedelta(seconds=302), slack=3)  # late, not missed
    assert missed(every, last, last + timedelta(seconds=304), slack=3)
    tick, nxt = catch_up(every, at) or (at, at)
    assert tick_id(every, tick_time(every, nxt)) == tick_id(every, at)  # the id it fires is
    daily = parse("0 3 * * *").expression
    cron = ScheduleSpec(name="n", queue="q", data=msgspec.Raw(b"null"),
                        defined_at=datetime.now(UTC), cron=daily)  # fmt: skip
    made = datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert not missed(cron, made, datetime(2026, 1, 2, 3, 0, 2, tzinfo=UTC), slack=3)
    assert missed(cron, made, datetime(2026, 1, 2, 3, 0, 4, tzinfo=UTC), slack=3)
    tick, nxt = catch_up(cron, datetime(2026, 1, 5, 12, tzinfo=UTC)) or (made, made)
    assert tick == datetime(2026, 1, 5, 3, tzinfo=UTC) == tick_time(cron, nxt)


async def test_no_catch_up_after_a_worker_restart_and_a_tick_fired_again_is_dropped(
    client: Client,
) -> None:
    """Only a server outage makes a catch-up: a worker that starts again (its ticks waiting on
    the lane, its jobs removed on completion) fires none; a tick fired again after its job was
    made and removed is dropped, not run twice."""
    from oqron_nats.runtime.schedules import catch_up_missed

    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.id)

    q = queue("rerun", handler, client=client)
    await q.add({"n": 0}, job_id="warm")
    await q.schedule("beat", None, every=1, remove_on_complete=True)
    async with q:
        await eventually(lambda: _ran(runs, 2), timeout=10, what="two ticks")
    await asyncio.sleep(4.5)  # no worker: the ticks wait on the lane
    backend = await q._open()
    assert await catch_up_missed(backend.schedules) == []  # its ticks are on the lane
    async with q:
        await eventually(lambda: _ran(runs, 8), timeout=15, what="the waiting ticks")
        [(spec, target)] = await backend.schedules.targeted()
        await q.unschedule("beat")
        await asyncio.sleep(1.5)  # the last tick's job runs and is removed
        last = await backend.schedules.last_tick("beat")
        assert last is not None and await q.get_job(tick_id(spec, last)) is None
        await backend.schedules.fire(spec, target, last + timedelta(seconds=1), "again")
        await asyncio.sleep(2)
    ticks = [r for r in runs if r != "warm"]
    assert len(ticks) == len(set(ticks)), ticks
    assert tick_id(spec, last) in ticks


async def test_a_schedule_defined_again_has_missed_nothing_before_its_definition(
    client: Client,
) -> None:
    from oqron_nats.runtime.schedules import catch_up_missed

    q = queue("again2", lambda ctx: None, client=client)
    await q.add({"n": 0}, job_id="warm")
    async with q:
        await q.schedule("beat", None, every=1)
        await eventually(lambda: _count_completed(q, 3), timeout=10, what="two ticks")
        await q.unschedule("beat")
    backend = await q._open()
    assert await backend.schedules.last_tick("beat") is not None
    await asyncio.sleep(5)  # the old definition's last tick is long past
    await q.schedule("beat", None, every=1)
    assert await catch_up_missed(backend.schedules) == []
    await q.unschedule("beat")


async def _ran(runs: list[str], n: int) -> bool:
    return len([r for r in runs if r != "warm"]) >= n


# -- the command line -------------------------------------------------------------------------


def test_the_schedules_commands(nats_server: LocalServer, namespace: str, capsys: Any) -> None:
    from oqron_nats.ops.cli import main

    where = ["--url", nats_server.url, "--namespace", namespace]
    assert main(["provision", "cli", *where]) == 0
    assert main(["schedules", "add", "cli", "nightly", "--cron", "0 3 * * *", "--tz",
                 "Europe/Berlin", "--data", '{"k": 1}', *where]) == 0  # fmt: skip
    assert main(["schedules", "add", "cli", "bad", "--cron", "0 25 * * *", *where]) != 0
    assert main(["schedules", "add", "cli", "bad", "--every", "5", "--data", "{x", *where]) != 0
    capsys.readouterr()
    assert main(["schedules", "list", "cli", "--json", *where]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["pattern"], s["tz"], s["data"]) for s in listed] == [
        ("nightly", "0 0 3 * * *", "Europe/Berlin", {"k": 1})
    ]
    assert main(["schedules", "remove", "cli", "nightly", *where]) == 0
    assert main(["schedules", "remove", "cli", "nightly", *where]) == 1
    assert main(["schedules", "list", "cli", *where]) == 0
    assert "no repeating schedules" in capsys.readouterr().out


async def test_reconciliation_leaves_schedules_and_their_ticks_alone(client: Client) -> None:
    from oqron_nats.core.config import Reconciliation
    from oqron_nats.runtime.maintenance import reconcile

    q = queue("recon", client=client)  # no worker: a tick stays on the lane, without a record
    await q.add({"n": 0})
    await q.schedule("beat", None, every=1)
    backend = await q._open()
    await eventually(
        lambda: _has_tick(backend), timeout=10, what="a tick waiting on the lane"
    )  # fmt: skip
    healed = await reconcile(backend, Reconciliation(waiting_threshold=0, delayed_grace=0))
    assert healed.removed == 0
    assert [s.name for s in await q.schedules()] == ["beat"]
    assert await _has_tick(backend)


async def _has_tick(backend: Any) -> bool:
    subjects = await backend._conn.subjects(backend.names.stream, backend.names.lanes)
    return any(subject.endswith(".=beat") for subject in subjects)


async def test_a_forged_or_corrupt_tick_is_rejected_and_makes_no_job(client: Client) -> None:
    from .support import Backstage

    ran: list[str] = []

    async def handle(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    behind = Backstage(client, "forged")
    # The server refuses a client's Nats-Scheduler header; the copy a lifo worker keeps of it
    # (Oqron-Scheduler) can be forged: a tick of schedule "nightly", which does not exist.
    forged = {
        KEPT_SCHEDULER_HEADER: client.names("forged").repeat("nightly"),
        KEPT_SCHEDULE_NEXT_HEADER: "not a time",
    }
    async with queue("forged", handle, client=client) as q:
        await behind.publish_on_lane("=nightly", b"{not json", headers=forged)
        await eventually(
            lambda: _rejected(behind, 1), timeout=10, what="the forged tick rejected"
        )  # fmt: skip
        assert await q.count() == 0 and ran == []


async def _rejected(behind: Any, count: int) -> bool:
    return bool(await behind.rejected_count() == count)
