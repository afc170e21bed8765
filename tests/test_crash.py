"""A claimed job is never lost: kill -9 a worker mid-job, another worker finishes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from oqron_nats import Client, JobState, queue
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log, wait_for_state


@pytest.mark.parametrize("strategy", ["fifo", "priority", "lifo"])
async def test_a_killed_workers_job_runs_again_elsewhere(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path, strategy: str
) -> None:
    log = tmp_path / "executions.jsonl"
    options = {"queue": "crash", "strategy": strategy, "lock_ttl": 2, "heartbeat": 0.5}
    doomed = WorkerProcess(nats_server.url, namespace, log, sleep=60, **options)
    survivor = None
    try:
        q = queue("crash", client=client)
        job = await q.add({"n": 1}, priority=4)
        await eventually(lambda: _started(log, 1), what="the first worker to start the job")
        running = await q.get_job(job.id)
        assert running is not None and running.state == JobState.ACTIVE
        doomed.kill()
        survivor = WorkerProcess(nats_server.url, namespace, log, sleep=0, **options)
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=20)
        assert done.result == {"pid": survivor.pid}
        assert done.stalled_count == 1, "the record counts the stall"
        assert done.attempt == 1, "a stall is not an attempt"
        starts = [e for e in read_log(log) if e["event"] == "start"]
        assert [e["pid"] for e in starts] == [doomed.pid, survivor.pid]
    finally:
        doomed.close()
        if survivor is not None:
            survivor.close()


async def _started(log: Path, n: int) -> bool:
    return len([e for e in read_log(log) if e["event"] == "start"]) >= n
