"""The state index: which jobs of a queue are in which state, for counts and newest-first pages.

One stream per queue (``OQRON_<ns>_X_<q>``, one message per subject) holds an entry per job on
``oqron.<ns>.idx.<q>.<state>.<job_id>``. When a job moves, its entry is published on the new
state's subject and a **delete marker** (``KV-Operation: DEL``, ``Nats-TTL: 1s``) on the old one:
the marker replaces the old entry (one message per subject), then expires. A move is two stored
messages sent without waiting for an answer, in order on one connection, so a marker cannot
overtake the entry it removes. A finished state's entry is left only when a job is removed or
retried: there a purge (an API request, sent without waiting) removes it, so that no marker
ever stands in a finished state and its count (which trimming to N relies on) is one request.

Why this layout (issue 14). oqron_nats 0.1 kept a stream per state and purged the old entry;
a purge is a JetStream API request, and on this machine a job's index work cost the server
54 µs with purges against 32-37 µs with markers (bench/server_cpu.py). Nine streams per queue
were also nine Raft groups at R3. Two alternatives were measured and dropped: JetStream counters
(2.12) need a stream of their own (a counter stream refuses other messages), cost as much as the
purges, and never see an entry expire with its record (age-based retention); a second
"shadow" marker on a subject of its own, to count the live markers, costs as much as the purges.

Reads, where a delete marker still stands for a second after the move:

* ``count(state)``: the state's messages (a batch read of one message, whose
  ``Nats-Num-Pending`` the server computes from its subject index: a few milliseconds at
  100,000 jobs). In an unfinished state, minus the markers still standing: those were all
  stored in the seconds before the stream's last message, so one read of that tail finds them
  (it costs the state's moves of the last three seconds). Markers are read before the total,
  so a count made while a marker expires is one low, never one high.
* pages read the state's subjects backwards, in windows (the page and a quarter, then four
  times as many each time) that skip markers.

The record stays the truth, and the index heals itself where a crash cut a move short (the
record was written, its index update never left the dying process):

* a job's end marks it gone from every unfinished state it passed through, not only the one it
  left;
* a page (and drain, obliterate) re-reads its records, drops the entries of jobs that moved on
  and repairs them (one read of the job's entries, a marker where one is stale);
* a redelivered finished job (its ack was lost with the same crash) gets its entry back.

A queue made by oqron_nats 0.1 (nine ``OQRON_<ns>_X<c>_<q>`` streams) is migrated when a worker
or an admin opens it (:func:`migrate_legacy`): entries are copied with their entry times, the old
streams deleted. A role that may not delete streams leaves that to the next worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from .._nats import Nats, StoredMsg
from .._nats.kv import ttl_header
from .._nats.names import INDEX_ENTERED_HEADER, KV_OPERATION_HEADER, TTL_HEADER, Names
from .._nats.replies import parse_time
from ..core.errors import OqronError
from ..core.job import TERMINAL_STATES, TIMELINE_LIMIT, Job, JobState
from ..observe.log import logger

log = logger(__name__)

UNFINISHED_STATES = frozenset(JobState) - TERMINAL_STATES

WINDOW = 256
"""Entries read per request."""
TAIL_BATCH = 1024
"""Messages read per request where a count looks for standing delete markers."""
MARKER_TTL = 1
"""Seconds a delete marker stands (the server's minimum per-message TTL)."""
MARKER_SLACK = 2.0
"""Seconds a marker may outlive its TTL before the server removes it (a busy server)."""
COUNT_TRIES = 3
"""Reads of a count at most, while delete markers expire under it (see ``StateIndex.count``)."""
GONE = {KV_OPERATION_HEADER: "DEL", TTL_HEADER: f"{MARKER_TTL}s"}
EARLIEST = datetime.min.replace(tzinfo=UTC)
"""The entry time of an entry that has none (listed last among the newest)."""
CONFIRMING_MOST = 5_000
"""Finished jobs' entries confirmed beside their settles at most (a few MB); beyond, a settle
waits for its own entry's answer."""


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
    stream has no leader is dropped, and nothing would send it again (an unfinished state's
    entry is superseded by the job's next move; a finished one stays). Its answer is awaited
    beside the settle, in a task of its own, not by it: the settle's ack and the worker's next
    jobs do not wait out an election of the index's leader (:meth:`confirmed` waits for them
    at a worker's stop).
    """

    def __init__(self, conn: Nats, names: Names, *, confirm_final: bool = False) -> None:
        self.conn = conn
        self.names = names
        self.confirm_final = confirm_final
        self.stream = names.index_stream
        self._confirming: dict[str, asyncio.Task[None]] = {}
        """The finished jobs' moves whose entries are still being confirmed, by job id."""

    def moved(
        self,
        job: Job[Any],
        was: JobState | None,
        now: JobState | None,
        ttl: float | None = None,
        *,
        unlisted: frozenset[JobState] = frozenset(),
        confirm: bool = False,
    ) -> Coroutine[Any, Any, None]:
        """Record that a job left ``was`` (None: it is new) for ``now`` (None: it is gone);
        with ``ttl`` the new entry expires with the record. ``unlisted``: states the job passed
        through that never had its entry (a claim's entry written late, runtime/late_entry.py):
        a finished job's end sends them no marker. ``confirm`` waits for every write's answer
        (asked again through a lost connection) for a move that no run of the job comes after to
        repair (into or out of a finished state: a cancel, a removal, a rerun); one that still
        fails is logged, not raised: the record is the truth (a listing files the job again),
        and what the caller does next (remove a message, tell a worker) must still happen."""
        # a plain function returning the writes' coroutine: one coroutine per move, not two
        if was == now:
            return _nothing()
        stale = {was} if now not in TERMINAL_STATES else {was, *passed_through(job)}
        left = stale - unlisted - {None, now}
        if confirm:
            return self._logged(self._move(job.id, now, left, ttl, confirm=True), job.id, now)
        if self._confirms_beside(now):  # the job's id and states only: no payload is held
            task = asyncio.ensure_future(
                self._logged(self._move(job.id, now, left, ttl), job.id, now)
            )
            self._confirming[job.id] = task
            task.add_done_callback(partial(self._confirmation_ended, job.id))
            return _nothing()
        return self._move(job.id, now, left, ttl)

    async def confirmed(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the finished jobs' entries still being confirmed."""
        if self._confirming:
            await asyncio.wait(set(self._confirming.values()), timeout=grace)

    def _confirmation_ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._confirming.get(job_id) is task:
            del self._confirming[job_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a finished job's index entry failed", exc_info=exc)

    def _confirms_beside(self, now: JobState | None) -> bool:
        """Whether a move into ``now`` has its entry confirmed beside the caller."""
        return (
            self.confirm_final
            and now in TERMINAL_STATES
            and len(self._confirming) < CONFIRMING_MOST
        )

    async def _logged(
        self, move: Coroutine[Any, Any, None], job_id: str, now: JobState | None
    ) -> None:
        """Await a :meth:`_move`; a failure is logged, not raised: the record is the truth (a
        listing or reconciliation files the job again)."""
        try:
            await move
        except OqronError as exc:
            log.warning("the state index did not take a move; its counts may be off until the "
                        "job is listed", job_id=job_id, state=str(now), error=str(exc))  # fmt: skip

    async def _move(
        self,
        job_id: str,
        now: JobState | None,
        left: set[JobState | None],
        ttl: float | None,
        *,
        confirm: bool = False,
    ) -> None:
        """The entry in ``now`` (acked if ``confirm`` or a finished one on replicated streams),
        then the markers of the states ``left`` (acked if ``confirm``)."""
        if now is not None:
            headers = {TTL_HEADER: ttl_header(ttl)} if ttl is not None else None
            entry = self.names.index_entry(now, job_id)
            if confirm or (self.confirm_final and now in TERMINAL_STATES):
                await self.conn.publish(entry, b"", headers)
            else:
                await self.conn.publish_core(entry, headers=headers)
        for state in left:
            assert state is not None
            await self._forget(job_id, state, confirm=confirm)

    async def _forget(self, job_id: str, state: JobState, *, confirm: bool = False) -> None:
        """Remove the job's entry in ``state``: a delete marker in an unfinished state (every
        job leaves those), a purge in a finished one (left only when a job is removed or
        retried), whose count must never include a job that left it (trimming to N)."""
        subject = self.names.index_entry(state, job_id)
        if state in TERMINAL_STATES:
            confirming = self._confirming.get(job_id)
            if confirming is not None and confirming is not asyncio.current_task():
                # its entry first, else it could land after the purge (bounded by its deadline)
                await asyncio.wait({confirming})
            if confirm:
                await self.conn.purge_subject(self.stream, subject)
            else:
                await self.conn.purge_later(self.stream, subject)
        elif confirm:
            await self.conn.publish(subject, b"", GONE)
        else:
            await self.conn.publish_core(subject, headers=GONE)

    async def settle(self, job_id: str, state: JobState) -> None:
        """Write the job's entry in ``state`` again and wait until it is stored, so that a count
        made next includes it (a fire-and-forget entry may still be on its way)."""
        await self.conn.publish(self.names.index_entry(state, job_id), b"")

    async def repair(self, job_id: str, now: JobState | None, ttl: float | None = None) -> None:
        """Make the job's entries say ``now`` (None: gone), whatever they said before; an entry
        filed in ``now`` expires after ``ttl`` seconds (its record's). Its writes wait for their
        answers: it runs after a lost connection or a redelivery, when a stream may be between
        leaders (one sent without waiting would be dropped)."""
        stored, _ = await self.conn.direct_batch(
            self.stream, start=1, batch=len(JobState) + 1,
            subject=self.names.index_entries_of_job(job_id),
        )  # fmt: skip
        listed = {state_of(m) for m in stored if not gone(m)}
        for state in listed - {now, None}:
            assert state is not None
            await self._forget(job_id, state, confirm=True)
        if now is not None and now not in listed:
            headers = {TTL_HEADER: ttl_header(ttl)} if ttl is not None else None
            await self.conn.publish(self.names.index_entry(now, job_id), b"", headers)

    async def remove_all(self) -> None:
        """Remove every entry of the queue's index."""
        await self.conn.purge_subject(self.stream, self.names.index_entries_of_queue)

    async def count(self, state: JobState) -> int:
        """How many jobs are in ``state``.

        One read counts the state's messages, another the delete markers standing among them;
        a marker that expires between the two would make the count low, so the markers are
        counted again after, and both reads made again (``COUNT_TRIES`` at most) until the two
        marker counts agree. Under constant churn the count may stay low, never high.
        """
        bounds = await self.conn.stream_state(self.stream)
        if not bounds.messages:
            return 0
        total = standing = 0
        for _ in range(COUNT_TRIES):
            standing = await self._standing(state, bounds.last_ts)
            first, more = await self.conn.direct_batch(
                self.stream, start=bounds.first_seq, batch=1,
                subject=self.names.index_entries(state),
            )  # fmt: skip
            total = len(first) + more
            if standing == 0 or standing == await self._standing(state, bounds.last_ts):
                break
        return max(0, total - standing)

    async def _standing(self, state: JobState, last_ts: str) -> int:
        """How many delete markers stand among ``state``'s entries now."""
        if state in TERMINAL_STATES:  # no marker ever stands in a finished state
            return 0
        return sum(1 for m in await self._tail(state, last_ts) if gone(m))

    async def newest(self, state: JobState, count: int) -> list[IndexEntry]:
        """The ``count`` entries that entered ``state`` last, newest first."""
        bounds = await self.conn.stream_state(self.stream)
        found: list[IndexEntry] = []
        end, span = bounds.last_seq + 1, max(WINDOW, count + count // 4)
        while count > 0 and bounds.messages and end > bounds.first_seq:
            start = max(bounds.first_seq, end - span)
            window = await self._read(state, start, stop=end)
            found.extend(reversed(window))
            end, span = start, span * 4
            if len(found) >= count:
                break
        return found[:count]

    async def read_on(
        self, state: JobState, start: int, batch: int
    ) -> tuple[list[IndexEntry], int]:
        """Up to ``batch`` entries of ``state``, oldest first, from sequence ``start`` on (from
        the first if it is gone), and where the next read goes on (0: from the first again)."""
        bounds = await self.conn.stream_state(self.stream)
        if not bounds.messages:
            return [], 0
        stored, more = await self.conn.direct_batch(
            self.stream, start=max(start, bounds.first_seq), batch=batch,
            subject=self.names.index_entries(state),
        )  # fmt: skip
        entries = [entry(m, state) for m in stored if not gone(m)]
        return entries, stored[-1].seq + 1 if stored and more else 0

    async def listed(self, state: JobState) -> list[str]:
        """The ids of the jobs with an entry in ``state``."""
        bounds = await self.conn.stream_state(self.stream)
        if not bounds.messages:
            return []
        standing: set[str] = set()
        if state not in TERMINAL_STATES:
            standing = {m.subject for m in await self._tail(state, bounds.last_ts) if gone(m)}
        subjects = await self.conn.subjects(self.stream, self.names.index_entries(state))
        return [s.rsplit(".", 1)[1] for s in subjects if s not in standing]

    async def oldest(self, state: JobState, count: int) -> list[IndexEntry]:
        """The ``count`` entries that entered ``state`` first, oldest first."""
        bounds = await self.conn.stream_state(self.stream)
        if not bounds.messages or count <= 0:
            return []
        return await self._read(state, bounds.first_seq, stop=None, want=count)

    async def _read(
        self, state: JobState, start: int, *, stop: int | None, want: int | None = None
    ) -> list[IndexEntry]:
        """The entries of ``state`` from sequence ``start`` up to ``stop`` (excluded; None: to
        the end), oldest first, markers skipped; at most ``want`` of them."""
        found: list[IndexEntry] = []
        subject = self.names.index_entries(state)
        while want is None or len(found) < want:
            stored, more = await self.conn.direct_batch(
                self.stream, start=start, batch=WINDOW, subject=subject
            )
            for m in stored:
                if stop is not None and m.seq >= stop:
                    return found
                if not gone(m):
                    found.append(entry(m, state))
            if not stored or not more:
                break
            start = stored[-1].seq + 1
        return found if want is None else found[:want]

    async def _tail(self, state: JobState, last_ts: str) -> list[StoredMsg]:
        """Every message of ``state`` stored in the seconds before ``last_ts`` (the stream's
        last message): where its standing delete markers are."""
        subject = self.names.index_entries(state)
        found: list[StoredMsg] = []
        start_time: str | None = None
        start = 1
        last = parse_time(last_ts)
        if last is not None:  # else: read it all (a server that did not say)
            since = last - timedelta(seconds=MARKER_TTL + MARKER_SLACK)
            start_time, start = since.isoformat().replace("+00:00", "Z"), 0
        while True:
            stored, more = await self.conn.direct_batch(
                self.stream, start=start, batch=TAIL_BATCH, subject=subject,
                start_time=start_time if not start else None,
            )  # fmt: skip
            found += stored
            if not stored or not more:
                return found
            start = stored[-1].seq + 1


def passed_through(job: Job[Any]) -> frozenset[JobState]:
    """The unfinished states a job was in: where a move cut short by a crash may have left an
    entry (all of them if its timeline was trimmed)."""
    if len(job.timeline) >= TIMELINE_LIMIT:
        return UNFINISHED_STATES
    return frozenset(t.state for t in job.timeline) & UNFINISHED_STATES


def gone(msg: StoredMsg) -> bool:
    """Whether a stored index message is a delete marker."""
    return msg.headers.get(KV_OPERATION_HEADER) == "DEL"


def state_of(msg: StoredMsg) -> JobState | None:
    """The state an index message's subject names (None: not one of ours)."""
    token = msg.subject.rsplit(".", 2)[-2] if msg.subject.count(".") >= 2 else ""
    try:
        return JobState(token)
    except ValueError:
        return None


def entry(msg: StoredMsg, state: JobState) -> IndexEntry:
    """The index entry a stored message stands for: entered when its entry time says (a
    migrated entry's), else when the server stored it (an entry time that is not one is
    ignored: anyone who may write entries may write it)."""
    entered = parse_time(msg.headers.get(INDEX_ENTERED_HEADER, "")) or parse_time(
        msg.headers.get("Nats-Time-Stamp", "")
    )
    return IndexEntry(msg.subject.rsplit(".", 1)[1], state, msg.seq, entered or EARLIEST)


async def _nothing() -> None:
    """A move with nothing to write now."""


def newest_across(pages: Iterable[list[IndexEntry]], count: int) -> list[IndexEntry]:
    """Merge per-state pages into one, newest first."""
    merged = sorted((e for page in pages for e in page), key=lambda e: e.entered_at, reverse=True)
    return merged[:count]
