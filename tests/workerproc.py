"""A worker process for tests: ``python -m tests.workerproc --queue q --log file.jsonl``.

Each execution appends ``start`` and ``end`` lines (job id, pid, time) to the log with O_APPEND,
so concurrent processes can share one file. Prints ``ready`` once its consumers are bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from oqron_nats import JobContext, worker
from oqron_nats.core.config import RateLimit, StallScanner


def append(path: str, record: dict[str, Any]) -> None:
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def rate_limit(args: argparse.Namespace) -> RateLimit | None:
    if not args.rate_max:
        return None
    field = args.rate_key
    key = (lambda data: str(data.get(field))) if field else None
    return RateLimit(args.rate_max, args.rate_duration, key=key)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--strategy", default="fifo")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--lock-ttl", type=float, default=30.0)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--shutdown-timeout", type=float, default=25.0)
    parser.add_argument("--max-stalled-count", type=int, default=3)
    parser.add_argument("--guaranteed", type=int, default=1)
    parser.add_argument("--scanner", type=float, default=0.0, help="scanner interval; 0: off")
    parser.add_argument("--rate-max", type=int, default=0, help="cluster rate limit; 0: off")
    parser.add_argument("--rate-duration", type=float, default=1.0)
    parser.add_argument("--rate-key", default="", help="data field that names the group")
    args = parser.parse_args()

    async def handler(ctx: JobContext[Any]) -> dict[str, Any]:
        append(
            args.log,
            {
                "event": "start",
                "job": ctx.id,
                "pid": os.getpid(),
                "t": time.time(),
                "attempt": ctx.attempt,
            },
        )
        if isinstance(ctx.data, dict) and ctx.data.get("crash"):
            os._exit(3)  # a poison job: it kills the worker process that runs it
        seconds = ctx.data.get("sleep", args.sleep) if isinstance(ctx.data, dict) else args.sleep
        if seconds:
            await asyncio.sleep(seconds)
        append(args.log, {"event": "end", "job": ctx.id, "pid": os.getpid(), "t": time.time()})
        return {"pid": os.getpid()}

    w = worker(
        args.queue,
        handler,
        concurrency=args.concurrency,
        strategy=args.strategy,
        lock_ttl=args.lock_ttl,
        heartbeat=args.heartbeat,
        shutdown_timeout=args.shutdown_timeout,
        max_stalled_count=args.max_stalled_count,
        guaranteed_worker=bool(args.guaranteed),
        cross_node_stall_scanner=StallScanner(args.scanner) if args.scanner else False,
        rate_limit=rate_limit(args),
    )
    run = asyncio.create_task(w.run())
    ready = asyncio.create_task(w.ready.wait())
    await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
    if run.done():
        run.result()  # raises why it could not start
    print("ready", flush=True)
    await run


if __name__ == "__main__":
    asyncio.run(main())
