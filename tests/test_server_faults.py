"""A stalled nats-server: unknown add() outcomes are safe to repeat, and a lease that cannot be
renewed for lock_ttl is given up (the attempt commits nothing and the job runs again)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from oqron_nats import Client, EnqueueError, JobContext, JobState, Unavailable, queue
from oqron_nats.testing.server import LocalServer

from .helpers import wait_for_state
from .support import Backstage


async def test_a_timed_out_add_is_finished_by_adding_the_same_id_again() -> None:
    with LocalServer() as server:
        client = Client(server.url, namespace="stall", request_timeout=0.3, retry_deadline=0.8)
        async with client:
            q = queue("stall", client=client)
            await q.add({"n": 0}, job_id="before")  # creates the stream and buckets
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with pytest.raises(EnqueueError) as info:
                    await q.add({"n": 1}, job_id="maybe")
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert info.value.outcome_unknown
            assert info.value.job_id == "maybe"
            again = await q.add({"n": 1}, job_id="maybe")  # the caller retries, as it should
            assert again.id == "maybe"
            assert await q.count() == 2
            assert await Backstage(client, "stall").work_messages() == 2, "one message per job"

            runs: list[str] = []

            async def handler(ctx: JobContext[Any]) -> None:
                runs.append(ctx.id)

            consumer = queue("stall", handler, client=client)
            async with consumer:
                await wait_for_state(consumer, "maybe", JobState.COMPLETED)
                await wait_for_state(consumer, "before", JobState.COMPLETED)
            assert sorted(runs) == ["before", "maybe"]


async def test_a_lease_that_cannot_be_renewed_for_lock_ttl_is_given_up() -> None:
    seen: list[str] = []
    started = asyncio.Event()

    async def handler(ctx: JobContext[Any]) -> str:
        if ctx.attempt == 1 and ctx.id == "long" and not seen:
            started.set()
            reason = await ctx.signal
            seen.append(reason)
            return "late result"
        return "fresh result"

    with LocalServer() as server:
        client = Client(server.url, namespace="unreachable", request_timeout=0.5)
        async with client:
            q = queue("lease", handler, client=client, lock_ttl=2, heartbeat=0.5)
            async with q:
                await q.add({"n": 1}, job_id="long")
                await asyncio.wait_for(started.wait(), 10)
                os.kill(server.pid, signal.SIGSTOP)  # NATS unreachable for longer than lock_ttl
                try:
                    await asyncio.sleep(3.0)
                finally:
                    os.kill(server.pid, signal.SIGCONT)
                assert seen, "the signal fired while NATS was unreachable"
                assert "could not be renewed" in seen[0]
                done = await wait_for_state(q, "long", JobState.COMPLETED, timeout=20)
            assert done.result == "fresh result", (
                "the attempt that lost its lease committed nothing"
            )
            assert done.stalled_count == 1
            assert done.attempt == 1


async def test_counts_wait_out_a_server_that_does_not_answer_for_a_while() -> None:
    """A count (STREAM.INFO) asked while no one answers (a stalled server here; an election on a
    cluster) is asked again until the retry deadline, and fails only after it."""
    with LocalServer() as server:
        client = Client(server.url, namespace="quiet", request_timeout=0.3, retry_deadline=3.0)
        async with client:
            q = queue("quiet", client=client)
            await q.add({"n": 0})
            os.kill(server.pid, signal.SIGSTOP)
            try:
                counting = asyncio.create_task(q.count(JobState.WAITING))
                await asyncio.sleep(1.0)  # a few request timeouts go by
                assert not counting.done()
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert await counting == 1
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with pytest.raises(Unavailable):  # past the deadline: the caller hears of it
                    await q.count(JobState.WAITING)
            finally:
                os.kill(server.pid, signal.SIGCONT)


async def test_stopping_and_closing_after_the_server_died_is_quiet_and_prompt() -> None:
    """A worker whose server died stops and closes without an exception (a raw
    BrokenPipeError came out of close()) and without waiting out its requests."""

    async def handler(ctx: JobContext[Any]) -> None:
        return None

    server = LocalServer().start()
    client = Client(server.url, namespace="gone")
    q = queue("gone", handler, client=client)
    try:
        await q.add({"n": 1})
        await q.start()
        server.kill()
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await q.stop(1.0)
        await client.close()
        assert time.monotonic() - started < 8.0
        await client.close()  # twice is fine too
    finally:
        server.close()
