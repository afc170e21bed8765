"""Leaving a server that answers its clients but not JetStream: a node cut off from its cluster.

A node that has lost its routes to the other nodes (a network partition) still answers its
clients' PINGs, so nothing makes a client leave it; yet every JetStream request through it goes
unanswered (no responders, a timeout, or "temporarily unavailable") until the partition heals.
A cluster electing leaders answers nothing for a while too, but for seconds (5-12 s measured
here). So when every request of a connection has gone unanswered for ``LEAVE_AFTER`` seconds
while the connection stayed up, and the client knows another server, it reconnects to another
one. If that one answers no better (the whole cluster without quorum), it waits twice as long
before the next move, up to ``MOST_PATIENCE``; one answer resets the patience.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LEAVE_AFTER = 15.0
"""Seconds without one answered request, the connection up all along, before the client leaves
its server for another."""
MOST_PATIENCE = 120.0
"""The longest it waits before leaving again, when the servers it moved to answered no better."""
GAP = 10.0
"""Seconds between two unanswered requests beyond which they are not one stretch of silence, for
the default request timeout (5 s): a request asked again goes unanswered at least every request
timeout plus a pause (at most 1 s). A connection with a longer request timeout allows twice it."""


class Stranded:
    """Counts how long a connection's requests have gone unanswered; says when to leave."""

    __slots__ = ("_clock", "_gap", "_last", "_patience", "_since")

    def __init__(
        self, *, request_timeout: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._gap = max(GAP, 2 * request_timeout)
        self._since: float | None = None
        self._last = 0.0
        self._patience = LEAVE_AFTER

    def answered(self) -> None:
        """A request was answered: the server serves JetStream."""
        self._since = None
        self._patience = LEAVE_AFTER

    def unanswered(self) -> bool:
        """A request went unanswered while the connection was up; True if it is time to leave
        this server (then the count starts again, with twice the patience)."""
        now = self._clock()
        if self._since is None or now - self._last > self._gap:
            self._since = now
        self._last = now
        if now - self._since < self._patience:
            return False
        self._since = None
        self._patience = min(2 * self._patience, MOST_PATIENCE)
        return True

    def interrupted(self) -> None:
        """The connection dropped: what went unanswered meanwhile says nothing of a server."""
        self._since = None
