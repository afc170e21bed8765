"""add_bulk(): pipelined, in order, per-item errors."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from datetime import timedelta

import msgspec
import pytest
from nats.aio.msg import Msg

from oqron_nats import Client, InvalidOption, JobState, PayloadError, queue
from oqron_nats._nats.kv import Bucket
from oqron_nats._nats.requests import Ask, Requests
from oqron_nats.testing.server import LocalServer

from .proxy import TcpProxy
from .support import Backstage


class Thumb(msgspec.Struct):
    url: str


async def test_bulk_returns_jobs_in_order(client: Client) -> None:
    q = queue("bulk", client=client)
    result = await q.add_bulk([{"data": {"n": i}} for i in range(200)])
    assert result.ok
    assert len(result) == 200
    assert [j.data["n"] for j in result.jobs] == list(range(200))
    assert await q.count("waiting") == 200
    assert await Backstage(client, "bulk").work_messages() == 200


async def test_bulk_reports_bad_items_and_keeps_good_ones(client: Client) -> None:
    q = queue("bulk", payload=Thumb, client=client)
    result = await q.add_bulk(
        [
            {"data": {"url": "a"}},
            {"data": {"url": 5}},  # wrong type
            {"data": {"url": "c"}, "opts": {"priority": 1, "job_id": "c-1"}},
            {"data": {"url": "d"}, "opts": {"priority": 99}},  # out of range
            {"data": {"url": "e"}, "opts": {"colour": "red"}},  # unknown option
            {"nodata": True},  # not an item
            {"data": {"url": "g"}, "opts": {"delay": 60}},
            {"data": {"url": "h"}, "opts": {"delay": math.inf}},  # out of any schedule's range
            {"data": {"url": "i"}, "opts": {"delay": timedelta(days=999_999_999)}},
        ]
    )
    assert not result.ok
    assert [o.ok for o in result] == [True, False, True, False, False, False, True, False, False]
    assert isinstance(result.errors[7], InvalidOption)
    assert isinstance(result.errors[8], InvalidOption)
    assert isinstance(result.errors[1], PayloadError)
    assert isinstance(result.errors[3], InvalidOption)
    assert isinstance(result.errors[4], InvalidOption)
    assert "colour" in str(result.errors[4])
    assert isinstance(result.errors[5], InvalidOption)
    assert [o.index for o in result] == list(range(9))
    assert result[2].job is not None and result[2].job.id == "c-1"
    assert result[2].job.priority == 1
    assert result[6].job is not None and result[6].job.state == JobState.DELAYED
    assert await q.count() == 3
    assert await q.count("delayed") == 1


async def test_bulk_is_pipelined_not_one_round_trip_at_a_time(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    peak = 0
    original = Requests._wait_for

    def counting(
        self: Requests, token: str, subject: str, loop: asyncio.AbstractEventLoop
    ) -> tuple[asyncio.Future[Msg], float]:
        nonlocal peak
        waiting = original(self, token, subject, loop)
        peak = max(peak, len(self._waiting))  # requests sent and not answered yet
        return waiting

    monkeypatch.setattr(Requests, "_wait_for", counting)
    q = queue("pipe", client=client)
    result = await q.add_bulk([{"data": i} for i in range(1000)])
    assert result.ok
    assert peak >= 100, f"at most {peak} writes were in flight at once"
    assert await Backstage(client, "pipe").work_messages() == 1000


async def test_bulk_with_duplicate_ids_keeps_one_job(client: Client) -> None:
    q = queue("dups", client=client)
    result = await q.add_bulk([{"data": i, "opts": {"job_id": "same"}} for i in range(5)])
    assert result.ok
    assert {j.id for j in result.jobs} == {"same"}
    assert await q.count() == 1
    await asyncio.sleep(0)
    assert await Backstage(client, "dups").work_messages() == 1


async def test_empty_bulk_does_nothing(client: Client) -> None:
    q = queue("empty", client=client)
    result = await q.add_bulk([])
    assert result.ok and len(result) == 0


async def test_a_bulk_whose_first_answers_are_lost_adds_every_job_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replies to a third of the first tries are lost (the writes themselves land, as when
    a reply is lost on its way): each such add is asked again on its own and finds its own
    record (kept as created) or its own message (a duplicate message id): one of each per job."""
    original = Requests.request_many
    lost = 0

    async def losing(self: Requests, asks: Sequence[Ask]) -> list[Msg | Exception]:
        nonlocal lost
        replies = await original(self, asks)
        lost += len(replies[::3])
        return [TimeoutError("lost") if i % 3 == 0 else r for i, r in enumerate(replies)]

    monkeypatch.setattr(Requests, "request_many", losing)
    q = queue("lossy", client=client)
    result = await q.add_bulk([{"data": i} for i in range(300)])
    assert result.ok, result.errors
    assert lost > 150  # about a third of the 300 creates and of the messages sent at once
    assert [j.data for j in result.jobs] == list(range(300))
    assert await q.count("waiting") == 300
    assert await Backstage(client, "lossy").work_messages() == 300
    assert len({j.id for j in result.jobs}) == 300


async def test_a_bulk_of_existing_and_new_ids_adds_only_the_new_ones(client: Client) -> None:
    q = queue("mixed", client=client)
    before = await q.add_bulk([{"data": i, "opts": {"job_id": f"j-{i}"}} for i in range(0, 100, 2)])
    assert before.ok
    result = await q.add_bulk(
        [{"data": i + 1000, "opts": {"job_id": f"j-{i}"}} for i in range(100)]
    )
    assert result.ok
    # an id that was taken returns the job as it is: its first payload
    assert [j.data for j in result.jobs] == [i if i % 2 == 0 else i + 1000 for i in range(100)]
    assert await q.count("waiting") == 100
    assert await Backstage(client, "mixed").work_messages() == 100


async def test_a_bulk_whose_connection_drops_mid_bulk_adds_every_job_once(
    nats_server: LocalServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link hangs just as a chunk's records were created, while that chunk's messages and
    other chunks' writes go out, then the connection drops: the requests in flight lost their
    answers (hundreds of them). Once the client is back, each is asked again on its own: every
    job is added once, with one message, and counted."""
    assert nats_server.port is not None
    proxy = TcpProxy(nats_server.port)
    # the link hangs as the first chunk goes on from its records to its messages
    hung = proxy.drop_after(monkeypatch, Bucket, "create_many")
    async with (
        proxy,
        Client(proxy.url, namespace=namespace, request_timeout=30.0) as client,
    ):
        q = queue("cut-bulk", client=client)
        await q.add({"n": -1})
        result = await asyncio.wait_for(q.add_bulk([{"data": {"n": n}} for n in range(2000)]), 60)
        assert hung.is_set()
        assert result.ok, list(result.errors.items())[:3]
        assert len({j.id for j in result.jobs}) == 2000
        subjects = await Backstage(client, "cut-bulk").lane_subjects()
        assert len(subjects) == 2001 and set(subjects.values()) == {1}
        assert await q.count("waiting") == 2001
