"""The handler context: what ``ctx`` carries and what its calls do, against a real server."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from oqron_nats import (
    Client,
    InvalidOption,
    JobContext,
    JobState,
    Queue,
    RetryPolicy,
    queue,
)
from oqron_nats._nats import CasConflict, Entry

from .helpers import eventually, wait_for_state
from .support import Backstage

WAIT = 10.0
"""Generous bound for anything that should happen within a heartbeat or two."""
QUICK_RETRY = RetryPolicy(max=2, strategy="fixed", base_delay=0.1)
THIEF = b'{"owner":"thief","attempt":1}'


class Order(msgspec.Struct):
    sku: str
    qty: int


# -- helpers ----------------------------------------------------------------------------------


async def idle(q: Queue[Any]) -> bool:
    """Whether the queue's consumer has no execution left (handler returned AND settled)."""
    consumer = q._consumer
    return consumer is not None and consumer.in_flight == 0


async def _is(value: Any, expected: Any) -> bool:
    return bool(value == expected)


async def set_within(event: asyncio.Event | threading.Event, what: str) -> None:
    """Wait for an asyncio or threading event, failing after WAIT seconds."""
    if isinstance(event, threading.Event):
        fired = await asyncio.to_thread(event.wait, WAIT)
    else:
        try:
            await asyncio.wait_for(event.wait(), WAIT)
            fired = True
        except TimeoutError:
            fired = False
    assert fired, f"timed out after {WAIT}s waiting for {what}"


async def held_lease(behind: Backstage, job_id: str) -> Entry:
    """The running attempt's lease, once taken (at its first heartbeat)."""
    return await eventually(lambda: behind.lease(job_id), WAIT, "the attempt's lease")


async def steal_lease(behind: Backstage, job_id: str) -> int:
    """Overwrite the running attempt's lease (as a new holder would); return its revision."""
    while True:
        entry = await held_lease(behind, job_id)
        try:
            return await behind.overwrite_lease(job_id, THIEF, last=entry.revision, ttl=30)
        except CasConflict:
            continue  # a heartbeat renewed it between our read and write: read again


async def expire_lease(behind: Backstage, job_id: str) -> None:
    """Remove the running attempt's lease, as if its TTL had run out."""
    while True:
        entry = await held_lease(behind, job_id)
        try:
            await behind.delete_lease(job_id, last=entry.revision)
            return
        except CasConflict:
            continue


# -- what ctx carries -------------------------------------------------------------------------


async def test_ctx_carries_id_typed_data_attempts_and_correlation_id(client: Client) -> None:
    seen: list[dict[str, Any]] = []

    async def handler(ctx: JobContext[Order]) -> int:
        seen.append(
            {
                "id": ctx.id,
                "queue": ctx.queue,
                "data": ctx.data,
                "attempt": ctx.attempt,
                "max_attempts": ctx.max_attempts,
                "correlation_id": ctx.correlation_id,
            }
        )
        if ctx.data.sku == "flaky" and ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return ctx.attempt

    q = queue("ctx-fields", handler, payload=Order, retries=QUICK_RETRY, client=client)
    async with q:
        flaky = await q.add(Order(sku="flaky", qty=1), correlation_id="req-42")
        custom = await q.add({"sku": "plain", "qty": 2}, attempts=5)
        plain = await q.add(Order(sku="plain", qty=3))
        done = {
            job.id: await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
            for job in (flaky, custom, plain)
        }

    def runs(job_id: str) -> list[dict[str, Any]]:
        return [s for s in seen if s["id"] == job_id]

    for s in seen:
        assert type(s["data"]) is Order, "a typed queue hands the handler its Struct"
        assert s["queue"] == "ctx-fields"
    assert [r["data"] for r in runs(flaky.id)] == [Order("flaky", 1)] * 2
    assert [r["attempt"] for r in runs(flaky.id)] == [1, 2], "1-based; 2 on the first retry"
    assert {r["max_attempts"] for r in runs(flaky.id)} == {3}, "queue retries (2) + 1"
    assert {r["correlation_id"] for r in runs(flaky.id)} == {"req-42"}
    assert done[flaky.id].result == 2

    assert [r["data"] for r in runs(custom.id)] == [Order("plain", 2)], "dict input, typed out"
    assert [(r["attempt"], r["max_attempts"]) for r in runs(custom.id)] == [(1, 5)]

    [plain_run] = runs(plain.id)
    assert plain_run["correlation_id"], "a correlation id is generated when none is given"
    assert plain_run["correlation_id"] == plain.correlation_id == done[plain.id].correlation_id
    assert plain_run["correlation_id"] not in ("req-42", custom.correlation_id)
    assert plain_run["max_attempts"] == 3


