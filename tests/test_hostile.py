"""Hostile or corrupt data never crashes a reader (issue 11): records that do not decode are
shown as such, and a typed queue can always list the jobs whose payload failed its type."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from oqron_nats import (
    Client,
    CorruptRecord,
    DeadLetter,
    JetStreamError,
    JobContext,
    JobState,
    OqronError,
    PayloadError,
    RetryPolicy,
    queue,
)
from oqron_nats.testing.server import LocalServer

from .helpers import eventually, wait_for_state
from .support import Backstage
from .test_cli import oqron, oqron_json
from .test_metrics import points

GARBAGE = {
    "bad-json": b'{"id": "x", "state": ',
    "wrong-type": b'{"id": 5, "queue": "q", "state": "waiting"}',
    "bad-state": msgspec.json.encode(
        {"id": "x", "queue": "q", "state": "exploded", "data": 1,
         "created_at": "2026-01-01T00:00:00Z", "correlation_id": "c", "max_attempts": 1}
    ),
}  # fmt: skip


async def corrupt(client: Client, name: str, job_id: str, value: bytes) -> None:
    """Overwrite a job's stored record with ``value`` behind the library's back."""
    await Backstage(client, name).overwrite_record(job_id, value)


@pytest.mark.parametrize("kind", sorted(GARBAGE))
async def test_a_corrupt_record_is_a_typed_error_alone_and_left_out_of_lists(
    nats_server: LocalServer,
    client: Client,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    q = queue("hostile", client=client)
    good = await q.add({"n": 1})
    bad = await q.add({"n": 2})
    await corrupt(client, "hostile", bad.id, GARBAGE[kind])

    with pytest.raises(CorruptRecord) as info:
        await q.get_job(bad.id)
    assert isinstance(info.value, OqronError)
    assert info.value.size == len(GARBAGE[kind])
    assert bad.id in str(info.value)
    assert [job.id for job in await q.get_jobs()] == [good.id]
    assert [job.id for job in await q.get_jobs(JobState.WAITING)] == [good.id]
    assert await q.count(JobState.WAITING) == 2, "the index still lists it: counted, not read"
    assert await q.oldest_waiting() is not None

    rows = await oqron_json(capsys, nats_server, namespace, "jobs", "list", "hostile")
    assert {row["id"]: row["state"] for row in rows} == {good.id: "waiting", bad.id: "corrupt"}
    corrupt_row = next(row for row in rows if row["id"] == bad.id)
    assert corrupt_row["size"] == len(GARBAGE[kind]) and corrupt_row["error"]
    code, out, _ = await oqron(capsys, nats_server, namespace, "jobs", "list", "hostile")
    assert code == 0 and "CORRUPT" in out
    [summary] = await oqron_json(capsys, nats_server, namespace, "queues")
    assert summary["waiting"] == 2
    code, _, err = await oqron(capsys, nats_server, namespace, "jobs", "show", bad.id)
    assert code == 1 and "does not decode" in err


async def test_a_worker_removes_the_message_of_a_corrupt_record_and_goes_on(
    client: Client,
) -> None:
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    publisher = queue("hostile-run", client=client)
    bad = await publisher.add({"n": 0})
    await corrupt(client, "hostile-run", bad.id, GARBAGE["bad-json"])
    q = queue("hostile-run", handler, client=client)
    async with q:
        good = await publisher.add({"n": 1})
        await wait_for_state(q, good.id, JobState.COMPLETED)
    assert ran == [good.id]


class Order(msgspec.Struct):
    sku: str
    quantity: int


async def test_a_typed_queue_lists_and_shows_jobs_whose_payload_failed_its_type(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    untyped = queue("orders", client=client)  # another service, with no payload type
    job = await untyped.add({"sku": "A-1", "quantity": "three"})

    async def handler(ctx: JobContext[Order]) -> None:
        return None

    typed = queue("orders", handler, payload=Order, client=client, retries=RetryPolicy(max=0))
    async with typed:
        await wait_for_state(untyped, job.id, JobState.FAILED)
    [failed] = await typed.get_jobs(status="failed")
    assert failed.id == job.id
    assert failed.data == {"sku": "A-1", "quantity": "three"}, "the raw value is shown"  # type: ignore[comparison-overlap]
    assert failed.data_error is not None and "quantity" in failed.data_error
    assert failed.error is not None and failed.error.type == PayloadError.__name__
    shown = await typed.get_job(job.id)
    assert shown is not None and shown.data_error == failed.data_error
    good = await typed.add(Order(sku="B-2", quantity=2))
    assert (await typed.get_job(good.id)).data_error is None  # type: ignore[union-attr]
    rows = await oqron_json(capsys, nats_server, namespace, "jobs", "list", "orders", "--status",
                            "failed")  # fmt: skip
    assert [row["id"] for row in rows] == [job.id]


async def test_a_corrupt_dead_letter_is_listed_as_such(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fail(ctx: JobContext[Any]) -> None:
        raise RuntimeError("no")

    q = queue("hostile-dlq", fail, client=client, retries=RetryPolicy(max=0),
              dead_letter=DeadLetter())  # fmt: skip
    async with q:
        job = await q.add({"n": 1})
        await wait_for_state(q, job.id, JobState.FAILED)
    await Backstage(client, "hostile-dlq").forge_dead_letter("forged", b"not a record")
    rows = await oqron_json(capsys, nats_server, namespace, "dlq", "list", "hostile-dlq")
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {job.id, "forged"}
    assert by_id["forged"]["error"]["type"] == "CorruptRecord"
    assert by_id[job.id]["error"]["type"] == "RuntimeError"


async def rejected_state(
    capsys: pytest.CaptureFixture[str], server: LocalServer, namespace: str, name: str
) -> tuple[int, dict[str, Any]]:
    """The queue's rejected count (oqron queues) and its samples by reason (oqron dlq rejected)."""
    summaries = await oqron_json(capsys, server, namespace, "queues")
    [summary] = [s for s in summaries if s["name"] == name]
    samples = await oqron_json(capsys, server, namespace, "dlq", "rejected", name)
    return summary["rejected"], {sample["reason"]: sample for sample in samples}


