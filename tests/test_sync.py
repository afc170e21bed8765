"""The blocking API (oqron_nats.sync): plain threads, a forked child, typed errors, and the
caller's correlation id and trace context carried into the job."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from oqron_nats import (
    Client,
    ConfigError,
    EnqueueError,
    InvalidName,
    InvalidOption,
    InvalidState,
    JobState,
    PayloadError,
    Unavailable,
    loop_thread,
    sync,
)
from oqron_nats.core.correlation import current_correlation_id
from oqron_nats.testing.server import LocalServer

from .support import Backstage

THREADS = 20
PER_THREAD = 10


@pytest.fixture(autouse=True)
def fresh_loop() -> Iterator[None]:
    """Each test starts and ends without the blocking API's loop (its connections closed)."""
    sync.shutdown()
    yield
    sync.shutdown()


def in_nats(server: LocalServer, namespace: str, queue: str, work: Any) -> Any:
    """Run ``work(backstage)`` on a connection of its own, from this (non-async) test."""

    async def run() -> Any:
        async with Client(server.url, namespace=namespace) as client:
            return await work(Backstage(client, queue))

    return asyncio.run(run())


def test_twenty_threads_add_at_once_and_every_job_is_stored_once(
    nats_server: LocalServer, namespace: str
) -> None:
    q = sync.queue("mails", url=nats_server.url, namespace=namespace)
    start = threading.Barrier(THREADS)
    added: dict[int, list[str]] = {}
    failures: list[BaseException] = []

    def publisher(n: int) -> None:
        try:
            start.wait(timeout=30)
            ids = [q.add({"thread": n, "i": i}).id for i in range(PER_THREAD)]
            # every thread also adds the same shared ids: each must be stored once
            ids += [q.add({"thread": n}, job_id=f"shared-{i}").id for i in range(3)]
            added[n] = ids
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    assert not any(t.is_alive() for t in threads)
    unique = {job_id for ids in added.values() for job_id in ids}
    assert len(unique) == THREADS * PER_THREAD + 3
    assert all(q.get_job(job_id) is not None for job_id in unique)

    async def stored(backstage: Backstage) -> dict[str, int]:
        return await backstage.lane_subjects()

    lanes = in_nats(nats_server, namespace, "mails", stored)
    assert len(lanes) == len(unique), "one message per job"
    assert set(lanes.values()) == {1}
    assert {subject.rsplit(".", 1)[1] for subject in lanes} == unique
    assert q.count(JobState.WAITING) == len(unique)
    assert len(loop_thread.current().clients) == 1, "the threads share one connection"


def test_a_forked_child_adds_on_its_own_connection_and_the_parent_goes_on(
    nats_server: LocalServer, namespace: str
) -> None:
    q = sync.queue("forked", url=nats_server.url, namespace=namespace)
    q.add({"who": "parent, before"}, job_id="parent-1")  # connected and loop running: then fork
    busy = threading.Event()
    stop = threading.Event()

    def keep_adding() -> None:  # the parent is in the middle of calls when it forks
        n = 0
        while not stop.is_set():
            q.add({"n": n}, job_id=f"busy-{n}")
            n += 1
            busy.set()

    adder = threading.Thread(target=keep_adding)
    adder.start()
    assert busy.wait(timeout=30)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read)
            job = q.add({"who": "child"}, job_id="child-1")
            again = sync.queue("forked", url=nats_server.url, namespace=namespace)
            seen = again.get_job("parent-1")
            report = {"job": job.id, "pid": os.getpid(), "parent_job": seen and seen.id}
            os.write(write, msgspec.json.encode(report))
            code = 0
        except BaseException as exc:
            os.write(write, msgspec.json.encode({"error": repr(exc)}))
        finally:
            os._exit(code)
    os.close(write)
    try:
        report = msgspec.json.decode(_read_all(read, timeout=60))
        status = _wait_pid(pid, timeout=30)
    finally:
        stop.set()
        adder.join(timeout=60)
        os.close(read)
    assert report.get("error") is None, report
    assert status == 0
    assert report["job"] == "child-1" and report["pid"] == pid
    assert report["parent_job"] == "parent-1"
    after = q.add({"who": "parent, after"}, job_id="parent-2")  # the parent's connection is fine
    assert after.id == "parent-2"
    child_job = q.get_job("child-1")
    assert child_job is not None and child_job.data == {"who": "child"}
    assert not adder.is_alive()


def _read_all(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the child did not report in time"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _wait_pid(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not exit in time")


class Order(msgspec.Struct):
    sku: str