async def test_add_from_a_handler_inherits_the_running_jobs_correlation_id(
    client: Client,
) -> None:
    children = queue("ctx-children", client=client)  # publisher-only

    async def parent(ctx: JobContext[Any]) -> dict[str, str]:
        inherited = await children.add({"parent": ctx.id})
        explicit = await children.add({"parent": ctx.id}, correlation_id="child-own-id")
        return {"inherited": inherited.id, "explicit": explicit.id}

    q = queue("ctx-parents", parent, client=client)
    async with q:
        given = await q.add({"n": 1}, correlation_id="trace-abc")
        generated = await q.add({"n": 2})
        done_given = await wait_for_state(q, given.id, JobState.COMPLETED, timeout=WAIT)
        done_generated = await wait_for_state(q, generated.id, JobState.COMPLETED, timeout=WAIT)

    async def child_cid(job_id: str) -> str:
        child = await children.get_job(job_id)
        assert child is not None
        return child.correlation_id

    assert await child_cid(done_given.result["inherited"]) == "trace-abc"
    assert await child_cid(done_generated.result["inherited"]) == generated.correlation_id
    assert generated.correlation_id != "trace-abc"
    assert await child_cid(done_given.result["explicit"]) == "child-own-id", "explicit wins"
    outside = await children.add({"parent": None})
    assert outside.correlation_id not in ("trace-abc", generated.correlation_id), (
        "outside a handler nothing is inherited"
    )


# -- ctx.signal -------------------------------------------------------------------------------


async def test_lease_loss_fires_the_signal_and_the_attempt_commits_nothing(
    client: Client,
) -> None:
    started = asyncio.Event()
    stale_returned = asyncio.Event()
    seen: dict[str, Any] = {}
    runs: list[int] = []

    async def handler(ctx: JobContext[Any]) -> str:
        runs.append(ctx.attempt)
        if len(runs) > 1:
            return "fresh-result"
        started.set()
        try:
            seen["awaited"] = await ctx.signal
        except asyncio.CancelledError:
            seen["cancelled"] = True
        seen["aborted"] = ctx.signal.aborted
        seen["reason"] = ctx.signal.reason
        stale_returned.set()
        return "stale-result"

    name = "ctx-lease"
    q = queue(name, handler, lock_ttl=2, heartbeat=0.5, client=client)
    behind = Backstage(client, name)
    async with q:
        job = await q.add({"n": 1})
        await set_within(started, "the handler to start")
        before = await behind.record(job.id)
        assert msgspec.json.decode(before.value)["state"] == "active"
        await expire_lease(behind, job.id)  # the lease is gone: the next renew fails

        await set_within(stale_returned, "the signal to fire on lease loss")
        await eventually(lambda: idle(q), WAIT, "the stale attempt to settle")
        assert seen["aborted"] is True
        assert seen["reason"] is not None and seen["reason"].startswith("lease lost")
        after = await behind.record(job.id)
        assert after.revision == before.revision, "the stale attempt wrote nothing to the record"
        stale = await q.get_job(job.id)
        assert stale is not None
        assert stale.state == JobState.ACTIVE
        assert stale.result is None
        assert stale.finished_at is None
        assert await behind.work_messages() == 1, "not acked by it"

        # not acked, so the job is not lost: it comes back after ack_wait and runs again
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    assert done.result == "fresh-result", "the stale attempt's return value was never stored"
    assert done.stalled_count == 1
    assert done.attempt == 1, "a lost lease is a stall, not an attempt"
    assert runs == [1, 1]


