"""The overview's per-minute chart from what NATS stores (the state index's entry times), not
only from the events a dashboard saw: a dashboard started after the jobs ran still shows them."""

from __future__ import annotations

import time
from typing import Any

import httpx

from oqron_nats import Client, JobState, RetryPolicy, queue
from oqron_nats.dashboard.history import History, merged
from oqron_nats.testing.server import LocalServer

from .dashboard_helpers import Served
from .helpers import eventually, wait_for_state


async def _run(client: Client, name: str, done: int, failed: int) -> list[str]:
    async def handler(ctx: Any) -> None:
        if ctx.data["fail"]:
            raise ValueError("no")

    q = queue(name, handler, client=client, retries=RetryPolicy(max=0))
    async with q:
        jobs = [await q.add({"fail": n >= done}) for n in range(done + failed)]
        for job in jobs:
            await wait_for_state(q, job.id, JobState.COMPLETED, JobState.FAILED)
    return [job.id for job in jobs]


async def test_history_counts_the_finished_jobs_per_minute_and_keeps_ended_minutes(
    client: Client,
) -> None:
    ids = await _run(client, "hist", done=7, failed=3)
    history = History(client)
    now = time.time()
    series = await history.series("hist", now)
    assert len(series) == 60
    assert sum(c for c, _ in series) == 7 and sum(f for _, f in series) == 3
    assert sum(c + f for c, f in series[-2:]) == 10, "all in the last minute or two"

    later = now + 125  # two minutes on: their minute has ended, and is kept
    moved_on = await history.series("hist", later)
    assert sum(c for c, _ in moved_on) == 7 and moved_on[-1] == (0, 0)
    q = queue("hist", client=client)
    for job_id in ids:
        await q.remove(job_id)
    assert await history.series("hist", later) == moved_on, "an ended minute is read once"
    assert await History(client).series("hist", later) == [(0, 0)] * 60, "removed: not stored"
    assert await history.series("hist", now + 3700) == [(0, 0)] * 60, "an hour on: gone"


def test_merged_takes_the_larger_count_per_minute() -> None:
    assert merged([(3, 0), (0, 1)], [(1, 2), (0, 0)]) == [(3, 2), (0, 1)]


async def test_a_dashboard_started_after_the_jobs_ran_charts_them(
    nats_server: LocalServer, client: Client, namespace: str
) -> None:
    await _run(client, "before", done=4, failed=2)
    with Served(nats_server.url, namespace) as served:
        async with httpx.AsyncClient(base_url=served.url) as http:

            async def charted() -> bool:  # the first read of the hour may finish after it
                return "4 completed and 2 failed in the last hour" in (await http.get("/")).text

            await eventually(charted, what="the chart of the jobs that ran before")
