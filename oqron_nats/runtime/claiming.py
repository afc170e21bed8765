"""Claiming: keep exactly enough pull requests open to fill a worker's free slots.

There is no poll tick. The claim loop sleeps on one event, woken when a slot frees up, when a
pull request ends, when a lane rings its bell (lifo, priority) or after a reconnect; it keeps
exactly enough pull requests open at the server to fill the free slots, and for lifo and
priority moves exactly as many jobs from the lanes to the run lane (:mod:`.lanes`). An idle
worker holds one long pull, renewed every ``PULL_EXPIRES`` seconds.

No sleep of the loop is unbounded: while claiming fails (a cluster electing the consumer's
leader answers nothing for seconds) it looks again after a jittered pause that grows up to
``MAX_BACKOFF``, and otherwise at least every ``LOOK_AGAIN`` seconds, so a lost wake-up can
never stop a worker from claiming.

The claimer also owns the worker's consumer on the server: it creates it (paused if the queue
is paused), re-creates it when pulls suggest it is gone, and pauses or resumes it as the queue
state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .._nats import Delivery, JetStreamError, Puller, jittered
from ..core.background import finish
from ..core.config import QueueConfig
from ..core.errors import ConsumerConflict, PermissionDenied
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.control import QueueState
from .lanes import LanePopper, PriorityPlan, consumer_spec, is_legacy_lane_consumer, strategy_of
from .throttle import StartWindow

log = logger(__name__)

PULL_EXPIRES = 10.0
"""Seconds a lingering pull request stays open at the server."""
LOOK_AGAIN = PULL_EXPIRES
"""The longest the claim loop sleeps when nothing wakes it."""
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 2.0
"""Seconds the claim loop pauses while claiming fails: doubling from the first, up to the cap."""

Undo = Callable[[Callable[[], Any]], None]
"""Registers a cleanup to run when the worker closes (see ``Consumer._undo``)."""


def backoff(trouble: int) -> float:
    """The jittered pause after ``trouble`` failed rounds of claiming in a row."""
    return jittered(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(trouble, 16)))


class Claimer:
    """Keeps one worker's pull requests matched to its free slots."""

    def __init__(
        self,
        config: QueueConfig,
        backend: Backend,
        *,
        room: Callable[[], int],
        may_claim: Callable[[], bool],
        deliver: Callable[[Delivery], None],
        stopping: asyncio.Event,
        throttle: StartWindow | None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.spec = consumer_spec(config, backend.names, backend.shared.replicas)
        self.puller: Puller | None = None
        self.trouble = 0
        """Failed claim rounds in a row (a delivery or a pull's heartbeat resets it)."""
        self.paused_on_server: bool | None = None
        """Whether this worker last created or set its consumers paused (None: not yet)."""
        self.wake = asyncio.Event()
        """Set to make the loop look again now (a slot freed up, the state changed...)."""
        self._room = room
        self._may_claim = may_claim
        self._deliver = deliver
        self._stopping = stopping
        self._throttle = throttle
        self._popper: LanePopper | None = None
        self._in_transit = 0
        self._refill_at = max(1, config.concurrency // 4)
        self._pausing: asyncio.Task[None] | None = None
        self._recreating: asyncio.Task[None] | None = None
        self._revived = asyncio.Event()
        """Set when claiming is seen working again (a pull's heartbeat, a new consumer leader):
        it ends a backoff pause."""

    @property
    def consumer(self) -> str:
        """The consumer the worker claims through (named after the strategy)."""
        return self.spec.durable

    async def prepare(self, undo: Undo) -> None:
        """Refuse a queue consumed with another strategy, follow the queue state, and create
        the consumer as the queue is now (paused or not)."""
        await self._check_strategy()
        control = self.backend.control
        control.listeners.append(self._on_state)
        undo(lambda: control.listeners.remove(self._on_state))
        await self._ensure_consumer()

    async def open(self, undo: Undo) -> None:
        """Open the pull inbox, listen for the lanes' bell (lifo, priority) and reconnects."""
        broker = self.backend.broker
        puller = broker.puller(
            self.spec, on_delivery=self._on_delivery, on_change=self.wake.set,
            on_alive=self._on_alive,
        )  # fmt: skip
        await puller.start()
        self.puller = puller
        undo(puller.stop)
        undo(await broker.listen_elected(self.spec.durable, puller.new_leader))
        if self.config.strategy != "fifo":
            plan = PriorityPlan() if self.config.strategy == "priority" else None
            self._popper = LanePopper(broker, self.backend.names, plan)
            undo(await broker.listen_bell(self._on_bell))
        undo(self.backend.on_reconnect(self._on_reconnect))

    async def stop_pulling(self) -> None:
        """Drop every open pull request (no open pull may catch jobs handed back later)."""
        if self.puller is not None:
            await self.puller.stop()

    async def close(self) -> None:
        """Drop a pause or resume, or a re-creation of the consumer, under way."""
        await finish(self._pausing, grace=0)
        await finish(self._recreating, grace=0)

    async def _ensure_consumer(self, *, deadline: float | None = None) -> None:
        """Create (or update) the consumer, paused if the queue is paused right now."""
        paused = self.backend.control.state.paused
        try:
            await self.backend.broker.ensure_consumer(self.spec, paused=paused, deadline=deadline)
        except JetStreamError as exc:
            raise ConsumerConflict(
                f"cannot consume queue {self.config.name!r} with strategy "
                f"{self.config.strategy!r}: {exc.description}"
            ) from exc
        self.paused_on_server = paused

    async def _check_strategy(self) -> None:
        existing = await self.backend.broker.consumer_names()
        others = sorted(
            {s for name in existing if (s := strategy_of(name)) and s != self.config.strategy}
        )
        if others:
            raise ConsumerConflict(
                f"queue {self.config.name!r} is already consumed with strategy {others[0]!r}, "
                f"not {self.config.strategy!r}; stop those workers and delete their consumers "
                f"(stream {self.backend.names.stream}) before changing the strategy"
            )
        await self._retire_legacy_lane_consumers(
            [name for name in existing if is_legacy_lane_consumer(name)]
        )

    async def _retire_legacy_lane_consumers(self, legacy: list[str]) -> None:
        """Delete the per-lane consumers ``p0``..``p9`` of an earlier version's priority queue.

        Their lane messages stay in the stream (a work-queue stream removes a message only when
        it is acked) and are moved to the run lane like any other; a job an old worker still
        runs is fenced by its record, as after a redelivery. A worker allowed no delete leaves
        them (they only hold a Raft group each) and says so.
        """
        if not legacy:
            return
        try:
            for name in legacy:
                await self.backend.broker.delete_consumer(name)
        except PermissionDenied:
            log.warning(
                "could not delete the per-lane consumers of an earlier version",
                queue=self.config.name,
                consumers=legacy,
            )
            return
        log.warning(
            "deleted the per-lane consumers of an earlier version: priority moves jobs through "
            "one consumer now",
            queue=self.config.name,
            consumers=legacy,
        )

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim into free slots until the worker stops."""
        while not self._stopping.is_set():
            self.wake.clear()
            self._revived.clear()
            try:
                if await self._recreate_lost_consumer():
                    self.trouble += 1
                if self._room() > 0 and self._may_claim():
                    await self._refill()
            except Exception as exc:
                self.trouble += 1
                log.warning("claiming failed; retrying", queue=self.config.name, error=repr(exc))
            look_again = self._look_again_in()
            if self.trouble:  # back off while things go wrong, until claiming works again
                await wait_any(
                    (self._stopping, self._revived), min(look_again, backoff(self.trouble))
                )
            elif not await wait(self.wake, look_again) and self._popper is not None:
                self._popper.quiet(LOOK_AGAIN)  # a bell may have been lost

    def _look_again_in(self) -> float:
        """Seconds until the loop must look again though nothing woke it: the throttle's next
        room, the pull request to give up, soon after a contended move, at most LOOK_AGAIN."""
        timeout = LOOK_AGAIN
        if self._throttle is not None:
            room_in = self._throttle.next_room_in()
            if room_in is not None:
                timeout = min(timeout, room_in)
        if self.puller is not None and (check := self.puller.expire_stale()) is not None:
            timeout = min(timeout, check)
        if self._popper is not None and self._popper.contended:
            timeout = min(timeout, jittered(FIRST_BACKOFF))
        return timeout

    def _on_alive(self) -> None:
        """A pull request is served (a heartbeat came), or the consumer has a new leader:
        claiming works again."""
        self.trouble = 0
        self._revived.set()

    async def _refill(self) -> None:
        puller = self.puller
        assert puller is not None, "open() comes first"
        want = self._room() - puller.outstanding
        # while jobs are still owed, ask again once a quarter of the slots is free, not per job
        if want > 0 and (want >= self._refill_at or not puller.outstanding):
            await puller.request(want, expires=PULL_EXPIRES)
        if self._popper is not None:  # lifo, priority: move jobs to the run lane, one per slot
            self._in_transit = min(self._in_transit, puller.outstanding)
            room = self._room() - self._in_transit
            if room > 0 and self._popper.maybe_nonempty:
                self._in_transit += room  # before the moves: their deliveries may come at once
                moved = 0
                try:
                    moved = await self._popper.move(room)
                finally:  # a failed move must not hold its slots for good
                    self._in_transit -= room - moved

    async def _recreate_lost_consumer(self) -> bool:
        """Re-create the consumer if pulls suggest it is gone; True if it looked gone.

        One try at a time, beside the loop, which goes on pulling meanwhile: the server answers
        no CONSUMER.CREATE sent while the consumer has no leader (the try waits out the request
        timeout), and a served pull or the new leader's word ends the suspicion sooner.
        """
        puller = self.puller
        if puller is None or not puller.suspect:
            return False
        if self._recreating is None or self._recreating.done():
            log.warning("consumer may be gone; making sure it exists", consumer=self.spec.durable)
            self._recreating = asyncio.create_task(self._recreate(puller))
        return True

    async def _recreate(self, puller: Puller) -> None:
        try:
            await self._ensure_consumer(deadline=0)
        except Exception as exc:  # the loop tries again while the pulls still suggest it
            if puller.suspect:  # else a new leader answered the question meanwhile
                log.warning("could not make sure the consumer exists; trying again",
                            queue=self.config.name, error=repr(exc))  # fmt: skip
            return
        if puller.suspect:
            puller.reset()
        self.wake.set()

    def _on_delivery(self, delivery: Delivery) -> None:
        self.trouble = 0
        if self._popper is not None and self._in_transit > 0:
            self._in_transit -= 1
        self._deliver(delivery)

    # -- following the queue state ----------------------------------------------------------

    def _on_state(self, state: QueueState) -> None:
        """The queue state was read (a change, or a re-read after a reconnect): follow a pause
        or resume on this worker's consumers; a state they already have sends nothing."""
        self.wake.set()
        if self.paused_on_server is None or self._stopping.is_set():
            return  # the consumers are being created with the state as it is then
        idle = self._pausing is None or self._pausing.done()
        if state.paused != self.paused_on_server and idle:
            self._pausing = asyncio.create_task(self._follow_pause())

    async def _follow_pause(self) -> None:
        """Pause or resume the consumers until they match the queue state (it may change
        meanwhile), trying again after a failure until it works or the worker stops: a
        consumer left paused on a running queue would deliver nothing."""
        failures = 0
        while (paused := self.backend.control.state.paused) != self.paused_on_server:
            if self._stopping.is_set():
                return
            try:
                await self.backend.control.set_consumers(paused, [self.spec.durable])
            except Exception as exc:
                failures += 1
                log.warning("could not (un)pause the consumers; trying again",
                            queue=self.config.name, error=repr(exc))  # fmt: skip
                await wait(self._stopping, backoff(failures))
                continue
            self.paused_on_server = paused

    def _on_bell(self, subject: str, seq: int) -> None:
        if self._popper is not None:
            self._popper.rang(subject, seq)
            self.wake.set()

    def _on_reconnect(self) -> None:
        if self.puller is not None:
            self.puller.reset()  # requests may have died with the old connection
        if self._popper is not None:
            self._popper.forget_empty()
        self.wake.set()


async def wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Wait until one of ``events`` is set or ``timeout`` seconds have passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds have passed; whether it was set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()
