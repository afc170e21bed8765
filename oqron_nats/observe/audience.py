"""Who listens to a queue's events: they are published only while someone does.

A process that listens (``Queue.events()``, ``wait()``, ``drain()``, the dashboard) keeps a key
``<q>.=listener.<id>`` alive in the namespace's queues bucket: written when it starts listening,
again every ``REFRESH`` seconds while it listens, and left to expire (TTL ``LISTENER_TTL``) after
(so a process that waits on one job after another writes it once per ``REFRESH``). A process
that announces (workers, publishers) follows those keys: it lists them when its queue opens,
hears every write on the keys' subjects, and publishes a job's events only while a key it heard
of is younger than the TTL. With nobody listening, a job's path sends two messages fewer, and its
add one.

The writer of a key hears it before its write is answered on one server, and so does every
follower on that server (the core copy of a write is sent before its answer); a follower on
another node of a cluster hears it a route's hop later, and one that was disconnected meanwhile
announces for a TTL after its reconnect (it may have missed a write). Events are notifications,
at most once: ``wait()`` reads the record again now and then, so a job's end it was not told of
still ends its wait. A process that cannot follow the keys (its user may not subscribe to them:
a permission block printed before they existed) announces always, and so does a client made
with ``announce="always"``. A listener waits for its key's write at most ``JOIN_WAIT`` seconds
(the write goes on meanwhile): a queues bucket that does not answer must not hold a wait().
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal, get_args

import msgspec

from .._nats import Bucket, Msg, Nats
from .._nats.names import KV_OPERATION_HEADER, LISTENER_TTL, Names
from ..core.errors import PermissionDenied
from .log import logger

log = logger(__name__)

REFRESH = LISTENER_TTL / 3
"""Seconds after which a listening process writes its key again."""
JOIN_WAIT = 0.5
"""Seconds a listener waits for its key's write before it goes on listening (the write goes on)."""
PRUNE_EVERY = 1.0
"""Seconds between two sweeps of the expired keys heard of."""

Announce = Literal["listened", "always"]
"""When a client's queues publish events: while someone listens, or always (for listeners of
an oqron_nats older than listener keys: they write none, and their wait() reads no record again)."""
ANNOUNCE: tuple[str, ...] = get_args(Announce)


class Listener(msgspec.Struct, kw_only=True):
    """What a listener key holds (for operators: who listens)."""

    host: str
    pid: int


class Audience:
    """The listeners of one queue's events: this process's own key, and the keys it heard of."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self._conn = conn
        self._bucket = Bucket(conn, names.queues_bucket)
        self._subjects = self._bucket.subject(names.listener_keys)
        self._key = names.listener_key(uuid.uuid4().hex[:16])
        self._heard: dict[str, float] = {}
        """Listener key subject -> until when (monotonic) it is taken as alive (swept of the
        expired ones by :meth:`_sweep`)."""
        self._pruned_at = float("-inf")
        self._until = 0.0
        self._following = False
        self._listening = 0
        self._written_at = float("-inf")
        self._writing: asyncio.Task[None] | None = None
        """The key's write under way, shared by the listeners that join meanwhile."""
        self._refresher: asyncio.Task[None] | None = None

    @property
    def present(self) -> bool:
        """Whether someone may listen now (always, unless this process follows the keys)."""
        return not self._following or time.monotonic() < self._until

    # -- the announcing side ----------------------------------------------------------------

    async def follow(self) -> Callable[[], Awaitable[None]]:
        """Follow the queue's listener keys (announce only while one lives); returns the stop
        call. A process whose user may not subscribe to them or list them announces always."""
        sub = await self._conn.subscribe(self._subjects, self._heard_write)
        try:  # listed after subscribing: no key written between the two is missed
            listed = await self._conn.subjects(self._bucket.stream, self._subjects)
            refused = self._conn.refused_subscription(self._subjects)  # said before the answer
        except PermissionDenied as exc:
            refused = exc
        except BaseException:
            with contextlib.suppress(Exception):  # cancelled, or NATS down: undo, then say so
                await sub.unsubscribe()
            raise
        if refused is not None:
            log.warning("listener keys not followed: this process publishes every event "
                        "(see `oqron permissions`)", error=str(refused))  # fmt: skip
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            return _nothing_to_stop
        self._following = True
        for subject in listed:
            self._alive(subject)
        forget = self._conn.on_reconnect(self._reconnected)

        async def stop() -> None:
            forget()
            self._following = False
            with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                await sub.unsubscribe()

        return stop

    async def _heard_write(self, msg: Msg) -> None:
        if (msg.headers or {}).get(KV_OPERATION_HEADER) in ("DEL", "PURGE"):
            self._heard.pop(msg.subject, None)
            if not self._heard:
                self._until = 0.0
            self._sweep(time.monotonic())  # the others' latest: at the next sweep
        else:
            self._alive(msg.subject)

    def _alive(self, subject: str) -> None:
        now = time.monotonic()
        self._sweep(now)
        self._heard[subject] = now + LISTENER_TTL
        self._until = now + LISTENER_TTL

    def _sweep(self, now: float) -> None:
        """Drop the expired keys heard of and announce until the latest of the others; at most
        every PRUNE_EVERY seconds (it reads every key: a flood of writes or deletes must not
        pay that each, and a deleted key may be announced for that long)."""
        if now < self._pruned_at + PRUNE_EVERY:
            return
        self._heard = {s: until for s, until in self._heard.items() if until > now}
        self._until = max(self._heard.values(), default=0.0)
        self._pruned_at = now

    def _reconnected(self) -> None:
        """Writes may have gone unheard while disconnected: a live key is written again within
        the TTL, so announce for one."""
        self._until = time.monotonic() + LISTENER_TTL

    # -- the listening side -----------------------------------------------------------------

    async def join(self) -> None:
        """Count one more listener in this process; on return its key is written (or fresh),
        or its write has taken JOIN_WAIT seconds and goes on (a key that cannot be written is
        logged: the listener then misses the events of the processes that follow the keys)."""
        self._listening += 1
        self._alive(self._bucket.subject(self._key))  # this process's own announcements
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._keep_alive(), name=f"oqron-{self._key}")
        await self._written()

    def leave(self) -> None:
        """Count one listener fewer; the last one stops the writes (the key then expires)."""
        self._listening -= 1
        if self._listening <= 0 and self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            if self._conn.is_closed:  # a closed client has nothing more to say
                return
            await self._written(fresh_for=0.0)  # every REFRESH, however the last one went

    async def _written(self, fresh_for: float = REFRESH) -> None:
        """Write the key unless a write landed within ``fresh_for`` seconds, and wait for the
        write up to JOIN_WAIT seconds."""
        if time.monotonic() - self._written_at < fresh_for:
            return
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write(), name=f"oqron-write-{self._key}")
        await asyncio.wait({self._writing}, timeout=JOIN_WAIT)  # a cancelled caller leaves it be

    async def _write(self) -> None:
        value = msgspec.json.encode(Listener(host=socket.gethostname(), pid=os.getpid()))
        try:
            await self._bucket.put(self._key, value, ttl=LISTENER_TTL)
        except Exception as exc:  # asked again at the next join or refresh
            if isinstance(exc, PermissionDenied):  # at the next refresh only: it stays refused
                self._written_at = time.monotonic()
            log.warning("listener key not written: events of workers may not reach this "
                        "process", key=self._key, error=repr(exc))  # fmt: skip
        else:
            self._written_at = time.monotonic()


async def _nothing_to_stop() -> None:
    """The stop call of a process that does not follow the keys."""
