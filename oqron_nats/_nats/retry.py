"""How a request that NATS could not answer is tried again: capped, jittered pauses until a
deadline.

A cluster answers nothing for a stream or consumer while it elects a new leader (5-7 s after a
node was killed, measured), a connection fails over to another node, and the meta leader can be
gone for a moment during a rolling upgrade. None of that is a failure of the request: it is asked
again after a pause that doubles from ``FIRST_PAUSE`` up to ``MAX_PAUSE``, each pause jittered so
that many workers do not ask again in step, until the operation's deadline has passed.
"""

from __future__ import annotations

import asyncio
import random
import time

FIRST_PAUSE = 0.05
MAX_PAUSE = 1.0
"""Seconds between tries: from the first pause, doubling up to the cap."""

TRANSIENT_ERR_CODES = frozenset(
    {
        10004,  # incomplete results (a peer did not answer in time)
        10005,  # no suitable peers for placement (a node of an R3 group is down)
        10008,  # JetStream system temporarily unavailable (no meta leader)
        10009,  # JetStream cluster can not handle request (not the leader any more)
        10023,  # insufficient resources (placement while a node is down, or the store is full)
        10158,  # duplicate message id is in process (being replicated: next time a duplicate)
        10163,  # expected last sequence per subject temporarily unavailable (a new leader)
        10164,  # an earlier write to the key is still being replicated (next time: the answer)
    }
)
"""JetStream API errors that a cluster answers while it elects leaders or misses a node: asked
again, like a request nobody answered (err_codes from nats-server's errors.json)."""

SUSPECTS = {10023: "JetStream storage full (the server's or the account's), or a node down"}
"""What else an operator should suspect when a transient error keeps coming back."""


class Backoff:
    """The pauses between the tries of one operation, until its deadline."""

    __slots__ = ("_deadline", "_pause")

    def __init__(self, deadline: float) -> None:
        self._deadline = time.monotonic() + deadline
        self._pause = FIRST_PAUSE

    @property
    def remaining(self) -> float:
        """Seconds until the deadline (0 once it has passed)."""
        return max(0.0, self._deadline - time.monotonic())

    async def pause(self) -> bool:
        """Wait before the next try; False (at once) if the deadline has passed."""
        left = self.remaining
        if left <= 0:
            return False
        await asyncio.sleep(min(left, jittered(self._pause)))
        self._pause = min(2 * self._pause, MAX_PAUSE)
        return True


def jittered(pause: float) -> float:
    """A pause of between half and all of ``pause`` seconds, so that many processes waiting
    for the same thing do not try again in step."""
    return pause * random.uniform(0.5, 1.0)
