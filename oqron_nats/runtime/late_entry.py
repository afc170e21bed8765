"""A claim's state-index entry, written late (issue 14).

A claim moves the job's record to active at once, and its index entry (the job listed as active
and no longer in the state it was claimed from: two stored messages, one of them a delete marker
that expires later) only if the job still runs ``LIST_AFTER`` seconds after the claim. Most jobs
end before: their end moves the index from the state they were claimed from straight to the
final one, three stored index messages fewer per job (in the benchmark: server CPU per job
-26 %, worker -19 %). Meanwhile counts and pages list the job in the state it was claimed from,
for at most ``LIST_AFTER`` seconds; pages show its record, which says active (they repair an
entry only when its record moved more than ``INDEX_SETTLE`` seconds ago).

Only a job that was never active is listed late: one that was (a retry, a takeover) may still
have an active entry from then, which its end must mark gone. A worker that dies in between
leaves the job listed where it was claimed from; the next attempt moves it on, and its end marks
it gone from every state it passed through.

The late write runs under the execution's lock and reads the record first (at its leader): a job
that another writer moved meanwhile (cancelled, taken over) is not listed as active. The final
write takes the same lock, so it knows whether the entry was written: once the write was due,
the end marks the active entry gone, whatever became of it.
"""

from __future__ import annotations

import asyncio

from ..core.job import JobState
from ..observe.log import logger
from ..storage.index import passed_through
from ..storage.store import RawJob
from .fixed_delay import Call, FixedDelay
from .held import Held

log = logger(__name__)

LIST_AFTER = 1.0
"""Seconds after its claim a running job is listed as active in the state index."""
LISTED_WITHIN = LIST_AFTER + 0.5
"""Seconds after its claim a running job is listed as active, its late write done (what
drain() and obliterate() wait for while they listen to the claims)."""


def lists_late(job: RawJob) -> bool:
    """Whether a claim of ``job`` (its record before the claim) may list it late: it was never
    active, so no active entry of an earlier attempt can be standing."""
    return JobState.ACTIVE not in passed_through(job)


class LateEntry:
    """The claimed job's move to active in the state index, written ``LIST_AFTER`` seconds after
    the claim unless the attempt settled first."""

    def __init__(self, held: Held, claimed_from: JobState) -> None:
        self.held = held
        self.claimed_from = claimed_from
        self.due = False
        """Whether the write was due (then the end marks the active entry gone)."""
        self._call: Call | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, later: FixedDelay) -> None:
        """Write the entry when ``later`` (LIST_AFTER seconds) calls, unless :meth:`listed`
        comes first."""
        self._call = later.call_later(self._on_due)

    def listed(self) -> tuple[JobState, frozenset[JobState]]:
        """Stop the late write (call it holding the held lock); the state the index lists the
        job in, and the states it was never listed in (:meth:`StateIndex.moved`)."""
        if self._call is not None:
            self._call.cancel()
        if self.due:
            return JobState.ACTIVE, frozenset()
        return self.claimed_from, frozenset({JobState.ACTIVE})

    def _on_due(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        held = self.held
        async with held.lock:
            if held.settling or held.job is None:
                return
            self.due = True
            try:
                record = await held.store.get(held.job.id, fresh=True)
                if record is not None and record.revision == held.revision:
                    await held.store.index.moved(held.job, self.claimed_from, JobState.ACTIVE)
            except Exception as exc:  # the end moves the index all the same
                log.debug("late index entry not written", job_id=held.job.id, error=repr(exc))
