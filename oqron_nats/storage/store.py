"""Job records in KV. Every write is a compare-and-set on the revision the writer read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

import msgspec

from .._nats import Bucket, CasConflict
from .._nats.names import Names
from ..core.errors import CorruptRecord, JobNotFound, Unavailable
from ..core.job import Job, JobState
from ..observe.events import EventBus
from ..observe.metrics import GAUGED_STATES, Snapshot
from .index import IndexEntry, StateIndex

RawJob = Job[msgspec.Raw]
"""A record as stored: the payload stays encoded until a handler or caller decodes it."""

_decoder = msgspec.json.Decoder(RawJob)
TOMBSTONE_TTL = 60.0
"""Seconds a removed record's tombstone stays, holding the last record (for ``Queue.wait``);
then the key is free again, without a trace."""


CAS_TRIES = 100
"""Compare-and-set writes of one change that may lose in a row (each to another writer's
progress) before :meth:`JobStore.transition` gives up."""

Change = Callable[[RawJob], Awaitable[RawJob | None]]
"""Decides a job's next record from its current one (None: leave it as it is)."""

INDEX_SETTLE = 5.0
"""Seconds after a state change when a disagreeing index entry is taken as stale, not in flight."""


def settled(job: RawJob) -> bool:
    """Whether the job's last state change is old enough that its index update has landed."""
    changed = job.timeline[-1].at if job.timeline else job.created_at
    return (datetime.now(UTC) - changed).total_seconds() > INDEX_SETTLE


class Record(NamedTuple):
    """A job record with the revision it was read at (the token for the next CAS), and the
    seconds until it expires (None: never, or not read)."""

    job: RawJob
    revision: int
    expires_in: float | None = None


class Stored(NamedTuple):
    """A record as just written: its revision and its bytes (what a job message's copy of the
    record carries)."""

    revision: int
    value: bytes


class CorruptJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job whose stored record does not decode, as a listing shows it."""

    id: str
    size: int
    """The stored record's length in bytes."""
    error: str
    state: str = "corrupt"


def decode_record(key: str, value: bytes) -> RawJob:
    """Decode a stored record, raising CorruptRecord if it is not one."""
    try:
        return _decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise CorruptRecord(key, len(value), str(exc)) from None


class Listing(NamedTuple):
    """The jobs read for some index entries, and those whose records do not decode."""

    jobs: list[RawJob]
    corrupt: list[CorruptJob]


