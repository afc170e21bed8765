"""Calls a fixed delay after they were asked for, on one loop timer (runtime/fixed_delay.py):
the running jobs' first heartbeats and late index entries."""

from __future__ import annotations

import asyncio
import contextvars
from functools import partial

from structlog.testing import capture_logs

from oqron_nats.runtime.fixed_delay import FixedDelay

DELAY = 0.2


async def test_each_call_is_made_its_delay_after_it_was_asked_for_in_order() -> None:
    loop = asyncio.get_running_loop()
    later = FixedDelay(DELAY, asyncio.get_running_loop())
    asked: dict[int, float] = {}
    made: list[tuple[int, float]] = []
    for n in range(5):
        asked[n] = loop.time()

        def make(n: int = n) -> None:
            made.append((n, loop.time()))

        later.call_later(make)
        await asyncio.sleep(0.03)
    await asyncio.sleep(DELAY + 0.1)
    assert [n for n, _ in made] == list(range(5))
    for n, at in made:
        assert at - asked[n] >= DELAY - 0.002, f"call {n} made early"


async def test_a_cancelled_call_is_not_made_and_the_others_are() -> None:
    later = FixedDelay(DELAY, asyncio.get_running_loop())
    made: list[int] = []
    calls = [later.call_later(partial(made.append, n)) for n in range(4)]
    calls[0].cancel()
    calls[2].cancel()
    await asyncio.sleep(DELAY + 0.1)
    assert made == [1, 3]
    calls[1].cancel()  # made already: nothing happens
    assert made == [1, 3]


async def test_calls_asked_for_after_the_queue_ran_dry_are_made() -> None:
    later = FixedDelay(DELAY, asyncio.get_running_loop())
    made: list[str] = []
    later.call_later(lambda: made.append("first")).cancel()
    await asyncio.sleep(DELAY + 0.05)  # the timer fired with nothing to call
    later.call_later(lambda: made.append("second"))
    await asyncio.sleep(DELAY + 0.1)
    assert made == ["second"]


async def test_a_failing_call_is_logged_and_the_next_ones_are_made() -> None:
    later = FixedDelay(DELAY, asyncio.get_running_loop())
    made: list[int] = []

    def fails() -> None:
        raise RuntimeError("boom")

    with capture_logs() as logs:
        later.call_later(fails)
        later.call_later(lambda: made.append(1))
        await asyncio.sleep(DELAY + 0.1)
    assert made == [1]
    assert any(line["event"] == "a delayed call failed" for line in logs)


async def test_cancelled_calls_ahead_are_dropped_as_new_ones_come() -> None:
    later = FixedDelay(60.0, asyncio.get_running_loop())
    for _ in range(1000):  # jobs that end before their first heartbeat
        later.call_later(lambda: None).cancel()
    later.call_later(lambda: None)
    assert len(later._calls) == 1, "the cancelled calls are not kept until they fall due"


async def test_each_call_runs_in_the_context_of_whoever_asked_for_it() -> None:
    """As with the loop's own call_later: a job's first heartbeat logs with its own job id."""
    job: contextvars.ContextVar[str] = contextvars.ContextVar("job")
    later = FixedDelay(DELAY, asyncio.get_running_loop())
    seen: list[str] = []

    async def running(job_id: str) -> None:
        job.set(job_id)
        later.call_later(lambda: seen.append(job.get()))

    await asyncio.gather(running("a"), running("b"), running("c"))
    await asyncio.sleep(DELAY + 0.1)
    assert seen == ["a", "b", "c"]


async def test_a_call_that_asks_for_another_keeps_one_timer() -> None:
    class Counted(FixedDelay):
        timers = 0

        def _on_timer(self) -> None:
            Counted.timers += 1
            super()._on_timer()

    later = Counted(0.01, asyncio.get_running_loop())
    made: list[int] = []

    def again() -> None:
        made.append(1)
        if len(made) < 20:
            later.call_later(again)

    later.call_later(again)
    await asyncio.sleep(1.0)
    assert len(made) == 20
    assert Counted.timers <= 25, f"{Counted.timers} timer runs for 20 calls: timers multiplied"
