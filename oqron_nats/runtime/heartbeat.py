"""The heartbeat of a running attempt: take its lease (the first beat), renew it, and its
message's ack deadline.

Why the lease waits for the first heartbeat (issue 14): most jobs end before it, and for them the
lease was a third of the worker's work per job. Until then the job is held by its record (the
claim's compare-and-set, which names this delivery's message) and by its message's ack deadline
(``ack_wait`` > ``lock_ttl`` + ``heartbeat``): another message of the job is acked as a duplicate,
and this one cannot come back before the deadline, by which time the lease is taken or its worker
is gone. A delivery that still finds the job active within ``lock_ttl`` of its claim (a server
that lost its acknowledgements) waits instead of taking it over. The lease, once taken, is
proven by one read of the record at its leader: a takeover writes the record (with the lease
held) before it runs, so a record still at the claim's revision is ours for good, and one that
moved on (a claim answered after a takeover, found by the cluster chaos suite) runs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..observe.log import logger
from ..storage.lease import LeaseLost
from .fixed_delay import Call, FixedDelay

log = logger(__name__)


class Heartbeat:
    """Calls ``renew`` every ``interval`` seconds (the delay of ``first_beats``) until stopped,
    and ``on_lost`` with the reason once the lease is lost: taken over, or not renewable for
    ``lock_ttl`` seconds.

    The first beat waits in ``first_beats``, a queue of calls (:mod:`.fixed_delay`), not in a task
    or on a timer of its own: most jobs end before it is due.
    """

    def __init__(
        self,
        first_beats: FixedDelay,
        lock_ttl: float,
        renew: Callable[[], Awaitable[None]],
        on_lost: Callable[[str], None],
    ) -> None:
        self.first_beats = first_beats
        self.interval = first_beats.delay
        self.lock_ttl = lock_ttl
        self._calls: tuple[Callable[[], Awaitable[None]], Callable[[str], None]] | None = (
            renew,
            on_lost,
        )
        """None once stopped (checked as well as the cancel: 3.11's wait_for can swallow one):
        they point back at the execution, which holds this heartbeat (a reference cycle would
        leave the job's objects to the cycle collector)."""
        self._first: Call | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start beating: the first beat ``interval`` seconds from now."""
        self._first = self.first_beats.call_later(self._first_beat)

    def stop(self) -> None:
        """Stop beating."""
        self._calls = None
        if self._first is not None:
            self._first.cancel()
        task, self._task = self._task, None  # its CancelledError holds the beat's frame
        if task is not None:
            task.cancel()

    def _first_beat(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        if self._calls is None:
            return
        renew, on_lost = self._calls
        last_renewed = time.monotonic() - self.interval
        while self._calls is not None:
            try:
                await asyncio.wait_for(renew(), self.interval)
                last_renewed = time.monotonic()
            except LeaseLost:
                on_lost("the lease was taken over or expired")
                return
            except Exception as exc:  # NATS unreachable: the lease survives until lock_ttl
                if time.monotonic() - last_renewed >= self.lock_ttl:
                    on_lost(f"the lease could not be renewed for lock_ttl ({exc!r})")
                    return
                log.warning("heartbeat failed; retrying", error=repr(exc))
            await asyncio.sleep(self.interval)


async def outlived_the_claim(
    claimed_at: float,
    interval: float,
    lock_ttl: float,
    renew: Callable[[], Awaitable[None]],
    job_id: str | None,
) -> bool:
    """Whether a lease taken when a claim began outlived the claim; False means the handler
    must not run.

    The lease was created with ``lock_ttl`` when the claim began, and the first heartbeat
    renews it ``interval`` seconds after the handler starts. A claim slowed down past
    ``lock_ttl - interval`` (its writes waited out an election) may have let the lease expire
    and another worker take the job meanwhile, so the lease is renewed (a compare-and-set on
    its revision) before the handler runs.
    """
    if time.monotonic() - claimed_at < lock_ttl - interval:
        return True
    try:
        async with asyncio.timeout(interval):
            await renew()
    except Exception as exc:  # LeaseLost, or no answer: the job may be another worker's
        log.warning(
            "the claim took longer than the lease; the job is left to its next delivery",
            job_id=job_id, error=repr(exc),
        )  # fmt: skip
        return False
    return True
