"""A worker's connection hangs, then drops, right after one of its record writes was answered.

A settle writes the record by compare-and-set (an awaited request), then sends without waiting
the state-index entry of the end state and the delete marker(s) of the old one, then the ack.
The hang (tests/proxy.py's ``hang_then_drop``) makes everything sent after the answer land in
a link that is cut before it forwards anything: those sends are lost, while awaited requests
are asked again on the new connection. Whatever was lost, once the worker is back and the
message (redelivered, or not) is settled, the job must have ended once and every state count of
the index must say so.

The worker runs in this process on a client through the proxy; the jobs are added, counted and
read through a client of their own, straight to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from oqron_nats import Client, DeadLetter, JobContext, JobState, Queue, RetryPolicy, queue
from oqron_nats._nats.kv import Bucket
from oqron_nats._nats.names import TTL_HEADER
from oqron_nats.runtime.settle import Settle
from oqron_nats.storage.store import RawJob
from oqron_nats.testing.server import LocalServer

from .proxy import TcpProxy
from .support import Backstage

LOCK_TTL = 1.5
HEARTBEAT = 0.5
ACK_WAIT = LOCK_TTL + HEARTBEAT + 1.0
"""The consumer's ack_wait these options make (QueueConfig.ack_wait): a lost ack is
redelivered that long after the job's last heartbeat."""
HANG = 0.3
"""Seconds the link hangs (holding what was sent) before the connection drops."""
REQUEST_TIMEOUT = 1.0
"""The worker client's request timeout: well below ACK_WAIT, as the defaults are (5 s against
36 s). A read lost with the connection waits out its timeout before it is asked again
(``Nats.direct_batch``); with a timeout longer than ACK_WAIT a settle that reads after its
record write would be slower than the redelivery of its own message, which would then repair
what the slow settle left behind, and a lost write be hidden by test timing."""
SETTLED_WITHIN = 12.0
"""Seconds for the reconnect, the redelivery and its settle to bring the counts right."""

pytestmark = pytest.mark.timeout(60)


def state_in(value: bytes) -> str | None:
    """The state a written value says, if it is a job record (a lease's value is not)."""
    try:
        record = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    return record.get("state") if isinstance(record, dict) else None


@dataclass
class Scene:
    """A worker on a connection that hangs and drops after a chosen record write."""

    proxy: TcpProxy
    publisher: Queue[Any]
    backstage: Backstage
    hung: asyncio.Event
    runs: dict[str, int] = field(default_factory=dict)
    """How many times the handler ran, per job id."""
    finished_again: list[tuple[str, str, int]] = field(default_factory=list)
    """(job id, state, delivery count) of each finished job's message settled again."""


async def counts(q: Queue[Any]) -> dict[str, int]:
    """The index's count of every state that counts any job."""
    found = await asyncio.gather(*(q.count(state) for state in JobState))
    return {str(state): n for state, n in zip(JobState, found, strict=True) if n}


async def counts_become(
    q: Queue[Any], expected: dict[str, int], *, within: float
) -> tuple[bool, dict[str, int]]:
    """Poll the counts until they are ``expected`` or ``within`` seconds passed; whether they
    were, and the last counts read."""
    deadline = time.monotonic() + within
    while True:
        seen = await counts(q)
        if seen == expected:
            return True, seen
        if time.monotonic() > deadline:
            return False, seen
        await asyncio.sleep(0.05)


