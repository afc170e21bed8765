"""The library logs through the standard library (issue 12, item 2): silent until the
application configures logging, then at the levels it chose; the entry points log on stderr.

Each application runs in a subprocess of its own (``python -c``), as a user's would: logging is
global, and this test process has pytest's handlers on the root logger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import Client, JobState, queue
from oqron_nats._nats.permissions import for_role
from oqron_nats.testing.server import LocalServer

from .helpers import ROOT, wait_for_state
from .secured import SecuredServer

APP = """
import asyncio, logging, os, sys

setup = sys.argv[1]
if setup == "basic":
    logging.basicConfig(level=logging.DEBUG,
                        format="%(levelname)s %(name)s %(module)s:%(lineno)d %(message)s")
elif setup == "structlog":  # structlog's recommended standard library setup
    import structlog
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    rendered = logging.StreamHandler(sys.stderr)
    rendered.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
    ))
    plain = logging.FileHandler(os.environ["PLAIN_LOG"])  # another handler, a plain formatter
    plain.setFormatter(logging.Formatter("%(levelname)s %(name)s %(module)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG, handlers=[rendered, plain])

from oqron_nats import Client, RetryPolicy, queue

async def handler(ctx):
    if ctx.data["fail"]:
        raise ValueError("no such image")
    return "ok"

async def main():
    async with Client(os.environ["URL"], namespace=os.environ["NS"]) as client:
        q = queue("logs", handler, retries=RetryPolicy(max=0), client=client)
        async with q:
            job = await q.add({"fail": sys.argv[2] == "fail"}, correlation_id="req-7")
            done = await job.wait(timeout=30)
    assert done.state == ("failed" if sys.argv[2] == "fail" else "completed"), done.state

asyncio.run(main())
if setup == "none":  # the library configured nothing either
    import structlog
    assert not structlog.is_configured()
    assert logging.getLogger().handlers == [] and logging.getLogger().level == logging.WARNING
    assert logging.getLogger("oqron_nats").handlers == []
    assert logging.getLogger("oqron_nats").level == logging.NOTSET
"""


def application(server: LocalServer, namespace: str, setup: str, outcome: str,
                tmp_path: Path) -> tuple[str, str, Path]:  # fmt: skip
    """Run APP; its stdout and stderr, and where its plain handler wrote (structlog setup)."""
    plain = tmp_path / f"plain-{setup}-{outcome}.log"
    env = {**os.environ, "URL": server.url, "NS": namespace, "PLAIN_LOG": str(plain)}
    done = subprocess.run(
        [sys.executable, "-c", APP, setup, outcome],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, done.stderr, plain


def test_an_application_that_configures_nothing_sees_only_warnings_on_stderr(
    nats_server: LocalServer, namespace: str, tmp_path: Path
) -> None:
    out, err, _ = application(nats_server, namespace, "none", "succeed", tmp_path)
    assert out == "", "the library never writes on stdout"
    assert err == "", "a successful job logs nothing at WARNING or above"

    out, err, _ = application(nats_server, namespace, "none", "fail", tmp_path)
    assert out == ""
    # Python's last-resort handler: the message only, one readable line (no dict, no repr)
    [line] = [line for line in err.splitlines() if line.startswith("job failed")]
    assert " queue=logs " in line and " attempt=1 " in line
    assert 'error_type=ValueError error="no such image"' in line
    assert "job_id=" in line and "correlation_id=req-7" in line, "contextvars bound by the worker"
    assert "{" not in line


def test_a_basic_config_gets_the_library_lines_at_its_levels(
    nats_server: LocalServer, namespace: str, tmp_path: Path
) -> None:
    out, err, _ = application(nats_server, namespace, "basic", "succeed", tmp_path)
    assert out == ""
    lines = err.splitlines()
    [completed] = [line for line in lines if " job completed " in line]
    # the record of the module that logged, under oqron_nats, with the event's fields
    assert completed.startswith("DEBUG oqron_nats.runtime.execution execution:")
    message = completed.split(" ", 3)[3]
    assert message.startswith("job completed job_id=")
    assert " queue=logs attempt=1 seconds=" in message
    assert "correlation_id=req-7" in message
    assert all(line.split()[1].startswith(("oqron_nats", "nats", "asyncio")) for line in lines)

    out, err, _ = application(nats_server, namespace, "basic", "fail", tmp_path)
    assert out == ""
    [failed] = [line for line in err.splitlines() if " job failed " in line]
    assert failed.startswith("ERROR oqron_nats.runtime.execution ")


def test_a_structlog_setup_renders_the_library_lines_as_its_own(
    nats_server: LocalServer, namespace: str, tmp_path: Path
) -> None:
    out, err, plain = application(nats_server, namespace, "structlog", "succeed", tmp_path)
    assert out == ""
    events = [json.loads(line) for line in err.splitlines()]  # every line rendered as JSON
    # a plain handler next to it reads a line, not the dict handed to the ProcessorFormatter
    [line] = [line for line in plain.read_text().splitlines() if "job completed" in line]
    assert line.startswith("DEBUG oqron_nats.runtime.execution execution job completed job_id=")
    [completed] = [e for e in events if e["event"] == "job completed"]
    assert completed["level"] == "debug"
    assert completed["logger"] == "oqron_nats.runtime.execution"
    assert completed["queue"] == "logs" and completed["attempt"] == 1
    assert completed["correlation_id"] == "req-7"
    assert {"timestamp", "job_id"} <= completed.keys()

    out, err, _ = application(nats_server, namespace, "structlog", "fail", tmp_path)
    assert out == ""
    [failed] = [e for ln in err.splitlines() if (e := json.loads(ln))["event"] == "job failed"]
    assert failed["level"] == "error" and failed["error"] == "no such image"


def test_a_disabled_line_builds_no_event() -> None:
    """The standard library's level decides, before any processor, record or context merge."""
    code = """
import logging, structlog
from oqron_nats.runtime import execution
structlog.contextvars.bind_contextvars(job_id="j", queue="q", correlation_id="c", attempt=1)
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)
logging.getLogger().addHandler(Keep())
def processor(*args):
    raise AssertionError("a disabled line reached a processor")
for configured in (False, True):
    if configured:
        structlog.configure(processors=[processor])
    for _ in range(3):
        execution.log.debug("job completed", job_id="j", queue="q", attempt=1, seconds=0.01)
        execution.log.info("job handed back at shutdown", job_id="j")
assert records == []
logging.getLogger("oqron_nats").setLevel(logging.DEBUG)  # now they are built
structlog.reset_defaults()
execution.log.debug("job completed", job_id="j", queue="q", attempt=1, seconds=0.01)
[record] = records
assert record.name == "oqron_nats.runtime.execution" and record.levelno == logging.DEBUG
assert record.getMessage() == (
    "job completed job_id=j queue=q attempt=1 seconds=0.01 correlation_id=c"
)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


# -- the entry points: logs on stderr, stdout for the output ------------------------------------

NS = "logs"


def _user(name: str, role: str, queues: list[str]) -> str:
    block = for_role(role, NS, queues).config()  # type: ignore[arg-type]
    return f"{{user: {name}, password: {name}-pw\n{block}}}\n"


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    users = _user("admin", "admin", []) + _user("publisher", "publisher", ["orders"])
    config = f"authorization {{\n  users = [\n{users}  ]\n}}\n"
    with SecuredServer(config, tmp_path_factory.mktemp("logs")) as running:
        yield running


def oqron(server: SecuredServer, who: str, *argv: str) -> subprocess.CompletedProcess[str]:
    url = f"nats://{who}:{who}-pw@127.0.0.1:{server.port}"
    return subprocess.run(
        [sys.executable, "-m", "oqron_nats", *argv, "--url", url, "--namespace", NS],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_cli_logs_on_stderr_and_keeps_json_output_parseable(roles: SecuredServer) -> None:
    done = oqron(roles, "admin", "provision", "orders", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"provisioned": ["orders"]}

    # the publisher may not list streams: NATS refuses, the library logs a warning
    refused = oqron(roles, "publisher", "queues", "--json")
    assert refused.returncode != 0
    assert refused.stdout == "", "nothing a script would try to parse"
    lines = refused.stderr.splitlines()
    [warning] = [json.loads(line) for line in lines if line.startswith("{")]
    assert warning["event"] == "nats error" and warning["level"] == "warning"
    assert "permissions violation" in warning["error"]
    assert lines[-1].startswith("oqron: "), "and the one line that says why"

    allowed = oqron(roles, "publisher", "jobs", "list", "orders", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout) == []


async def test_a_worker_process_logs_on_stderr_only(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    env = {**os.environ, "OQRON_NATS_URL": nats_server.url, "OQRON_NAMESPACE": namespace,
           "CLI_TEST_QUEUE": "logs-worker", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "oqron_nats", "worker", "tests.cli_worker:plain"],
            cwd=ROOT, env=env, stdout=out, stderr=err, text=True,
        )  # fmt: skip
        try:
            q = queue("logs-worker", client=client)
            job = await q.add({"n": 1})
            await wait_for_state(q, job.id, JobState.COMPLETED, timeout=30)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        out.seek(0)
        err.seek(0)
        assert out.read() == ""
        events: list[dict[str, Any]] = [json.loads(line) for line in err]  # stderr: a file
    said = [e["event"] for e in events]
    assert {"workers running", "working", "worker stopped"} <= set(said)