def test_errors_are_the_async_apis_typed_errors(nats_server: LocalServer, namespace: str) -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        sync.queue("bad", concurrency=0)
    with pytest.raises(ConfigError, match="function that makes the Client"):
        sync.queue("bad", client=Client(nats_server.url))  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="timeout"):
        sync.queue("bad", timeout=0)
    q = sync.queue("typed", payload=Order, url=nats_server.url, namespace=namespace)
    with pytest.raises(PayloadError):
        q.add({"sku": 3})
    with pytest.raises(InvalidOption, match="attempts"):
        q.add(Order("a"), attempts=0)
    with pytest.raises(InvalidName):
        q.get_job("no.dots")
    with pytest.raises(InvalidOption, match="status"):
        q.count("sleeping")
    with pytest.raises(TimeoutError):
        q.wait(q.add(Order("b")).id, timeout=0.2)  # no worker runs it
    job = q.add(Order("c"))
    with pytest.raises(InvalidState, match=r"queue\.wait"):
        asyncio.run(job.wait(1))  # the async wait is not offered on a blocking queue's job

    async def from_the_loop() -> int:
        return q.count()

    with pytest.raises(InvalidState, match="its own event loop"):
        loop_thread.current().call(from_the_loop(), 10)


def test_no_server_is_unavailable_within_the_deadline() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    q = sync.queue("nowhere", client=lambda: Client(f"nats://127.0.0.1:{port}", retry_deadline=1))
    with pytest.raises(Unavailable):
        q.add({"n": 1})


def test_a_call_that_hangs_ends_at_its_timeout_with_the_outcome_unknown() -> None:
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        q = sync.queue("silent", client=lambda: Client(url, request_timeout=30), timeout=0.5)
        with pytest.raises(EnqueueError) as caught:
            q.add({"n": 1}, job_id="maybe-1")
        assert caught.value.outcome_unknown and caught.value.job_id == "maybe-1"
        assert "job_id='maybe-1'" in str(caught.value)
        with pytest.raises(Unavailable, match=r"no answer within 0\.5 s"):
            q.count()


def test_the_callers_correlation_id_and_trace_reach_the_job(
    nats_server: LocalServer, namespace: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    q = sync.queue(
        "traced",
        client=lambda: Client(nats_server.url, namespace=namespace, tracer_provider=provider),
    )
    tracer = provider.get_tracer("web")
    token = current_correlation_id.set("request-42")
    try:
        with tracer.start_as_current_span("GET /checkout") as request:
            inherited = q.add({"n": 1})
            given = q.add({"n": 2}, correlation_id="given-7")
    finally:
        current_correlation_id.reset(token)
    assert inherited.correlation_id == "request-42"
    assert given.correlation_id == "given-7"
    trace_id = format(request.get_span_context().trace_id, "032x")
    for job in (inherited, given):
        stored = q.get_job(job.id)
        assert stored is not None and stored.trace["traceparent"].split("-")[1] == trace_id

    async def headers(backstage: Backstage) -> dict[str, str]:
        message = await backstage.lane_message(inherited.id)
        assert message is not None
        return dict(message.headers)

    sent = in_nats(nats_server, namespace, "traced", headers)
    assert sent["Oqron-Correlation-Id"] == "request-42"
    assert sent["traceparent"].split("-")[1] == trace_id
    assert sent["Nats-Msg-Id"] == f"{inherited.id}:1"
    producers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
    assert len(producers) == 2
    assert all(s.parent is not None and s.parent.span_id == request.get_span_context().span_id
               for s in producers)  # fmt: skip
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_add_bulk_and_a_repeated_id_through_the_blocking_api(
    nats_server: LocalServer, namespace: str
) -> None:
    q = sync.queue("bulk", url=nats_server.url, namespace=namespace)
    result = q.add_bulk(
        [{"data": {"n": 1}, "opts": {"job_id": "b-1"}}, {"data": {"n": 2}, "opts": {"bad": 1}}]
    )
    assert result[0].ok and result[0].job is not None and result[0].job.id == "b-1"
    assert isinstance(result[1].error, InvalidOption)
    again = q.add({"n": 99}, job_id="b-1")
    assert again.data == {"n": 1}, "the existing job, not a second one"
    assert q.get_jobs(JobState.WAITING)[0].id == "b-1"
    q.close()
    assert q.count(JobState.WAITING) == 1, "a closed queue binds again on its next call"
    sync.shutdown()
    assert q.count(JobState.WAITING) == 1, "after a shutdown, the next call starts a new loop"
