"""The publisher-only ``video_queue``, and ``python -m publishers.video`` to send sample jobs."""

from __future__ import annotations

import argparse
import asyncio
import uuid

from oqron_nats import queue
from payloads.video import QUEUE, VideoJob

video_queue = queue(QUEUE, payload=VideoJob)
"""Import this in any service: ``await video_queue.add(VideoJob(...), correlation_id=...)``."""


async def publish_samples(count: int) -> list[str]:
    """Add ``count`` sample videos; return their job ids."""
    ids = []
    async with video_queue:
        for n in range(count):
            job = await video_queue.add(
                VideoJob(video_id=f"video-{n}", source_url=f"https://uploads.example/{n}.mov"),
                correlation_id=f"req-{uuid.uuid4().hex[:12]}",
            )
            print(f"queued {job.id} video-{n} correlation_id={job.correlation_id}", flush=True)
            ids.append(job.id)
    return ids


def main() -> None:
    """Command line: ``python -m publishers.video --count 3``."""
    parser = argparse.ArgumentParser(description="Publish sample video-encode jobs.")
    parser.add_argument("--count", type=int, default=3)
    asyncio.run(publish_samples(parser.parse_args().count))


if __name__ == "__main__":
    main()