async def until(check: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def settled_as(scene: Scene, job_ids: list[str], state: JobState) -> None:
    """Each job's record says ``state``, the work stream owes the worker nothing and no ack is
    pending: whatever is left to happen to these jobs has happened."""

    async def done() -> bool:
        for job_id in job_ids:
            job = await scene.publisher.get_job(job_id)
            if job is None or job.state != state:
                return False
        info = await scene.backstage.consumer_info()
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await until(done, within=SETTLED_WITHIN, what=f"{job_ids} {state} and every message acked")


async def assert_counts(scene: Scene, expected: dict[str, int], why: str) -> None:
    right, seen = await counts_become(scene.publisher, expected, within=SETTLED_WITHIN)
    assert right, (
        f"{why}: the index counts {seen}, not {expected} (finished jobs settled again: "
        f"{scene.finished_again}; connections through the proxy: {scene.proxy.connections})"
    )


@contextlib.asynccontextmanager
async def dropping_worker(
    nats_server: LocalServer,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    handler: Callable[[Scene, JobContext[Any]], Awaitable[Any]],
    *,
    job_id: str,
    writing: JobState | None,
    add: Callable[[Queue[Any]], Awaitable[None]],
    proxy: TcpProxy | None = None,
    **options: Any,
) -> AsyncIterator[Scene]:
    """Add the jobs (``add``, straight to the server), then start a worker through a proxy
    whose link hangs, then drops, right after the answer to the write of ``job_id``'s record
    in state ``writing`` (its first such write): before the writer sends anything else.
    ``writing=None``: the caller drops the link itself (through ``proxy``)."""
    assert nats_server.port is not None
    proxy = proxy or TcpProxy(nats_server.port)

    def the_write(key: str, value: bytes, **_: Any) -> bool:
        return writing is not None and key.endswith(f".{job_id}") and state_in(value) == writing

    hung = proxy.drop_after(monkeypatch, Bucket, "update", the_write, HANG)
    finished_again: list[tuple[str, str, int]] = []
    finish_again = Settle.finish_again

    async def spied(self: Settle, job: RawJob) -> None:
        finished_again.append((job.id, str(job.state), self.delivery.num_delivered))
        await finish_again(self, job)

    monkeypatch.setattr(Settle, "finish_again", spied)
    async with proxy, Client(nats_server.url, namespace=namespace) as admin:
        publisher = queue(name, client=admin)
        scene = Scene(proxy, publisher, Backstage(admin, name), hung, finished_again=finished_again)
        await add(publisher)

        async def counted(ctx: JobContext[Any]) -> Any:
            scene.runs[ctx.id] = scene.runs.get(ctx.id, 0) + 1
            return await handler(scene, ctx)

        worker_client = Client(proxy.url, namespace=namespace, request_timeout=REQUEST_TIMEOUT)
        worker = queue(
            name, counted, client=worker_client, lock_ttl=LOCK_TTL, heartbeat=HEARTBEAT, **options
        )
        async with worker_client, worker:
            assert (await scene.backstage.consumer_info()).config.ack_wait == ACK_WAIT
            yield scene
            assert writing is None or hung.is_set(), (
                f"the write of {job_id} as {writing} never came"
            )
            assert proxy.connections > 1, "the worker's connection never dropped"


def one(job_id: str = "dropped") -> Callable[[Queue[Any]], Awaitable[None]]:
    async def add(publisher: Queue[Any]) -> None:
        await publisher.add({"n": 1}, job_id=job_id)

    return add


async def quick(scene: Scene, ctx: JobContext[Any]) -> str:
    return "done"


async def test_a_completion_whose_entry_marker_and_ack_are_lost_is_counted_once(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completed record is stored; its index entry, the waiting entry's marker and the ack
    are lost with the link. The message comes back after ack_wait, and its settle files the job
    under completed and nowhere else."""
    async with dropping_worker(
        nats_server, namespace, monkeypatch, "done-dropped", quick,
        job_id="dropped", writing=JobState.COMPLETED, add=one(),
    ) as scene:  # fmt: skip
        await settled_as(scene, ["dropped"], JobState.COMPLETED)
        await assert_counts(scene, {"completed": 1}, "after the redelivery")
        assert scene.runs == {"dropped": 1}, "the handler ran again"
        assert [(i, s) for i, s, _ in scene.finished_again] == [("dropped", "completed")]
        assert scene.finished_again[0][2] > 1, "the message was redelivered"


async def test_a_completed_entry_filed_again_expires_with_its_record(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The completion of the first test, under the default retention (completed jobs kept a
    day: the record, and its index entry, written with that TTL). The entry the redelivery
    files again must expire with the record too, or it outlives it: counted as completed, with
    no record, once the record expired."""
    async with dropping_worker(
        nats_server, namespace, monkeypatch, "ttl-dropped", quick,
        job_id="dropped", writing=JobState.COMPLETED, add=one(),
    ) as scene:  # fmt: skip
        await settled_as(scene, ["dropped"], JobState.COMPLETED)
        await assert_counts(scene, {"completed": 1}, "after the redelivery")
        record_ttl = await scene.backstage.record_ttl("dropped")
        entry = await scene.backstage.index_entry("dropped", JobState.COMPLETED)
        assert entry is not None
        assert record_ttl is not None, "the default retention writes the record with a TTL"
        assert entry.headers.get(TTL_HEADER) == record_ttl, (
            f"the record expires after {record_ttl}, its completed entry (filed again by the "
            f"redelivery: {scene.finished_again}) after {entry.headers.get(TTL_HEADER)}"
        )


async def test_a_long_job_listed_as_active_is_counted_once_after_its_completion_is_cut_off(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job runs until its late index entry lists it as active (runtime/late_entry.py), so
    its end has an active entry to mark gone; that marker, the completed entry and the ack are
    lost with the link."""

    async def until_listed(scene: Scene, ctx: JobContext[Any]) -> str:
        async def listed() -> bool:
            return await counts(scene.publisher) == {"active": 1}

        await until(listed, within=5.0, what="the late entry to list the job as active")
        return "done"

    async with dropping_worker(
        nats_server, namespace, monkeypatch, "long-dropped", until_listed,
        job_id="dropped", writing=JobState.COMPLETED, add=one(),
    ) as scene:  # fmt: skip
        await settled_as(scene, ["dropped"], JobState.COMPLETED)
        await assert_counts(scene, {"completed": 1}, "after the redelivery")
        assert scene.runs == {"dropped": 1}, "the handler ran again"
        assert [(i, s) for i, s, _ in scene.finished_again] == [("dropped", "completed")]


RETRY_DELAY = 5.0
"""Seconds a failed first attempt waits for its retry: long enough to count the job as
delayed once the worker is back, before the retry runs."""


async def test_a_retry_whose_delayed_entry_is_lost_is_counted_as_delayed_then_completed(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt fails and its record is stored delayed; the delayed entry and the
    waiting entry's marker are lost with the link. The retry's schedule is an awaited publish,
    asked again on the new connection, and the ack goes after it: nothing is redelivered. While
    the job waits for its retry it must be counted as delayed (not as waiting), and once the
    retry ran, as completed only."""

    async def fails_first(scene: Scene, ctx: JobContext[Any]) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "done"

    retries = RetryPolicy(max=1, strategy="fixed", base_delay=RETRY_DELAY)
    async with dropping_worker(
        nats_server, namespace, monkeypatch, "retry-dropped", fails_first,
        job_id="dropped", writing=JobState.DELAYED, add=one(), retries=retries,
    ) as scene:  # fmt: skip
        await until(lambda: scene_hung(scene), within=5.0, what="the delayed write")
        written = time.monotonic()

        async def back() -> bool:
            return scene.proxy.connections > 1

        await until(back, within=5.0, what="the worker to reconnect")
        # before the retry runs (RETRY_DELAY after the write), the job is delayed
        while_delayed = await counts_become(
            scene.publisher, {"delayed": 1}, within=RETRY_DELAY - 1.5 - (time.monotonic() - written)
        )
        delayed_record = await scene.publisher.get_job("dropped")
        await settled_as(scene, ["dropped"], JobState.COMPLETED)
        at_the_end = await counts_become(scene.publisher, {"completed": 1}, within=SETTLED_WITHIN)
        assert delayed_record is not None and delayed_record.state == JobState.DELAYED
        assert scene.runs == {"dropped": 2}, "one failed attempt, one retry"
        assert at_the_end[0], f"after the retry the index counts {at_the_end[1]}"
        assert while_delayed[0], (
            f"while the job waited for its retry (its record delayed) the index counted "
            f"{while_delayed[1]}, not {{'delayed': 1}} (redeliveries settled: "
            f"{scene.finished_again})"
        )


async def scene_hung(scene: Scene) -> bool:
    return scene.hung.is_set()


@pytest.mark.parametrize("dead_letter", [True, False], ids=["dead-letter", "no-dead-letter"])
async def test_a_final_failure_whose_entry_marker_and_ack_are_lost_is_counted_once(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch, dead_letter: bool
) -> None:
    """The failed record is stored; its failed entry and the waiting entry's marker are lost
    with the link. With a dead letter (the default) the dead letter is an awaited publish,
    asked again on the new connection, and the ack goes after it; without one, the ack is lost
    too and the message is redelivered. Either way the job must be counted as failed only."""

    async def fails(scene: Scene, ctx: JobContext[Any]) -> None:
        raise RuntimeError("fails for good")

    async with dropping_worker(
        nats_server, namespace, monkeypatch, "failed-dropped", fails,
        job_id="dropped", writing=JobState.FAILED, add=one(),
        retries=RetryPolicy(max=0), dead_letter=DeadLetter(enabled=dead_letter),
    ) as scene:  # fmt: skip
        await settled_as(scene, ["dropped"], JobState.FAILED)
        assert (await scene.backstage.dead_letter("dropped") is not None) == dead_letter
        await assert_counts(scene, {"failed": 1}, "once the failure was settled")
        assert scene.runs == {"dropped": 1}, "the handler ran again"


async def test_a_parent_whose_completion_is_cut_off_is_counted_once_and_releases_its_child(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A completion on a queue with flows: after the completed record, the parent's children
    are looked at (awaited requests, asked again on the new connection) before the ack; the
    completed entry and the waiting entry's marker, sent before them, are lost with the link."""

    async def family(publisher: Queue[Any]) -> None:
        parent = await publisher.add({"n": 1}, job_id="dropped")
        await publisher.add({"n": 2}, job_id="child", depends_on=[parent.id])

    async with dropping_worker(
        nats_server, namespace, monkeypatch, "flow-dropped", quick,
        job_id="dropped", writing=JobState.COMPLETED, add=family,
    ) as scene:  # fmt: skip
        await settled_as(scene, ["dropped", "child"], JobState.COMPLETED)
        await assert_counts(scene, {"completed": 2}, "once parent and child completed")
        assert scene.runs == {"dropped": 1, "child": 1}


async def test_a_removal_at_completion_whose_entry_purge_is_lost_leaves_no_count(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """remove_on_complete=True: after the completion and its ack, retention removes the record
    (an awaited delete), then the completed entry (a purge sent without waiting): the link hangs
    right after the delete was answered, and the purge is lost with it. Nothing is redelivered
    (the ack went before); the job is gone, and no count may include it."""
    assert nats_server.port is not None
    proxy = TcpProxy(nats_server.port)

    def the_records_delete(key: str, **kwargs: Any) -> bool:
        return key.endswith(".dropped") and bool(kwargs.get("epitaph"))  # a lease's has none

    deleted = proxy.drop_after(monkeypatch, Bucket, "delete", the_records_delete, HANG)
    async with dropping_worker(
        nats_server, namespace, monkeypatch, "removed-dropped", quick, job_id="dropped",
        writing=None, add=one(), proxy=proxy, remove_on_complete=True,
    ) as scene:  # fmt: skip

        async def gone() -> bool:
            info = await scene.backstage.consumer_info()
            return (
                deleted.is_set()
                and proxy.connections > 1
                and await scene.publisher.get_job("dropped") is None
                and info.num_ack_pending == 0
            )

        await until(gone, within=SETTLED_WITHIN, what="the removal, the drop and the ack")
        await assert_counts(scene, {}, "after the job was removed")
        assert scene.runs == {"dropped": 1}


async def test_a_claim_cut_off_before_its_handler_ran_completes_once_and_is_counted_once(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's record write (active) is answered, then the link hangs: the handler runs at
    once, and its completed write goes into the hung link and is lost with it, then asked again
    on the new connection; the index and the ack follow on that connection."""
    async with dropping_worker(
        nats_server, namespace, monkeypatch, "claim-dropped", quick,
        job_id="dropped", writing=JobState.ACTIVE, add=one(),
    ) as scene:  # fmt: skip
        await settled_as(scene, ["dropped"], JobState.COMPLETED)
        await assert_counts(scene, {"completed": 1}, "once the job completed")
        assert scene.runs == {"dropped": 1}, "the handler ran again"
        job = await scene.publisher.get_job("dropped")
        assert job is not None and job.attempt == 1 and job.stalled_count == 0
