"""Ordering strategies: which consumers a queue has and in what order a worker claims from them.

Publishers always put a job on the lane of its priority (``p0``..``p9``), whatever the strategy,
so a publisher never needs to know how the queue is consumed and no job can be stranded on a
lane nobody reads.

* **fifo**: one consumer over every lane: jobs run in the order they were added (priority is
  kept on the record but does not reorder).
* **priority**: one consumer per lane. A worker claims from ``p0`` first, then ``p1`` and so on,
  so a late ``p0`` job overtakes a backlog. Against starvation, every 10th claim round starts at
  a lower lane in rotation (``p1``, ``p2``, ... ``p9``): under sustained load on ``p0``, every
  lower level still gets at least one claim in 90.
* **lifo**: the lanes have no consumer; a worker pops the newest lane message (a direct get of
  the last message), moves it to the queue's run lane and deletes it from the lane, in that
  order, then claims it through the run lane's consumer, so a popped job is always in the stream
  (in the lane or the run lane) until it is acked: crash safety is the same as for fifo.
"""

from __future__ import annotations

from .._nats import ConsumerSpec
from .._nats.names import Names
from ..core.config import QueueConfig
from ..core.job import Strategy
from ..core.naming import PRIORITY_LEVELS
from ..storage.broker import Broker

FAIRNESS_EVERY = 10
"""Every this many claim rounds, a priority worker starts at a lower lane (anti-starvation)."""


def consumer_specs(config: QueueConfig, names: Names, replicas: int) -> list[ConsumerSpec]:
    """The durable consumers of ``config.strategy``, in claim order."""

    def spec(durable: str, subject: str) -> ConsumerSpec:
        return ConsumerSpec(names.stream, durable, subject, config.ack_wait, replicas)

    if config.strategy == "priority":
        return [spec(f"p{level}", names.lane_filter(level)) for level in range(PRIORITY_LEVELS)]
    if config.strategy == "lifo":
        return [spec("lifo", names.run_lane)]
    return [spec("fifo", names.lanes)]


def strategy_of(consumer: str) -> Strategy | None:
    """Which strategy created a consumer of this name, if it is one of ours."""
    if consumer in ("fifo", "lifo"):
        return consumer  # type: ignore[return-value]
    if consumer[:1] == "p" and consumer[1:].isdigit():
        return "priority"
    return None


class PriorityPlan:
    """The lane order of each claim round: strict priority with a rotating fairness round."""

    def __init__(self, levels: int = PRIORITY_LEVELS, every: int = FAIRNESS_EVERY) -> None:
        self.levels = levels
        self.every = every
        self._rounds = 0
        self._next_low = 1

    def order(self) -> list[int]:
        """The lanes to try, first to last, for the next claim round."""
        self._rounds += 1
        if self.levels < 2 or self._rounds % self.every:
            return list(range(self.levels))
        start = self._next_low
        self._next_low = start % (self.levels - 1) + 1
        return list(range(start, self.levels)) + list(range(start))


class StackPopper:
    """Moves the newest lane messages of a lifo queue to its run lane."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.maybe_nonempty = True
        """False once a pop found the lanes empty; set again when the bell rings."""

    async def pop_one(self) -> bool:
        """Move the newest lane message to the run lane; False if the lanes were empty."""
        if await self.broker.pop_newest():
            return True
        self.maybe_nonempty = False
        return False
