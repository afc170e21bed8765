"""add(): validation, record-then-publish, idempotent job ids, unique default ids."""

from __future__ import annotations

import asyncio
import math
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from oqron_nats import (
    Client,
    InvalidName,
    InvalidOption,
    JobContext,
    JobState,
    PayloadError,
    PayloadTooLarge,
    RetryPolicy,
    queue,
)
from oqron_nats.core.job import AddOptions, Job
from oqron_nats.queue import new_job_id

from .helpers import eventually, wait_for_state
from .support import Backstage


class Email(msgspec.Struct):
    to: str
    subject: str
    retries: int = 0


async def assert_nothing_stored(client: Client, name: str) -> None:
    q = queue(name, client=client)
    assert await q.count() == 0
    assert await Backstage(client, name).work_messages() == 0


async def test_wrong_payload_type_is_rejected_and_nothing_is_stored(client: Client) -> None:
    q = queue("emails", payload=Email, client=client)
    with pytest.raises(PayloadError, match=r"Expected `str`, got `int` - at `\$.to`"):
        await q.add({"to": 42, "subject": "hi"})
    with pytest.raises(PayloadError, match="subject"):
        await q.add({"to": "a@example.com"})
    with pytest.raises(PayloadError):
        await q.add(Email(to=1, subject="x"))  # type: ignore[arg-type]  # Structs are not checked on init
    await assert_nothing_stored(client, "emails")


async def test_valid_typed_payload_is_stored_and_returned_typed(client: Client) -> None:
    q = queue("emails", payload=Email, client=client)
    job = await q.add({"to": "a@example.com", "subject": "hi"})
    assert job.data == Email(to="a@example.com", subject="hi")
    stored = await q.get_job(job.id)
    assert stored is not None
    assert stored.data == Email(to="a@example.com", subject="hi")
    assert stored.state == JobState.WAITING


async def test_an_untyped_payload_comes_back_as_it_was_stored(client: Client) -> None:
    """Without a payload type, JSON carries the data: bytes become base64 text, sets and tuples
    lists, datetimes ISO text. What add() returns is what get_job() and the handler see (it
    used to return the objects given, while every later read showed the JSON form)."""
    when = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    data = {"blob": b"\x00\xff", "tags": {"a"}, "pair": (1, 2), "when": when, "n": 1.5}
    stored_form = {"blob": "AP8=", "tags": ["a"], "pair": [1, 2],
                   "when": "2026-12-06T12:00:00Z", "n": 1.5}  # fmt: skip
    seen: list[Any] = []

    async def handler(ctx: JobContext[Any]) -> None:
        seen.append(ctx.data)

    q = queue("faithful", handler, client=client)
    job = await q.add(data)
    assert job.data == stored_form
    assert (await q.get_job(job.id)).data == stored_form  # type: ignore[union-attr]
    async with q:
        await wait_for_state(q, job.id, JobState.COMPLETED)
    assert seen == [stored_form]


async def test_unencodable_payload_is_rejected(client: Client) -> None:
    q = queue("raw", client=client)
    with pytest.raises(PayloadError, match="cannot be encoded"):
        await q.add({"when": object()})
    with pytest.raises(PayloadError, match="cannot be encoded"):
        await q.add({1j: "complex key"})
    await assert_nothing_stored(client, "raw")


async def test_nan_and_infinity_are_rejected_not_stored_as_null(client: Client) -> None:
    """JSON has no NaN or infinity; msgspec would write null, and the job would run with None."""
    q = queue("nan", client=client)
    for data in ({"f": math.nan}, {"g": [1.0, math.inf]}, {"deep": {"x": [{"y": -math.inf}]}}):
        with pytest.raises(PayloadError, match="NaN or infinity"):
            await q.add(data)
    await assert_nothing_stored(client, "nan")
    job = await q.add({"none": None, "f": 1.5})  # a real null is fine
    assert job.data == {"none": None, "f": 1.5}


async def test_a_result_with_nan_fails_the_job_instead_of_storing_null(client: Client) -> None:
    async def handler(ctx: JobContext[Any]) -> float:
        return math.nan

    q = queue("nan-result", handler, client=client, retries=RetryPolicy(max=0))
    async with q:
        job = await q.add({})
        done = await wait_for_state(q, job.id, JobState.FAILED)
    assert done.error is not None and "NaN or infinity" in done.error.message


async def test_oversized_payload_is_rejected_before_any_io(client: Client) -> None:
    q = queue("big", max_payload_size=1024, client=client)
    with pytest.raises(PayloadTooLarge) as info:
        await q.add({"blob": "x" * 2000})
    assert info.value.limit == 1024
    assert info.value.size > 2000
    await assert_nothing_stored(client, "big")


