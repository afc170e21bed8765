"""Middleware (oqron_nats.Middleware): a user's own cross-cutting behaviour around every job,
run after the built-in metrics and hooks, plain or async, and never able to change a job's
outcome by raising."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
from structlog.testing import capture_logs

from oqron_nats import (
    Client,
    ConfigError,
    Hooks,
    Job,
    JobContext,
    JobFailure,
    JobState,
    Middleware,
    RetryPolicy,
    queue,
)

from .helpers import eventually, wait_for_state


class Recorder(Middleware):
    """Writes down every hook it is called with (some plain, some async)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def on_worker_start(self, queue: str) -> None:
        self.calls.append(("start", queue))

    def on_worker_stop(self, queue: str) -> None:
        self.calls.append(("stop", queue))

    def before_process(self, job: Job[Any]) -> None:
        self.calls.append(("before", job.id, job.state))

    async def after_process(self, job: Job[Any], seconds: float, outcome: str | None) -> None:
        assert seconds >= 0
        self.calls.append(("after", job.id, outcome))

    async def on_complete(self, job: Job[Any], result: Any) -> None:
        self.calls.append(("complete", job.id, job.data, result, job.state))

    def on_retry(self, job: Job[Any], failure: JobFailure) -> None:
        self.calls.append(("retry", job.id, failure.type, job.state))

    async def on_dead_letter(self, job: Job[Any]) -> None:
        self.calls.append(("dead", job.id))

    def on_fail(self, job: Job[Any], failure: JobFailure) -> None:
        self.calls.append(("fail", job.id, job.data, failure.message, job.state))

    def of(self, job_id: str) -> list[tuple[Any, ...]]:
        return [call for call in self.calls if len(call) > 1 and call[1] == job_id]


async def test_every_hook_runs_in_order_with_what_the_job_became(client: Client) -> None:
    recorder = Recorder()

    async def handler(ctx: JobContext[dict[str, Any]]) -> int:
        if ctx.data["fail"] and ctx.attempt <= ctx.data["fail"]:
            raise ValueError(f"failure {ctx.attempt}")
        return int(ctx.data["n"]) * 2

    retries = RetryPolicy(max=1, strategy="fixed", base_delay=0.05)
    q = queue("mw", handler, client=client, retries=retries, middleware=[recorder])
    async with q:
        ok = await q.add({"n": 1, "fail": 0})
        flaky = await q.add({"n": 2, "fail": 1})
        doomed = await q.add({"n": 3, "fail": 5})
        await wait_for_state(q, ok.id, JobState.COMPLETED)
        await wait_for_state(q, flaky.id, JobState.COMPLETED)
        await wait_for_state(q, doomed.id, JobState.FAILED)
        await eventually(lambda: _async(len(recorder.of(doomed.id)) >= 6), what="the hooks")
    assert recorder.calls[0] == ("start", "mw") and recorder.calls[-1] == ("stop", "mw")
    assert recorder.of(ok.id) == [
        ("before", ok.id, JobState.ACTIVE),
        ("after", ok.id, None),
        ("complete", ok.id, {"n": 1, "fail": 0}, 2, JobState.COMPLETED),
    ]
    assert recorder.of(flaky.id) == [
        ("before", flaky.id, JobState.ACTIVE),
        ("after", flaky.id, "ValueError"),
        ("retry", flaky.id, "ValueError", JobState.DELAYED),
        ("before", flaky.id, JobState.ACTIVE),
        ("after", flaky.id, None),
        ("complete", flaky.id, {"n": 2, "fail": 1}, 4, JobState.COMPLETED),
    ]
    assert recorder.of(doomed.id)[-2:] == [
        ("dead", doomed.id),
        ("fail", doomed.id, {"n": 3, "fail": 5}, "failure 2", JobState.FAILED),
    ]


async def test_a_middleware_that_raises_changes_nothing_and_is_logged(client: Client) -> None:
    class Broken(Middleware):
        def before_process(self, job: Job[Any]) -> None:
            raise RuntimeError("broken before")

        async def on_complete(self, job: Job[Any], result: Any) -> None:
            raise RuntimeError("broken after")

    seen: list[str] = []

    async def on_success(job: Job[Any], result: Any) -> None:
        seen.append(job.id)

    async def handler(ctx: JobContext[Any]) -> str:
        return "done"

    recorder = Recorder()
    q = queue("mw-broken", handler, client=client, hooks=Hooks(on_success=on_success),
              middleware=[Broken(), recorder])  # fmt: skip
    with capture_logs() as logs:
        async with q:
            job = await q.add({"n": 1})
            done = await wait_for_state(q, job.id, JobState.COMPLETED)
            await eventually(lambda: _async(bool(recorder.of(job.id)[2:])), what="on_complete")
    assert done.result == "done"
    assert seen == [job.id], "the user's hooks= still ran"
    assert [c[0] for c in recorder.of(job.id)] == ["before", "after", "complete"]
    failed = [entry for entry in logs if entry["event"] == "middleware failed"]
    assert {entry["hook"] for entry in failed} == {"before_process", "on_complete"}


AROUND: contextvars.ContextVar[str] = contextvars.ContextVar("around", default="unset")


