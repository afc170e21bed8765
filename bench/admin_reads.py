"""How fast count() and a 50-job page are with many kept jobs: ``python -m bench.admin_reads``.

Issue 4's target: a count and a 50-job page in under 50 ms with 100,000 kept jobs. The jobs are
written through the library's own store (the record, its state index entry), as a worker that
completed them would leave them, then every read is timed. For contrast, the script also times
reading every record, which is what a count without the index costs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec

from oqron_nats import Client, JobState, queue
from oqron_nats.core.job import Job, moved
from oqron_nats.storage.backend import Backend
from oqron_nats.testing.server import LocalServer


def kept_job(n: int, now: datetime) -> Job[msgspec.Raw]:
    """A completed job as a worker leaves it."""
    job: Job[msgspec.Raw] = Job(
        id=f"job-{n:07d}", queue="kept", state=JobState.WAITING,
        data=msgspec.Raw(b'{"n":%d}' % n), created_at=now, correlation_id=f"req-{n}",
        max_attempts=4,
    )  # fmt: skip
    failed = n % 20 == 0
    state = JobState.FAILED if failed else JobState.COMPLETED
    running = moved(moved(job, JobState.WAITING, "added"), JobState.ACTIVE, None, attempt=1)
    return moved(running, state, None, attempt=1, finished_at=now)


async def fill(
    backend: Backend,
    total: int,
    make: Callable[[int, datetime], Job[msgspec.Raw]] = kept_job,
) -> float:
    """Store ``total`` kept jobs made by ``make``, pipelined; returns the seconds it took."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    window = asyncio.Semaphore(512)

    async def one(n: int) -> None:
        async with window:
            await backend.store.create(make(n, now))

    await asyncio.gather(*(one(n) for n in range(total)))
    return time.perf_counter() - started


async def timed(label: str, call: Callable[[], Awaitable[object]], runs: int) -> float:
    """Run ``call`` ``runs`` times; print and return the median milliseconds."""
    spent = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        spent.append((time.perf_counter() - started) * 1000)
    median = statistics.median(spent)
    print(f"  {label:<52} median {median:7.2f} ms   max {max(spent):7.2f} ms")
    return median


async def main() -> None:
    """Fill a queue and time its reads."""
    parser = argparse.ArgumentParser(prog="python -m bench.admin_reads")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with LocalServer() as server:
        async with Client(server.url, namespace="bench") as client:
            q = queue("kept", client=client)
            backend = await q._open()
            seconds = await fill(backend, args.jobs)
            # the index entries went out without waiting for answers: let them land
            while await q.count() < args.jobs:  # noqa: ASYNC110 - polling a server-side count
                await asyncio.sleep(0.1)
            print(f"{args.jobs:,} kept jobs (95% completed, 5% failed) stored in {seconds:.1f} s")
            results = {
                "count()": await timed("count() over every state", q.count, args.runs),
                "count(completed)": await timed(
                    "count('completed')", lambda: q.count(JobState.COMPLETED), args.runs
                ),
                "page(completed)": await timed(
                    "get_jobs('completed', limit=50)",
                    lambda: q.get_jobs(JobState.COMPLETED, limit=50),
                    args.runs,
                ),
                "page(failed)": await timed(
                    "get_jobs('failed', limit=50)",
                    lambda: q.get_jobs(JobState.FAILED, limit=50),
                    args.runs,
                ),
                "page(all)": await timed(
                    "get_jobs(limit=50) over every state", lambda: q.get_jobs(limit=50), args.runs
                ),
            }
            await timed(
                "get_jobs('completed', limit=50, offset=1000)",
                lambda: q.get_jobs(JobState.COMPLETED, limit=50, offset=1000),
                max(3, args.runs // 4),
            )
            scan = await timed("reading every record (no index)", lambda: _scan(backend), 1)
            both = results["count(completed)"] + results["page(completed)"]
            verdict = "holds" if both < 50 else "DOES NOT HOLD"
            target = f"count + 50-job page < 50 ms at {args.jobs:,} jobs"
            print(f"target: {target}: {both:.1f} ms, {verdict}")
            print(f"(a full read of the records takes {scan / 1000:.1f} s)")


async def _scan(backend: Backend) -> int:
    return sum([1 async for _ in backend.store.scan()])


if __name__ == "__main__":
    asyncio.run(main())
