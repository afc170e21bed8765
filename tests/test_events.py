"""Lifecycle events on NATS subjects, job.wait() without polling, and the record's timeline."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from oqron_nats import (
    Client,
    ConfigError,
    JobContext,
    JobState,
    Queue,
    RetryPolicy,
    Unavailable,
    queue,
)
from oqron_nats.observe import audience
from oqron_nats.observe.events import Event
from oqron_nats.runtime import waiting
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, done, eventually, holds
from .proxy import TcpProxy
from .support import Backstage, listening, overhear


async def collect(q: Queue[Any], into: list[Event], ready: asyncio.Event) -> None:
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

    async def handler(ctx: JobContext[Any]) -> None:
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
    async def handler(ctx: JobContext[Any]) -> str:
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
    async def handler(ctx: JobContext[Any]) -> None:
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

    async with backend.store.events.listen(backend.names.events):  # events are sent then only
        monkeypatch.setattr(backend.store.events.conn, "publish_core", refused)
        caplog.set_level(logging.DEBUG, logger="oqron_nats")
        with capture_logs() as logs:
            await backend.store.events.announce(record.job, "completed")
    [line] = [e for e in logs if e["event"] == "event not published"]
    assert line["name"] == "completed" and "connection closed" in line["error"]


# -- events only while someone listens (issue 14) ----------------------------------------------


async def nothing(ctx: Any) -> None:
    """A handler with nothing to do."""


async def test_with_nobody_listening_no_event_is_published_until_someone_listens(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    """A worker and a publisher that follow the listener keys send no event while nobody
    listens, and every event of a job once a listener in another process joined."""
    heard = await overhear(client, "quiet")

    q = queue("quiet", nothing, client=client)
    async with q:
        alone = await q.add({"n": 1})
        await done(q, alone.id)
        assert heard.names == [], "nobody listened, yet events were published"

        async with Client(nats_server.url, namespace=namespace) as other:
            listener = await listening(queue("quiet", client=other))
            try:
                watched = await q.add({"n": 2})
                await done(q, watched.id)
                assert heard.of(watched.id) == ["added", "active", "completed"]
            finally:
                listener.cancel()


async def test_a_worker_that_starts_while_someone_listens_announces_its_first_job(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    """A process learns of the listeners that joined before it opened the queue (it lists
    their keys), not only of those it hears join."""
    heard = await overhear(client, "late")
    listener = await listening(queue("late", client=client))
    try:
        async with Client(nats_server.url, namespace=namespace) as other:
            q = queue("late", nothing, client=other)
            async with q:
                job = await q.add({"n": 1})
                await done(q, job.id)
        assert heard.of(job.id) == ["added", "active", "completed"]
    finally:
        listener.cancel()


async def test_a_listener_is_kept_by_its_refreshes_and_forgotten_a_ttl_after_it_stopped(
    nats_server: LocalServer, client: Client, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a process listens, it writes its key again before the TTL ends; once it stopped
    (or was killed), the other processes stop announcing within the TTL."""
    ttl = 1.5
    monkeypatch.setattr(audience, "LISTENER_TTL", ttl)
    monkeypatch.setattr(audience, "REFRESH", 0.5)
    heard = await overhear(client, "ttl")

    q = queue("ttl", nothing, client=client)
    async with q, Client(nats_server.url, namespace=namespace) as other:
        listener = await listening(queue("ttl", client=other))
        await asyncio.sleep(3 * ttl)  # kept alive by its refreshes meanwhile
        kept = await q.add({"n": 1})
        await done(q, kept.id)
        assert heard.of(kept.id) == ["added", "active", "completed"]

        listener.cancel()  # stops its writes, as a killed process would
        await asyncio.sleep(ttl + 0.5)
        forgotten = await q.add({"n": 2})
        await done(q, forgotten.id)
        assert heard.of(forgotten.id) == []


async def test_a_worker_cut_off_while_a_listener_joined_announces_after_its_reconnect(
    nats_server: LocalServer, namespace: str
) -> None:
    """A key written while a worker was disconnected goes unheard by it: after the reconnect it
    announces (for a TTL, within which a live listener writes its key again)."""

    assert nats_server.port is not None
    async with (
        TcpProxy(nats_server.port) as proxy,
        Client(nats_server.url, namespace=namespace) as admin,
    ):
        heard = await overhear(admin, "cutoff")
        worker_client = Client(proxy.url, namespace=namespace)
        q = queue("cutoff", nothing, client=worker_client)
        async with worker_client, q:
            proxy.refusing = True  # the worker stays cut off while the listener joins
            proxy.cut()
            await eventually(lambda: holds(not worker_client.connected), what="the cut")
            listener = await listening(queue("cutoff", client=admin))
            try:
                proxy.refusing = False
                await eventually(lambda: holds(worker_client.connected), what="the reconnect")
                job = await queue("cutoff", client=admin).add({"n": 1})
                await done(q, job.id)
                assert heard.of(job.id) == ["added", "active", "completed"]
            finally:
                listener.cancel()


