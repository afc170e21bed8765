"""add_bulk(): pipelined, in order, per-item errors."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import msgspec
import pytest

from oqron_nats import Client, InvalidOption, JobState, PayloadError, queue
from oqron_nats._nats import Nats, PubAck

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
    in_flight = 0
    peak = 0
    original = Nats.publish

    async def counting(
        self: Nats, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> PubAck:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(self, subject, payload, headers)
        finally:
            in_flight -= 1

    monkeypatch.setattr(Nats, "publish", counting)
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
