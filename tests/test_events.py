"""Lifecycle events on NATS subjects, job.wait() without polling, and the record's timeline."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from oqron_nats import Client, JobState, RetryPolicy, Unavailable, queue
from oqron_nats.observe.events import Event
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess


async def collect(q, into: list[Event], ready: asyncio.Event) -> None:
    stream = q.events()
    first = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.2)  # the subscription is set up by the first __anext__
    ready.set()
    into.append(await first)
    async for event in stream:
        into.append(event)


async def test_a_listener_receives_the_events_of_a_worker_in_another_process(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    events: list[Event] = []
    ready = asyncio.Event()
    q = queue("evented", client=client)
    await q.add({"n": 0})  # creates the stream before the worker starts
    worker = WorkerProcess(nats_server.url, namespace, tmp_path / "log.jsonl", queue="evented")
    listener = asyncio.create_task(collect(q, events, ready))
    try:
        await ready.wait()
        job = await q.add({"n": 1}, correlation_id="req-9")
        done = await job.wait(10)
        assert done.state == JobState.COMPLETED
        await asyncio.sleep(0.2)
        mine = [e for e in events if e.job_id == job.id]
        assert [e.name for e in mine] == ["added", "active", "completed"]
        assert mine[-1].state == JobState.COMPLETED
        assert all(e.queue == "evented" for e in mine)
        assert [e.at for e in mine] == sorted(e.at for e in mine)
    finally:
        listener.cancel()
        worker.close()


async def test_events_for_progress_retries_and_failures(client: Client) -> None:
    events: list[Event] = []
    ready = asyncio.Event()

    async def handler(ctx) -> None:
        await ctx.progress(50, "half")
        raise ValueError("always")

    q = queue(
        "failing",
        handler,
        client=client,
        retries=RetryPolicy(max=1, strategy="fixed", base_delay=0.2),
    )
    listener = asyncio.create_task(collect(q, events, ready))
    try:
        await ready.wait()
        async with q:
            job = await q.add({"n": 1})
            failed = await job.wait(10)
        assert failed.state == JobState.FAILED
        await asyncio.sleep(0.1)
        names = [e.name for e in events if e.job_id == job.id]
        assert names == ["added", "active", "progress", "retried", "active", "progress", "failed"]
        retried = next(e for e in events if e.name == "retried")
        assert retried.error is not None and retried.error.type == "ValueError"
        assert next(e for e in events if e.name == "progress").progress == 50
    finally:
        listener.cancel()


async def test_wait_returns_a_finished_job_at_once_and_times_out_otherwise(client: Client) -> None:
    async def handler(ctx) -> str:
        return "done"

    q = queue("waiting", handler, client=client)
    async with q:
        job = await q.add({"n": 1})
        assert (await job.wait(10)).result == "done"
        assert (await q.wait(job.id, 1)).state == JobState.COMPLETED  # already finished
    pending = await q.add({"n": 2})  # nobody consumes it now
    with pytest.raises(TimeoutError):
        await pending.wait(0.3)
    from oqron_nats import JobNotFound

    with pytest.raises(JobNotFound):
        await q.wait("no-such-job", 1)


async def test_the_record_keeps_a_timeline_of_its_state_changes(client: Client) -> None:
    async def handler(ctx) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")

    q = queue(
        "timeline",
        handler,
        client=client,
        retries=RetryPolicy(max=1, strategy="fixed", base_delay=0.1),
    )
    async with q:
        job = await q.add({"n": 1})
        done = await job.wait(10)
    states = [t.state for t in done.timeline]
    assert states == [
        JobState.WAITING,
        JobState.ACTIVE,
        JobState.DELAYED,
        JobState.ACTIVE,
        JobState.COMPLETED,
    ]
    stamps = [t.at for t in done.timeline]
    assert stamps == sorted(stamps)
    assert done.timeline[0].reason == "added"
    assert "RuntimeError" in (done.timeline[2].reason or "")


async def test_an_event_that_cannot_be_published_is_logged_not_raised(
    client: Client, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Announcing is best effort: a failed publish is a debug line. (It raised TypeError: the
    log call named a field ``event``, structlog's argument for the message.)"""
    q = queue("event-refused", client=client)
    job = await q.add({"n": 1})
    backend = await q._open()
    record = await backend.store.get(job.id)
    assert record is not None

    async def refused(*_args: Any, **_kw: Any) -> None:
        raise Unavailable("connection closed")

    monkeypatch.setattr(backend.store.events.conn, "publish_core", refused)
    caplog.set_level(logging.DEBUG, logger="oqron_nats")
    with capture_logs() as logs:
        await backend.store.events.announce(record.job, "completed")
    [line] = [e for e in logs if e["event"] == "event not published"]
    assert line["name"] == "completed" and "connection closed" in line["error"]
