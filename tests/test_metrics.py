"""Metrics with the OpenTelemetry API, read through the SDK's in-memory reader and a scrape."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from oqron_nats import Client, ConfigError, JobContext, RetryPolicy, queue
from oqron_nats.observe.metrics import DURATION_BUCKETS, metrics_for
from oqron_nats.observe.prometheus import serve_prometheus
from oqron_nats.testing.server import LocalServer

from .helpers import eventually, start_process


def sdk() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point collected now, by metric name."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def total(found: dict[str, list[Any]], name: str) -> float:
    """The sum of a counter's points."""
    return float(sum(p.value for p in found.get(name, [])))


def attribute_values(found: dict[str, list[Any]]) -> Iterator[Any]:
    for name_points in found.values():
        for point in name_points:
            yield from point.attributes.values()


async def test_counters_and_process_duration_after_successes_retries_and_a_dead_letter(
    nats_server: LocalServer, namespace: str
) -> None:
    provider, reader = sdk()

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.attempt <= ctx.data["fails"]:
            raise ValueError(f"attempt {ctx.attempt} fails")
        return "ok"

    async with Client(nats_server.url, namespace=namespace, meter_provider=provider) as client:
        q = queue(
            "metered",
            handler,
            client=client,
            retries=RetryPolicy(max=1, strategy="fixed", base_delay=0.05),
        )
        async with q:
            jobs = [await q.add({"fails": 0}) for _ in range(3)]  # complete at once
            jobs += [await q.add({"fails": 1}) for _ in range(2)]  # complete on the retry
            jobs.append(await q.add({"fails": 2}))  # fails twice: failed, dead-lettered
            ends = [await job.wait(timeout=30) for job in jobs]
        # the worker has stopped: every execution has finished counting
    assert [str(j.state) for j in ends] == ["completed"] * 5 + ["failed"]

    found = points(reader)
    assert total(found, "oqron.jobs.completed") == 5
    assert total(found, "oqron.jobs.retried") == 3
    assert total(found, "oqron.jobs.failed") == 1
    assert total(found, "oqron.jobs.dead_lettered") == 1
    assert total(found, "oqron.jobs.stalled") == 0
    for name in ("completed", "retried", "failed", "dead_lettered"):
        for point in found[f"oqron.jobs.{name}"]:
            assert dict(point.attributes) == {"queue": "metered"}

    consumed = found["messaging.client.consumed.messages"]
    assert sum(p.value for p in consumed) == 9, "3 + 2 * 2 + 2 attempts"
    assert dict(consumed[0].attributes) == {
        "messaging.system": "nats",
        "messaging.operation.name": "process",
        "messaging.destination.name": "metered",
        "messaging.consumer.group.name": "fifo",
    }
    sent = found["messaging.client.sent.messages"]
    assert sum(p.value for p in sent) == 9, "6 jobs added, 3 retries re-enqueued"
    assert {p.attributes["messaging.operation.name"] for p in sent} == {"publish"}
    assert all("error.type" not in p.attributes for p in sent)

    durations = found["messaging.process.duration"]
    assert sum(p.count for p in durations) == 9
    by_error = {p.attributes.get("error.type"): p.count for p in durations}
    assert by_error == {None: 5, "ValueError": 4}
    for point in durations:
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS
        assert len(point.bucket_counts) == len(DURATION_BUCKETS) + 1
        assert point.attributes["messaging.consumer.group.name"] == "fifo"

    ids = {job.id for job in jobs}
    assert ids.isdisjoint(attribute_values(found)), "never a job id in an attribute"


async def test_gauges_report_a_running_queue_from_its_snapshot(
    nats_server: LocalServer, namespace: str
) -> None:
    provider, reader = sdk()

    async def handler(ctx: JobContext[Any]) -> None:
        return None

    def gauges() -> tuple[dict[str, float], float | None]:
        found = points(reader)
        jobs = {
            p.attributes["state"]: p.value
            for p in found.get("oqron.queue.jobs", [])
            if p.attributes["queue"] == "gauged"
        }
        ages = [p.value for p in found.get("oqron.queue.oldest_waiting_age", [])]
        return jobs, ages[0] if ages else None

    publisher = Client(nats_server.url, namespace=namespace, meter_provider=provider)
    worker = Client(
        nats_server.url, namespace=namespace, meter_provider=provider, metrics_interval=0.1
    )
    assert worker.metrics is publisher.metrics, "one set of instruments per provider"
    async with publisher, worker:
        adding = queue("gauged", client=publisher)
        for _ in range(2):
            await adding.add({})  # waiting: nobody consumes yet
        for _ in range(3):
            await adding.add({}, delay=3600)
        await adding.pause()
        for _ in range(4):
            await adding.add({})  # held while paused
        q = queue("gauged", handler, client=worker)
        assert gauges() == ({}, None), "a queue without a running worker here is not reported"

        async with q:  # its consumer stays paused: the jobs stay where they are
            expected = {"waiting": 2, "active": 0, "delayed": 3, "paused": 4}

            async def reported() -> tuple[dict[str, float], float | None] | None:
                now = gauges()
                return now if now[0] == expected else None

            _, age = await eventually(reported, what="the gauges of the paused queue")
            assert age is not None and 0 <= age < 3600

        assert gauges() == ({}, None), "a stopped worker's queue is no longer reported"


async def test_prometheus_scrape_serves_the_process_duration_histogram(
    nats_server: LocalServer, namespace: str, tmp_path: Path
) -> None:
    # a process of its own: serve_prometheus sets the global meter provider, once per process
    port = free_port()
    env = {**os.environ, "OQRON_NATS_URL": nats_server.url, "OQRON_NAMESPACE": namespace}
    process = start_process(
        [sys.executable, "-c", SCRAPED_WORKER, str(port)], env, tmp_path / "scraped.out"
    )
    try:
        body = await asyncio.to_thread(scrape, port)
    finally:
        process.kill()
        process.wait()
    assert "messaging_process_duration_seconds_bucket{" in body
    assert 'le="3600.0"' in body
    completed = [line for line in body.splitlines() if line.startswith("oqron_jobs_completed")]
    assert len(completed) == 1 and completed[0].startswith("oqron_jobs_completed_total{")
    assert completed[0].endswith('queue="scraped"} 1.0')
    assert "messaging_client_consumed_messages_total{" in body


SCRAPED_WORKER = """
import asyncio, sys
from oqron_nats import Client, queue
from oqron_nats.observe.prometheus import serve_prometheus

async def handler(ctx):
    return "ok"

async def main():
    client = Client()  # made before the SDK: its instruments follow once it is set
    serve_prometheus(int(sys.argv[1]), "127.0.0.1")
    q = queue("scraped", handler, client=client)
    async with client, q:
        job = await q.add({})
        await job.wait(timeout=30)
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_prometheus_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)
    with pytest.raises(ConfigError, match=r"pip install 'oqron-nats\[prometheus\]'"):
        serve_prometheus(free_port(), "127.0.0.1")


def test_metrics_are_shared_per_meter_provider() -> None:
    provider, _ = sdk()
    assert metrics_for(provider) is metrics_for(provider)
    assert metrics_for(None) is metrics_for(None)
    assert metrics_for(provider) is not metrics_for(None)
