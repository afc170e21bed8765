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
import io
import json
import logging
import os
import signal
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
    parser.add_argument("--strategy", choices=["fifo", "lifo", "priority"], default="fifo")
    parser.add_argument(
        "--dont-randomize", action="store_true", help="connect to the first URL, not any"
    )
    args = parser.parse_args()
    pid = os.getpid()
    # warnings with the wall clock, to place them against the faults (faults.jsonl)
    logging.basicConfig(format="%(created).3f %(message)s", level=logging.WARNING)
    if os.environ.get("OQRON_CHAOS_DEBUG"):
        logging.getLogger("oqron_nats._nats").setLevel(logging.DEBUG)

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
        strategy=args.strategy,
        lock_ttl=args.lock_ttl,
        heartbeat=args.heartbeat,
        retries=RetryPolicy(max=4, strategy="exponential", base_delay=0.2, max_delay=2.0),
        hooks=Hooks(on_success=completed),
        shutdown_timeout=5.0,
        client=Client(connect_options={"dont_randomize": True}) if args.dont_randomize else None,
    )

    def dump() -> None:
        """SIGUSR1: print what the worker is doing (the harness asks a stuck worker)."""
        consumer, backend = video.queue._consumer, video.queue._backend
        server = backend._conn.server_name if backend else None
        lines = [f"dump: paused={backend.control.state.paused if backend else None} on {server}"]
        if consumer is not None:
            claimer = consumer._claimer
            p = claimer.puller
            pullers = [(p.outstanding, p.has_open_request, p.suspect)] if p else []
            lines.append(
                f"dump: running={consumer.running} in_flight={consumer.in_flight} "
                f"room={consumer._room()} may_claim={consumer._may_claim()} "
                f"trouble={claimer.trouble} paused_on_server={claimer.paused_on_server} "
                f"pullers={pullers}"
            )
        for task in asyncio.all_tasks():
            stack = io.StringIO()
            task.print_stack(limit=6, file=stack)
            lines.append(f"dump: task {task.get_name()}: {stack.getvalue()!r}")
        print("\n".join(lines), flush=True)

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
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
