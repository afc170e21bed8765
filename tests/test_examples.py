"""The deployable examples: ``python -m workers.video`` consumes what ``publishers.video`` adds."""

from __future__ import annotations

import os
import subprocess
import sys

from oqron_nats import Client, JobState, queue
from oqron_nats.testing.server import LocalServer
from payloads.video import QUEUE, Encoded, VideoJob

from .helpers import ROOT, wait_for_state
from .test_runner import free_port, probe


def env_for(server: LocalServer, namespace: str) -> dict[str, str]:
    return {
        **os.environ,
        "OQRON_NATS_URL": server.url,
        "OQRON_NAMESPACE": namespace,
        "VIDEO_STEP_SECONDS": "0.05",
        "PYTHONUNBUFFERED": "1",
    }


async def test_video_worker_module_consumes_the_publisher_modules_jobs(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    env = env_for(nats_server, namespace)
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers.video", "--health-port", str(port), "--log-format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            if "workers running" in line:
                break
        else:
            raise AssertionError(f"the worker exited with {worker.wait()}")
        assert probe(port, "/readyz") == 200, "the same runner as `oqron worker`: health endpoints"
        published = subprocess.run(
            [sys.executable, "-m", "publishers.video", "--count", "3"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        job_ids = [
            line.split()[1] for line in published.stdout.splitlines() if line.startswith("queued")
        ]
        assert len(job_ids) == 3
        reader = queue(QUEUE, payload=VideoJob, client=client)
        for n, job_id in enumerate(job_ids):
            done = await wait_for_state(reader, job_id, JobState.COMPLETED, timeout=30)
            assert isinstance(done.data, VideoJob)
            assert done.data.video_id == f"video-{n}"
            assert done.progress == 100.0
            assert done.correlation_id.startswith("req-")
            result = Encoded(**done.result)
            assert result.outputs == [f"s3://videos/video-{n}/{h}p.mp4" for h in (480, 720, 1080)]
        worker.terminate()
        assert worker.wait(30) == 0, "SIGTERM shuts the worker down cleanly"
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
