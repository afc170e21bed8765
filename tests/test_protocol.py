"""The wire contract (docs/protocol.md): the shipped JSON Schema is the msgspec types', records
written by the library satisfy it, and a publisher in another language, following only the
document, enqueues jobs that a Python worker runs with their correlation id and trace context."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from oqron_nats import Client, JobState, queue
from oqron_nats._nats.names import Names
from oqron_nats.core.correlation import current_correlation_id
from oqron_nats.core.job import Job
from oqron_nats.core.wire import (
    NEVER_STORED,
    PROTOCOL_VERSION,
    record_schema,
    schema_text,
    shipped_schema,
)
from oqron_nats.ops.cli import main
from oqron_nats.storage.store import decode_record
from oqron_nats.testing.server import LocalServer

from .helpers import attributes, wait_for_state
from .support import Backstage

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
NODE_SCRIPT = Path(__file__).resolve().parent / "node" / "enqueue.mjs"
NODE_NATS = "nats@2.29.3"
NODE_CACHE = ROOT / ".cache" / "node-nats-2.29.3"
REQUIRE_NODE = os.environ.get("OQRON_REQUIRE_NODE") == "1"
"""Set by .ci/run: in CI a missing Node or npm registry fails the test instead of skipping it."""


def test_the_shipped_schema_is_generated_from_the_types() -> None:
    assert shipped_schema() == schema_text(), (
        "oqron_nats/schema/job-record.json is stale: regenerate it with "
        "python -c 'from oqron_nats.core.wire import schema_text as s; print(s(), end=\"\")' "
        "> oqron_nats/schema/job-record.json (and bump PROTOCOL_VERSION if writers must change)"
    )
    schema = json.loads(shipped_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    fields = {f.encode_name: f for f in msgspec.structs.fields(Job)}
    assert set(schema["properties"]) == set(fields) - set(NEVER_STORED)
    assert set(schema["required"]) == {
        name for name, f in fields.items() if f.required and name not in NEVER_STORED
    }
    assert schema["x-oqron-protocol"] == PROTOCOL_VERSION
    assert schema["properties"]["created_at"]["format"] == "date-time"


def test_the_protocol_document_names_every_field_and_its_example_decodes() -> None:
    text = PROTOCOL.read_text()
    assert f"Wire protocol version: **{PROTOCOL_VERSION}**" in text
    for name in record_schema()["properties"]:
        assert f"`{name}`" in text, f"docs/protocol.md does not describe the field {name!r}"
    example = re.search(r"```json\n(\{.*?\})\n```", text, re.S)
    assert example is not None, "docs/protocol.md has an example record"
    record = json.loads(example.group(1))
    jsonschema.validate(record, record_schema())
    job = decode_record("q.id", example.group(1).encode())
    assert job.state == JobState.WAITING and job.trace["traceparent"]


def test_the_protocol_document_spells_the_names_the_library_uses() -> None:
    n = Names.placeholders()
    spelled = {
        "jobs bucket": n.jobs_bucket,
        "state index entry": n.index_entry("<state>", "<id>"),
        "state index stream": n.index_stream,
        "lane": n.lane_filter(0).replace("p0", "p<priority>").replace(".*", ".<id>"),
        "schedule": n.schedule("<id>"),
    }
    document = PROTOCOL.read_text()
    missing = {what: name for what, name in spelled.items() if f"`{name}`" not in document}
    assert missing == {}, f"docs/protocol.md does not spell: {missing}"


async def test_records_the_library_writes_satisfy_the_schema(client: Client) -> None:
    async def handler(ctx: Any) -> dict[str, int]:
        if ctx.data["n"] == 1:
            raise ValueError("fails for good")
        return {"done": ctx.data["n"]}

    q = queue("schema", handler, client=client)
    async with q:
        jobs = [await q.add({"n": n}, attempts=1) for n in range(3)]
        delayed = await q.add({"n": 9}, delay=3600, priority=4, remove_on_complete=5)
        for job in jobs:
            await wait_for_state(q, job.id, JobState.COMPLETED, JobState.FAILED)
    backstage = Backstage(client, "schema")
    for job_id in [j.id for j in jobs] + [delayed.id]:
        stored = json.loads((await backstage.record(job_id)).value)
        jsonschema.validate(stored, record_schema())
    bad = {"id": "x", "queue": "schema", "state": "sleeping", "data": 1,
           "created_at": "2025-01-01T00:00:00Z", "correlation_id": "c"}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, record_schema())


# -- a publisher in another language --------------------------------------------------------


def node_modules() -> Path:
    """The node_modules holding the `nats` npm package, installed once into .cache/."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unavailable("node and npm are not installed here (.ci/run requires them in CI)")
    ready = NODE_CACHE / ".installed"
    if not ready.exists():
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        command = ["npm", "install", "--prefix", str(NODE_CACHE), "--no-audit", "--no-fund",
                   "--loglevel=error", NODE_NATS]  # fmt: skip
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            _unavailable(f"npm could not install {NODE_NATS} within 300 s (no registry?)")
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
            _unavailable(f"npm could not install {NODE_NATS} from the registry: {reason}")
        ready.touch()
    return NODE_CACHE / "node_modules"