async def test_await_signal_in_an_async_handler_returns_why_it_fired(client: Client) -> None:
    """``await ctx.signal`` is documented to wait until the signal fires and return the reason."""
    started = asyncio.Event()
    ended = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def handler(ctx: JobContext[Any]) -> None:
        started.set()
        try:
            outcome["returned"] = await ctx.signal
            outcome["after_await"] = "cleanup ran"
        except asyncio.CancelledError:
            outcome["cancelled_instead"] = ctx.signal.reason
        finally:
            ended.set()

    name = "ctx-await"
    q = queue(name, handler, lock_ttl=2, heartbeat=0.5, client=client)
    async with q:
        job = await q.add({"n": 1})
        await set_within(started, "the handler to start")
        await steal_lease(Backstage(client, name), job.id)
        await set_within(ended, "the handler to end")
        await eventually(lambda: idle(q), WAIT, "the attempt to settle")
        await q.stop(timeout=0.5)
    assert "cancelled_instead" not in outcome, (
        "await ctx.signal raised CancelledError instead of returning the reason "
        f"({outcome.get('cancelled_instead')!r}): Execution.abort() cancels the handler task "
        "in the same call that fires the signal"
    )
    assert outcome["returned"].startswith("lease lost")
    assert outcome["after_await"] == "cleanup ran"


async def test_a_handler_that_swallows_the_cancel_after_a_cancel_ends_cancelled(
    client: Client,
) -> None:
    """An async handler runs in its execution's task: abort()'s cancel, ABORT_GRACE after the
    signal, lands in it; one that swallows the cancel still ends as the signal says, and the
    worker goes on with the next job (the cancel is taken back, not left on the task)."""
    started = asyncio.Event()
    swallowed: list[bool] = []

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data["n"] == 2:
            return "next"
        started.set()
        try:
            await asyncio.sleep(30)  # ignores the signal
        except asyncio.CancelledError:
            swallowed.append(True)
        await asyncio.sleep(0.05)  # still awaits after it: no cancel is left pending
        return "must-not-be-stored"

    q = queue("ctx-swallow", handler, client=client, concurrency=1)
    async with q:
        job = await q.add({"n": 1})
        await set_within(started, "the handler to start")
        assert await q.cancel(job.id)
        await eventually(lambda: _is(swallowed, [True]), what="the cancel to land")
        cancelled = await q.get_job(job.id)
        assert cancelled is not None and cancelled.state == JobState.CANCELLED
        assert cancelled.result is None
        nxt = await q.add({"n": 2})
        assert (await nxt.wait(WAIT)).result == "next"
        await eventually(lambda: idle(q), what="the worker to settle")


async def test_signal_fires_on_shutdown_and_the_job_is_handed_back(client: Client) -> None:
    started = asyncio.Event()
    seen: dict[str, Any] = {}
    runs: list[int] = []

    async def handler(ctx: JobContext[Any]) -> str:
        runs.append(ctx.attempt)
        if len(runs) > 1:
            return "second-run"
        started.set()
        try:
            seen["awaited"] = await ctx.signal
        except asyncio.CancelledError:
            seen["cancelled"] = True
        seen["aborted"] = ctx.signal.aborted
        seen["reason"] = ctx.signal.reason
        return "must-not-be-stored"

    name = "ctx-shutdown"
    q = queue(name, handler, lock_ttl=2, heartbeat=0.5, client=client)
    behind = Backstage(client, name)
    try:
        await q.start()
        job = await q.add({"n": 1})
        await set_within(started, "the handler to start")
        await q.stop(timeout=0.3)
        assert seen["aborted"] is True
        assert seen["reason"] == "shutdown"
        handed_back = await q.get_job(job.id)
        assert handed_back is not None
        assert handed_back.state == JobState.WAITING
        assert handed_back.attempt == 0, "an attempt stopped by shutdown does not count"
        assert handed_back.result is None
        assert handed_back.worker is None
        assert await behind.work_messages() == 1, "the message is kept"
        assert await behind.lease(job.id) is None, "released"

        await q.start()
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    finally:
        await q.close()
    assert done.result == "second-run"
    assert done.attempt == 1
    assert runs == [1, 1]


