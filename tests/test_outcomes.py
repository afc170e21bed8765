"""Outcomes: completion with results, final failure, the dead-letter stream, hooks, and messages
that must not run a job (duplicates of finished jobs, unknown ids, poison bodies, bad records)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from oqron_nats import (
    Client,
    DeadLetter,
    Hooks,
    Job,
    JobContext,
    JobFailure,
    JobState,
    RetryPolicy,
    queue,
)
from oqron_nats._nats import Msg

from .helpers import eventually, holds, wait_for_state
from .support import Backstage

NO_RETRIES = RetryPolicy(max=0)


class Receipt(msgspec.Struct):
    order: int
    total: float
    items: list[str]


async def stream_empty(behind: Backstage) -> bool:
    return await behind.work_messages() == 0


async def wait_until_empty(client: Client, name: str) -> None:
    behind = Backstage(client, name)
    stream = behind.names.stream
    await eventually(lambda: stream_empty(behind), what=f"stream {stream} to be empty")


async def dead_letter_of(client: Client, name: str, job_id: str) -> dict[str, Any] | None:
    msg = await Backstage(client, name).dead_letter(job_id)
    return None if msg is None else msgspec.json.decode(msg.data)


def validate_invoice(data: dict[str, Any]) -> None:
    raise ValueError(f"invoice {data['invoice']} has no lines")


# -- final failure ------------------------------------------------------------------------------


async def test_after_its_last_attempt_a_job_is_failed_with_the_error_stored(
    client: Client,
) -> None:
    runs: list[int] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.attempt)
        validate_invoice(ctx.data)

    policy = RetryPolicy(max=1, strategy="fixed", base_delay=0.1)
    q = queue("invoices", handler, client=client, retries=policy)
    async with q:
        job = await q.add({"invoice": 17})
        failed = await wait_for_state(q, job.id, JobState.FAILED)
        await asyncio.sleep(0.3)
    assert runs == [1, 2]
    assert failed.attempt == 2
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert failed.error.message == "invoice 17 has no lines"
    assert "validate_invoice" in failed.error.traceback
    assert "ValueError: invoice 17 has no lines" in failed.error.traceback
    assert failed.finished_at is not None
    assert failed.started_at is not None and failed.finished_at >= failed.started_at
    assert failed.run_at is None
    assert failed.data == {"invoice": 17}
    await wait_until_empty(client, "invoices")


async def test_a_final_failure_is_dead_lettered_and_hooks_run_once(client: Client) -> None:
    dead: list[Job[Any]] = []
    fails: list[tuple[Job[Any], JobFailure]] = []

    async def on_dead(job: Job[Any]) -> None:
        dead.append(job)

    def on_fail(job: Job[Any], failure: JobFailure) -> None:  # a plain function hook
        fails.append((job, failure))

    async def handler(ctx: JobContext[Any]) -> None:
        validate_invoice(ctx.data)

    q = queue(
        "dlq",
        handler,
        client=client,
        retries=NO_RETRIES,
        dead_letter=DeadLetter(enabled=True, on_dead=on_dead),
        hooks=Hooks(on_fail=on_fail),
    )
    async with q:
        job = await q.add({"invoice": 5}, correlation_id="req-5")
        failed = await wait_for_state(q, job.id, JobState.FAILED)
        await eventually(lambda: holds(dead and fails), what="on_dead and on_fail")
        await asyncio.sleep(0.3)
    assert len(dead) == 1
    assert len(fails) == 1

    record = await dead_letter_of(client, "dlq", job.id)
    assert record is not None, "the failed job is in the dead-letter stream"
    assert record["id"] == job.id
    assert record["queue"] == "dlq"
    assert record["state"] == "failed"
    assert record["data"] == {"invoice": 5}
    assert record["correlation_id"] == "req-5"
    assert record["error"]["type"] == "ValueError"
    assert record["error"]["message"] == "invoice 5 has no lines"
    assert "validate_invoice" in record["error"]["traceback"]
    assert record["finished_at"] is not None

    assert dead[0].id == job.id
    assert dead[0].state == JobState.FAILED
    assert dead[0].data == {"invoice": 5}
    fail_job, failure = fails[0]
    assert fail_job.id == job.id
    assert fail_job.state == JobState.FAILED
    assert isinstance(failure, JobFailure)
    assert failure == failed.error
    assert failure.type == "ValueError"


async def test_without_dead_letter_nothing_is_written_but_on_fail_runs(client: Client) -> None:
    dead: list[Job[Any]] = []
    fails: list[JobFailure] = []

    def on_dead(job: Job[Any]) -> None:
        dead.append(job)

    async def on_fail(job: Job[Any], failure: JobFailure) -> None:
        fails.append(failure)

    async def handler(ctx: JobContext[Any]) -> None:
        raise KeyError("missing")

    q = queue(
        "nodlq",
        handler,
        client=client,
        retries=NO_RETRIES,
        dead_letter=DeadLetter(enabled=False, on_dead=on_dead),
        hooks=Hooks(on_fail=on_fail),
    )
    async with q:
        job = await q.add({"n": 1})
        failed = await wait_for_state(q, job.id, JobState.FAILED)
        await eventually(lambda: holds(fails), what="on_fail")
        await wait_until_empty(client, "nodlq")
        await asyncio.sleep(0.3)
    assert failed.error is not None and failed.error.type == "KeyError"
    assert [f.type for f in fails] == ["KeyError"]
    assert dead == []
    assert await dead_letter_of(client, "nodlq", job.id) is None
    assert await Backstage(client, "nodlq").dead_letter_messages() == 0


# -- hooks --------------------------------------------------------------------------------------


async def test_hooks_may_be_async_or_plain_functions(client: Client) -> None:
    seen: list[tuple[str, str, Any]] = []

    async def async_success(job: Job[Any], result: Any) -> None:
        seen.append(("async", job.id, result))

    def plain_success(job: Job[Any], result: Any) -> None:
        seen.append(("plain", job.id, result))

    async def handler(ctx: JobContext[int]) -> int:
        return ctx.data * 2

    for kind, hook in (("async", async_success), ("plain", plain_success)):
        q = queue(f"hooks-{kind}", handler, client=client, hooks=Hooks(on_success=hook))
        async with q:
            job = await q.add(21)
            await wait_for_state(q, job.id, JobState.COMPLETED)

            async def hooked(k: str = kind) -> bool:
                return any(s[0] == k for s in seen)

            await eventually(hooked, what=kind)
        assert [s for s in seen if s[0] == kind] == [(kind, job.id, 42)]


async def test_a_raising_hook_is_logged_and_the_worker_keeps_working(client: Client) -> None:
    calls: list[str] = []

    def on_success(job: Job[Any], result: Any) -> None:
        calls.append(f"success:{job.data}")
        raise RuntimeError("plain hook broke")

    async def on_fail(job: Job[Any], failure: JobFailure) -> None:
        calls.append(f"fail:{job.data}")
        raise RuntimeError("async hook broke")

    async def on_dead(job: Job[Any]) -> None:
        calls.append(f"dead:{job.data}")
        raise RuntimeError("dead hook broke")

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.data % 2:
            raise ValueError("odd")
        return "even"

    q = queue(
        "badhooks",
        handler,
        client=client,
        concurrency=1,
        retries=NO_RETRIES,
        dead_letter=DeadLetter(on_dead=on_dead),
        hooks=Hooks(on_success=on_success, on_fail=on_fail),
    )
    with capture_logs() as logs:
        async with q:
            jobs = [await q.add(n) for n in range(6)]
            for job in jobs:
                expected = JobState.FAILED if job.data % 2 else JobState.COMPLETED
                await wait_for_state(q, job.id, expected)
            await eventually(lambda: holds(len(calls) >= 9), what="every hook to run")
            await wait_until_empty(client, "badhooks")
            assert q.is_consuming
            late = await q.add(100)  # still consuming after nine hook errors
            assert (await wait_for_state(q, late.id, JobState.COMPLETED)).result == "even"
            await eventually(lambda: holds(len(calls) >= 10), what="the last hook")
    assert sorted(calls) == sorted(
        [f"success:{n}" for n in (0, 2, 4, 100)]
        + [f"fail:{n}" for n in (1, 3, 5)]
        + [f"dead:{n}" for n in (1, 3, 5)]
    )
    hook_errors = [entry for entry in logs if entry["event"] == "hook failed"]
    assert len(hook_errors) == 10
    assert {e["hook"].rsplit(".", 1)[-1] for e in hook_errors} == {
        "on_success",
        "on_fail",
        "on_dead",
    }
    assert all(e["log_level"] == "error" and e.get("exc_info") for e in hook_errors)


# -- success and results ------------------------------------------------------------------------


async def test_results_are_stored_encoded_and_on_success_gets_them(client: Client) -> None:
    hooked: dict[str, tuple[Job[Any], Any]] = {}

    async def on_success(job: Job[Any], result: Any) -> None:
        hooked[job.data] = (job, result)

    async def handler(ctx: JobContext[Any]) -> Any:
        return {
            "dict": {"total": 12.5, "lines": 3, "ok": True},
            "list": [1, "two", None, [3]],
            "struct": Receipt(order=7, total=19.99, items=["tea", "cake"]),
            "none": None,
        }[ctx.data]

    q = queue("results", handler, client=client, hooks=Hooks(on_success=on_success))
    async with q:
        jobs = {kind: await q.add(kind) for kind in ("dict", "list", "struct", "none")}
        done = {
            kind: await wait_for_state(q, job.id, JobState.COMPLETED) for kind, job in jobs.items()
        }
        await eventually(lambda: holds(len(hooked) == 4), what="on_success for every job")
    assert done["dict"].result == {"total": 12.5, "lines": 3, "ok": True}
    assert done["list"].result == [1, "two", None, [3]]
    assert done["struct"].result == {"order": 7, "total": 19.99, "items": ["tea", "cake"]}
    assert done["none"].result is None
    for job in done.values():
        assert job.error is None
        assert job.finished_at is not None
        assert job.attempt == 1
    # the hook gets the handler's own value, and the job carrying it
    assert hooked["struct"][1] == Receipt(order=7, total=19.99, items=["tea", "cake"])
    assert hooked["struct"][0].result == Receipt(order=7, total=19.99, items=["tea", "cake"])
    assert hooked["dict"][1] == {"total": 12.5, "lines": 3, "ok": True}
    assert all(job.state == JobState.COMPLETED for job, _ in hooked.values())
    # stored as msgspec JSON in the jobs bucket
    entry = await Backstage(client, "results").record(jobs["struct"].id)
    assert msgspec.json.decode(entry.value)["result"] == {
        "order": 7,
        "total": 19.99,
        "items": ["tea", "cake"],
    }


def self_referencing() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("bad_result", "error_type"),
    [
        (object, "PayloadError"),
        (lambda: {"when": {1j: "complex key"}}, "PayloadError"),
        (self_referencing, "PayloadError"),
        (lambda: "x" * 5000, "PayloadTooLarge"),  # over the queue's max_payload_size
    ],
    ids=["object", "complex-key", "self-referencing", "too-large"],
)
async def test_a_result_that_cannot_be_stored_fails_the_attempt(
    client: Client, bad_result: Any, error_type: str
) -> None:
    runs: list[str] = []
    fails: list[JobFailure] = []
    successes: list[Any] = []

    async def on_fail(job: Job[Any], failure: JobFailure) -> None:
        fails.append(failure)

    async def on_success(job: Job[Any], result: Any) -> None:
        successes.append(result)

    async def handler(ctx: JobContext[Any]) -> Any:
        runs.append(ctx.data)
        return bad_result() if ctx.data == "bad" else "fine"

    q = queue(
        "unencodable",
        handler,
        client=client,
        max_payload_size=1024,
        lock_ttl=2,  # a crashed settle would come back within the test
        heartbeat=0.5,
        retries=RetryPolicy(max=2, strategy="fixed", base_delay=0.1),
        hooks=Hooks(on_fail=on_fail, on_success=on_success),
    )
    async with q:
        bad = await q.add("bad", attempts=1)
        failed = await wait_for_state(q, bad.id, JobState.FAILED, timeout=5)
        good = await q.add("good")
        completed = await wait_for_state(q, good.id, JobState.COMPLETED)
        await eventually(lambda: holds(fails and successes), what="the hooks")
        await wait_until_empty(client, "unencodable")
        await asyncio.sleep(0.3)
    assert failed.error is not None
    assert failed.error.type == error_type
    assert failed.result is None
    assert failed.attempt == 1
    assert completed.result == "fine"
    assert [f.type for f in fails] == [error_type]
    assert successes == ["fine"]
    assert runs == ["bad", "good"], "the failed job is not run again"


# -- deliveries that must not run a job ---------------------------------------------------------


async def test_the_terminal_state_is_written_before_the_ack(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> str:
        return "done"

    q = queue("order", handler, client=client)
    behind = Backstage(client, "order")
    events: list[tuple[str, Any]] = []

    async def on_record(msg: Msg) -> None:
        events.append(("record", msgspec.json.decode(msg.data)["state"] if msg.data else None))

    async def on_ack(msg: Msg) -> None:
        events.append(("ack", msg.data))

    job = await q.add({"n": 1})
    # both subscriptions on one connection: the worker's writes arrive in the order it sent them
    record_sub = await behind.watch_record(job.id, on_record)
    ack_sub = await behind.watch_acks(on_ack)
    try:
        async with q:
            await wait_for_state(q, job.id, JobState.COMPLETED)
            await wait_until_empty(client, "order")
            await eventually(lambda: holds(("ack", b"") in events), what="the ack")
    finally:
        await record_sub.unsubscribe()
        await ack_sub.unsubscribe()
    states = [value for kind, value in events if kind == "record"]
    assert states == ["active", "completed"]
    assert events.index(("record", "completed")) < events.index(("ack", b""))


async def test_duplicates_of_finished_jobs_are_acked_and_never_run(client: Client) -> None:
    runs: list[Any] = []
    fails: list[str] = []

    async def on_fail(job: Job[Any], failure: JobFailure) -> None:
        fails.append(job.id)

    async def handler(ctx: JobContext[Any]) -> str:
        runs.append(ctx.data)
        if ctx.data == "fail":
            raise RuntimeError("for good")
        return "ok"

    q = queue(
        "dups",
        handler,
        client=client,
        retries=NO_RETRIES,
        hooks=Hooks(on_fail=on_fail),
    )
    behind = Backstage(client, "dups")
    async with q:
        done = await q.add("ok")
        await wait_for_state(q, done.id, JobState.COMPLETED)
        await wait_until_empty(client, "dups")
        ack = await behind.publish_on_lane(done.id, msg_id="dup-1")
        assert not ack.duplicate
        await wait_until_empty(client, "dups")

        failed = await q.add("fail")
        await wait_for_state(q, failed.id, JobState.FAILED)
        await eventually(lambda: holds(fails), what="on_fail")
        await wait_until_empty(client, "dups")
        for n in range(2):  # a late redelivery and a duplicate on another lane
            await behind.publish_on_lane(failed.id, priority=n * 5, msg_id=f"dup-{n + 2}")
        await wait_until_empty(client, "dups")
        await asyncio.sleep(0.3)
        assert (await q.get_job(done.id)).state == JobState.COMPLETED  # type: ignore[union-attr]
        assert (await q.get_job(failed.id)).state == JobState.FAILED  # type: ignore[union-attr]
    assert runs == ["ok", "fail"]
    assert fails == [failed.id]
    assert await behind.dead_letter_messages() == 1


async def test_a_message_for_a_job_without_record_is_acked_and_skipped(client: Client) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.id)

    q = queue("ghosts", handler, client=client)
    behind = Backstage(client, "ghosts")
    async with q:
        await behind.publish_on_lane("no-such-job", msg_id="ghost-1")
        await wait_until_empty(client, "ghosts")
        job = await q.add({"n": 1})
        await wait_for_state(q, job.id, JobState.COMPLETED)
    assert runs == [job.id]
    assert await q.get_job("no-such-job") is None


@pytest.mark.parametrize("body", [b"../../etc", b"", b"a.b", b"\xff\xfe", b"x" * 65, b"*"])
async def test_a_body_that_is_not_a_job_id_is_removed(client: Client, body: bytes) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.id)

    q = queue("poison", handler, client=client)
    behind = Backstage(client, "poison")
    async with q:
        with capture_logs() as logs:
            await behind.publish_on_lane("poison", body, msg_id="poison-1")
            await wait_until_empty(client, "poison")
        rejected = [e for e in logs if e["event"] == "message rejected: not a job of this queue"]
        assert [e["reason"] for e in rejected] == ["not-a-job-id"]
        job = await q.add({"n": 1})
        await wait_for_state(q, job.id, JobState.COMPLETED)
    assert runs == [job.id]


async def test_a_record_that_does_not_decode_does_not_crash_the_worker(client: Client) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.id)

    q = queue("corrupt", handler, client=client)
    behind = Backstage(client, "corrupt")
    async with q:
        with capture_logs() as logs:
            for n, garbage in enumerate([b"garbage", b'{"id": "bad-1"}', b"[1, 2, 3]"]):
                job_id = f"bad-{n}"
                await behind.create_record(job_id, garbage)
                await behind.publish_on_lane(job_id, msg_id=f"corrupt-{n}")
            await wait_until_empty(client, "corrupt")
        undecodable = [
            e for e in logs if e["event"] == "job record does not decode; message removed"
        ]
        assert sorted(e["job_id"] for e in undecodable) == ["bad-0", "bad-1", "bad-2"]
        assert q.is_consuming
        job = await q.add({"n": 1})
        await wait_for_state(q, job.id, JobState.COMPLETED)
        assert await q.count() == 1, "undecodable records are skipped when counting"
    assert runs == [job.id]
