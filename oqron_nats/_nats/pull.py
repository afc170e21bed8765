"""Raw pull requests on a durable consumer, and the deliveries they bring.

nats-py's ``fetch()`` blocks until its batch is full or its timeout ends, and a lingering pull
it leaves open later delivers into a buffer nobody accounts for. Here a :class:`Puller` sends pull
requests itself, hands every message to a callback the moment it arrives, and counts what the
server still owes (``outstanding``), so a worker never asks for more jobs than it has free slots.

Every request has its own reply subject ``<inbox>.<n>``: the server ends a request with a status
message on that subject (404 no messages, 408 expired, 409 ...), while data messages keep their
own subject, so each data message is counted against the oldest open request (the server serves
requests in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .conn import AS_UNAVAILABLE
from .facade import Nats

EXPIRY_GRACE = 5.0
"""Seconds after its expiry that an unanswered request is given up (its reply was lost)."""
HEARTBEAT = 2.0
"""Seconds between the server's idle heartbeats on a lingering request; two missed ones mean
the request is gone (a deleted consumer, a restarted server) and the consumer is checked."""
LEADER_NEWS = 1.0
"""Seconds after a new consumer leader's 409 on an open request in which the server's advisory
of that election changes nothing (the requests sent since are at the new leader)."""


V1_ACK_TOKENS = 9
"""Tokens of an ack subject without domain and account hash (``$JS.ACK.<stream>.<consumer>.
<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``); the longer form is nats-py's
``Msg.Ack`` indices."""
V1_NUM_DELIVERED = 4
V1_STREAM_SEQ = 5


class Delivery:
    """One delivered message with its settle calls (ack, nak, in_progress, term)."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def body(self) -> bytes:
        """The message payload."""
        return self._msg.data

    @property
    def headers(self) -> dict[str, str]:
        """The message headers (a copy; empty if none)."""
        return dict(self._msg.headers or {})

    @property
    def raw_headers(self) -> dict[str, str] | None:
        """The message headers as received (not a copy: do not change them), or None."""
        return self._msg.headers

    @property
    def subject(self) -> str:
        """The subject the message was published on."""
        return self._msg.subject

    @property
    def num_delivered(self) -> int:
        """How many times the server has delivered this message."""
        return self._ack_token(V1_NUM_DELIVERED, Msg.Ack.NumDelivered)

    @property
    def stream_seq(self) -> int:
        """The message's sequence in its stream."""
        return self._ack_token(V1_STREAM_SEQ, Msg.Ack.StreamSeq)

    def _ack_token(self, v1: int, v2: int) -> int:
        """A number of the ack subject (``$JS.ACK...``), where the server says what it delivered:
        nats-py's ``metadata`` reads all of it, with a datetime and two frozen dataclasses (4 %
        of a no-op job's CPU); the job path needs one number."""
        tokens = (self._msg.reply or "").split(".")
        if (
            not (len(tokens) == V1_ACK_TOKENS or len(tokens) > Msg.Ack.NumPending)
            or tokens[0] != "$JS"
            or tokens[1] != "ACK"
        ):
            raise nats.errors.NotJSMessageError
        return int(tokens[v1 if len(tokens) == V1_ACK_TOKENS else v2])

    async def ack(self) -> None:
        """Remove the message: it is settled."""
        await self._settle(self._msg.ack())

    async def nak(self, delay: float | None = None) -> None:
        """Hand the message back for redelivery, after ``delay`` seconds if given."""
        await self._settle(self._msg.nak(delay=delay if delay and delay > 0 else None))

    async def term(self) -> None:
        """Remove the message without processing (a poison message)."""
        await self._settle(self._msg.term())

    async def in_progress(self) -> None:
        """Reset the message's ack timer: it is still being worked on."""
        with AS_UNAVAILABLE:
            await self._msg.in_progress()

    @staticmethod
    async def _settle(call: Awaitable[None]) -> None:
        with AS_UNAVAILABLE, contextlib.suppress(nats.errors.MsgAlreadyAckdError):
            await call


@dataclass(slots=True)
class _Request:
    remaining: int
    deadline: float
    heard: float
    """When the server last showed this request alive (sent, a heartbeat, a delivery)."""
    done: asyncio.Future[int] | None = None
    delivered: int = 0


@dataclass(slots=True)
class _State:
    requests: OrderedDict[str, _Request] = field(default_factory=OrderedDict)
    outstanding: int = 0
    suspect: bool = False


