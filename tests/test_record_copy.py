"""A job message carries a copy of the record it was sent with (issue 14): the worker claims
the job by compare-and-set on the copy's revision instead of reading the record first. The
copy is never trusted on its own: one that is not the stored record any more (the job moved
since), that does not decode, or that is another job's, leaves the decision to the record."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from oqron_nats import Client, JobContext, JobState, queue
from oqron_nats._nats.names import RECORD_HEADER, RECORD_REVISION_HEADER

from .helpers import eventually, wait_for_state
from .support import Backstage

JOBS = 20


@pytest.mark.parametrize("guaranteed", [True, False])
async def test_a_job_is_claimed_from_its_messages_copy_without_reading_its_record(
    client: Client, guaranteed: bool
) -> None:
    name = f"copy-{int(guaranteed)}"
    behind = Backstage(client, name)
    publisher = queue(name, client=client)
    jobs = [await publisher.add({"n": n}) for n in range(JOBS)]
    message = await behind.lane_message(jobs[0].id)
    assert message is not None and RECORD_HEADER in message.headers
    before = await behind.critical_requests()
    q = queue(name, lambda ctx: None, client=client, guaranteed_worker=guaranteed)
    async with q:
        for job in jobs:
            done = await wait_for_state(q, job.id, JobState.COMPLETED)
            assert done.attempt == 1
    # the record -> active, the record -> completed: no read, and no lease for a job that
    # ends before its first heartbeat
    assert await behind.critical_requests() - before == 2 * JOBS
    assert all([await behind.lease(job.id) is None for job in jobs])


async def test_a_stale_copy_loses_to_the_record(client: Client) -> None:
    behind = Backstage(client, "stale-copy")
    publisher = queue("stale-copy", client=client)
    job = await publisher.add({"n": 1})
    message = await behind.lane_message(job.id)
    assert message is not None and message.headers[RECORD_HEADER]
    await behind.rewrite_record(job.id, lambda fields: fields.update(data={"n": 2}))
    seen: list[Any] = []

    async def handler(ctx: JobContext[Any]) -> None:
        seen.append(ctx.data)

    async with queue("stale-copy", handler, client=client):
        await wait_for_state(publisher, job.id, JobState.COMPLETED)
    assert seen == [{"n": 2}], "the handler got the stored record's data, not the message's"


async def test_a_stale_copy_of_a_cancelled_job_does_not_run_it(client: Client) -> None:
    behind = Backstage(client, "stale-cancel")
    publisher = queue("stale-cancel", client=client)
    job = await publisher.add({"n": 1})
    message = await behind.lane_message(job.id)
    assert message is not None
    await publisher.cancel(job.id)
    copy = {k: v for k, v in message.headers.items() if k.startswith("Oqron-")}
    await behind.publish_on_lane(job.id, headers=copy, msg_id="again")
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    async with queue("stale-cancel", handler, client=client):
        await eventually(lambda: _empty(behind), what="the stale message to be settled")
        await asyncio.sleep(0.2)
    assert ran == []
    assert (await publisher.get_job(job.id)).state == JobState.CANCELLED  # type: ignore[union-attr]


async def test_a_broken_or_foreign_copy_is_ignored_and_the_job_runs_once(client: Client) -> None:
    behind = Backstage(client, "bad-copy")
    publisher = queue("bad-copy", client=client)
    job, other = await publisher.add({"n": 1}), await publisher.add({"n": 2})
    others = await behind.lane_message(other.id)
    assert others is not None
    broken = {
        "not-json": {RECORD_HEADER: "{not json", RECORD_REVISION_HEADER: "1"},
        "no-revision": {RECORD_HEADER: others.headers[RECORD_HEADER]},
        "bad-revision": {RECORD_HEADER: others.headers[RECORD_HEADER],
                         RECORD_REVISION_HEADER: "abc"},
        "another-job": {RECORD_HEADER: others.headers[RECORD_HEADER],
                        RECORD_REVISION_HEADER: others.headers[RECORD_REVISION_HEADER]},
    }  # fmt: skip
    for msg_id, headers in broken.items():
        await behind.publish_on_lane(job.id, headers=headers, msg_id=msg_id)
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    async with queue("bad-copy", handler, client=client):
        await wait_for_state(publisher, job.id, JobState.COMPLETED)
        await wait_for_state(publisher, other.id, JobState.COMPLETED)
        await eventually(lambda: _empty(behind), what="every message to be settled")
    assert sorted(ran) == sorted([job.id, other.id]), "each job ran once"
    assert (await publisher.get_job(other.id)).attempt == 1  # type: ignore[union-attr]


async def _empty(behind: Backstage) -> bool:
    return await behind.work_messages() == 0


async def test_a_rejected_messages_sample_keeps_no_copy_of_a_record(client: Client) -> None:
    behind = Backstage(client, "copy-sample")
    publisher = queue("copy-sample", client=client)
    job = await publisher.add({"card": "4111-1111-1111-1111"})
    message = await behind.lane_message(job.id)
    assert message is not None and "4111" in message.headers[RECORD_HEADER]
    copied = {RECORD_HEADER: message.headers[RECORD_HEADER], "X-Long": "y" * 5000}
    await behind.publish_on_lane("ghost", headers=copied, msg_id="g")  # no such job: rejected
    async with queue("copy-sample", lambda ctx: None, client=client):
        await wait_for_state(publisher, job.id, JobState.COMPLETED)
        await eventually(lambda: _empty(behind), what="the ghost to be rejected")
    [sample] = await behind.rejected_samples()
    assert sample.subject == behind.names.lane(0, "ghost")
    assert "4111" not in str(msgspec.to_builtins(sample)), "the payload's copy is not kept"
    assert sample.headers[RECORD_HEADER].startswith("(a copy of a job record")
    assert all(len(value) <= 257 for value in sample.headers.values())