# -- ctx.progress -----------------------------------------------------------------------------


async def test_progress_asked_for_just_before_returning_is_stored_with_the_end(
    client: Client,
) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        ctx.progress(50, "half")
        await asyncio.sleep(0)
        ctx.progress(100, "all")  # not awaited: the end's write stores it
        return "done"

    q = queue("ctx-last-progress", handler, client=client)
    async with q:
        done = await (await q.add({"n": 1})).wait(WAIT)
    assert (done.state, done.progress, done.progress_label) == (JobState.COMPLETED, 100.0, "all")


async def test_progress_is_saved_and_visible_while_the_job_runs(client: Client) -> None:
    first = asyncio.Event()
    second = asyncio.Event()
    go_on = asyncio.Event()
    finish = asyncio.Event()
    rejected: list[object] = []

    async def handler(ctx: JobContext[Any]) -> str:
        await ctx.progress(25, "fetching")  # waits until stored
        first.set()
        await asyncio.wait_for(go_on.wait(), WAIT)
        ctx.progress(75.5)  # fire and forget, no label
        for bad in (101, -1, "x", float("nan"), True, None):
            try:
                ctx.progress(bad)  # type: ignore[arg-type]
            except InvalidOption:
                rejected.append(repr(bad))
        try:
            ctx.progress(50, "y" * 201)
        except InvalidOption:
            rejected.append("long label")
        second.set()
        await asyncio.wait_for(finish.wait(), WAIT)
        return "ok"

    q = queue("ctx-progress", handler, lock_ttl=2, heartbeat=0.5, client=client)
    async with q:
        job = await q.add({"n": 1})
        await set_within(first, "the first progress report")
        running = await q.get_job(job.id)
        assert running is not None
        assert running.state == JobState.ACTIVE
        assert (running.progress, running.progress_label) == (25.0, "fetching")

        go_on.set()
        await set_within(second, "the second progress report")

        async def at_75() -> bool:
            current = await q.get_job(job.id)
            return current is not None and current.progress == 75.5

        await eventually(at_75, WAIT, "progress 75.5 to be stored")
        running = await q.get_job(job.id)
        assert running is not None
        assert running.state == JobState.ACTIVE
        assert running.progress_label is None
        finish.set()
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    assert rejected == ["101", "-1", "'x'", "nan", "True", "None", "long label"]
    assert done.progress == 75.5, "invalid reports stored nothing"
    assert done.result == "ok"


# -- ctx.log ----------------------------------------------------------------------------------


async def test_log_is_bound_to_the_job_and_rejects_bad_levels(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oqron_nats")  # the standard library's default: WARNING
    bad_levels: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ctx.log("info", "charging card", amount=42, currency="EUR")
        for level in ("verbose", "", "INFO "):
            try:
                ctx.log(level, "never logged")
            except InvalidOption:
                bad_levels.append(level)
        if ctx.attempt == 1:
            ctx.log("warning", "gateway slow", ms=1200)
            raise RuntimeError("retry me")

    q = queue("ctx-log", handler, retries=QUICK_RETRY, client=client)
    with capture_logs() as logs:
        async with q:
            job = await q.add({"n": 1}, correlation_id="req-log")
            await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)

    charging = [e for e in logs if e.get("event") == "charging card"]
    assert [e["attempt"] for e in charging] == [1, 2]
    for entry in charging:
        assert entry["log_level"] == "info"
        assert entry["job_id"] == job.id
        assert entry["queue"] == "ctx-log"
        assert entry["correlation_id"] == "req-log"
        assert entry["amount"] == 42
        assert entry["currency"] == "EUR"
    [slow] = [e for e in logs if e.get("event") == "gateway slow"]
    assert slow["log_level"] == "warning"
    assert (slow["job_id"], slow["queue"], slow["attempt"], slow["ms"]) == (
        job.id,
        "ctx-log",
        1,
        1200,
    )
    assert slow["correlation_id"] == "req-log"
    assert not [e for e in logs if e.get("event") == "never logged"]
    assert bad_levels == ["verbose", "", "INFO "] * 2


