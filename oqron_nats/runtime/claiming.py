"""Claiming: keep exactly enough pull requests open to fill a worker's free slots.

There is no poll tick. The claim loop sleeps on one event, woken when a slot frees up, when a
pull request ends, when a lifo lane rings its bell or after a reconnect; it keeps exactly enough
pull requests open at the server to fill the free slots (several lanes may ask for a little more;
an extra delivery is handed straight back). An idle worker holds one long pull per lane, renewed
every ``PULL_EXPIRES`` seconds.

No sleep of the loop is unbounded: while claiming fails (a cluster electing the consumer's
leader answers nothing for seconds) it looks again after a jittered pause that grows up to
``MAX_BACKOFF``, and otherwise at least every ``LOOK_AGAIN`` seconds, so a lost wake-up can
never stop a worker from claiming.

The claimer also owns the worker's consumers on the server: it creates them (paused if the
queue is paused), re-creates one that pulls suggest is gone, and pauses or resumes them as the
queue state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .._nats import ConsumerSpec, Delivery, JetStreamError, Puller, jittered
from ..core.background import finish
from ..core.config import QueueConfig
from ..core.errors import ConsumerConflict
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.control import QueueState
from .lanes import PriorityPlan, StackPopper, consumer_specs, strategy_of
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
    """Keeps one worker's pull requests matched to its free slots, in lane order."""

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
        self.specs = consumer_specs(config, backend.names, backend.shared.replicas)
        self.pullers: list[Puller] = []
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
        self._plan = PriorityPlan()
        self._popper: StackPopper | None = None
        self._in_transit = 0
        self._refill_at = max(1, config.concurrency // 4)
        self._pausing: asyncio.Task[None] | None = None

    @property
    def consumer(self) -> str:
        """The consumer group the worker reports: its one consumer, or ``priority``."""
        return self.specs[0].durable if len(self.specs) == 1 else "priority"

    async def prepare(self, undo: Undo) -> None:
        """Refuse a queue consumed with another strategy, follow the queue state, and create
        the consumers as the queue is now (paused or not)."""
        await self._check_strategy()
        control = self.backend.control
        control.listeners.append(self._on_state)
        undo(lambda: control.listeners.remove(self._on_state))
        await self._ensure_consumers(self.specs)

    async def open(self, undo: Undo) -> None:
        """Open the pull inboxes, listen for the lifo bell and for reconnects."""
        broker = self.backend.broker
        for spec in self.specs:
            puller = broker.puller(
                spec, on_delivery=self._on_delivery, on_change=self.wake.set,
                on_alive=self._on_alive,
            )  # fmt: skip
            await puller.start()
            self.pullers.append(puller)
            undo(puller.stop)
        if self.config.strategy == "lifo":
            self._popper = StackPopper(broker)
            undo(await broker.listen_bell(self._on_bell))
        undo(self.backend.on_reconnect(self._on_reconnect))

    async def stop_pulling(self) -> None:
        """Drop every open pull request (no open pull may catch jobs handed back later)."""
        for puller in self.pullers:
            await puller.stop()

    async def close(self) -> None:
        """Drop a pause or resume under way."""
        await finish(self._pausing, grace=0)

    async def _ensure_consumers(
        self, specs: list[ConsumerSpec], *, deadline: float | None = None
    ) -> None:
        """Create (or update) the consumers, paused if the queue is paused right now."""
        paused = self.backend.control.state.paused
        for spec in specs:
            try:
                await self.backend.broker.ensure_consumer(spec, paused=paused, deadline=deadline)
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

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim into free slots until the worker stops."""
        while not self._stopping.is_set():
            self.wake.clear()
            try:
                if await self._recreate_lost_consumers():
                    self.trouble += 1
                if self._room() > 0 and self._may_claim():
                    await self._refill()
            except Exception as exc:
                self.trouble += 1
                log.warning("claiming failed; retrying", queue=self.config.name, error=repr(exc))
            look_again = self._look_again_in()
            if self.trouble:  # back off while things go wrong: a delivery or heartbeat resets it
                await wait(self._stopping, min(look_again, backoff(self.trouble)))
            else:
                await wait(self.wake, look_again)

    def _look_again_in(self) -> float:
        """Seconds until the loop must look again though nothing woke it: the throttle's next
        room, the next pull request to give up, at most LOOK_AGAIN."""
        timeout = LOOK_AGAIN
        if self._throttle is not None:
            room_in = self._throttle.next_room_in()
            if room_in is not None:
                timeout = min(timeout, room_in)
        for puller in self.pullers:
            check = puller.expire_stale()
            if check is not None:
                timeout = min(timeout, check)
        return timeout

    def _on_alive(self) -> None:
        """A pull request is served (a heartbeat came): claiming works again."""
        self.trouble = 0

    async def _refill(self) -> None:
        if len(self.pullers) == 1:
            await self._refill_single(self.pullers[0])
            return
        for lane in self._plan.order():  # priority: sweep ready jobs, best lane first
            puller = self.pullers[lane]
            if self._room() <= 0 or self._stopping.is_set():
                return
            if not puller.has_open_request:
                await puller.request_now(self._room())
        idle = [p for p in self.pullers if not p.has_open_request]
        room = self._room()
        if room > 0 and idle:  # nothing ready: wait on every lane at once
            if self._throttle is not None:  # never ask for more than the window allows
                idle = idle[:room]
            per = max(1, room // len(idle))
            for puller in idle:
                await puller.request(per, expires=PULL_EXPIRES)

    async def _refill_single(self, puller: Puller) -> None:
        want = self._room() - puller.outstanding
        # while jobs are still owed, ask again once a quarter of the slots is free, not per job
        if want > 0 and (want >= self._refill_at or not puller.outstanding):
            await puller.request(want, expires=PULL_EXPIRES)
        if self._popper is not None:  # lifo: move the newest lane jobs to the run lane
            self._in_transit = min(self._in_transit, puller.outstanding)
            while self._room() - self._in_transit > 0 and self._popper.maybe_nonempty:
                self._in_transit += 1  # before the move: its delivery may come back at once
                if not await self._popper.pop_one():
                    self._in_transit -= 1

    async def _recreate_lost_consumers(self) -> bool:
        """Re-create consumers that pulls suggest are gone; True if any looked gone.

        One try each (the loop backs off and tries again): a consumer whose leader is being
        elected answers nothing for seconds, and the loop must stay free to stop meanwhile.
        """
        suspects = [(p, s) for p, s in zip(self.pullers, self.specs, strict=True) if p.suspect]
        for puller, spec in suspects:
            log.warning("consumer may be gone; making sure it exists", consumer=spec.durable)
            await self._ensure_consumers([spec], deadline=0)
            puller.reset()
        return bool(suspects)

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
                await self.backend.control.set_consumers(paused, [s.durable for s in self.specs])
            except Exception as exc:
                failures += 1
                log.warning("could not (un)pause the consumers; trying again",
                            queue=self.config.name, error=repr(exc))  # fmt: skip
                await wait(self._stopping, backoff(failures))
                continue
            self.paused_on_server = paused

    def _on_bell(self) -> None:
        if self._popper is not None and not self._popper.maybe_nonempty:
            self._popper.maybe_nonempty = True
            self.wake.set()

    def _on_reconnect(self) -> None:
        for puller in self.pullers:
            puller.reset()  # requests may have died with the old connection
        if self._popper is not None:
            self._popper.maybe_nonempty = True
        self.wake.set()


async def wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` seconds have passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