class JobStore:
    """Create, read and compare-and-set job records of one queue; every write is announced."""

    def __init__(
        self,
        bucket: Bucket,
        names: Names,
        events: EventBus,
        index: StateIndex,
        *,
        replicated: bool = False,
    ) -> None:
        self.bucket = bucket
        self.names = names
        self.events = events
        self.index = index
        self.replicated = replicated
        """Whether the bucket has replicas: any of them answers a read, and one may lag."""

    async def create(self, job: RawJob) -> Stored:
        """Store a new record; raise CasConflict if the id exists. Returns it as stored."""
        value = msgspec.json.encode(job)
        revision = await self.bucket.create(self.names.key(job.id), value)
        return await self._created(job, Stored(revision, value))

    async def create_many(self, jobs: Sequence[RawJob]) -> list[Stored | Exception]:
        """:meth:`create` of each job, their first tries sent at once: for each, in order, its
        record as stored, or what its create raised (CasConflict if the id exists)."""
        values = [msgspec.json.encode(job) for job in jobs]
        revisions = await self.bucket.create_many(
            [(self.names.key(job.id), value) for job, value in zip(jobs, values, strict=True)]
        )
        results: list[Stored | Exception] = []
        for job, value, revision in zip(jobs, values, revisions, strict=True):
            if isinstance(revision, Exception):
                results.append(revision)
            else:
                results.append(await self._created(job, Stored(revision, value)))
        return results

    async def _created(self, job: RawJob, stored: Stored) -> Stored:
        """After a new record was stored: its index entry and its event."""
        await self.index.moved(job, None, job.state)
        await self.events.announce(job, "added")
        return stored

    async def get(self, job_id: str, *, fresh: bool = False) -> Record | None:
        """The record of ``job_id`` with its revision, or None.

        On a replicated bucket any replica answers a read, and one that lags behind can miss a
        record created a moment ago (a worker would then drop the job's message as an orphan):
        a record found missing is looked up again at the bucket's leader, which has every
        acknowledged write, before None is believed. ``fresh`` reads at the leader at once: for
        a decision no compare-and-set fences, and for what a user reads (a replica may be
        minutes behind after a partition, see :mod:`oqron_nats._nats.lagging`); without
        replicas there is nothing to ask again.
        """
        key = self.names.key(job_id)
        fresh = fresh and self.replicated
        entry = await self.bucket.get(key, fresh=fresh)
        if entry is None and self.replicated and not fresh:
            entry = await self.bucket.get(key, fresh=True)
        if entry is None:
            return None
        return Record(decode_record(key, entry.value), entry.revision, entry.expires_in)

    async def update(
        self,
        job: RawJob,
        revision: int,
        event: str,
        was: JobState,
        ttl: float | None = None,
        *,
        index: bool = True,
        unlisted: frozenset[JobState] = frozenset(),
        confirm: bool = False,
    ) -> int:
        """Replace the record (state ``was`` until now) if it is still at ``revision``, and
        announce ``event``; returns the new revision. With ``ttl`` the record (and its index
        entry) expires that many seconds later. ``index=False`` leaves the state index as it is
        (the caller moves it later); ``unlisted``, ``confirm``: see :meth:`StateIndex.moved`.

        Raises CasConflict if someone else wrote it since: that writer won, this one commits
        nothing.
        """
        key = self.names.key(job.id)
        encoded = msgspec.json.encode(job)
        new_revision = await self.bucket.update(key, encoded, last=revision, ttl=ttl)
        if index:
            await self.index.moved(job, was, job.state, ttl=ttl, unlisted=unlisted, confirm=confirm)
        await self.events.announce(job, event)
        return new_revision

    async def transition(
        self, job_id: str, change: Change, event: str | Callable[[RawJob], str]
    ) -> tuple[RawJob, RawJob] | None:
        """Read the job, ``change`` it, and write the change by compare-and-set, reading and
        deciding again while other writers win; announce ``event`` (or the event named for the
        new record); returns the record before and after, or None if ``change`` left it as it
        is. JobNotFound if there is no such job; Unavailable if CAS_TRIES writes in a row lost.
        """
        for _ in range(CAS_TRIES):
            record = await self.get(job_id)
            if record is None:
                raise JobNotFound(f"there is no job {job_id!r} in queue {self.names.queue!r}")
            after = await change(record.job)
            if after is None:
                return None
            named = event if isinstance(event, str) else event(after)
            try:
                # into or out of a finished state, no run of the job comes after to repair the
                # index: its writes wait for their answers
                ended = record.job.is_terminal or after.is_terminal
                await self.update(after, record.revision, named, record.job.state, confirm=ended)
            except CasConflict:
                continue  # it moved meanwhile: decide again on what it is now
            return record.job, after
        raise Unavailable(
            f"job {job_id!r} kept changing: {CAS_TRIES} writes in a row lost their "
            "compare-and-set to other writers"
        )

    async def remove_all(self) -> None:
        """Remove every record of the queue (its index is the StateIndex's to clear)."""
        await self.bucket.purge(self.names.keys)

    async def remove(self, job: RawJob, revision: int) -> None:
        """Delete the record if it is still at ``revision`` (CasConflict otherwise)."""
        key, last_words = self.names.key(job.id), msgspec.json.encode(job)
        await self.bucket.delete(key, last=revision, ttl=TOMBSTONE_TTL, epitaph=last_words)
        await self.index.moved(job, job.state, None, confirm=True)  # no message, no record
        await self.events.announce(job, "removed")

    async def removed(self, job_id: str) -> RawJob | None:
        """The last record of a job removed less than TOMBSTONE_TTL ago, or None."""
        tombstone = await self.bucket.tombstone(self.names.key(job_id))
        if tombstone is None or not tombstone.value:
            return None
        return decode_record(tombstone.key, tombstone.value)

    async def listed(self, entries: list[IndexEntry]) -> Listing:
        """The records of these index entries, where record and entry agree (each job once),
        and the entries whose records do not decode (shown as such; the rest go on).

        An entry of a job that settled in another state (a crash cut its move short) is
        repaired; one whose job moved moments ago is only skipped (its update is on its way).
        """
        found = await asyncio.gather(
            *(self.get(entry.job_id) for entry in entries), return_exceptions=True
        )
        jobs: list[RawJob] = []
        corrupt: dict[str, CorruptJob] = {}
        seen: set[str] = set()
        for entry, record in zip(entries, found, strict=True):
            if isinstance(record, CorruptRecord):
                corrupt[entry.job_id] = CorruptJob(
                    id=entry.job_id, size=record.size, error=record.reason
                )
                continue
            if isinstance(record, BaseException):
                raise record
            if record is not None and record.job.state == entry.state:
                if record.job.id not in seen:
                    seen.add(record.job.id)
                    jobs.append(record.job)
            elif record is None or settled(record.job):
                await self.refile(entry.job_id, record)
        return Listing(jobs, list(corrupt.values()))

    async def refile(self, job_id: str, record: Record | None) -> None:
        """Make the job's index entries say what ``record`` says (None: the job is gone), an
        entry filed now expiring with its record."""
        if record is None:
            await self.index.repair(job_id, None)
        else:
            await self.index.repair(job_id, record.job.state, record.expires_in)

    async def entered_first(self, state: JobState, slack: int = 16) -> datetime | None:
        """When the job that has been in ``state`` longest entered it; None if no job is.

        The oldest ``slack`` index entries are checked against their records, so an entry left
        behind by a job that moved on does not count.
        """
        entries = await self.index.oldest(state, slack)
        still = {job.id for job in (await self.listed(entries)).jobs}
        return next((e.entered_at for e in entries if e.job_id in still), None)

    async def gauges(self) -> Snapshot:
        """The queue's gauge values now: the count of each gauged state and the oldest waiting."""
        counts = tuple(await asyncio.gather(*(self.index.count(s) for s in GAUGED_STATES)))
        oldest = await self.entered_first(JobState.WAITING) if counts[0] else None
        return Snapshot(counts, oldest)

    async def scan(self) -> AsyncIterator[Record]:
        """Every record of the queue with its revision (reads them all; skips undecodable ones)."""
        async for entry in self.bucket.scan(self.names.keys):
            try:
                yield Record(decode_record(entry.key, entry.value), entry.revision)
            except CorruptRecord:
                continue


__all__ = [
    "CasConflict",
    "CorruptJob",
    "CorruptRecord",
    "JobStore",
    "Listing",
    "RawJob",
    "Record",
    "Stored",
    "decode_record",
]
