"""The video worker: ``python -m workers.video [--health-port 8080] [--log-format json] ...``.

Consumes the ``video-encode`` queue that ``publishers.video`` fills (NATS from OQRON_NATS_URL).
It runs like ``oqron worker workers.video:video``: logging set up for an application, health
endpoints, SIGTERM or Ctrl-C stops it gracefully (running encodes get the shutdown timeout to
finish), a second signal hands them back at once.
"""

from __future__ import annotations

import asyncio
import os
import sys

from oqron_nats import JobContext, RetryPolicy, worker
from oqron_nats.ops.runner import run_main
from payloads.video import QUEUE, Encoded, VideoJob

STEP_SECONDS = float(os.environ.get("VIDEO_STEP_SECONDS", "0.2"))


async def encode(ctx: JobContext[VideoJob]) -> Encoded:
    """Encode each resolution in turn (a sleep stands in for ffmpeg), reporting progress."""
    outputs: list[str] = []
    for done, height in enumerate(ctx.data.resolutions, start=1):
        if ctx.signal.aborted:
            raise RuntimeError(f"stopped: {ctx.signal.reason}")
        await asyncio.sleep(STEP_SECONDS)
        outputs.append(f"s3://videos/{ctx.data.video_id}/{height}p.mp4")
        ctx.progress(100 * done / len(ctx.data.resolutions), f"{height}p encoded")
    ctx.log("info", "video encoded", video_id=ctx.data.video_id, outputs=len(outputs))
    return Encoded(video_id=ctx.data.video_id, outputs=outputs)


video = worker(
    QUEUE,
    encode,
    payload=VideoJob,
    concurrency=2,
    retries=RetryPolicy(max=2, strategy="exponential", base_delay=5.0, max_delay=60.0),
    shutdown_timeout=20.0,
)

if __name__ == "__main__":
    sys.exit(run_main(video))