# -- ctx.discard ------------------------------------------------------------------------------


async def test_discard_fails_the_job_at_once_and_skips_the_retries(client: Client) -> None:
    calls: list[tuple[str, int]] = []

    async def handler(ctx: JobContext[Any]) -> str:
        calls.append((ctx.data["mode"], ctx.attempt))
        if ctx.data["mode"] == "return":
            ctx.discard("customer does not exist")
            return "not a result"
        ctx.discard()
        raise ValueError("card declined")

    name = "ctx-discard"
    retries = RetryPolicy(max=3, strategy="fixed", base_delay=0.1)
    q = queue(name, handler, retries=retries, client=client)
    behind = Backstage(client, name)
    async with q:
        returned = await q.add({"mode": "return"})
        raised = await q.add({"mode": "raise"})
        failed_returned = await wait_for_state(q, returned.id, JobState.FAILED, timeout=WAIT)
        failed_raised = await wait_for_state(q, raised.id, JobState.FAILED, timeout=WAIT)

        async def acked() -> bool:
            return await behind.work_messages() == 0

        await eventually(acked, WAIT, "both messages to be acked")
        await asyncio.sleep(0.5)  # five retry delays: a wrongly scheduled retry would run now
    assert sorted(calls) == [("raise", 1), ("return", 1)], "each handler ran exactly once"
    for failed in (failed_returned, failed_raised):
        assert failed.attempt == 1
        assert failed.max_attempts == 4
        assert failed.error is not None
        assert failed.finished_at is not None
    assert failed_returned.error is not None
    assert failed_returned.error.message == "customer does not exist"
    assert failed_returned.result is None, "a discarded attempt stores no result"
    assert failed_raised.error is not None
    assert failed_raised.error.type == "ValueError"
    assert failed_raised.error.message == "card declined"
    assert await behind.dead_letter_messages() == 2, "both dead-lettered"


# -- plain def handlers -----------------------------------------------------------------------


async def test_sync_handler_gets_the_same_ctx_and_its_calls_work_from_the_thread(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="oqron_nats")  # ctx.log's info line
    reported = threading.Event()
    go_on = threading.Event()
    seen: dict[str, Any] = {}

    def handler(ctx: JobContext[Order]) -> dict[str, int]:
        seen["thread"] = threading.current_thread()
        seen["fields"] = (ctx.id, ctx.data, ctx.attempt, ctx.max_attempts, ctx.correlation_id)
        ctx.progress(40, "halfway")
        ctx.log("info", "from a thread", step=1)
        seen["waited"] = ctx.signal.wait_blocking(0.05)
        seen["aborted"] = ctx.signal.aborted
        try:
            ctx.progress(101)
        except InvalidOption:
            seen["rejected"] = True
        try:
            ctx.log("loud", "never logged")
        except InvalidOption:
            seen["bad_level"] = True
        reported.set()
        go_on.wait(WAIT)
        return {"qty": ctx.data.qty}

    name = "ctx-sync"
    q = queue(name, handler, payload=Order, lock_ttl=2, heartbeat=0.5, client=client)
    with capture_logs() as logs:
        async with q:
            job = await q.add(Order("book", 7), correlation_id="req-sync")
            await set_within(reported, "the sync handler to report")

            async def at_40() -> bool:
                current = await q.get_job(job.id)
                return current is not None and current.progress == 40.0

            await eventually(at_40, WAIT, "progress from the thread to be stored")
            running = await q.get_job(job.id)
            assert running is not None
            assert running.state == JobState.ACTIVE
            assert running.progress_label == "halfway"
            go_on.set()
            done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)

    assert seen["thread"] is not threading.main_thread(), "a plain def runs in a worker thread"
    assert seen["thread"].name.startswith(f"oqron-{name}")
    assert seen["fields"] == (job.id, Order("book", 7), 1, 4, "req-sync")
    assert seen["waited"] is False, "wait_blocking times out while nothing fired"
    assert seen["aborted"] is False
    assert seen["rejected"] is True
    assert seen["bad_level"] is True
    assert done.result == {"qty": 7}
    assert done.progress == 40.0
    [entry] = [e for e in logs if e.get("event") == "from a thread"]
    assert entry["log_level"] == "info"
    assert (entry["job_id"], entry["queue"], entry["attempt"], entry["step"]) == (
        job.id,
        name,
        1,
        1,
    )
    assert entry["correlation_id"] == "req-sync"


