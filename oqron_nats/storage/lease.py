"""The heartbeat lease: who runs a job right now.

A lease is a key in the locks bucket, created with a TTL of ``lock_ttl`` (only one creator wins)
and renewed by a compare-and-set on its revision, which also refreshes the TTL. The revision is a
fencing token: once another worker took the job over, a stale holder's renewal fails and it knows
it must commit nothing.
"""

from __future__ import annotations

import contextlib

import msgspec

from .._nats import Bucket, CasConflict
from .._nats.names import Names


class LeaseLost(Exception):
    """The lease expired or was taken over: the holder must stop and commit nothing."""


class Lease:
    """A held lease on one key: a job, or a cluster-wide role such as the stall scanner."""

    __slots__ = ("_bucket", "_key", "_ttl", "_value", "revision")

    def __init__(self, bucket: Bucket, key: str, value: bytes, revision: int, ttl: float) -> None:
        self._bucket = bucket
        self._key = key
        self._value = value
        self._ttl = ttl
        self.revision = revision

    @classmethod
    async def acquire(
        cls, bucket: Bucket, key: str, owner: dict[str, object], ttl: float
    ) -> Lease | None:
        """Take the lease on ``key`` for ``ttl`` seconds, or return None if someone holds it."""
        value = msgspec.json.encode(owner)
        try:
            revision = await bucket.create(key, value, ttl=ttl)
        except CasConflict:
            return None
        return cls(bucket, key, value, revision, ttl)

    async def renew(self) -> None:
        """Extend the lease by its TTL; raise LeaseLost if it is not ours any more."""
        try:
            self.revision = await self._bucket.update(
                self._key, self._value, last=self.revision, ttl=self._ttl
            )
        except CasConflict:
            raise LeaseLost(self._key) from None

    async def release(self, *, confirmed: bool = False) -> None:
        """Give the lease up; a lease already lost is left alone (the delete is a compare-and-set
        on our revision), and a lost release expires anyway.

        Without ``confirmed`` it does not wait for the answer, so a read right after may still
        find the lease (the server reads apart from storing); with it, the delete is stored.
        """
        if not confirmed:
            await self._bucket.delete_later(self._key, last=self.revision, ttl=self._ttl)
            return
        with contextlib.suppress(CasConflict):
            await self._bucket.delete(self._key, last=self.revision, ttl=self._ttl)


class Leases:
    """The lease table of one queue."""

    def __init__(self, bucket: Bucket, names: Names, ttl: float) -> None:
        self._bucket = bucket
        self._names = names
        self.ttl = ttl

    async def acquire(self, job_id: str, owner: str) -> Lease | None:
        """Take the lease of ``job_id``, or return None if someone holds it."""
        return await Lease.acquire(
            self._bucket, self._names.key(job_id), {"owner": owner}, self.ttl
        )

    async def acquire_role(self, role: str, owner: str, ttl: float) -> Lease | None:
        """Take a cluster-wide role of this queue (one holder at a time), or None."""
        return await Lease.acquire(self._bucket, self._names.role_key(role), {"owner": owner}, ttl)

    async def remove_all(self) -> None:
        """Remove every lease of the queue."""
        await self._bucket.purge(self._names.keys)

    async def is_held(self, job_id: str) -> bool:
        """Whether someone holds the lease of ``job_id`` right now."""
        return await self._bucket.get(self._names.key(job_id)) is not None
