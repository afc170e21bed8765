"""How fast the dashboard's pages are with 100 queues and 100,000 jobs in one:
``python -m bench.dashboard``.

Issue 15's targets: the overview in under 300 ms, a page of 50 jobs in under 200 ms. The big
queue's jobs are stored as a worker leaves them (through the library's own store, as
``bench.admin_reads`` does), the other queues get a few waiting jobs each, and every page is
fetched through the ASGI app in this process (httpx's ASGI transport: the app's own time, no
socket). The charts' first read of the hour is timed alone (61 index reads per state and
queue, once per dashboard process, in the background of its first overview), then the overview
twice: read from NATS each time (the cache dropped; the charts' ended minutes kept, their current
minute read at most every 5 s), and as an open page's refresh finds it (read at most once a
second per dashboard, whatever the browsers).
"""

from __future__ import annotations

import argparse
import asyncio
import math
from datetime import datetime

import httpx
import msgspec

from oqron_nats import Client, JobState, queue
from oqron_nats.core.job import Job, moved
from oqron_nats.dashboard import app
from oqron_nats.dashboard.history import History
from oqron_nats.testing.server import LocalServer

from .admin_reads import fill, timed

TARGETS = {"overview": 300.0, "page": 200.0}


def kept_job(n: int, now: datetime) -> Job[msgspec.Raw]:
    """A finished job as a worker leaves it: 95% completed, 5% failed."""
    job: Job[msgspec.Raw] = Job(
        id=f"job-{n:07d}", queue="kept", state=JobState.WAITING,
        data=msgspec.Raw(b'{"n":%d,"to":"user%d@example.com"}' % (n, n)), created_at=now,
        correlation_id=f"req-{n}", max_attempts=4,
    )  # fmt: skip
    state = JobState.FAILED if n % 20 == 0 else JobState.COMPLETED
    running = moved(moved(job, JobState.WAITING, "added"), JobState.ACTIVE, "attempt 1")
    return moved(running, state, None, attempt=1, finished_at=now)


async def main() -> None:
    """Fill the queues, then time the pages."""
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with LocalServer() as server:
        async with Client(server.url, namespace="bench") as client:
            big = queue("kept", client=client)
            seconds = await fill(await big._open(), args.jobs, kept_job)
            while await big.count() < args.jobs:  # noqa: ASYNC110 - a server-side count
                await asyncio.sleep(0.1)
            for n in range(args.queues - 1):
                small = queue(f"q{n:03d}", client=client)
                await small.add({"n": n})
                await small.close()
            print(f"{args.queues} queues; {args.jobs:,} jobs in 'kept' (stored in {seconds:.0f} s)")
            web = app(client=client)
            dash = web.state.dashboard
            transport = httpx.ASGITransport(app=web)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:

                async def get(path: str) -> None:
                    response = await http.get(path)
                    assert response.status_code == 200, (path, response.status_code)

                async def cold_overview() -> None:
                    dash.hub._read_at = -math.inf  # read every queue from NATS again
                    await get("/")

                names = await dash.handles.names()

                async def cold_chart() -> None:  # a dashboard's first read, in the background
                    history = History(client)
                    await asyncio.gather(*(history.series(name) for name in names))

                job = (await big.get_jobs("completed", limit=1))[0].id
                await get("/")  # opens the queue handles once, as a running dashboard has
                results = {
                    "overview (chart cold)": await timed(
                        f"every chart's hour read from the index, {args.queues} queues",
                        cold_chart, 5,
                    ),
                    "overview": await timed(
                        f"overview, {args.queues} queues read from NATS", cold_overview, args.runs
                    ),
                    "overview (cached)": await timed(
                        "overview, as an open page's refresh finds it", lambda: get("/"), args.runs
                    ),
                    "page": await timed(
                        "queue page: 50 completed jobs, first page",
                        lambda: get("/queues/kept?state=completed"), args.runs,
                    ),
                    "page 20": await timed(
                        "queue page: 50 completed jobs, page 20",
                        lambda: get("/queues/kept?state=completed&page=20"), args.runs,
                    ),
                    "list": await timed(
                        "queue list fragment (what a live refresh fetches)",
                        lambda: get("/queues/kept/list?state=completed"), args.runs,
                    ),
                    "job": await timed(
                        "job page", lambda: get(f"/queues/kept/jobs/{job}"), args.runs
                    ),
                }  # fmt: skip
            await dash.close()
            for name, target in TARGETS.items():
                verdict = "holds" if results[name] < target else "DOES NOT HOLD"
                print(f"target: {name} < {target:.0f} ms: {results[name]:.1f} ms, {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