async def test_sync_handler_sees_the_signal_through_wait_blocking_on_lease_loss(
    client: Client,
) -> None:
    started = threading.Event()
    returned = threading.Event()
    seen: dict[str, Any] = {}

    def handler(ctx: JobContext[Any]) -> str:
        started.set()
        seen["fired"] = ctx.signal.wait_blocking(WAIT)
        seen["aborted"] = ctx.signal.aborted
        seen["reason"] = ctx.signal.reason
        returned.set()
        return "stale-result"

    name = "ctx-sync-lease"
    q = queue(name, handler, lock_ttl=2, heartbeat=0.5, client=client)
    behind = Backstage(client, name)
    async with q:
        job = await q.add({"n": 1}, job_id="stolen-job")
        await set_within(started, "the handler to start")
        # a thief takes the job over: first the lease, then the record
        await steal_lease(behind, job.id)
        entry = await behind.record(job.id)
        record = msgspec.json.decode(entry.value)
        record["worker"] = "thief"
        thief_revision = await behind.overwrite_record(
            job.id, msgspec.json.encode(record), last=entry.revision
        )

        await set_within(returned, "wait_blocking to return on lease loss")
        await eventually(lambda: idle(q), WAIT, "the stale attempt to settle")
        after = await behind.record(job.id)
        assert after.revision == thief_revision, "the stale attempt wrote nothing"
        stolen = await q.get_job(job.id)
        assert stolen is not None
        assert stolen.state == JobState.ACTIVE
        assert stolen.worker == "thief"
        assert stolen.result is None
        lease = await behind.lease(job.id)
        assert lease is not None and lease.value == THIEF, "the thief's lease is left alone"
        assert await behind.work_messages() == 1, "not acked by it"
        await q.stop(timeout=0.5)
    assert seen["fired"] is True
    assert seen["aborted"] is True
    assert seen["reason"].startswith("lease lost")


async def test_heartbeats_keep_going_while_a_sync_handler_blocks(client: Client) -> None:
    runs: list[int] = []
    started = threading.Event()

    def handler(ctx: JobContext[Any]) -> str:
        runs.append(ctx.attempt)
        started.set()
        time.sleep(3)  # blocks its thread for two lock_ttl
        return "slept"

    name = "ctx-sync-block"
    q = queue(name, handler, lock_ttl=1.5, heartbeat=0.3, client=client)
    async with q:
        job = await q.add({"n": 1})
        await set_within(started, "the handler to start")
        await asyncio.sleep(2.0)  # longer than lock_ttl: only heartbeats keep the lease alive
        lease = await Backstage(client, name).lease(job.id)
        assert lease is not None, "the lease was renewed while the thread blocked"
        running = await q.get_job(job.id)
        assert running is not None and running.state == JobState.ACTIVE
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=WAIT)
    assert done.result == "slept"
    assert done.attempt == 1
    assert done.stalled_count == 0
    assert runs == [1], "ran once"
