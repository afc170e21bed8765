"""Tracing with the OpenTelemetry API: publisher and worker spans in one trace."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from oqron_nats import Client, JobContext, JobState, RetryPolicy, queue
from oqron_nats.queue import parse_options
from oqron_nats.testing.server import LocalServer

from .helpers import attributes, wait_for_state
from .support import Backstage


def sdk() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_publisher_and_worker_spans_form_one_trace(
    nats_server: LocalServer, namespace: str
) -> None:
    provider, exporter = sdk()
    seen_logs: list[MutableMapping[str, Any]] = []

    async def handler(ctx: JobContext[Any]) -> str:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            structlog.get_logger("app").info("inside the handler")
        seen_logs.extend(logs)
        return "ok"

    async with Client(nats_server.url, namespace=namespace, tracer_provider=provider) as client:
        q = queue("traced", handler, client=client)
        async with q:
            job = await q.add({"n": 1}, correlation_id="req-123")
            await wait_for_state(q, job.id, JobState.COMPLETED)

    spans = exporter.get_finished_spans()
    producer = next(s for s in spans if s.kind == SpanKind.PRODUCER)
    consumer = next(s for s in spans if s.kind == SpanKind.CONSUMER)
    assert producer.name == "publish traced"
    assert consumer.name == "process traced"
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    for span in (producer, consumer):
        assert attributes(span)["messaging.message.conversation_id"] == "req-123"
        assert attributes(span)["messaging.message.id"] == job.id
        assert attributes(span)["messaging.system"] == "nats"
    assert attributes(consumer)["oqron.job.attempt"] == 1
    assert attributes(consumer)["messaging.consumer.group.name"] == "fifo"
    stored = await _stored_trace(nats_server, namespace, job.id)
    assert stored["traceparent"].split("-")[1] == format(producer.context.trace_id, "032x")
    assert seen_logs and seen_logs[0]["correlation_id"] == "req-123"
    assert seen_logs[0]["job_id"] == job.id


async def _stored_trace(server: LocalServer, namespace: str, job_id: str) -> dict[str, str]:
    async with Client(server.url, namespace=namespace) as client:
        job = await queue("traced", client=client).get_job(job_id)
        assert job is not None
        return job.trace


async def test_every_attempt_is_a_process_span_under_the_one_publish(
    nats_server: LocalServer, namespace: str
) -> None:
    provider, exporter = sdk()

    async def handler(ctx: JobContext[Any]) -> None:
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")

    retries = RetryPolicy(max=1, strategy="fixed", base_delay=0.2)
    async with Client(nats_server.url, namespace=namespace, tracer_provider=provider) as client:
        q = queue("retried", handler, client=client, retries=retries)
        async with q:
            job = await q.add({"n": 1})
            await wait_for_state(q, job.id, JobState.COMPLETED)

    spans = exporter.get_finished_spans()
    producer = next(s for s in spans if s.kind == SpanKind.PRODUCER)
    attempts = sorted(
        (s for s in spans if s.kind == SpanKind.CONSUMER),
        key=lambda s: attributes(s)["oqron.job.attempt"],
    )
    assert [attributes(s)["oqron.job.attempt"] for s in attempts] == [1, 2]
    assert all(
        s.parent is not None and s.parent.span_id == producer.context.span_id for s in attempts
    )
    assert attempts[0].status.status_code == StatusCode.ERROR
    assert attributes(attempts[0])["error.type"] == "ValueError"
    assert attempts[1].status.status_code != StatusCode.ERROR


async def test_without_an_sdk_the_callers_trace_context_still_travels(client: Client) -> None:
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    seen: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        seen.append(carrier.get("traceparent", ""))

    token = context.attach(propagate.extract({"traceparent": upstream}))
    try:
        assert not trace.get_current_span().is_recording()
        q = queue("plain", handler, client=client)
        async with q:
            job = await q.add({"n": 1})
            await wait_for_state(q, job.id, JobState.COMPLETED)
    finally:
        context.detach(token)
    assert job.trace["traceparent"] == upstream
    assert seen and seen[0].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


async def test_a_capitalised_traceparent_from_another_client_is_the_parent(
    nats_server: LocalServer, namespace: str
) -> None:
    """Go and .NET clients send ``Traceparent``: header names are read in any case."""
    provider, exporter = sdk()
    upstream_trace = "0af7651916cd43dd8448eb211c80319c"
    async with Client(nats_server.url, namespace=namespace, tracer_provider=provider) as client:
        q = queue("foreign", lambda ctx: None, client=client)
        backend = await q._open()
        _, job = q._new_job({"n": 1}, parse_options({}))
        await backend.store.create(job)  # the record, as another client's add wrote it
        headers = {"Traceparent": f"00-{upstream_trace}-b7ad6b7169203331-01"}
        await Backstage(client, "foreign").publish_on_lane(job.id, headers=headers)
        async with q:
            await wait_for_state(q, job.id, JobState.COMPLETED)
    (consumer,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert format(consumer.context.trace_id, "032x") == upstream_trace


async def test_without_an_sdk_a_capitalised_traceparent_still_travels(
    nats_server: LocalServer, namespace: str
) -> None:
    """No span to record, but another client's ``Traceparent`` (any case) is still made current
    for the handler: the tracing middleware is skipped only when there is nothing to pass on."""
    upstream_trace = "0af7651916cd43dd8448eb211c80319c"
    seen: list[str] = []

    async def handler(ctx: Any) -> None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        seen.append(carrier.get("traceparent", ""))

    async with Client(nats_server.url, namespace=namespace) as client:
        q = queue("foreign-plain", handler, client=client)
        backend = await q._open()
        _, job = q._new_job({"n": 1}, parse_options({}))
        await backend.store.create(job)  # the record, as another client's add wrote it
        headers = {"Traceparent": f"00-{upstream_trace}-b7ad6b7169203331-01"}
        await Backstage(client, "foreign-plain").publish_on_lane(job.id, headers=headers)
        async with q:
            await wait_for_state(q, job.id, JobState.COMPLETED)
    assert seen and seen[0].split("-")[1] == upstream_trace


GLOBAL_LATER = """
import asyncio, sys, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from oqron_nats import Client, JobState, queue

async def main(url):
    async with Client(url, namespace="global-later") as client:
        q = queue("later", lambda ctx: None, client=client)
        async with q:
            async def run_one():
                job = await q.add({})
                for _ in range(500):
                    done = await q.get_job(job.id)
                    if done is not None and done.state == JobState.COMPLETED:
                        return
                    await asyncio.sleep(0.02)
                raise SystemExit("the job did not complete")
            await run_one()  # no SDK: nothing is recorded
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)  # an SDK set up after the worker started
            time.sleep(1.1)  # the worker looks for a global provider at most once a second
            await run_one()
            kinds = sorted(str(s.kind) for s in exporter.get_finished_spans())
            print(kinds)

asyncio.run(main(sys.argv[1]))
"""


def test_a_global_provider_set_after_the_worker_started_is_used(nats_server: LocalServer) -> None:
    """A worker that found no SDK looks again (at most once a second), and records from then."""
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_LATER, nats_server.url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "['SpanKind.CONSUMER', 'SpanKind.PRODUCER']"