async def test_payload_over_the_servers_limit_is_rejected(client: Client) -> None:
    q = queue("huge", max_payload_size=10 * 1024 * 1024, client=client)
    with pytest.raises(PayloadTooLarge):
        await q.add({"blob": "x" * (2 * 1024 * 1024)})  # the test server accepts 1 MiB messages
    await assert_nothing_stored(client, "huge")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"job_id": "has.dot"}, InvalidName),
        ({"job_id": "a*"}, InvalidName),
        ({"job_id": "x" * 65}, InvalidName),
        ({"job_id": ""}, InvalidName),
        ({"priority": 10}, InvalidOption),
        ({"priority": -1}, InvalidOption),
        ({"priority": "high"}, InvalidOption),
        ({"delay": -1}, InvalidOption),
        ({"delay": "soon"}, InvalidOption),
        ({"delay": math.inf}, InvalidOption),
        ({"delay": math.nan}, InvalidOption),
        ({"delay": 1e13}, InvalidOption),
        ({"delay": 1e300}, InvalidOption),
        ({"delay": timedelta(days=999_999_999)}, InvalidOption),
        ({"delay": timedelta(days=366 * 100)}, InvalidOption),
        ({"priority": math.nan}, InvalidOption),
        ({"priority": 1.0}, InvalidOption),
        ({"attempts": 0}, InvalidOption),
        ({"correlation_id": "has space"}, InvalidOption),
        ({"correlation_id": "line\nbreak"}, InvalidOption),
    ],
)
async def test_bad_options_are_rejected_and_nothing_is_stored(
    client: Client, options: dict[str, Any], error: type[Exception]
) -> None:
    q = queue("opts", client=client)
    with pytest.raises(error):
        await q.add({"n": 1}, **options)
    await assert_nothing_stored(client, "opts")


async def test_record_is_created_waiting_and_its_id_published(client: Client) -> None:
    q = queue("flow", client=client)
    job = await q.add({"n": 1}, correlation_id="req-123", priority=3)
    stored = await q.get_job(job.id)
    assert stored is not None
    assert stored.state == JobState.WAITING
    assert stored.correlation_id == "req-123"
    assert stored.priority == 3
    assert stored.attempt == 0
    assert stored.max_attempts is None  # not set by the publisher: the worker's policy decides
    msg = await Backstage(client, "flow").lane_message(job.id, priority=3)
    assert msg is not None
    assert msg.data == job.id.encode()
    assert msg.headers["Oqron-Correlation-Id"] == "req-123"


async def test_repeated_job_id_returns_the_existing_job_and_runs_once(client: Client) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.id)

    q = queue("idem", handler, client=client)
    first = await q.add({"v": 1}, job_id="welcome-1")
    again = await q.add({"v": 2}, job_id="welcome-1")
    assert again.id == first.id
    assert again.data == {"v": 1}  # the existing job, not the new data
    async with q:
        await wait_for_state(q, "welcome-1", JobState.COMPLETED)
        later = await q.add({"v": 3}, job_id="welcome-1")
        assert later.state == JobState.COMPLETED
        await asyncio.sleep(0.3)
    assert runs == ["welcome-1"]


async def test_twenty_concurrent_adds_of_one_id_store_and_run_it_once(client: Client) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.data["who"])

    q = queue("race", handler, client=client)
    jobs = await asyncio.gather(*(q.add({"who": i}, job_id="same") for i in range(20)))
    assert {j.id for j in jobs} == {"same"}
    winners = {j.data["who"] for j in jobs}
    assert len(winners) == 1, "every caller gets the one stored job"
    assert await Backstage(client, "race").work_messages() == 1
    async with q:
        await wait_for_state(q, "same", JobState.COMPLETED)
        await asyncio.sleep(0.3)
    assert runs == [winners.pop()]
    assert await q.count() == 1


async def test_an_add_that_stopped_after_the_record_is_finished_by_adding_again(
    client: Client,
) -> None:
    q = queue("heal", client=client)
    # a publisher crashed between the KV create and the publish: the record exists, no message
    _, record = q._new_job({"n": 1}, q_options(job_id="orphan"))
    backend = await q._open()
    await backend.store.create(record)
    behind = Backstage(client, "heal")
    assert await behind.work_messages() == 0
    again = await q.add({"n": 1}, job_id="orphan")
    assert again.state == JobState.WAITING
    assert await behind.work_messages() == 1
    await q.add({"n": 1}, job_id="orphan")  # deduplicated by its message id
    assert await behind.work_messages() == 1


def q_options(**kwargs: Any) -> AddOptions:
    from oqron_nats.queue import parse_options

    return parse_options(kwargs)


async def test_default_ids_are_unique_and_time_ordered(client: Client) -> None:
    ids = [new_job_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes), "ids sort by creation time (millisecond prefix)"
    q = queue("ids", client=client)
    jobs = await asyncio.gather(*(q.add({"n": i}) for i in range(50)))
    assert len({j.id for j in jobs}) == 50
    assert await q.count() == 50


async def test_delay_and_durations_accept_timedelta(client: Client) -> None:
    q = queue("td", client=client)
    job = await q.add({"n": 1}, delay=timedelta(minutes=5))
    assert job.state == JobState.DELAYED
    assert job.run_at is not None
    assert abs((job.run_at - job.created_at).total_seconds() - 300) < 0.01


async def test_the_job_returned_is_a_job_struct(client: Client) -> None:
    q = queue("struct", client=client)
    job = await q.add([1, 2, 3])
    assert isinstance(job, Job)
    assert job.data == [1, 2, 3]
    assert await eventually(lambda: q.count("waiting"))


def test_ids_are_unique_across_threads_and_forked_children() -> None:
    """Job ids come from a block of OS randomness: threads never share its bytes, and a forked
    child does not hand out the ids its parent's block would."""
    with ThreadPoolExecutor(8) as pool:
        ids = [i for batch in pool.map(lambda _: [new_job_id() for _ in range(2000)], range(8))
               for i in batch]  # fmt: skip
    assert len(set(ids)) == len(ids) == 16000
    new_job_id()  # the parent's block is started: a child must not go on with it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_job_id()[12:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as child:
        theirs = child.read().split()
    os.waitpid(pid, 0)
    ours = [new_job_id()[12:] for _ in range(50)]
    assert len(theirs) == 50
    assert not set(theirs) & set(ours)
