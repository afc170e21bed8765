"""An add() whose outcome is unknown (the server stalled) is safe to repeat with the same job id."""

from __future__ import annotations

import os
import signal

import pytest

from oqron_nats import Client, EnqueueError, JobState, queue
from oqron_nats.server import LocalServer

from .helpers import stream_message_count, wait_for_state


async def test_a_timed_out_add_is_finished_by_adding_the_same_id_again() -> None:
    with LocalServer() as server:
        client = Client(server.url, namespace="stall", request_timeout=0.3, publish_deadline=0.8)
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
            names = client.names("stall")
            assert await stream_message_count(client, names.stream) == 2, "one message per job"

            runs: list[str] = []

            async def handler(ctx) -> None:
                runs.append(ctx.id)

            consumer = queue("stall", handler, client=client)
            async with consumer:
                await wait_for_state(consumer, "maybe", JobState.COMPLETED)
                await wait_for_state(consumer, "before", JobState.COMPLETED)
            assert sorted(runs) == ["before", "maybe"]
