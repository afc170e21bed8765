"""Throttle (per process) and rate_limit (cluster-wide, optionally per group)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from oqron_nats import Client, JobContext, JobState, Queue, queue
from oqron_nats._nats import Delivery
from oqron_nats.core.config import RateLimit, Throttle
from oqron_nats.runtime.throttle import StartWindow
from oqron_nats.testing.server import LocalServer

from .helpers import WorkerProcess, eventually, read_log

SLIP = 0.05
"""A start logged this soon after a window boundary may have been admitted in the window before."""


def over_limit(starts: list[float], limit: int, duration: float) -> list[int]:
    """Windows (aligned to the epoch) holding more than ``limit`` starts, allowing for slip."""
    windows = Counter(int(t // duration) for t in starts)
    slipped = Counter(int(t // duration) for t in starts if t % duration < SLIP)
    return [w for w, n in windows.items() if n - slipped[w] > limit]


def test_start_window_is_a_sliding_window() -> None:
    window = StartWindow(Throttle(max=2, duration=1.0))
    assert window.room(0.0) == 2
    window.started(0.0)
    window.started(0.5)
    assert window.room(0.9) == 0
    assert window.next_room_in(0.9) == pytest.approx(0.1)
    assert window.room(1.0) == 1
    assert window.room(1.6) == 2


async def test_throttle_caps_starts_per_window_without_handing_jobs_back(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[float] = []
    naks = 0
    original = Delivery.nak

    async def counting_nak(self: Delivery, delay: float | None = None) -> None:
        nonlocal naks
        naks += 1
        await original(self, delay)

    monkeypatch.setattr(Delivery, "nak", counting_nak)

    async def handler(ctx: JobContext[Any]) -> None:
        starts.append(time.monotonic())

    q = queue("throttled", handler, client=client, concurrency=10, throttle=Throttle(5, 1.0))
    await q.add_bulk([{"data": n} for n in range(17)])
    async with q:
        await eventually(lambda: _count(q, JobState.COMPLETED, 17), timeout=20, what="17 jobs")
    for i, t in enumerate(starts):
        in_window = [s for s in starts[i:] if s < t + 1.0 - 0.01]
        assert len(in_window) <= 5, f"{len(in_window)} starts within one second"
    assert starts[-1] - starts[0] >= 3.0, "17 jobs at 5 per second take over 3 s"
    assert naks == 0, "nothing was fetched and handed back"


async def _count(q: Queue[Any], state: JobState, n: int) -> bool:
    return await q.count(state) >= n


async def test_a_rate_limit_holds_across_processes(
    nats_server: LocalServer, client: Client, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "log.jsonl"
    q = queue("limited", client=client)
    await q.add({"n": -1}, job_id="warmup")
    options = {"queue": "limited", "concurrency": 5, "rate_max": 4, "rate_duration": 2.0}
    workers = [WorkerProcess(nats_server.url, namespace, log, **options) for _ in range(2)]
    try:
        await q.add_bulk([{"data": {"n": n}} for n in range(16)])
        await eventually(lambda: _count(q, JobState.COMPLETED, 17), timeout=30, what="17 jobs")
        entries = [e for e in read_log(log) if e["event"] == "start"]
        assert {e["pid"] for e in entries} == {w.pid for w in workers}, "both processes worked"
        assert over_limit([e["t"] for e in entries], 4, 2.0) == []
    finally:
        for worker in workers:
            worker.close()


async def test_a_keyed_limit_limits_each_group_on_its_own(client: Client) -> None:
    starts: dict[str, list[float]] = {"a": [], "b": []}

    async def handler(ctx: JobContext[Any]) -> None:
        starts[ctx.data["tenant"]].append(time.time())

    limit = RateLimit(max=2, duration=2.0, key=lambda data: data["tenant"])
    q = queue("tenants", handler, client=client, concurrency=10, rate_limit=limit)
    await q.add_bulk([{"data": {"tenant": "a", "n": n}} for n in range(8)])
    await q.add_bulk([{"data": {"tenant": "b", "n": n}} for n in range(2)])
    async with q:
        began = time.time()
        await eventually(lambda: _count(q, JobState.COMPLETED, 10), timeout=30, what="10 jobs")
    assert over_limit(starts["a"], 2, 2.0) == []
    assert over_limit(starts["b"], 2, 2.0) == []
    assert max(starts["b"]) - began < 2.5, "tenant b is not held back by tenant a's backlog"
    assert max(starts["a"]) - began >= 4.0, "tenant a's 8 jobs need at least four windows"


async def test_throttle_and_rate_limit_compose(client: Client) -> None:
    starts: list[float] = []

    async def handler(ctx: JobContext[Any]) -> None:
        starts.append(time.time())

    q = queue(
        "both",
        handler,
        client=client,
        concurrency=10,
        throttle=Throttle(2, 1.0),
        rate_limit=RateLimit(max=3, duration=2.0),
    )
    await q.add_bulk([{"data": n} for n in range(9)])
    async with q:
        await eventually(lambda: _count(q, JobState.COMPLETED, 9), timeout=30, what="9 jobs")
    assert over_limit(starts, 3, 2.0) == [], "the cluster limit holds"
    for i, t in enumerate(starts):
        assert len([s for s in starts[i:] if s < t + 1.0 - 0.01]) <= 2, "the throttle holds"
