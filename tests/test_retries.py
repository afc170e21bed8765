"""Retries: backoff policies, the delayed state between attempts, attempts=, and long backoffs."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from functools import partial
from typing import Any

import pytest

from oqron_nats import Client, ConfigError, Job, JobContext, JobState, RetryPolicy, queue
from oqron_nats.core.retry import retry_delay

from .helpers import eventually, wait_for_state
from .support import Backstage

# -- retry_delay(): the backoff policies --------------------------------------------------------


def test_fixed_backoff_waits_base_delay_after_every_attempt() -> None:
    policy = RetryPolicy(strategy="fixed", base_delay=3)
    assert [retry_delay(policy, attempt) for attempt in range(1, 6)] == [3.0] * 5


def test_exponential_backoff_doubles_within_the_jitter() -> None:
    policy = RetryPolicy(strategy="exponential", base_delay=0.5, max_delay=1000, jitter=0.2)
    rng = random.Random(1234)
    delays = [retry_delay(policy, attempt, rng) for attempt in range(1, 9)]
    for attempt, delay in enumerate(delays, start=1):
        nominal = 0.5 * 2 ** (attempt - 1)
        assert nominal * 0.8 <= delay <= nominal * 1.2, (attempt, delay)
    again = random.Random(1234)
    assert [retry_delay(policy, a, again) for a in range(1, 9)] == delays, "seeded: reproducible"
    assert len(set(delays)) == len(delays)

    exact = RetryPolicy(strategy="exponential", base_delay=0.5, max_delay=1000, jitter=0.0)
    assert [retry_delay(exact, a, random.Random(1)) for a in range(1, 6)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
    ]


def test_exponential_jitter_spreads_delays_both_ways() -> None:
    policy = RetryPolicy(strategy="exponential", base_delay=10, max_delay=1000, jitter=0.25)
    rng = random.Random(7)
    samples = [retry_delay(policy, 1, rng) for _ in range(500)]
    assert min(samples) >= 7.5
    assert max(samples) <= 12.5
    assert min(samples) < 9.0, "jitter goes below the nominal delay"
    assert max(samples) > 11.0, "and above it"


def test_custom_backoff_gets_the_attempt_and_base_delay() -> None:
    calls: list[tuple[int, float]] = []

    def backoff(attempt: int, base: float) -> float:
        calls.append((attempt, base))
        return base * attempt + 0.25

    policy = RetryPolicy(strategy="custom", base_delay=2, backoff=backoff, max_delay=100)
    assert [retry_delay(policy, a) for a in (1, 2, 3)] == [2.25, 4.25, 6.25]
    assert calls == [(1, 2.0), (2, 2.0), (3, 2.0)]

    as_timedelta = RetryPolicy(
        strategy="custom", backoff=lambda attempt, base: timedelta(seconds=attempt * 1.5)
    )
    assert retry_delay(as_timedelta, 2) == 3.0


def test_custom_backoff_returning_a_bad_delay_is_a_config_error() -> None:
    negative = RetryPolicy(strategy="custom", backoff=lambda attempt, base: -1)
    with pytest.raises(ConfigError, match="custom backoff"):
        retry_delay(negative, 1)
    not_a_duration = RetryPolicy(strategy="custom", backoff=lambda attempt, base: "soon")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="custom backoff"):
        retry_delay(not_a_duration, 1)


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(strategy="fixed", base_delay=5, max_delay=5),
        RetryPolicy(strategy="exponential", base_delay=1, max_delay=5, jitter=0.2),
        RetryPolicy(strategy="custom", backoff=lambda attempt, base: 10_000, max_delay=5),
        RetryPolicy(strategy="custom", backoff=lambda a, b: timedelta(days=1), max_delay=5),
    ],
    ids=["fixed", "exponential", "custom", "custom-timedelta"],
)
def test_every_delay_is_capped_at_max_delay(policy: RetryPolicy) -> None:
    rng = random.Random(3)
    for attempt in (1, 5, 10, 63, 64, 1000, 10**6):
        assert retry_delay(policy, attempt, rng) <= 5.0
    assert retry_delay(policy, 1000, rng) == 5.0


def test_durations_may_be_timedeltas() -> None:
    policy = RetryPolicy(
        strategy="fixed", base_delay=timedelta(milliseconds=1500), max_delay=timedelta(minutes=1)
    )
    assert retry_delay(policy, 1) == 1.5
    capped = RetryPolicy(
        strategy="exponential",
        base_delay=timedelta(seconds=10),
        max_delay=timedelta(seconds=30),
        jitter=0,
    )
    assert [retry_delay(capped, a) for a in (1, 2, 3, 4)] == [10.0, 20.0, 30.0, 30.0]


@pytest.mark.parametrize(
    "options",
    [
        {"max": -1},
        {"max": 1.5},
        {"strategy": "custom"},  # no backoff function
        {"strategy": "linear"},
        {"jitter": 1.0},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"base_delay": -1},
        {"max_delay": -0.5},
        {"base_delay": timedelta(seconds=-1)},
        {"base_delay": "2s"},
        {"max_delay": float("nan")},
        {"jitter": "0.2"},
        {"strategy": "custom", "backoff": 5},  # not callable
        {"max": True},
        {"base_delay": 3600},  # longer than the default max_delay (60 s), which would cap it
    ],
    ids=lambda options: ",".join(f"{k}={v!r}" for k, v in options.items()),
)
def test_invalid_retry_policies_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**options)


# -- retries against the server -----------------------------------------------------------------


async def test_a_job_that_fails_twice_is_retried_after_its_backoff_and_completes(
    client: Client,
) -> None:
    starts: list[float] = []
    failures: list[float] = []

    async def handler(ctx: JobContext[Any]) -> str:
        starts.append(time.time())
        assert ctx.attempt == len(starts)
        assert ctx.max_attempts == 3
        if ctx.attempt <= 2:
            failures.append(time.time())
            raise RuntimeError(f"flaky failure {ctx.attempt}")
        return "third time lucky"

    async def delayed_after(job_id: str, attempt: int) -> Job[Any] | None:
        job = await q.get_job(job_id)
        if job is not None and job.state == JobState.DELAYED and job.attempt == attempt:
            return job
        return None

    policy = RetryPolicy(max=2, strategy="fixed", base_delay=0.5)
    q = queue("flaky", handler, client=client, retries=policy)
    async with q:
        job = await q.add({"n": 1})
        for attempt in (1, 2):
            waiting = await eventually(
                partial(delayed_after, job.id, attempt), what=f"the retry after {attempt}"
            )
            assert len(failures) == attempt
            assert waiting.error is not None
            assert waiting.error.type == "RuntimeError"
            assert waiting.error.message == f"flaky failure {attempt}"
            assert "handler" in waiting.error.traceback
            assert waiting.run_at is not None
            retry_in = waiting.run_at.timestamp() - failures[-1]
            assert 0.5 <= retry_in < 0.5 + 0.5, f"run_at is the failure time + 0.5 s: {retry_in}"
            assert waiting.finished_at is None
            assert waiting.worker is None
        done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=15)
    assert len(starts) == 3
    assert done.attempt == 3
    assert done.result == "third time lucky"
    assert done.error is None
    for failed_at, next_start in zip(failures, starts[1:], strict=True):
        assert next_start - failed_at >= 0.5 - 0.005, "a retry never starts before its backoff"


async def test_a_backoff_that_raises_does_not_leave_the_job_running(client: Client) -> None:
    runs: list[int] = []

    def backoff(attempt: int, base: float) -> float:
        raise ZeroDivisionError("the backoff itself is broken")

    async def handler(ctx: JobContext[Any]) -> None:
        runs.append(ctx.attempt)
        raise RuntimeError("handler failed")

    policy = RetryPolicy(max=3, strategy="custom", backoff=backoff, base_delay=30)
    q = queue("badbackoff", handler, client=client, retries=policy, lock_ttl=2, heartbeat=0.5)
    async with q:
        job = await q.add({"n": 1})
        # settled either way (failed for good, or delayed by a fallback): never left active
        settled = await wait_for_state(q, job.id, JobState.FAILED, JobState.DELAYED, timeout=5)
        await asyncio.sleep(3)  # longer than ack_wait (2.5 s): a stuck attempt would rerun
        assert (await q.get_job(job.id)).state == settled.state  # type: ignore[union-attr]
    assert runs == [1]
    assert settled.error is not None


async def test_attempts_given_to_add_override_the_queue_retries(client: Client) -> None:
    runs: dict[str, int] = {}

    async def handler(ctx: JobContext[Any]) -> None:
        runs[ctx.data["name"]] = runs.get(ctx.data["name"], 0) + 1
        raise ValueError("always")

    policy = RetryPolicy(max=5, strategy="fixed", base_delay=0.1)
    q = queue("override", handler, client=client, retries=policy)
    async with q:
        once = await q.add({"name": "once"}, attempts=1)
        twice = await q.add({"name": "twice"}, attempts=2)
        default = await q.add({"name": "default"})
        assert once.max_attempts == 1
        assert twice.max_attempts == 2
        assert default.max_attempts == 6
        failed_once = await wait_for_state(q, once.id, JobState.FAILED, timeout=10)
        failed_twice = await wait_for_state(q, twice.id, JobState.FAILED, timeout=10)
        failed_default = await wait_for_state(q, default.id, JobState.FAILED, timeout=15)
        await asyncio.sleep(0.3)
    assert runs == {"once": 1, "twice": 2, "default": 6}
    assert (failed_once.attempt, failed_twice.attempt, failed_default.attempt) == (1, 2, 6)


async def test_a_thousand_jobs_in_a_one_hour_backoff_do_not_block_fresh_jobs(
    client: Client,
) -> None:
    completed: list[float] = []

    async def handler(ctx: JobContext[Any]) -> str:
        if not ctx.data.get("ok"):
            raise ConnectionError("downstream is down")
        completed.append(time.monotonic())
        return "ok"

    # max_delay defaults to 60 s and caps every delay: raise it with the base delay
    policy = RetryPolicy(max=3, strategy="fixed", base_delay=3600, max_delay=3600)
    q = queue("backoff", handler, client=client, retries=policy, concurrency=50)
    failing = await q.add_bulk([{"data": {"n": n}} for n in range(1000)])
    assert failing.ok, failing.errors
    started = time.time()
    async with q:

        async def all_delayed() -> bool:
            return await q.count("delayed") == 1000

        await eventually(all_delayed, timeout=40, what="1,000 failed jobs to wait for a retry")
        for job in random.Random(5).sample(failing.jobs, 10):
            stored = await q.get_job(job.id)
            assert stored is not None
            assert stored.state == JobState.DELAYED
            assert stored.attempt == 1
            assert stored.error is not None and stored.error.type == "ConnectionError"
            assert stored.run_at is not None
            ahead = stored.run_at.timestamp() - started
            assert 3600 <= ahead <= 3600 + 60, f"retry about one hour ahead, not {ahead}"

        behind = Backstage(client, "backoff")

        async def settled() -> bool:  # acked, not nak-delayed: no delivery holds a pending slot
            info = await behind.consumer_info("fifo")
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually(settled, timeout=10, what="the failed deliveries to be acked")
        assert await behind.work_messages() == 1000, "one schedule per job"

        added = time.monotonic()
        fresh = await asyncio.gather(*(q.add({"ok": True, "n": n}) for n in range(20)))
        for job in fresh:
            done = await wait_for_state(q, job.id, JobState.COMPLETED, timeout=10)
            assert done.result == "ok"
        assert len(completed) == 20
        assert max(completed) - added < 10, "fresh jobs run promptly behind 1,000 backoffs"
        assert await q.count("delayed") == 1000


# -- who decides the number of attempts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("publisher_options", "add_options", "worker_max", "runs"),
    [
        ({}, {}, 0, 1),  # the worker's policy: one attempt
        ({}, {}, 2, 3),
        ({"retries": RetryPolicy(max=3, base_delay=0.05, max_delay=0.05)}, {}, 0, 4),
        ({}, {"attempts": 2}, 0, 2),  # what the publisher sets explicitly wins
    ],
)
async def test_a_publisher_decides_only_the_attempts_it_sets(
    client: Client,
    publisher_options: dict[str, Any],
    add_options: dict[str, Any],
    worker_max: int,
    runs: int,
) -> None:
    publisher = queue("attempts", client=client, **publisher_options)
    job = await publisher.add({"n": 1}, **add_options)
    expected = runs if publisher_options or add_options else None
    assert job.max_attempts == expected, "stamped only when the publisher set it"
    seen: list[tuple[int, int]] = []

    async def always_fails(ctx: Any) -> None:
        seen.append((ctx.attempt, ctx.max_attempts))
        raise RuntimeError("no")

    retries = RetryPolicy(max=worker_max, strategy="fixed", base_delay=0.05, max_delay=0.05)
    worker = queue("attempts", always_fails, client=client, retries=retries)
    async with worker:
        done = await wait_for_state(worker, job.id, JobState.FAILED, timeout=15)
    assert done.attempt == runs
    assert seen == [(n, runs) for n in range(1, runs + 1)]
