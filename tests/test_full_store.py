"""A server whose JetStream storage is full refuses every write, a worker's claims and moves
included: adding fails with a typed error that says so, no strategy drains, nothing is lost,
and once room is made every job runs exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

import nats
import pytest

from oqron_nats import Client, EnqueueError, JobContext, JobState, queue
from oqron_nats.core.job import Strategy
from oqron_nats.testing.server import LocalServer

from .helpers import eventually

STORE = 4 * 1024 * 1024
"""Bytes of JetStream storage the server allows."""
JOBS = 30
FILLER = "FILLER"


@pytest.fixture
def small_server() -> Iterator[LocalServer]:
    """A server of its own per test: what an earlier test left would free room meanwhile."""
    with LocalServer(max_file_store=STORE) as server:
        yield server


async def fill_the_store(url: str) -> int:
    """Publish messages to a stream of their own until the server refuses one of 4 KB, then
    one of 16 bytes: the count."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=FILLER, subjects=[FILLER.lower()])
        count = 0
        for size in (4096, 16):
            while True:
                try:
                    await js.publish(FILLER.lower(), b"x" * size)
                except nats.js.errors.APIError:
                    break
                count += 1
                assert count < STORE // 16, "the server took more than its max_file_store"
        return count
    finally:
        await nc.close()


async def make_room(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(FILLER)
    finally:
        await nc.close()


@pytest.mark.parametrize("strategy", ["fifo", "priority", "lifo"])
async def test_a_full_store_stalls_every_strategy_and_loses_nothing(
    small_server: LocalServer, namespace: str, strategy: Strategy
) -> None:
    runs: Counter[int] = Counter()

    async def handler(ctx: JobContext[Any]) -> None:
        runs[ctx.data] += 1

    async with Client(small_server.url, namespace=namespace, retry_deadline=2) as client:
        q = queue("full", handler, client=client, strategy=strategy)
        jobs = [await q.add(n, priority=n % 10) for n in range(JOBS)]
        filled = await fill_the_store(small_server.url)
        try:
            assert filled > 0
            with pytest.raises(EnqueueError, match="storage full"):
                await q.add("one more")
            await q.start()
            await asyncio.sleep(3)  # more than the retry deadline of a claim's write
            assert not runs, "a job ran while the store refused its claim"
            await make_room(small_server.url)
            await eventually(lambda: _all_ran(runs), timeout=30, what="every job ran")
            await asyncio.sleep(0.5)
            assert runs == Counter(range(JOBS)), "a job ran twice"
            for job in jobs:
                await eventually(partial(_completed, q, job.id), what=f"{job.id} done")
        finally:
            await q.close()


async def _all_ran(runs: Counter[int]) -> bool:
    return len(runs) >= JOBS


async def _completed(q: Any, job_id: str) -> bool:
    job = await q.get_job(job_id)
    return job is not None and job.state == JobState.COMPLETED


async def test_a_bulk_on_a_full_store_fails_each_item_in_about_one_retry_deadline(
    small_server: LocalServer, namespace: str
) -> None:
    """Every item of an add_bulk on a full store fails with a typed error that says so, and the
    items are refused side by side: the whole bulk takes about one retry deadline, not one per
    item (a chunk's writes are asked again concurrently, not one after the other)."""
    async with Client(small_server.url, namespace=namespace, retry_deadline=2) as client:
        q = queue("full-bulk", client=client)
        await q.add("before")
        await fill_the_store(small_server.url)
        started = asyncio.get_running_loop().time()
        result = await asyncio.wait_for(q.add_bulk([{"data": n} for n in range(200)]), 60)
        took = asyncio.get_running_loop().time() - started
        assert not result.jobs
        assert len(result.errors) == 200
        assert all(isinstance(e, EnqueueError) for e in result.errors.values())
        assert all("storage full" in str(e) for e in result.errors.values())
        assert took < 15, f"the bulk took {took:.0f} s"
        assert await q.count("waiting") == 1
