"""Noticing a replica that stays behind its stream's leader, whose direct gets answer old data.

A direct get is answered by any replica of the stream, whichever server the client is on, and
a replica is normally behind its leader by a few entries for a moment. One that was cut off
from its cluster catches up once the routes come back; but nats-server 2.15 can leave it
failing its catch-up for a minute or more (README, Reliability), and all that while it answers
about a third of every client's direct gets, with records minutes old, or none. So a
connection that reads a replicated stream asks its leader, every :data:`LOOK_EVERY` seconds
while it reads it, how far behind each replica is (``STREAM.INFO``: the leader knows each
replica's lag in log entries).

A replica is *behind* when its lag stayed above zero at every look for :data:`BEHIND_FOR`
seconds and grew meanwhile by :data:`GROWTH` entries or more (or the stream took no write and
the lag stayed): a healthy replica's lag comes and goes with the entries in flight, and a
stuck one's grows with every write. While a replica of a stream is behind, the connection's
single-message reads of it go to the leader (:mod:`.reads`). Its batch reads cannot (the
leader serves no batches) and may miss what the replica missed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .replies import PeerInfo

LOOK_EVERY = 5.0
"""Seconds between two looks at a replicated stream's replicas, while the stream is read."""
LOOK_UNREPLICATED = 300.0
"""Seconds before a stream with one replica is looked at again (an operator may scale it)."""
BEHIND_FOR = 10.0
"""Seconds a replica's lag must stay above zero before it may count as behind."""
GROWTH = 100
"""Log entries a replica's lag must have grown by over that time (unless the stream was idle)."""


@dataclass(frozen=True, slots=True)
class Look:
    """What a stream's leader said of its replicas at one moment."""

    at: float
    leader: str
    last_seq: int
    replicas: Sequence[PeerInfo]
    replicated: bool = True


@dataclass(frozen=True, slots=True)
class _Since:
    """When a replica's lag was first seen above zero (in its current stretch), and as what."""

    at: float
    lag: int
    last_seq: int


class Lagging:
    """One connection's view of which replicas of the streams it reads are behind."""

    __slots__ = ("_behind", "_due", "_leaders", "_since")

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._since: dict[tuple[str, str], _Since] = {}
        self._leaders: dict[str, str] = {}
        self._behind: dict[str, frozenset[str]] = {}

    def behind(self, stream: str) -> frozenset[str]:
        """The replicas of ``stream`` found behind at the last look."""
        return self._behind.get(stream, frozenset())

    def due(self, stream: str, now: float) -> bool:
        """Whether it is time to look at ``stream``'s replicas; if so, the next look is due
        :data:`LOOK_EVERY` seconds on (whether this one gets an answer or not)."""
        if self._due.get(stream, 0.0) > now:
            return False
        self._due[stream] = now + LOOK_EVERY
        return True

    def refused(self, stream: str) -> None:
        """This user may not look at ``stream`` (no ``STREAM.INFO``): never look again."""
        self._due[stream] = math.inf

    def judge(self, stream: str, look: Look) -> frozenset[str]:
        """Take in a look at ``stream``; the names of its replicas that are behind."""
        if not look.replicated:
            self._due[stream] = look.at + LOOK_UNREPLICATED
            return frozenset()
        if self._leaders.get(stream) != look.leader:  # a new leader counts lags of its own
            self._leaders[stream] = look.leader
            self._forget(stream)
        behind = frozenset(r.name for r in look.replicas if self._is_behind(stream, r, look))
        self._behind[stream] = behind
        return behind

    def _is_behind(self, stream: str, replica: PeerInfo, look: Look) -> bool:
        key = (stream, replica.name)
        if replica.offline or replica.lag <= 0:
            self._since.pop(key, None)
            return False
        since = self._since.setdefault(key, _Since(look.at, replica.lag, look.last_seq))
        if look.at - since.at < BEHIND_FOR:
            return False
        idle = look.last_seq == since.last_seq
        return replica.lag - since.lag >= GROWTH or (idle and replica.lag >= since.lag)

    def _forget(self, stream: str) -> None:
        for key in [key for key in self._since if key[0] == stream]:
            del self._since[key]
