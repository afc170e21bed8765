"""Cluster-wide rate limits, counted by the server.

Each window of ``duration`` seconds (aligned to the epoch) has a counter subject in the
namespace's ``OQRON_<ns>_RATE`` stream, one per group when the limit has a key. A worker that
is about to start a job adds one to its window's counter (a JetStream counter: the server adds
atomically and answers the new total, no compare-and-set retries); the first ``max`` starts of
the window are admitted, the rest go back to the queue until the window ends.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from .._nats import JetStreamError
from ..core.config import RateLimit, seconds
from ..core.errors import Unavailable
from ..observe.log import logger
from ..storage.rates import RateCounters

log = logger(__name__)

RETRY_WHEN_UNREACHABLE = 1.0
"""Seconds a job waits when the counter cannot be reached and the limit fails closed."""


def group_token(key: str) -> str:
    """A subject-safe token for a group key (a digest: keys may hold any character)."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class ClusterRateLimit:
    """Admits job starts within the cluster-wide limit of one queue."""

    def __init__(self, counters: RateCounters, policy: RateLimit) -> None:
        self.counters = counters
        self.policy = policy
        self.duration = seconds(policy.duration, "rate_limit.duration")

    async def admit(self, data: Any) -> float | None:
        """None if the job may start now, else the seconds until it may try again."""
        now = time.time()
        window = int(now // self.duration)
        group = "all" if self.policy.key is None else group_token(str(self.policy.key(data)))
        try:
            count = await self.counters.count(group, window)
        except (Unavailable, JetStreamError) as exc:
            log.warning("rate limit counter unreachable", error=repr(exc))
            return None if self.policy.fail_open else RETRY_WHEN_UNREACHABLE
        if count <= self.policy.max:
            return None
        return (window + 1) * self.duration - now
