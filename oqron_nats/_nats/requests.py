"""Request/reply over one wildcard inbox subscription.

nats-py's ``request()`` makes each call's token from a NUID plus random bytes read from the OS
and waits through ``asyncio.wait_for``; on the job path, where a worker makes a handful of
requests per job, that overhead shows. Here a token is a counter, and every request has the same
timeout, so the requests' deadlines come in the order they were sent: one timer, set for the
oldest request still waiting, expires them all (a timer per request cost 6 % of a job).
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from asyncio import current_task
from collections.abc import Sequence
from contextvars import ContextVar

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .direct import DirectClient

NO_RESPONDERS = "503"

Ask = tuple[str, bytes, "dict[str, str] | None"]
"""One request of :meth:`Requests.request_many`: subject, payload, headers."""

_critical_path: ContextVar[weakref.ref[asyncio.Task[object]] | None] = ContextVar(
    "oqron_critical_path", default=None
)
"""A weak reference: the task's own context holds it, and a task in it would be a reference
cycle (freed only by the cycle collector, as would everything the task's job left behind)."""


def on_critical_path(loop: asyncio.AbstractEventLoop) -> None:
    """Count the requests the current task (of ``loop``) awaits from now on as its job's
    critical path (``Requests.critical``): the round trips a job waits for one after the other;
    those of the tasks it starts run beside it and are not counted."""
    task = current_task(loop)
    _critical_path.set(None if task is None else weakref.ref(task))


class Requests:
    """Requests of one connection; replies come back on ``<inbox>.<token>``."""

    def __init__(self, nc: DirectClient, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = nc.new_inbox() + "."
        self._tokens = itertools.count()
        # insertion order is deadline order: every request waits `timeout` seconds
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float, str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._sub: Subscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        """Requests sent so far (each an awaited round trip; the benchmark counts them)."""
        self.critical = 0
        """Of those, the requests a job's own task awaited (see :func:`on_critical_path`)."""

    async def start(self) -> None:
        """Subscribe to the replies."""
        self._loop = asyncio.get_running_loop()  # asked once: 3.11 makes a system call for it
        self._sub = await self._nc.subscribe_direct(self._prefix + "*", self._on_reply)

    def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._prefix) :])
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    @property
    def reply_prefix(self) -> str:
        """The subjects replies come back on: this prefix and a token."""
        return self._prefix

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Msg:
        """Send a request and return the reply; TimeoutError if none came within the timeout,
        NoRespondersError if nobody listens on ``subject``."""
        token = str(next(self._tokens))
        self.sent += 1
        loop = self._loop or asyncio.get_running_loop()
        critical, task = _critical_path.get(), current_task(loop)
        if critical is not None and task is not None and critical() is task:
            self.critical += 1
        future, deadline = self._wait_for(token, subject, loop)
        try:
            await self._send(subject, payload, token, headers, deadline)
            msg = await future
        finally:
            del self._waiting[token]
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    async def request_many(self, asks: Sequence[Ask]) -> list[Msg | Exception]:
        """Send every request at once, then wait for all the replies: for each, in order, its
        reply, or the exception :meth:`request` would have raised for it. The caller wakes once
        for the lot, where a request each would wake it once per reply."""
        if not asks:
            return []
        loop = self._loop or asyncio.get_running_loop()
        sent: list[tuple[str, asyncio.Future[Msg]]] = []
        try:
            for subject, payload, headers in asks:
                token = str(next(self._tokens))
                future, deadline = self._wait_for(token, subject, loop)
                sent.append((token, future))
                try:
                    await self._send(subject, payload, token, headers, deadline)
                except Exception as exc:  # a closed connection, a full buffer: that one's answer
                    future.set_exception(exc)
            self.sent += len(sent)
            await asyncio.wait([future for _, future in sent])
        finally:
            for token, _ in sent:
                del self._waiting[token]
        return [_answer(future) for _, future in sent]

    def _wait_for(
        self, token: str, subject: str, loop: asyncio.AbstractEventLoop
    ) -> tuple[asyncio.Future[Msg], float]:
        """The future the reply to ``token`` will complete, and its deadline."""
        future: asyncio.Future[Msg] = loop.create_future()
        deadline = loop.time() + self._timeout
        self._waiting[token] = (future, deadline, subject)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire_overdue)
        return future, deadline

    async def _send(
        self, subject: str, payload: bytes, token: str, headers: dict[str, str] | None,
        deadline: float,
    ) -> None:  # fmt: skip
        reply = self._prefix + token
        if self._nc.sends_at_once(len(payload)):
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
        else:  # the send is bounded too: a flush can wait on a connection that stopped reading
            async with asyncio.timeout_at(deadline):
                await self._nc.publish(subject, payload, reply=reply, headers=headers)

    def abandon(self) -> None:
        """Time out every request waiting now: the connection was lost, and their replies with
        it (the caller asks again at once, instead of waiting out the timeout)."""
        for future, _, _ in self._waiting.values():
            if not future.done():
                future.set_exception(TimeoutError("the connection was lost"))

    def refuse(self, subject: str | None, error: Exception) -> None:
        """Fail the requests sent to ``subject`` (compared without case: the server's error
        comes lowercased), or every request (None), with ``error``: the server refused them."""
        wanted = subject.lower() if subject is not None else None
        for future, _, sent_to in self._waiting.values():
            if not future.done() and (wanted is None or sent_to.lower() == wanted):
                future.set_exception(error)

    def _expire_overdue(self) -> None:
        """Time out the requests whose deadline passed; wait again for the oldest of the rest."""
        self._timer = None
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        for future, deadline, _ in self._waiting.values():
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire_overdue)
                return
            if not future.done():
                future.set_exception(TimeoutError("no reply in time"))


def _answer(future: asyncio.Future[Msg]) -> Msg | Exception:
    """A completed request's reply, or the exception :meth:`Requests.request` raises for it."""
    error = future.exception()
    if error is not None:
        return error if isinstance(error, Exception) else Exception(repr(error))
    msg = future.result()
    if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
        return nats.errors.NoRespondersError()
    return msg