async def test_garbage_on_the_lanes_is_removed_counted_and_sampled(
    nats_server: LocalServer, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = InMemoryMetricReader()
    client = Client(nats_server.url, namespace=namespace,
                    meter_provider=MeterProvider(metric_readers=[reader]))  # fmt: skip
    ran: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        ran.append(ctx.id)

    async with client:
        publisher = queue("garbage", client=client)
        job = await publisher.add({"n": 1})
        behind = Backstage(client, "garbage")
        names = behind.names
        await behind.publish_on_lane("a", b"\x00\xff not an id")
        with pytest.raises(JetStreamError, match="maximum"):  # refused: 16 KiB a message
            await behind.publish_on_lane("b", b"x" * 900_000, priority=3)
        await behind.publish_on_lane("b", b"x" * 9_000, priority=3)
        await behind.publish_on_lane("c", b"no-such-job")
        q = queue("garbage", handler, client=client)
        async with q:
            await wait_for_state(q, job.id, JobState.COMPLETED)

            async def all_rejected() -> bool:
                return await behind.work_messages() == 0

            await eventually(all_rejected, what="the garbage to be removed")
        count, samples = await rejected_state(capsys, nats_server, namespace, "garbage")
    assert ran == [job.id]
    assert count == 3
    assert set(samples) == {"not-a-job-id", "no-record"}
    assert samples["no-record"]["body"] == "no-such-job"
    assert samples["no-record"]["subject"] == names.lane(0, "c")
    assert len(samples["not-a-job-id"]["body"]) <= 256
    rejected = {p.attributes["reason"]: p.value for p in points(reader)["oqron.messages.rejected"]}
    assert rejected == {"not-a-job-id": 2, "no-record": 1}


async def test_a_foreign_schedule_firing_into_a_lane_is_deleted_and_stops_firing(
    nats_server: LocalServer, client: Client, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def handler(ctx: JobContext[Any]) -> None:
        return None

    publisher = queue("foreign", client=client)
    job = await publisher.add({"n": 1})
    behind = Backstage(client, "foreign")
    names = behind.names
    q = queue("foreign", handler, client=client)
    async with q:
        await wait_for_state(q, job.id, JobState.COMPLETED)
        for scheduled, body in (("evil", b"garbage!"), (job.id, job.id.encode())):
            await behind.publish_schedule(scheduled, body, "@every 1s", target="fired")

        async def schedules_gone() -> bool:
            left = await behind.schedule_subjects()
            return not left

        await eventually(schedules_gone, timeout=15, what="both schedules to be deleted")
        count, samples = await rejected_state(capsys, nats_server, namespace, "foreign")
        await asyncio.sleep(2.5)  # a schedule still there would fire twice more
        assert (await rejected_state(capsys, nats_server, namespace, "foreign"))[0] == count
    assert set(samples) == {"not-a-job-id", "foreign-schedule"}
    assert samples["foreign-schedule"]["headers"]["Nats-Scheduler"] == names.schedule(job.id)
    done = await q.get_job(job.id)
    assert done is not None and done.attempt == 1, "the completed job did not run again"


async def test_foreign_entries_on_the_state_index_are_neither_errors_nor_listed(
    client: Client,
) -> None:
    """Messages the library did not write on a queue's state index (an entry time that is not
    one, an entry of no job, an unknown state, a longer subject): counts and pages go on and
    list only real jobs, and a listing removes the entry of a job that does not exist."""
    q = queue("foreign-index", client=client)
    job = await q.add({"n": 1})
    behind = Backstage(client, "foreign-index")
    await behind.publish_on_index("waiting.ghost", headers={"Oqron-Entered": "garbage"})
    await behind.publish_on_index("waiting.a.b")
    await behind.publish_on_index("exploded.ghost")
    assert await q.count(JobState.WAITING) == 2, "an entry is counted, not read"
    assert [found.id for found in await q.get_jobs(JobState.WAITING)] == [job.id]
    assert await q.count(JobState.WAITING) == 1, "the listing removed the ghost's entry"


async def test_a_large_foreign_message_on_the_state_index_is_refused(client: Client) -> None:
    """A page reads hundreds of index messages at once: the stream takes none over 1 KiB (an
    entry is a few headers), so a foreign one cannot make each read megabytes."""
    q = queue("big-index", client=client)
    job = await q.add({"n": 1})
    behind = Backstage(client, "big-index")
    with pytest.raises(JetStreamError, match="maximum"):
        await behind.publish_on_index("waiting.big", b"x" * 2048)
    await behind.publish_on_index("waiting.small", b"x" * 256)
    assert [found.id for found in await q.get_jobs(JobState.WAITING)] == [job.id]
