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
still ends its wait. A process that does not follow the keys (an admin command) announces always.
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
from .log import logger

log = logger(__name__)

REFRESH = LISTENER_TTL / 3
"""Seconds after which a listening process writes its key again."""

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
        """Listener key subject -> until when (monotonic) it is taken as alive."""
        self._until = 0.0
        self._following = False
        self._listening = 0
        self._written_at = float("-inf")
        self._writing = asyncio.Lock()
        self._refresher: asyncio.Task[None] | None = None

    @property
    def present(self) -> bool:
        """Whether someone may listen now (always, unless this process follows the keys)."""
        return not self._following or time.monotonic() < self._until

    # -- the announcing side ----------------------------------------------------------------

    async def follow(self) -> Callable[[], Awaitable[None]]:
        """Follow the queue's listener keys (announce only while one lives); returns the stop
        call. A process that may not read them announces always."""
        sub = await self._conn.subscribe(self._subjects, self._heard_write)
        try:
            listed = await self._conn.subjects(self._bucket.stream, self._subjects)
        except Exception as exc:  # an older permission block, NATS down: announce always
            log.debug("listener keys not listed; events are always published", error=repr(exc))
            listed = {}
        else:
            self._following = True
        for subject in listed:
            self._alive(subject)
        forget = self._conn.on_reconnect(self._reconnected)

        async def stop() -> None:
            forget()
            self._following = False
            self._stop_refreshing()
            with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                await sub.unsubscribe()

        return stop

    async def _heard_write(self, msg: Msg) -> None:
        if (msg.headers or {}).get(KV_OPERATION_HEADER) in ("DEL", "PURGE"):
            self._heard.pop(msg.subject, None)
            self._until = max(self._heard.values(), default=0.0)
        else:
            self._alive(msg.subject)

    def _alive(self, subject: str) -> None:
        now = time.monotonic()
        self._heard = {s: until for s, until in self._heard.items() if until > now}
        self._heard[subject] = now + LISTENER_TTL
        self._until = now + LISTENER_TTL

    def _reconnected(self) -> None:
        """Writes may have gone unheard while disconnected: a live key is written again within
        the TTL, so announce for one."""
        self._until = time.monotonic() + LISTENER_TTL

    # -- the listening side -----------------------------------------------------------------

    async def join(self) -> None:
        """Count one more listener in this process, its key written (or fresh) on return.

        A key that cannot be written (this user may not, NATS does not answer) is logged: the
        listener then misses the events of processes that follow the keys.
        """
        self._listening += 1
        self._alive(self._bucket.subject(self._key))  # this process's own announcements
        await self._write()
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._keep_alive(), name=f"oqron-{self._key}")

    def leave(self) -> None:
        """Count one listener fewer; the last one stops the writes (the key then expires)."""
        self._listening -= 1
        if self._listening <= 0:
            self._stop_refreshing()

    def _stop_refreshing(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    async def _keep_alive(self) -> None:
        while not self._conn.is_closed:  # a closed client has nothing more to say
            await asyncio.sleep(REFRESH)
            await self._write()

    async def _write(self) -> None:
        async with self._writing:  # one write for the listeners that join at once
            if time.monotonic() - self._written_at < REFRESH:
                return
            value = msgspec.json.encode(Listener(host=socket.gethostname(), pid=os.getpid()))
            try:
                await self._bucket.put(self._key, value, ttl=LISTENER_TTL)
            except Exception as exc:  # tried again at the next refresh
                log.warning("listener key not written: events of workers may not reach this "
                            "process", key=self._key, error=repr(exc))  # fmt: skip
            finally:
                self._written_at = time.monotonic()
