"""Ordering strategies: which consumer a queue has and which job a worker claims next.

Publishers always put a job on the lane of its priority (``p0``..``p9``), whatever the strategy,
so a publisher never needs to know how the queue is consumed and no job can be stranded on a
lane nobody reads. Each strategy has one consumer (one Raft group on a cluster).

* **fifo**: one consumer over every lane: jobs run in the order they were added (priority is
  kept on the record but does not reorder).
* **priority**: a worker with free slots moves as many of the oldest jobs of the best lanes
  (``p0`` first, then ``p1`` and so on) to the queue's run lane and claims them through the run
  lane's consumer, so a late ``p0`` job overtakes a backlog. Against starvation, every 10th round
  of moves starts at a lower lane in rotation (``p1``, ``p2``, ... ``p9``): under sustained load
  on ``p0``, every lower level still gets at least one round in 90.
* **lifo**: the same, with the newest messages over every lane.

A move reads the job's message, publishes its copy to the run lane, then removes the original,
in that order: a moved job is always in the stream (in its lane or the run lane) until it is
acked, so crash safety is the same as for fifo. priority moves in batches (one read of a lane's
oldest messages, their copies, one purge of the lane below the last one read); so does lifo (one
read of the lanes' newest messages, down from the newest sequence a lane message may have: the
stream's last, lowered as moves go down, raised by each bell; their copies, newest first, and a
delete of each). Only as many jobs are moved as the worker has free slots, so the
run lane holds no backlog to reorder. A lane found empty is not read again until its bell rings
(every lane message is republished, headers only, to the queue's bell) or the worker looks
again anyway.
"""

from __future__ import annotations

import time
from collections import Counter

from .._nats import ConsumerSpec
from .._nats.names import Names
from ..core.config import QueueConfig
from ..core.job import Strategy
from ..core.naming import PRIORITY_LEVELS
from ..storage.broker import Broker

FAIRNESS_EVERY = 10
"""Every this many rounds of moves, a priority worker starts at a lower lane (anti-starvation)."""
LIFO_READS = 5
"""Reads of the lanes one lifo round of moves makes at most, each lower than the one before,
while it finds fewer jobs than it has free slots (or loses them to other workers)."""


def consumer_spec(config: QueueConfig, names: Names, replicas: int) -> ConsumerSpec:
    """The durable consumer of ``config.strategy``, named after it."""
    subject = names.lanes if config.strategy == "fifo" else names.run_lane
    return ConsumerSpec(names.stream, config.strategy, subject, config.ack_wait, replicas)


def strategy_of(consumer: str) -> Strategy | None:
    """Which strategy created a consumer of this name, if it is one of ours."""
    if consumer in ("fifo", "lifo", "priority"):
        return consumer  # type: ignore[return-value]
    if is_legacy_lane_consumer(consumer):
        return "priority"
    return None


def is_legacy_lane_consumer(consumer: str) -> bool:
    """Whether this is one of the per-lane consumers (``p0``..``p9``) of oqron_nats up to 0.1's
    priority strategy."""
    return consumer[:1] == "p" and consumer[1:].isdigit()


class PriorityPlan:
    """The lane order of each round of moves: strict priority with a rotating fairness round."""

    def __init__(self, levels: int = PRIORITY_LEVELS, every: int = FAIRNESS_EVERY) -> None:
        self.levels = levels
        self.every = every
        self._rounds = 0
        self._next_low = 1

    def order(self) -> list[int]:
        """The lanes to try, first to last, for the next round of moves."""
        self._rounds += 1
        if self.levels < 2 or self._rounds % self.every:
            return list(range(self.levels))
        start = self._next_low
        self._next_low = start % (self.levels - 1) + 1
        return list(range(start, self.levels)) + list(range(start))


class LanePopper:
    """Moves lane messages of a lifo or priority queue to its run lane, one per free slot."""

    def __init__(self, broker: Broker, names: Names, plan: PriorityPlan | None) -> None:
        self.broker = broker
        self.names = names
        self.plan = plan
        """The lane order of a priority queue; None for lifo (the newest over every lane)."""
        self.contended = False
        """Whether the last move lost every try to other workers (look again soon)."""
        self._empty: set[int | None] = set()
        """Lanes (None: every lane, lifo) a move found empty and no bell rang for since."""
        self._rings: Counter[int | None] = Counter()
        """Bells heard per lane: a lane read empty while its bell rang is not marked empty."""
        self._from: dict[int, int] = {}
        """Per priority lane, the sequence to read its oldest message from: a lane's messages
        only land at its end, so reading from the last one moved saves the server a scan of
        what went before (a bell of a lower sequence, a stream made anew, lowers it)."""
        self._read_all_at = time.monotonic()
        self._top: int | None = None
        """lifo: the newest sequence a lane message may have (None: ask the stream)."""
        self._rung_top = 0
        """lifo: the newest sequence a bell announced during the move under way."""

    @property
    def maybe_nonempty(self) -> bool:
        """Whether a lane may hold a job (False once every lane was found empty)."""
        return len(self._empty) < (self.plan.levels if self.plan is not None else 1)

    def rang(self, subject: str, seq: int) -> None:
        """A bell rang: message ``seq`` landed on the lane of ``subject``."""
        lane = self.names.bell_lane(subject) if self.plan is not None else None
        self._rings[lane] += 1
        self._empty.discard(lane)
        if lane is not None and seq < self._from.get(lane, 0):
            self._from[lane] = seq
        if lane is None:
            self._rung_top = max(self._rung_top, seq)
            if self._top is not None:
                self._top = max(self._top, seq)

    def forget_empty(self) -> None:
        """Read every lane again, from its start (after a reconnect: a bell may have been
        lost)."""
        self._rings.update(self._empty)
        self._empty.clear()
        self._from.clear()
        self._top = None
        self._read_all_at = time.monotonic()

    def quiet(self, every: float) -> None:
        """Nothing woke the worker: read every lane again if ``every`` seconds passed since it
        last did (a bell is core NATS and can be lost)."""
        if time.monotonic() - self._read_all_at >= every:
            self.forget_empty()

    async def move(self, most: int) -> int:
        """Move up to ``most`` jobs to the run lane, best lane first; how many were moved."""
        self.contended = False
        if self.plan is None:
            return await self._move_newest(most)
        moved = 0
        for lane in self.plan.order():
            if moved >= most:
                break
            if lane in self._empty:
                continue
            rings = self._rings[lane]
            got, next_from, more = await self.broker.move_oldest(
                self.names.lane_filter(lane), self._from.get(lane, 0), most - moved
            )
            if next_from < 0:  # nothing there, unless its bell rang meanwhile
                if self._rings[lane] == rings:
                    self._empty.add(lane)
                continue
            self._from[lane] = next_from
            moved += got
            if more or not got:  # the lane holds more, or others moved these: no worse lane now
                self.contended = moved < most  # others took some: look again soon
                break
        return moved

    async def _move_newest(self, most: int) -> int:
        """lifo: move the newest jobs over every lane, newest first, reading the lanes down
        from the newest sequence a lane message may have (a bell raises it)."""
        moved = 0
        for _ in range(LIFO_READS):
            rings, self._rung_top = self._rings[None], 0
            top = self._top if self._top is not None else await self.broker.last_seq()
            got, below = await self.broker.move_newest(top, most - moved)
            moved += got
            self._top = None if below < 0 else max(below, self._rung_top)
            if moved >= most:
                return moved
            if below == 0 and not self._rung_top:  # nothing left up to the newest
                if self._rings[None] == rings:
                    self._empty.add(None)
                return moved
        self.contended = True  # read down as far as one round goes: look again soon
        return moved
