"""Server CPU per guaranteed job, adding and processing: ``python -m bench.server_cpu``.

Each repetition starts its own nats-server, adds ``--jobs`` no-op jobs (one add_bulk) to a paused
queue, starts one worker process (concurrency 100, ``guaranteed_worker=True``), resumes and
waits until every job is completed, then until the index stream has settled (index deletes
expired). The nats-server's user+system CPU over each phase, divided by the jobs, is printed, with
the number of streams the queue uses. Run it against two checkouts to compare layouts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from oqron_nats.testing.server import LocalServer

from . import ours
from .procs import cpu_seconds

SETTLE = 2.5
"""Seconds waited after the last completion, so that work the server does later is counted."""


async def one_run(jobs: int, concurrency: int) -> tuple[float, float, float, int]:
    """(server µs per job adding, processing; jobs/s; streams) of one fresh server."""
    with LocalServer() as server:
        pid = server.process.pid if server.process else 0
        started = cpu_seconds(pid)
        async with ours.paused_backlog(
            server.url, jobs, concurrency=concurrency, guaranteed=True
        ) as (q, (worker,)):
            added = cpu_seconds(pid) - started
            before, wall = cpu_seconds(pid), time.perf_counter()
            await q.resume()
            await ours.until_completed(q, jobs)
            wall = time.perf_counter() - wall
            await asyncio.sleep(SETTLE)
            processed = cpu_seconds(pid) - before
            backend = await q._open()
            streams = len(
                await backend.store.index.conn.stream_names(subject=f"oqron.{q.client.namespace}.>")
            )
            worker.kill()
    return added / jobs * 1e6, processed / jobs * 1e6, jobs / wall, streams


async def main() -> None:
    """Repeat, print each run and the medians."""
    parser = argparse.ArgumentParser(prog="python -m bench.server_cpu")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    runs = [await one_run(args.jobs, args.concurrency) for _ in range(args.runs)]
    for add, proc, rate, streams in runs:
        print(f"  add {add:6.1f} µs/job  process {proc:6.1f} µs/job  {rate:7,.0f} jobs/s  "
              f"streams in the namespace {streams}")  # fmt: skip
    add = statistics.median(r[0] for r in runs)
    proc = statistics.median(r[1] for r in runs)
    print(
        f"median server CPU per guaranteed job: add {add:.1f} µs, process {proc:.1f} µs, "
        f"total {add + proc:.1f} µs ({args.jobs:,} jobs, {args.runs} runs)"
    )


if __name__ == "__main__":
    asyncio.run(main())
