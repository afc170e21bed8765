"""Test helpers: waiting for a condition, running worker processes (NATS itself: support.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.sdk.trace import ReadableSpan

from oqron_nats import Job, JobState, Queue

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.02)


async def holds(value: object) -> bool:
    """``value`` as a check for :func:`eventually` (``lambda: holds(condition)``)."""
    return bool(value)


async def wait_for_state(
    q: Queue[Any], job_id: str, *states: JobState, timeout: float = 10.0
) -> Job[Any]:
    """The job once it is in one of ``states``."""

    async def check() -> Job[Any] | None:
        job = await q.get_job(job_id)
        return job if job is not None and job.state in states else None

    return await eventually(check, timeout, f"job {job_id} to be {[str(s) for s in states]}")


async def listed_active(q: Queue[Any], count: int) -> None:
    """Wait until the state index lists ``count`` jobs as active: a running job is listed a
    moment after its claim (runtime/late_entry.py)."""

    async def listed() -> bool:
        return await q.count(JobState.ACTIVE) == count

    await eventually(listed, what=f"{count} job(s) listed as active")


async def done(q: Any, job_id: str) -> None:
    """The job completed, seen by reading its record (wait() would listen)."""
    await wait_for_state(q, job_id, JobState.COMPLETED)
    await asyncio.sleep(0.1)  # an event sent with the last write has arrived


def start_process(args: list[str], env: dict[str, str], output: Path) -> subprocess.Popen[str]:
    """Start a process that prints ``ready``; its output is copied to ``output`` meanwhile.

    The output keeps being read (a pipe nobody reads fills up and blocks the writer, and a
    closed one breaks it), and start_process returns once the process said ``ready``.
    """
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ready = threading.Event()
    said_ready: list[bool] = []

    def pump() -> None:
        assert process.stdout is not None
        with process.stdout, output.open("a") as out:
            for line in process.stdout:
                out.write(line)
                out.flush()
                if line.strip() == "ready":
                    said_ready.append(True)
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True, name=f"output-{process.pid}").start()
    if not ready.wait(60) or not said_ready:
        process.kill()
        raise AssertionError(f"{args[2]} exited with {process.wait()}; its output: {output}")
    return process


class WorkerProcess:
    """A worker in a subprocess (``python -m tests.workerproc``), logging its executions."""

    def __init__(self, url: str, namespace: str, log: Path, **options: Any) -> None:
        self.log = log
        args = [sys.executable, "-m", "tests.workerproc", "--log", str(log)]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {
            **os.environ,
            "OQRON_NATS_URL": url,
            "OQRON_NAMESPACE": namespace,
            "PYTHONUNBUFFERED": "1",
        }
        self.output = log.with_name(f"{log.stem}.out")
        self.process = start_process(args, env, self.output)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for a graceful exit; return the exit code."""
        self.process.terminate()
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a worker process appended."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """A finished span's attributes (the SDK's spans always have them)."""
    assert span.attributes is not None
    return span.attributes