async def test_a_client_told_to_announce_always_publishes_with_nobody_listening(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For listeners of an older oqron_nats (they write no key): announce="always", or
    OQRON_ANNOUNCE=always; anything else is refused at once."""
    with pytest.raises(ConfigError, match="announce must be one of listened, always"):
        Client(nats_server.url, namespace=namespace, announce="sometimes")  # type: ignore[arg-type]
    monkeypatch.setenv("OQRON_ANNOUNCE", "always")
    async with Client(nats_server.url, namespace=namespace) as client:
        heard = await overhear(client, "loud")

        q = queue("loud", nothing, client=client)
        async with q:
            job = await q.add({"n": 1})
            await done(q, job.id)
        assert heard.of(job.id) == ["added", "active", "completed"]


async def test_wait_ends_by_the_job_s_event_not_by_reading_again(
    nats_server: LocalServer, client: Client, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiting process says it listens and a worker in another process hears it: the end
    arrives as an event (the re-reads, the safety net, are pushed out of the test's reach)."""
    monkeypatch.setattr(waiting, "FIRST_RECHECK", 60.0)
    monkeypatch.setattr(waiting, "MAX_RECHECK", 60.0)

    async def slow(ctx: Any) -> str:
        await asyncio.sleep(0.5)
        return "done"

    async with (
        Client(nats_server.url, namespace=namespace) as other,
        queue("by-event", slow, client=other),
    ):
        job = await queue("by-event", client=client).add({"n": 1})
        finished = await queue("by-event", client=client).wait(job.id, timeout=10)
    assert finished.state == JobState.COMPLETED and finished.result == "done"


async def test_a_wait_whose_key_cannot_be_written_is_delayed_half_a_second_at_most(
    nats_server: LocalServer, namespace: str
) -> None:
    """Writing the listener key goes through the retried request path; a queues bucket that
    does not answer must not hold wait() for the retry deadline (here 5 s)."""

    def client(retry_deadline: float) -> Client:
        return Client(nats_server.url, namespace=namespace, retry_deadline=retry_deadline)

    # the worker's stop asks the missing bucket too: its short deadline ends that sooner
    async with (
        client(1.0) as worker_client,
        client(5.0) as other,
        queue("no-bucket", nothing, client=worker_client) as q,
    ):
        job = await q.add({"n": 1})
        await done(q, job.id)
        waiter = queue("no-bucket", client=other)
        await waiter._open()
        await Backstage(other, "no-bucket").delete_queues_bucket()  # nobody answers there now
        started = time.monotonic()
        finished = await waiter.wait(job.id, timeout=10)
        assert finished.state == JobState.COMPLETED
        assert time.monotonic() - started < 2.0, "wait() waited out the key's retry deadline"


async def test_the_key_of_a_wait_cancelled_while_writing_it_is_still_written(
    nats_server: LocalServer, client: Client, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait() that times out while its key's write is under way (NATS slow) leaves the write
    going, so the listeners that join next are heard."""

    worker = queue("slow-key", nothing, client=client)
    async with worker, Client(nats_server.url, namespace=namespace) as other:
        waiter = queue("slow-key", client=other)
        audience = (await waiter._open()).store.events.audience
        put = audience._bucket.put

        async def slow_put(*args: Any, **kw: Any) -> int:
            await asyncio.sleep(1.0)
            return await put(*args, **kw)

        monkeypatch.setattr(audience._bucket, "put", slow_put)
        pending = await queue("slow-key", client=other).add({"n": 0}, delay=60)
        with pytest.raises(TimeoutError):
            await waiter.wait(pending.id, timeout=0.2)
        await eventually(lambda: Backstage(client, "slow-key").listener_keys(), what="the key")
        heard = await overhear(client, "slow-key")
        job = await worker.add({"n": 1})
        await done(worker, job.id)
        assert heard.of(job.id) == ["added", "active", "completed"]


async def test_first_uses_at_once_open_the_queue_once(client: Client) -> None:
    """Two first uses of a queue at once share one opening: two would follow the queue twice,
    and close() would stop only one (its subscriptions and state reader left running)."""
    q = queue("at-once", client=client)
    await asyncio.gather(q.add({"n": 1}), q.add({"n": 2}), q.count())
    behind = Backstage(client, "at-once")
    assert await behind.subscriptions("=listener") == 1
    await q.close()
    assert await behind.subscriptions("=listener") == 0
