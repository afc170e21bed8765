"""Retention: what is kept of a finished job, decided per job, then per queue, then kept.

* ``True``: the record is removed as soon as the job finished (after the ack).
* a ``timedelta``: the final record is written with that per-message TTL (its index entry too),
  so the server removes both when the time is up; nothing has to run later.
* an ``int`` N: after a finish, if more than N jobs are in that state, the oldest beyond N are
  removed; the state index says how many there are and which are oldest, so this never reads
  every record.
* ``False``: kept.
* unset (on the job and on the worker's queue): the defaults, ``DEFAULT_RETENTION``: completed
  jobs are kept for a day and failed ones for 14 days, so the job store does not grow without
  bound by default.

A removed job's id can be used again by a new add().

A removal (``True``) runs beside the settle, after its ack, in a task of its own (at most
``REMOVING_MOST`` at once, beyond which a settle runs its own; a worker's stop waits for them):
it writes to the state index, and an election of the index's leader must not hold the worker's
settles, and so its claims. A trim (a count) still runs in the settle: it writes the job's entry
again to count it, and run later beside, it could do so after another trim removed the job.

Retention is a step of settling a job (:class:`Retainer`, called by :mod:`.settle`), not a
middleware: its age is part of the final write itself (one compare-and-set writes the final
state with its TTL), and a removal is a compare-and-set on the revision the execution holds, of
the record as stored (sealed data). A middleware's hooks run only after the final write, get
the job with its decoded data and no revision, and must not change the stored job.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from .._nats import CasConflict, JetStreamError
from ..core.config import QueueConfig
from ..core.job import JobState, Retention
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.store import RawJob

log = logger(__name__)

TRIM_BATCH = 100
"""At most this many old jobs are removed after one finish (the next finish removes more)."""
REMOVING_MOST = 1_000
"""Removals run beside the settles at most (see the module's docstring); each holds its job's
record as stored, written again as the tombstone's last words."""
DEFAULT_RETENTION: dict[JobState, Retention] = {
    JobState.COMPLETED: timedelta(days=1),
    JobState.FAILED: timedelta(days=14),
}
"""How long a finished job is kept when neither it nor its worker's queue says."""


def policy_for(job: RawJob, state: JobState, config: QueueConfig) -> Retention | None:
    """The retention that applies to ``job`` once it is in ``state``."""
    if state == JobState.COMPLETED:
        own, queue_wide = job.remove_on_complete, config.remove_on_complete
    elif state == JobState.FAILED:
        own, queue_wide = job.remove_on_fail, config.remove_on_fail
    else:
        return None
    if own is not None:
        return own
    return queue_wide if queue_wide is not None else DEFAULT_RETENTION[state]


def describe(config: QueueConfig, state: JobState) -> str:
    """How long the queue keeps jobs finished in ``state`` (when a job does not say), in words."""
    policy = config.remove_on_complete if state == JobState.COMPLETED else config.remove_on_fail
    if policy is None:
        policy = DEFAULT_RETENTION[state]
    if policy is True:
        return "removed at once"
    if policy is False:
        return "kept"
    if isinstance(policy, timedelta):
        return f"for {policy}"
    return f"the newest {policy}"


def ttl_of(policy: Retention | None) -> float | None:
    """The TTL to write a final record with, for an age-based policy."""
    return policy.total_seconds() if isinstance(policy, timedelta) else None


class Retainer:
    """The retention step of settling one queue's jobs (one per consumer, shared by its
    executions): the final record's TTL, then (after the ack) the removal or the trim."""

    def __init__(self, backend: Backend, config: QueueConfig) -> None:
        self.backend = backend
        self.config = config
        self._removing: set[asyncio.Task[None]] = set()
        """The removals under way beside their settles."""
        self.trimming = asyncio.Lock()
        """One trim of the worker's jobs at a time (they settle concurrently): a count read
        while another trim's removals land, then a list of the oldest read after them, would
        remove too many."""

    def ttl(self, final: RawJob) -> float | None:
        """The TTL to write the final record with (an age-based policy), else None."""
        return ttl_of(policy_for(final, final.state, self.config))

    def beside(self, job: RawJob, revision: int) -> Coroutine[Any, Any, None] | None:
        """Start the acked job's removal in a task of its own; what the caller awaits instead
        (None: nothing): a trim, or the removal once REMOVING_MOST run."""
        policy = policy_for(job, job.state, self.config)
        if policy is True and len(self._removing) < REMOVING_MOST:
            task = asyncio.ensure_future(self.apply(job, revision, policy))
            self._removing.add(task)
            task.add_done_callback(self._removing.discard)
            return None
        if policy is True or (isinstance(policy, int) and not isinstance(policy, bool)):
            # a trim stays in the settle: run beside, it could come after another job's trim
            # removed this job, and write this job's entry back (apply counts it first)
            return self.apply(job, revision, policy)
        return None  # kept, or removed by the server (an age)

    async def finished(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the removals still under way."""
        if self._removing:
            await asyncio.wait(set(self._removing), timeout=grace)

    async def apply(self, job: RawJob, revision: int, policy: Retention | None) -> None:
        """Remove the finished job or trim its state, as ``policy`` says; ``revision`` is the
        one the execution holds. Best effort: the next finish trims again."""
        try:
            if policy is True:
                await self.backend.store.remove(job, revision)
            elif isinstance(policy, int) and not isinstance(policy, bool):
                async with self.trimming:
                    await self.backend.store.index.settle(job.id, job.state)  # count this job
                    await trim(self.backend, job.state, keep=policy)
        except Exception as exc:  # a kept record harms nobody
            log.warning("retention not applied", job_id=job.id, error=repr(exc))


async def trim(backend: Backend, state: JobState, keep: int) -> int:
    """Remove the oldest jobs in ``state`` beyond the newest ``keep``; returns how many."""
    extra = await backend.store.index.count(state) - keep
    removed = 0
    for entry in await backend.store.index.oldest(state, min(extra, TRIM_BATCH)):
        record = await backend.store.get(entry.job_id)
        if record is None or record.job.state != state:
            continue  # moved on meanwhile
        with contextlib.suppress(CasConflict, JetStreamError):
            await backend.store.remove(record.job, record.revision)
            removed += 1
    return removed
