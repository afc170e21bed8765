"""A chaos-test worker process: ``python -m tests.chaos.worker --queue q --log handler.jsonl``.

Its handler appends the side-effect lines the checker reads (``tests/chaos/checker.py``): a
``start`` line when it begins, an ``end`` line when it returns (``fenced`` if its lease was lost
meanwhile), and its success hook a ``completed`` line (the hook runs after the terminal write and
the ack). Each line is one O_APPEND write, so several processes share one file safely.

``--dont-randomize`` connects to the first URL of ``OQRON_NATS_URL`` (nats-py otherwise shuffles
them), so a cluster test can place each worker on a node of its choice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from oqron_nats import Client, Hooks, Job, JobContext, RetryPolicy, worker


def append(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def main() -> None:
    """Run one worker until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lock-ttl", type=float, default=3.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument(
        "--dont-randomize", action="store_true", help="connect to the first URL, not any"
    )
    args = parser.parse_args()
    pid = os.getpid()

    async def handle(ctx: JobContext[dict[str, Any]]) -> dict[str, int]:
        token = ctx.fencing_token
        append(args.log, {"kind": "start", "job": ctx.id, "pid": pid, "attempt": ctx.attempt,
                          "token": token, "t": time.time()})  # fmt: skip
        await asyncio.sleep(float(ctx.data.get("work", 0.01)))
        append(args.log, {"kind": "end", "job": ctx.id, "pid": pid, "token": token,
                          "t": time.time(), "fenced": ctx.signal.aborted})  # fmt: skip
        return {"pid": pid}

    async def completed(job: Job[Any], result: Any) -> None:
        append(args.log, {"kind": "completed", "job": job.id, "pid": pid, "t": time.time()})

    video = worker(
        args.queue,
        handle,
        concurrency=args.concurrency,
        lock_ttl=args.lock_ttl,
        heartbeat=args.heartbeat,
        retries=RetryPolicy(max=4, strategy="exponential", base_delay=0.2, max_delay=2.0),
        hooks=Hooks(on_success=completed),
        shutdown_timeout=5.0,
        client=Client(connect_options={"dont_randomize": True}) if args.dont_randomize else None,
    )

    async def run() -> None:
        task = asyncio.create_task(video.run())
        ready = asyncio.create_task(video.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        print("ready", flush=True)
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