class Around(Recorder):
    """Wraps each handler's run: sets a context variable, writes down what it sees."""

    @asynccontextmanager
    async def around_process(
        self, job: Job[Any], headers: Mapping[str, str]
    ) -> AsyncIterator[None]:
        self.calls.append(("enter", job.id, job.state, headers.get("Oqron-Correlation-Id")))
        token = AROUND.set(f"around {job.id}")
        try:
            yield
        except Exception as exc:
            self.calls.append(("exit", job.id, type(exc).__name__))
            raise
        else:
            self.calls.append(("exit", job.id, None))
        finally:
            AROUND.reset(token)


async def test_an_around_hook_sees_the_job_and_wraps_the_handler(client: Client) -> None:
    around = Around()

    async def handler(ctx: JobContext[dict[str, Any]]) -> str:
        around.calls.append(("handler", ctx.id, AROUND.get()))
        if ctx.data["fail"]:
            raise ValueError("no")
        return "ok"

    def threaded(ctx: JobContext[dict[str, Any]]) -> str:  # a plain handler runs in a thread
        around.calls.append(("handler", ctx.id, AROUND.get()))
        return "ok"

    retries = RetryPolicy(max=0)
    q = queue("mw-around", handler, client=client, retries=retries, middleware=[around])
    plain = queue("mw-around-sync", threaded, client=client, middleware=[around])
    async with q, plain:
        ok = await q.add({"fail": False}, correlation_id="req-1")
        bad = await q.add({"fail": True})
        sync = await plain.add({"fail": False})
        await wait_for_state(q, ok.id, JobState.COMPLETED)
        await wait_for_state(q, bad.id, JobState.FAILED)
        await wait_for_state(plain, sync.id, JobState.COMPLETED)
        await eventually(lambda: _async(len(around.of(bad.id)) >= 6), what="the hooks")
    assert around.of(ok.id) == [
        ("before", ok.id, JobState.ACTIVE),
        ("enter", ok.id, JobState.ACTIVE, "req-1"),
        ("handler", ok.id, f"around {ok.id}"),
        ("exit", ok.id, None),
        ("after", ok.id, None),
        ("complete", ok.id, {"fail": False}, "ok", JobState.COMPLETED),
    ]
    assert [c[0] for c in around.of(bad.id)] == ["before", "enter", "handler", "exit", "after",
                                                 "dead", "fail"]  # fmt: skip
    assert ("exit", bad.id, "ValueError") in around.of(bad.id)
    assert ("handler", sync.id, f"around {sync.id}") in around.of(sync.id)
    assert AROUND.get() == "unset"


class Swallows(Middleware):
    """Swallows the handler's exception: the job still fails."""

    @asynccontextmanager
    async def around_process(
        self, job: Job[Any], headers: Mapping[str, str]
    ) -> AsyncIterator[None]:
        with suppress(Exception):
            yield


class BrokenEnter(Middleware):
    @asynccontextmanager
    async def around_process(
        self, job: Job[Any], headers: Mapping[str, str]
    ) -> AsyncIterator[None]:
        raise RuntimeError("broken enter")
        yield  # pragma: no cover


class BrokenExit(Middleware):
    @asynccontextmanager
    async def around_process(
        self, job: Job[Any], headers: Mapping[str, str]
    ) -> AsyncIterator[None]:
        yield
        raise RuntimeError("broken exit")


async def test_an_around_hook_that_raises_or_swallows_changes_nothing(client: Client) -> None:
    around = Around()

    async def handler(ctx: JobContext[dict[str, Any]]) -> str:
        if ctx.data["fail"]:
            raise ValueError("the handler's own")
        return "ok"

    middleware = [BrokenEnter(), Swallows(), BrokenExit(), around]
    q = queue("mw-around-broken", handler, client=client, retries=RetryPolicy(max=0),
              middleware=middleware)  # fmt: skip
    with capture_logs() as logs:
        async with q:
            ok = await q.add({"fail": False})
            bad = await q.add({"fail": True})
            done = await wait_for_state(q, ok.id, JobState.COMPLETED)
            failed = await wait_for_state(q, bad.id, JobState.FAILED)
            await eventually(lambda: _async(len(around.of(bad.id)) >= 6), what="the hooks")
    assert done.result == "ok"
    assert failed.error is not None and failed.error.type == "ValueError", "not swallowed"
    assert failed.error.message == "the handler's own"
    assert ("exit", bad.id, "ValueError") in around.of(bad.id), "the inner ones still wrap it"
    assert [c[0] for c in around.of(ok.id)] == ["before", "enter", "exit", "after", "complete"]
    broken = [entry for entry in logs if entry["event"] == "middleware failed"]
    assert sorted((e["hook"], e["middleware"], e["job_id"]) for e in broken) == sorted([
        ("around_process", "BrokenEnter", ok.id),
        ("around_process", "BrokenEnter", bad.id),
        ("around_process", "BrokenExit", ok.id),  # for bad, the handler's error went through it
    ])  # fmt: skip


@pytest.mark.parametrize("given", [Recorder(), [object()], "x", [Recorder, Recorder()]])
def test_middleware_must_be_a_list_of_middleware_instances(given: Any) -> None:
    with pytest.raises(ConfigError, match="middleware"):
        queue("mw-bad", middleware=given)


async def _async(value: Any) -> Any:
    return value