def _unavailable(reason: str) -> Any:
    if REQUIRE_NODE:
        pytest.fail(reason)
    pytest.skip(reason)


async def run_node(spec: dict[str, Any], modules: Path) -> list[dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        "node", str(NODE_SCRIPT), json.dumps(spec),
        env={**os.environ, "OQRON_NODE_MODULES": str(modules)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("the node publisher did not finish within 60 s") from None
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def test_jobs_enqueued_from_node_run_in_python_with_their_context(
    nats_server: LocalServer, namespace: str
) -> None:
    modules = node_modules()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ran: dict[str, dict[str, Any]] = {}

    async def handler(ctx: Any) -> str:
        span = trace.get_current_span().get_span_context()
        ran[ctx.id] = {"data": ctx.data, "correlation_id": ctx.correlation_id,
                       "inherited": current_correlation_id.get(),
                       "trace_id": format(span.trace_id, "032x")}  # fmt: skip
        if ctx.data.get("fan_out"):
            await q.add({"child_of": ctx.id}, job_id=f"{ctx.id}-child")
        return "ok"

    parents = {n: traceparent() for n in range(4)}
    jobs: list[dict[str, Any]] = [
        {"id": f"node-{n}", "data": {"n": n, "fan_out": n == 0}, "priority": n % 3,
         "correlation_id": f"order-{n}", "traceparent": parents[n][0]}
        for n in range(3)
    ]  # fmt: skip
    jobs.append({"id": "node-late", "data": {"n": 3}, "delay_ms": 1500,
                 "correlation_id": "order-3", "traceparent": parents[3][0]})  # fmt: skip
    jobs.append({**jobs[1], "data": {"n": "again"}})  # the same id again: stored once
    async with Client(nats_server.url, namespace=namespace, tracer_provider=provider) as client:
        q = queue("polyglot", handler, client=client, strategy="priority")
        async with q:  # the worker provisions the queue; the node publisher only writes to it
            spec = {"url": nats_server.url, "namespace": namespace, "queue": "polyglot",
                    "jobs": jobs}  # fmt: skip
            printed = await run_node(spec, modules)
            assert [(p["id"], p["created"]) for p in printed] == [
                ("node-0", True), ("node-1", True), ("node-2", True), ("node-late", True),
                ("node-1", False),
            ]  # fmt: skip
            late = await q.get_job("node-late")
            assert late is not None and late.state == JobState.DELAYED
            for job_id in ("node-0", "node-1", "node-2", "node-late", "node-0-child"):
                await wait_for_state(q, job_id, JobState.COMPLETED, timeout=20)
            backstage = Backstage(client, "polyglot")
            assert await backstage.rejected_count() == 0, "no message was rejected"
            for job in jobs[:4]:
                stored = json.loads((await backstage.record(job["id"])).value)
                assert stored["triggered_by"] == "node"
                jsonschema.validate(stored, record_schema())
            assert await q.count(JobState.COMPLETED) == 5

    for n, job in enumerate(jobs[:4]):
        seen = ran[job["id"]]
        assert seen["correlation_id"] == seen["inherited"] == f"order-{n}"
        assert seen["trace_id"] == parents[n][1]
    assert ran["node-1"]["data"] == {"n": 1, "fan_out": False}, "the first add of the id won"
    child = ran["node-0-child"]
    assert child["correlation_id"] == "order-0" and child["trace_id"] == parents[0][1]
    consumers = {attributes(s)["messaging.message.id"]: s for s in exporter.get_finished_spans()
                 if s.kind == SpanKind.CONSUMER}  # fmt: skip
    for n, job in enumerate(jobs[:4]):
        span = consumers[job["id"]]
        assert span.parent is not None and format(span.parent.span_id, "016x") == parents[n][2]
        assert attributes(span)["messaging.message.conversation_id"] == f"order-{n}"


# -- from the command line ----------------------------------------------------------------


async def cli(capsys: pytest.CaptureFixture[str], server: LocalServer, namespace: str,
              *argv: str) -> tuple[int, str, str]:  # fmt: skip
    code = await asyncio.to_thread(main, [*argv, "--url", server.url, "--namespace", namespace])
    out, err = capsys.readouterr()
    return code, out, err


async def test_oqron_jobs_add(
    nats_server: LocalServer,
    client: Client,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = await cli(capsys, nats_server, namespace, "jobs", "add", "nope", "--data", "1")
    assert code == 1 and "no such queue" in err
    q = queue("cli-add", client=client)
    await q.count()  # provisions the queue
    argv = ("jobs", "add", "cli-add", "--data", '{"n": 1}', "--job-id", "cli-1",
            "--priority", "3", "--correlation-id", "corr-1", "--json")  # fmt: skip
    code, out, err = await cli(capsys, nats_server, namespace, *argv)
    assert code == 0, err
    assert json.loads(out) == {"job_id": "cli-1", "queue": "cli-add", "state": "waiting",
                               "correlation_id": "corr-1", "created": True}  # fmt: skip
    job = await q.get_job("cli-1")
    assert job is not None and (job.data, job.priority) == ({"n": 1}, 3)
    message = await Backstage(client, "cli-add").lane_message("cli-1", priority=3)
    assert message is not None and message.headers["Oqron-Correlation-Id"] == "corr-1"

    again = ("jobs", "add", "cli-add", "--data", '{"n": 2}', "--job-id", "cli-1")
    code, out, _ = await cli(capsys, nats_server, namespace, *again)
    assert code == 0 and "already there" in out
    job = await q.get_job("cli-1")
    assert job is not None and job.data == {"n": 1}, "added once"

    monkeypatch.setattr("sys.stdin", io.StringIO('{"from": "stdin"}'))
    later = ("jobs", "add", "cli-add", "--data", "-", "--delay", "3600", "--json")
    code, out, err = await cli(capsys, nats_server, namespace, *later)
    assert code == 0, err
    delayed = await q.get_job(json.loads(out)["job_id"])
    assert delayed is not None and delayed.state == JobState.DELAYED
    assert delayed.data == {"from": "stdin"}

    code, _, err = await cli(capsys, nats_server, namespace, "jobs", "add", "cli-add",
                             "--data", "{not json")  # fmt: skip
    assert code == 2 and "--data is not JSON" in err
    code, _, err = await cli(capsys, nats_server, namespace, "jobs", "add", "cli-add",
                             "--data", "1", "--job-id", "bad.id")  # fmt: skip
    assert code == 2 and "job id" in err
    with pytest.raises(SystemExit) as usage:
        main(["jobs", "add", "cli-add", "--data", "1", "--priority", "10"])
    assert usage.value.code == 2
    assert await q.count() == 2
