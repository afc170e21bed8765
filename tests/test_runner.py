"""Worker processes run by ``oqron worker``: health endpoints, JSON logs, signals, secrets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from oqron_nats import Client, JobState, queue
from oqron_nats.ops.collector import YOUNG_SCAN_EVERY
from oqron_nats.testing.server import LocalServer

from .helpers import ROOT, attributes, eventually, wait_for_state
from .support import Backstage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe(port: int, path: str) -> int:
    """The HTTP status of a health endpoint; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class WorkerCli:
    """``python -m oqron_nats worker ...`` in a subprocess, its output collected line by line."""

    def __init__(self, server_url: str, namespace: str, queue_name: str, *argv: str) -> None:
        env = {
            **os.environ,
            "OQRON_NATS_URL": server_url,
            "OQRON_NAMESPACE": namespace,
            "CLI_TEST_QUEUE": queue_name,
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oqron_nats", "worker", *argv],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            self.lines.extend(self.process.stdout)

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (every line must be one)."""
        return [json.loads(line) for line in list(self.lines)]

    async def said(self, event: str, timeout: float = 15.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            return next((e for e in self.events() if e.get("event") == event), None)

        return await eventually(check, timeout, f"the worker to log {event!r}")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


async def test_health_json_logs_and_graceful_sigterm(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    port = free_port()
    cli = WorkerCli(  # no --log-format: stdout is a pipe, so JSON lines
        nats_server.url, namespace, "run-plain", "tests.cli_worker:plain",
        "--health-port", str(port), "--concurrency", "2",
    )  # fmt: skip
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = Client(nats_server.url, namespace=namespace, tracer_provider=tracer_provider)
    try:
        running = await cli.said("workers running")
        assert running["collector"]["frozen_objects"] > 1000, "start-up's objects frozen"
        assert running["collector"]["young_scan_every"] == YOUNG_SCAN_EVERY
        assert probe(port, "/livez") == 200
        assert probe(port, "/readyz") == 200
        assert probe(port, "/nope") == 404
        q = queue("run-plain", client=traced)
        jobs = [await q.add({"n": n}, correlation_id=f"req-{n}") for n in range(5)]
        for job in jobs:
            await wait_for_state(q, job.id, JobState.COMPLETED)
        started = await cli.said("worker started")
        assert started["concurrency"] == 2, "--concurrency overrides the definition"
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0
        for event in cli.events():  # JSON lines with level and UTC timestamp
            assert {"event", "level", "timestamp"} <= event.keys()
        assert any(e["event"] == "worker stopped" for e in cli.events())
        # a line logged in a handler carries the job's context and the publisher's trace
        trace_of = {
            attributes(s)["messaging.message.id"]: format(s.context.trace_id, "032x")
            for s in exporter.get_finished_spans()
        }
        working = [e for e in cli.events() if e["event"] == "working"]
        assert len(working) == 5
        for line in working:
            assert line["correlation_id"] == f"req-{line['n']}"
            assert line["trace_id"] == trace_of[line["job_id"]]
            assert len(line["span_id"]) == 16
    finally:
        cli.close()
        await traced.close()


async def test_a_second_signal_hands_running_jobs_back_at_once(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    cli = WorkerCli(
        nats_server.url, namespace, "run-long", "tests.cli_worker:plain", "--log-format", "json"
    )
    try:
        await cli.said("workers running")
        q = queue("run-long", client=client)
        job = await q.add({"sleep": 60})
        await wait_for_state(q, job.id, JobState.ACTIVE)
        cli.signal(signal.SIGTERM)
        await cli.said("stopping: running jobs get the shutdown timeout")
        time.sleep(0.5)
        assert cli.process.poll() is None, "the first signal waits for the job (timeout 60 s)"
        began = time.monotonic()
        cli.signal(signal.SIGINT)
        assert cli.wait(15) == 0
        assert time.monotonic() - began < 10, "the second signal does not wait out the timeout"
        back = await q.get_job(job.id)
        assert back is not None and back.state == JobState.WAITING and back.attempt == 0
        lease = await Backstage(client, "run-long").lease(job.id)
        assert lease is None, "the abandoned job's lease is released"
    finally:
        cli.close()


async def test_readyz_follows_the_nats_connection_and_livez_does_not(
    tmp_path: Path, namespace: str
) -> None:
    server = LocalServer(store_dir=tmp_path / "store").start()
    port = free_port()
    cli = WorkerCli(
        server.url, namespace, "run-ready", "tests.cli_worker:plain",
        "--health-port", str(port), "--log-format", "json",
    )  # fmt: skip
    try:
        await cli.said("workers running")
        assert probe(port, "/readyz") == 200
        server.stop()

        async def status(path: str, code: int) -> bool:
            return probe(port, path) == code

        await eventually(lambda: status("/readyz", 503), 15, "readyz to fail without NATS")
        assert probe(port, "/livez") == 200, "liveness never depends on NATS"
        server.restart()
        await eventually(lambda: status("/readyz", 200), 30, "readyz back after reconnect")
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0
    finally:
        cli.close()
        server.close()


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_a_canary_secret_reaches_no_log_line_record_or_dead_letter(
    nats_server: LocalServer, client: Client, namespace: str, log_format: str
) -> None:
    canary = f"CANARY-{namespace}-731"
    name = f"run-secret-{log_format}"
    cli = WorkerCli(
        nats_server.url, namespace, name, "tests.cli_worker:secretive", "--log-format", log_format
    )
    try:
        await eventually(lambda: _logged(cli, "workers running"), 15, "the worker to start")
        q = queue(name, client=client)
        job = await q.add({"customer_ssn": canary, "order": 7})
        failed = await wait_for_state(q, job.id, JobState.FAILED, timeout=20)
        assert failed.error is not None and "the registry refused ***" in failed.error.message
        await eventually(lambda: _logged(cli, "job failed"), 10, "the failure to be logged")
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0
        output = "".join(cli.lines)
        for logged in ("calling the registry", "payload seen by ctx.log", "registry call failed",
                       "will not retry *** today", "the registry refused ***"):  # fmt: skip
            assert logged in output, logged
        assert "Traceback" in output or '"exc_type"' in output, "the traceback was logged"
        assert canary not in output
        record = {k: v for k, v in _record(failed).items() if k != "data"}
        assert canary not in json.dumps(record), "error fields and timeline"
        letter = await Backstage(client, name).dead_letter(job.id)
        assert letter is not None and b'"order":7' in letter.data
        assert canary.encode() not in letter.data, "the dead letter, payload included"
    finally:
        cli.close()


async def _logged(cli: WorkerCli, text: str) -> bool:
    return any(text in line for line in list(cli.lines))


def _record(job: Any) -> dict[str, Any]:
    import msgspec

    decoded: dict[str, Any] = msgspec.to_builtins(job)
    return decoded


def test_a_health_port_in_use_is_a_configuration_error(
    nats_server: LocalServer, namespace: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # all interfaces, as the worker binds
        taken.listen()
        port = taken.getsockname()[1]
        cli = WorkerCli(
            nats_server.url, namespace, "run-port", "tests.cli_worker:plain",
            "--health-port", str(port), "--log-format", "json",
        )  # fmt: skip
        try:
            assert cli.wait(30) == 2
            [error] = [e for e in cli.events() if e.get("level") == "error"]
            assert error["event"] == "cannot start the workers"
            assert f"cannot serve the health port {port}" in error["error"]
        finally:
            cli.close()