class Puller:
    """Pull requests on one consumer; deliveries go to ``on_delivery`` as they arrive."""

    def __init__(
        self,
        conn: Nats,
        stream: str,
        consumer: str,
        *,
        on_delivery: Callable[[Delivery], None],
        on_change: Callable[[], None],
        on_alive: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.consumer = consumer
        self._on_delivery = on_delivery
        self._on_change = on_change
        self._on_alive = on_alive
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._counter = 0
        self._state = _State()
        self._told_at = -LEADER_NEWS
        """When a new leader last told an open request (its 409)."""

    @property
    def outstanding(self) -> int:
        """Messages asked for and not delivered yet, over all open requests."""
        return self._state.outstanding

    @property
    def has_open_request(self) -> bool:
        """Whether a request is still open at the server."""
        return bool(self._state.requests)

    @property
    def suspect(self) -> bool:
        """Whether the consumer may be gone: deleted, or a request went unanswered."""
        return self._state.suspect

    async def start(self) -> None:
        """Subscribe to the reply inbox."""
        self._inbox = self.conn.new_inbox()
        self._sub = await self.conn.subscribe_direct(self._inbox + ".*", self._on_msg)

    async def stop(self) -> None:
        """Drop interest in the reply inbox, so the server drops our open requests too.

        Draining still hands over what the server sent before it saw the unsubscribe, so
        nothing delivered to us is silently lost (it would wait out ack_wait otherwise).
        """
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error):
                await sub.drain()  # type: ignore[no-untyped-call]
        self.reset()

    def reset(self) -> None:
        """Forget every open request (after a reconnect they may be gone at the server)."""
        for request in self._state.requests.values():
            _resolve(request)
        self._state = _State()

    async def request(self, batch: int, *, expires: float) -> None:
        """Ask for up to ``batch`` messages, delivered as they arrive within ``expires`` seconds."""
        body = {
            "batch": batch,
            "expires": int(expires * 1e9),
            "idle_heartbeat": int(HEARTBEAT * 1e9),
        }
        await self._send(batch, body, expires, None)

    async def request_now(self, batch: int) -> int:
        """Ask for up to ``batch`` messages that are ready now; return how many came."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        token = await self._send(batch, {"batch": batch, "no_wait": True}, 0.0, done)
        try:
            return await asyncio.wait_for(asyncio.shield(done), self.conn.request_timeout)
        except TimeoutError:  # no answer: the consumer may be gone, or the connection
            self._state.suspect = True
            self._close(token)
            return done.result() if done.done() else 0

    def expire_stale(self) -> float | None:
        """Give up requests the server no longer serves; return seconds until the next check.

        A request is gone when its expiry status or its heartbeats stopped coming.
        """
        now = time.monotonic()
        nearest: float | None = None
        for token, request in list(self._state.requests.items()):
            give_up = min(request.deadline + EXPIRY_GRACE, request.heard + 2.5 * HEARTBEAT)
            if give_up <= now:
                self._state.suspect = True
                self._close(token)
                self._on_change()  # the owner must look at its consumer and pull again
            else:
                nearest = give_up - now if nearest is None else min(nearest, give_up - now)
        return nearest

    async def _send(
        self,
        batch: int,
        body: Mapping[str, object],
        expires: float,
        done: asyncio.Future[int] | None,
    ) -> str:
        self._counter += 1
        token = f"{self._inbox}.{self._counter}"
        now = time.monotonic()
        request = _Request(remaining=batch, deadline=now + expires, heard=now, done=done)
        self._state.requests[token] = request
        self._state.outstanding += batch
        try:
            await self.conn.publish_core(self._subject, msgspec.json.encode(body), reply=token)
        except BaseException:
            self._close(token)
            raise
        return token

    def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if not msg.reply and headers and headers.get("Status"):
            self._on_status(msg.subject, headers)
            return
        state = self._state
        if state.requests:
            token, request = next(iter(state.requests.items()))
            request.heard = time.monotonic()
            request.remaining -= 1
            request.delivered += 1
            state.outstanding -= 1
            if request.remaining <= 0:
                del state.requests[token]
                _resolve(request)
        self._on_delivery(Delivery(msg))

    def _on_status(self, token: str, headers: dict[str, str]) -> None:
        status = headers.get("Status")
        if status == "100":  # idle heartbeat: the request is alive
            request = self._state.requests.get(token)
            if request is not None:
                request.heard = time.monotonic()
                if self._on_alive is not None:
                    self._on_alive()
            return
        description = str(headers.get("Description", ""))
        if status == "409" and "Leadership Change" in description:
            self.new_leader(token)
            return
        deleted = status == "409" and "Consumer Deleted" in description
        if deleted or status == "503":  # 503: no responders (it does not exist, or no leader)
            self._state.suspect = True
        self._close(token)
        self._on_change()

    def new_leader(self, token: str | None = None) -> None:
        """The consumer has a new leader (its 409 on the open request ``token``, or the server's
        advisory: None): it exists, and the old leader's requests are gone (with no word when
        the same node is elected again after a heal); the owner pulls again now, its trouble
        over."""
        now = time.monotonic()
        if token is not None:
            self._told_at = now
            self._close(token)
        elif now - self._told_at < LEADER_NEWS:
            return  # its 409s came first: the requests sent since are the new leader's
        else:
            self.reset()
        self._state.suspect = False
        if self._on_alive is not None:
            self._on_alive()
        self._on_change()

    def _close(self, token: str) -> None:
        request = self._state.requests.pop(token, None)
        if request is not None:
            self._state.outstanding -= request.remaining
            _resolve(request)


def _resolve(request: _Request) -> None:
    if request.done is not None and not request.done.done():
        request.done.set_result(request.delivered)
