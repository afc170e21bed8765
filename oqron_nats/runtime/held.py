"""What one execution holds of its job: the record at the revision it last read or wrote, and
the lease (``guaranteed_worker``).

Every write of the execution (claim, progress, settle) goes through :meth:`Held.write`, a
compare-and-set on the held revision: a worker that lost its job finds a revision it does not
expect (``CasConflict``) and can never overwrite the new holder's state.
"""

from __future__ import annotations

import asyncio

import msgspec

from ..core.job import JobState
from ..observe.log import logger
from ..storage.lease import Lease, LeaseLost, Leases
from ..storage.store import JobStore, RawJob

log = logger(__name__)


class Held:
    """The record and lease one execution holds."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.job: RawJob | None = None
        """The record as claimed, then as settled; None until the claim wrote it."""
        self.revision = 0
        """The revision of the record's last read or write: the token of the next write."""
        self.lease: Lease | None = None
        self.lock = asyncio.Lock()
        """Orders the progress writes and the final write."""
        self.settling = False
        """Set once the final write began: no progress write comes after it."""

    @property
    def job_id(self) -> str | None:
        """The id of the job once it is claimed."""
        return self.job.id if self.job else None

    async def write(
        self,
        job: RawJob,
        event: str,
        was: JobState,
        ttl: float | None = None,
        *,
        index: bool = True,
        unlisted: frozenset[JobState] = frozenset(),
    ) -> None:
        """Write ``job`` (in state ``was`` until now) on the held revision and hold the new one;
        CasConflict if another writer came first. ``index``, ``unlisted``: see
        :meth:`JobStore.update`."""
        self.revision = await self.store.update(
            job, self.revision, event, was, ttl=ttl, index=index, unlisted=unlisted
        )

    async def write_progress(self, percent: float, label: str | None, *, stopped: bool) -> bool:
        """Write the running job's progress (CAS); False once the attempt is ``stopped`` or its
        final write began (CasConflict if another writer came first)."""
        async with self.lock:
            if self.settling or self.job is None or stopped:
                return False
            updated = msgspec.structs.replace(self.job, progress=percent, progress_label=label)
            await self.write(updated, "progress", JobState.ACTIVE)
            self.job = updated
            return True

    async def take_lease(self, leases: Leases, owner: str) -> None:
        """Take the lease of the job this execution claimed (at its first heartbeat, or after a
        slow claim) and prove the claim still holds: a takeover writes the record before it
        runs, so a record still at the held revision, read at the leader once the lease is
        ours, cannot be taken over any more. LeaseLost if another holds the lease, or the
        record moved on (taken over, and maybe finished, meanwhile)."""
        assert self.job is not None
        lease = await leases.acquire(self.job.id, owner)
        if lease is None:
            raise LeaseLost(self.job.id)
        async with self.lock:
            if self.settling:  # the final write came first: nothing left to hold
                await lease.release(confirmed=True)
                return
            record = await self.store.get(self.job.id, fresh=True)
            if record is None or record.revision != self.revision:
                await lease.release(confirmed=True)
                raise LeaseLost(self.job.id)
            self.lease = lease

    async def release(self, *, confirmed: bool = False) -> None:
        """Release the lease, if held; best effort (it expires on its own after lock_ttl)."""
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                await lease.release(confirmed=confirmed)
            except Exception as exc:
                log.warning("lease release failed", job_id=self.job_id, error=repr(exc))
