"""The state index: which jobs of a queue are in which state, for counts and newest-first pages.

One stream per state (``OQRON_<ns>_X<c>_<queue>``) holds one entry per job in that state, on
subject ``oqron.<ns>.ix.<queue>.<state>.<job_id>``. When a job moves, its entry is published in
the new state's stream and purged from the old one. Both go out without waiting for an answer
(no round trip on the hot path). The server stores entries and runs purges (API requests) on
different paths, so a purge can overtake an entry sent just before it, and a count made right
after a move may not include it yet; :meth:`StateIndex.settle` waits for an entry where a count
must include it.

* ``count(state)`` is the state stream's message count: one request, whatever the size.
* The newest jobs in a state are the last entries of its stream, read backwards in windows.

The record stays the truth, and the index heals itself where a crash cut a move short (the
record was written, its index update never left the dying process):

* a job's end purges it from every unfinished state it passed through, not only the one it left;
* a page (and drain, obliterate) re-reads its records, drops the entries of jobs that moved on
  and repairs them;
* a redelivered finished job (its ack was lost with the same crash) gets its entry back.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .._nats import Nats, StoredMsg
from .._nats.kv import ttl_header
from .._nats.names import TTL_HEADER, Names
from ..core.job import TERMINAL_STATES, TIMELINE_LIMIT, Job, JobState

UNFINISHED_STATES = frozenset(JobState) - TERMINAL_STATES

WINDOW = 256
"""Entries read per request when paging backwards."""


class IndexEntry:
    """A job's entry in a state's index: its id, the state, and when it entered the state."""

    __slots__ = ("entered_at", "job_id", "seq", "state")

    def __init__(self, job_id: str, state: JobState, seq: int, entered_at: datetime) -> None:
        self.job_id = job_id
        self.state = state
        self.seq = seq
        self.entered_at = entered_at


class StateIndex:
    """The state index of one queue.

    With ``confirm_final`` (replicated streams), a finished job's entry is sent as an acked
    publish, retried through a leader election: an entry sent without an answer while the
    state's stream has no leader is dropped, and nothing would send it again (an unfinished
    state's entry is superseded by the job's next move; a finished one stays).
    """

    def __init__(self, conn: Nats, names: Names, *, confirm_final: bool = False) -> None:
        self.conn = conn
        self.names = names
        self.confirm_final = confirm_final

    async def moved(
        self, job: Job[Any], was: JobState | None, now: JobState | None, ttl: float | None = None
    ) -> None:
        """Record that a job left ``was`` (None: it is new) for ``now`` (None: it is gone);
        with ``ttl`` the new entry expires with the record."""
        if was == now:
            return
        if now is not None:
            headers = {TTL_HEADER: ttl_header(ttl)} if ttl is not None else None
            entry = self.names.index_entry(now, job.id)
            if self.confirm_final and now in TERMINAL_STATES:
                await self.conn.publish(entry, b"", headers)
            else:
                await self.conn.publish_core(entry, headers=headers)
        stale = {was} if now not in TERMINAL_STATES else {was, *passed_through(job)}
        for state in stale - {None, now}:
            assert state is not None
            await self._forget(job.id, state)

    async def settle(self, job_id: str, state: JobState) -> None:
        """Write the job's entry in ``state`` again and wait until it is stored, so that a count
        made next includes it (a fire-and-forget entry may still be on its way)."""
        await self.conn.publish(self.names.index_entry(state, job_id), b"")

    async def repair(self, job_id: str, now: JobState | None) -> None:
        """Make the job's entries say ``now`` (None: gone), whatever they said before."""
        for state in JobState:
            if state != now:
                await self._forget(job_id, state)
        if now is not None:
            entry = self.names.index_entry(now, job_id)
            if await self.conn.direct_get_subject(self.names.index_stream(now), entry) is None:
                await self.conn.publish_core(entry)

    async def _forget(self, job_id: str, state: JobState) -> None:
        await self.conn.purge_later(
            self.names.index_stream(state), self.names.index_entry(state, job_id)
        )

    async def remove_all(self) -> None:
        """Remove every entry of the queue's index."""
        for state in JobState:
            await self.conn.purge_subject(self.names.index_stream(state), ">")

    async def count(self, state: JobState) -> int:
        """How many jobs are in ``state``."""
        return (await self.conn.stream_state(self.names.index_stream(state))).messages

    async def newest(self, state: JobState, count: int) -> list[IndexEntry]:
        """The ``count`` entries that entered ``state`` last, newest first."""
        stream = self.names.index_stream(state)
        bounds = await self.conn.stream_state(stream)
        found: list[IndexEntry] = []
        end = bounds.last_seq
        while len(found) < count and bounds.messages and end >= bounds.first_seq:
            start = max(bounds.first_seq, end - WINDOW + 1)
            messages, _ = await self.conn.direct_batch(stream, start=start, batch=end - start + 1)
            found.extend(entry(m, state) for m in reversed(messages) if m.seq <= end)
            end = start - 1
        return found[:count]

    async def read_on(
        self, state: JobState, start: int, batch: int
    ) -> tuple[list[IndexEntry], int]:
        """Up to ``batch`` entries of ``state``, oldest first, from sequence ``start`` on (from
        the first if it is gone), and where the next read goes on (0: from the first again)."""
        stream = self.names.index_stream(state)
        bounds = await self.conn.stream_state(stream)
        if not bounds.messages:
            return [], 0
        stored, more = await self.conn.direct_batch(
            stream, start=max(start, bounds.first_seq), batch=batch
        )
        return [entry(m, state) for m in stored], stored[-1].seq + 1 if stored and more else 0

    async def listed(self, state: JobState) -> list[str]:
        """The ids of the jobs with an entry in ``state``."""
        subjects = await self.conn.subjects(
            self.names.index_stream(state), self.names.index_entries(state)
        )
        return [subject.rsplit(".", 1)[1] for subject in subjects]

    async def oldest(self, state: JobState, count: int) -> list[IndexEntry]:
        """The ``count`` entries that entered ``state`` first, oldest first."""
        stream = self.names.index_stream(state)
        bounds = await self.conn.stream_state(stream)
        if not bounds.messages or count <= 0:
            return []
        messages, _ = await self.conn.direct_batch(stream, start=bounds.first_seq, batch=count)
        return [entry(m, state) for m in messages]


def passed_through(job: Job[Any]) -> frozenset[JobState]:
    """The unfinished states a job was in: where a move cut short by a crash may have left an
    entry (all of them if its timeline was trimmed)."""
    if len(job.timeline) >= TIMELINE_LIMIT:
        return UNFINISHED_STATES
    return frozenset(t.state for t in job.timeline) & UNFINISHED_STATES


def entry(msg: StoredMsg, state: JobState) -> IndexEntry:
    """The index entry a stored message stands for."""
    stamp = msg.headers.get("Nats-Time-Stamp", "")
    return IndexEntry(msg.subject.rsplit(".", 1)[1], state, msg.seq, parse_time(stamp))


def parse_time(stamp: str) -> datetime:
    """An RFC 3339 server timestamp (nanoseconds cut to microseconds)."""
    if not stamp:
        return datetime.min.replace(tzinfo=UTC)
    head, _, fraction = stamp.rstrip("Z").partition(".")
    micros = (fraction + "000000")[:6]
    return datetime.fromisoformat(f"{head}.{micros}+00:00")


def newest_across(pages: Iterable[list[IndexEntry]], count: int) -> list[IndexEntry]:
    """Merge per-state pages into one, newest first."""
    merged = sorted((e for page in pages for e in page), key=lambda e: e.entered_at, reverse=True)
    return merged[:count]
