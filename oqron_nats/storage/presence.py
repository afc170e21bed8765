"""Which worker processes consume a queue now: one key per worker, with a TTL, kept alive.

The key is ``<queue>.=worker.<host>-<pid>`` in the queues bucket, beside the queue's state key
``<queue>`` (whose followers listen on that exact key only). A consuming process renews it every
``INTERVAL`` seconds with a TTL of three intervals and deletes it when it stops; a killed
worker's key expires on its own, so ``workers_online`` counts a dead worker for at most
``3 * INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import UTC, datetime

import msgspec

from .._nats import Bucket, CasConflict, Nats
from .._nats.names import PRESENCE_TTL, Names
from ..core.background import finish
from ..observe.log import logger

log = logger(__name__)

TTL = PRESENCE_TTL
INTERVAL = TTL / 3
FORGET_WAIT = 5.0
"""Seconds a stopping worker tries to delete its key (else it expires after TTL)."""


class WorkerInfo(msgspec.Struct, kw_only=True):
    """What a worker's presence key holds."""

    host: str
    pid: int
    concurrency: int
    since: datetime


class Presence:
    """Keeps this process's presence key of one queue alive while started."""

    def __init__(self, conn: Nats, names: Names, concurrency: int) -> None:
        self.key = names.presence_key(f"{socket.gethostname()}-{os.getpid()}")
        self._bucket = Bucket(conn, names.queues_bucket)
        self.info = WorkerInfo(
            host=socket.gethostname(), pid=os.getpid(), concurrency=concurrency, since=_now()
        )
        self._revision = 0
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Write the key now and keep it alive, in the background (informational: a failed
        write is tried again later, and it never keeps the worker from consuming)."""
        self._stopped.clear()
        self._task = asyncio.create_task(self._keep_alive(), name=f"oqron-presence-{self.key}")

    async def stop(self) -> None:
        """Stop renewing and delete the key."""
        self._stopped.set()
        await finish(self._task, grace=0)  # informational: a write under way is dropped
        self._task = None
        if self._revision and self._bucket.conn.is_connected:  # else: it expires on its own
            with contextlib.suppress(Exception):  # it expires anyway (NATS may not answer now)
                async with asyncio.timeout(FORGET_WAIT):
                    await self._bucket.delete(self.key, last=self._revision, ttl=1.0)
            self._revision = 0

    async def _keep_alive(self) -> None:
        while not self._stopped.is_set():
            try:
                await self._write()
            except Exception as exc:  # NATS down for now: try again next interval
                log.warning("worker presence not written", key=self.key, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(INTERVAL):
                    await self._stopped.wait()

    async def _write(self) -> None:
        value = msgspec.json.encode(self.info)
        try:
            if self._revision:
                self._revision = await self._bucket.update(
                    self.key, value, last=self._revision, ttl=TTL
                )
                return
        except CasConflict:  # it expired meanwhile (a long outage): write it anew
            pass
        try:
            self._revision = await self._bucket.create(self.key, value, ttl=TTL)
        except CasConflict:  # a key of an earlier process with the same host and pid
            entry = await self._bucket.get(self.key)
            last = entry.revision if entry is not None else 0
            self._revision = await self._bucket.update(self.key, value, last=last, ttl=TTL)


async def workers_online(conn: Nats, names: Names) -> int:
    """How many processes keep a presence key of the queue alive now."""
    bucket = Bucket(conn, names.queues_bucket)
    keys = await bucket.keys(names.presence_keys)
    entries = await asyncio.gather(*(bucket.get(key) for key in keys))
    return sum(1 for e in entries if e is not None)


def _now() -> datetime:
    return datetime.now(UTC)
