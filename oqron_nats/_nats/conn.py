"""The NATS connection and the raw JetStream calls oqron_nats makes.

Every JetStream request goes through one path, :meth:`Nats._ask`: a request that nobody
answered (a timeout, no responders) or that a cluster refused for the moment (no meta leader,
not the leader any more, see :data:`.retry.TRANSIENT_ERR_CODES`) is asked again with capped,
jittered pauses until the retry deadline, and only then raises :class:`~oqron_nats.core.errors.
Unavailable`. Requests are safe to ask again: reads, creates that accept an equal config,
publishes with a ``Nats-Msg-Id`` or an expected revision (a compare-and-set write that finds its
own earlier try is recognised, see :mod:`.kv`). API errors that are answers become
:class:`~oqron_nats.core.errors.JetStreamError` with the server's ``err_code``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..core.credentials import TLS, Credentials, conceal
from ..core.errors import ConnectionFailed, JetStreamError, PermissionDenied, Unavailable
from ..observe.log import logger
from .auth import describe, is_refusal, nats_options
from .direct import DirectClient, Handler, new_client, parse_headers
from .requests import Requests
from .retry import TRANSIENT_ERR_CODES, Backoff

log = logger(__name__)

INITIAL_ATTEMPTS = 4
"""Connection attempts per server before the first connect gives up."""
PING_INTERVAL = 2.0
"""Seconds between the client's PINGs: two unanswered, and the connection is given up."""
CLOSE_TIMEOUT = 5.0
"""Seconds a close waits for the drain, then for the close itself."""
ABANDON_TIMEOUT = 1.0
"""Seconds a failed first connection's close may take."""

CAS_ERROR_CODES = frozenset({10071, 10164})
"""Server error codes of a failed compare-and-set (10164 comes from replicated streams)."""
NOT_FOUND = frozenset({10014, 10059})
"""Consumer not found, stream not found."""
ALREADY_EXISTS = 10058
"""Stream name already in use (created meanwhile, or with another configuration)."""
NO_MESSAGE = frozenset({10037, 10057})
"""No message found (a get, a delete)."""
DETOUR = 30.0
"""Seconds that single-message reads of a stream go to its leader after a direct get of it went
unanswered. Every replica answers direct gets, and a hung one (stopped, not crashed) keeps its
place among them until its routes time out, minutes later: the requests the cluster routes to
it are lost. The leader is re-elected within seconds, and answers."""
RESUMED = "1970-01-01T00:00:00Z"
"""A consumer's ``pause_until`` in the past: not paused."""

S = TypeVar("S", bound="_Reply")


class CasConflict(JetStreamError):
    """A compare-and-set write found another revision than the one it expected.

    ``after_timeout`` is set when an earlier try of the same write timed out: that try may have
    landed, so the conflict may be with our own write.
    """

    after_timeout = False


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Reply(msgspec.Struct):
    """Any JetStream API reply: its error, if it is one."""

    error: _ApiError | None = None


class PubAck(_Reply):
    """The server's answer to a JetStream publish."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    val: str | None = None
    """The new total, for a counter stream."""


class _Success(_Reply):
    success: bool = False


class StreamState(msgspec.Struct):
    """The message counts and sequence range of a stream."""

    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    subjects: dict[str, int] | None = None


class StreamLimits(msgspec.Struct):
    """What a stream's configuration says about discarding messages."""

    discard: str = "old"
    max_msgs: int = -1
    max_bytes: int = -1
    max_age: int = 0
    """Nanoseconds (0: none)."""
    max_msgs_per_subject: int = -1

    @property
    def drops_old(self) -> list[str]:
        """The limits under which the server removes old messages to make room (discard old)."""
        if self.discard != "old":
            return []
        limits = {
            "max_msgs": self.max_msgs,
            "max_bytes": self.max_bytes,
            "max_age": self.max_age,
            "max_msgs_per_subject": self.max_msgs_per_subject,
        }
        return [f"{name}={value}" for name, value in limits.items() if value > 0]


class _StreamInfo(_Reply):
    state: StreamState = msgspec.field(default_factory=StreamState)
    config: StreamLimits = msgspec.field(default_factory=StreamLimits)
    total: int = 0


class _StreamNames(_Reply):
    streams: list[str] | None = None
    total: int = 0


class _ConsumerNames(_Reply):
    consumers: list[str] | None = None
    total: int = 0


class _RawMessage(msgspec.Struct):
    subject: str = ""
    seq: int = 0
    hdrs: str | None = None
    data: str | None = None


class _MsgGet(_Reply):
    message: _RawMessage | None = None


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_reply = msgspec.json.Decoder(_Reply)


def decoded(data: bytes, kind: type[S]) -> S:
    """An API reply of ``kind``; the API error it carries is raised as an exception."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    reply: S = decoder.decode(data)
    if reply.error is not None:
        raise api_error(reply.error)
    return reply


def api_error(err: _ApiError) -> JetStreamError:
    """The exception for an API error payload."""
    cls = CasConflict if err.err_code in CAS_ERROR_CODES else JetStreamError
    return cls(err.code, err.err_code, err.description)


def transient_error(data: bytes) -> str | None:
    """The description of a JetStream error to ask again about (an election), else None."""
    if b'"error"' not in data:  # the common case, without decoding
        return None
    try:
        error = _reply.decode(data).error
    except msgspec.DecodeError:
        return None
    if error is None or error.err_code not in TRANSIENT_ERR_CODES:
        return None
    return f"{error.description} (err_code {error.err_code})"


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read straight from a stream (direct get)."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


class Nats:
    """One NATS connection, with the JetStream calls the rest of oqron_nats uses."""

    def __init__(self, nc: DirectClient, *, request_timeout: float, retry_deadline: float) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=request_timeout)
        """nats-py's JetStream context, for tests and tools; oqron_nats itself asks through
        :meth:`_ask`, which rides out elections."""
        self.request_timeout = request_timeout
        self.retry_deadline = retry_deadline
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._requests = Requests(nc, request_timeout)
        self._refused: dict[str, PermissionDenied] = {}
        """Subjects (lowercased, as the server names them) the server refused us to publish to."""
        self._detours: dict[str, float] = {}
        """Stream -> until when (monotonic) its single-message reads go to its leader."""
        self.closing = False

    @classmethod
    async def connect(
        cls,
        servers: Sequence[str],
        *,
        name: str,
        request_timeout: float = 5.0,
        retry_deadline: float = 30.0,
        credentials: Credentials | None = None,
        tls: TLS | ssl.SSLContext | None = None,
        label: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Nats:
        """Connect, reconnecting forever after a loss; nats-py options may be overridden.

        ``servers`` carry no userinfo (see :func:`~oqron_nats.core.credentials.split_userinfo`);
        ``label`` is how errors name them. The first connection fails fast with
        :class:`ConnectionFailed` saying why (a refusal of the credentials or a TLS failure at
        once; unreachable servers after a few tries), and never shows a credential.
        """
        holder: list[Nats] = []
        label = label or ", ".join(servers)
        first_errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            if not holder:  # the first connection: its errors go into ConnectionFailed, once
                first_errors.append(exc)
                return
            kind = type(exc).__name__
            log.warning("nats error", error=conceal(str(exc), credentials), error_type=kind)
            holder[0]._on_server_error(str(exc))

        async def on_disconnected() -> None:
            if holder and not holder[0].closing:
                log.warning("nats disconnected")
                holder[0]._requests.abandon()

        async def on_reconnected() -> None:
            log.info("nats reconnected")
            for listener in list(holder[0]._reconnect_listeners) if holder else []:
                listener()

        auth = nats_options(credentials, tls)
        settings: dict[str, Any] = {
            "servers": list(servers),
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "drain_timeout": 10,
            # a hung server (stopped, or cut off without a reset) is found by its missing PONGs:
            # after at most (1 + max_outstanding_pings) x ping_interval = 6 s, not nats-py's 6 min
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": 2,
            "skip_subject_validation": True,  # every subject is built from validated names
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            **auth.options,
        }
        settings.update(options or {})
        wants_tls = auth.wants_tls or any(s.startswith("tls://") for s in servers)
        try:
            nc = await _first_connection(settings, wants_tls, first_errors)
        except _Failed as failed:
            reason = conceal(describe(failed.cause, auth), credentials)
            raise ConnectionFailed(f"could not connect to NATS at {label}: {reason}") from None
        # once up, reconnect as configured: forever, by default
        nc.options["allow_reconnect"] = settings.get("allow_reconnect", True)
        nc.options["max_reconnect_attempts"] = settings["max_reconnect_attempts"]
        conn = cls(nc, request_timeout=request_timeout, retry_deadline=retry_deadline)
        try:
            await conn._requests.start()
        except BaseException:  # cancelled (a signal while starting): leave no connection open
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), ABANDON_TIMEOUT)
            raise
        holder.append(conn)
        return conn

    @property
    def requests_sent(self) -> int:
        """How many requests (awaited round trips, each try counted) this connection sent."""
        return self._requests.sent

    def _on_server_error(self, text: str) -> None:
        """A -ERR from the server: a permissions violation fails the requests it refused at
        once (the server answers them nothing), instead of letting them wait out the deadline."""
        refused = PUBLISH_DENIED.search(text)
        if refused is not None:
            subject = refused.group(1)
            self._refused[subject.lower()] = denied(subject, "publish to")
            self._requests.refuse(subject, self._refused[subject.lower()])
        elif (reply := REPLY_DENIED.search(text)) is not None:
            self._requests.refuse(None, denied(reply.group(1), "receive replies on"))

    def on_reconnect(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every reconnect; returns a function that removes it."""
        self._reconnect_listeners.append(listener)
        return lambda: self._reconnect_listeners.remove(listener)

    @property
    def server_version(self) -> tuple[int, int, int]:
        """The (major, minor, patch) version of the connected server."""
        v = self.nc.connected_server_version
        return (v.major, v.minor, v.patch)

    @property
    def server_name(self) -> str:
        """The name of the connected server (from its INFO)."""
        return str(self.nc._server_info.get("server_name", ""))

    @property
    def has_jetstream(self) -> bool:
        """Whether the connected server runs JetStream (from its INFO)."""
        return bool(self.nc._server_info.get("jetstream", False))

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts, in bytes."""
        return int(self.nc.max_payload)

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up right now."""
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close; never raises, and returns
        within ``CLOSE_TIMEOUT`` (twice at most) even when the server is gone."""
        if self.nc.is_closed:
            return
        self.closing = True
        if self.nc.is_connected:  # a connection that is down has nothing to drain
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.nc.drain()
            except Exception:  # a server gone meanwhile: close below
                log.debug("draining the connection failed; closing it", exc_info=True)
            if self.nc.is_closed:
                return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.nc.close()
        except Exception:  # a broken socket: nothing is left to send on it
            log.debug("closing the connection failed; it is dropped", exc_info=True)
            _abandon(self.nc)

    # -- the one request path ---------------------------------------------------------------

    async def _ask(
        self,
        subject: str,
        payload: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        deadline: float | None = None,
    ) -> tuple[Msg, bool]:
        """Send a request and return its reply, asked again while NATS cannot answer (see the
        module docstring) until ``deadline`` seconds (default: the retry deadline) have passed.

        Also returns whether a try timed out (a write may then have landed before its retry).
        Raises Unavailable once the deadline has passed.
        """
        backoff = Backoff(self.retry_deadline if deadline is None else deadline)
        timed_out = False
        while True:
            try:
                msg = await self._requests.request(subject, payload, headers)
            except nats.errors.NoRespondersError:
                cause = "no responders"  # nothing stored; a replicated stream between leaders
            except TimeoutError:
                cause, timed_out = "no reply in time", True
            except nats.errors.ConnectionClosedError:
                raise Unavailable("the NATS connection is closed") from None
            except PermissionDenied:
                raise  # an answer, not silence: asking again changes nothing
            except nats.errors.OutboundBufferLimitError:
                cause = "reconnecting, and the outgoing buffer is full"
            else:
                refused = transient_error(msg.data)
                if refused is None:
                    return msg, timed_out
                cause = refused
            if not await backoff.pause():
                raise Unavailable(
                    f"NATS did not answer a request on {subject} within the retry deadline "
                    f"(last try: {cause}); is the cluster electing leaders, or a node down?",
                    outcome_unknown=timed_out,
                )
            log.debug("no answer from NATS yet; asking again", subject=subject, cause=cause)

    async def _api(
        self, subject: str, body: object, kind: type[S], *, deadline: float | None = None
    ) -> S:
        """A JetStream API request with a JSON body; its reply decoded as ``kind``."""
        payload = b"" if body is None else msgspec.json.encode(body)
        msg, _ = await self._ask(subject, payload, deadline=deadline)
        return decoded(msg.data, kind)

    # -- core NATS ----------------------------------------------------------------------------

    def new_inbox(self) -> str:
        """A unique inbox subject."""
        return self.nc.new_inbox()

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """A core NATS subscription delivering to ``cb``."""
        with _as_unavailable():
            return await self.nc.subscribe(subject, cb=cb)

    async def subscribe_direct(self, subject: str, handler: Handler) -> Subscription:
        """A subscription whose messages go straight to ``handler`` (see :mod:`.direct`)."""
        with _as_unavailable():
            return await self.nc.subscribe_direct(subject, handler)

    async def publish_core(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """A core NATS publish: fire and forget."""
        with _as_unavailable():
            await self.nc.publish(subject, payload, reply=reply, headers=headers)

    # -- streams and messages -----------------------------------------------------------------

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> PubAck:
        """A JetStream publish, asked again while NATS cannot answer (send a Nats-Msg-Id or an
        expected revision, so a retry cannot store it twice).

        Raises Unavailable when no try was answered within the retry deadline
        (``outcome_unknown`` if one timed out: it may have been stored), CasConflict when a
        compare-and-set fails, JetStreamError when the stream refuses the message.
        """
        msg, timed_out = await self._ask(subject, payload, headers)
        try:
            return decoded(msg.data, PubAck)
        except CasConflict as conflict:
            conflict.after_timeout = timed_out
            raise

    async def increment(self, subject: str, by: int = 1) -> int:
        """Add to a JetStream counter (a stream with allow_msg_counter); return the new total."""
        ack = await self.publish(subject, b"", {"Nats-Incr": f"{by:+d}"})
        return int(ack.val or 0)

    async def direct_get(self, stream: str, *, last_by_subject: str) -> StoredMsg | None:
        """The newest message on ``last_by_subject`` (wildcards allowed), or None."""
        return await self._read_one(stream, {"last_by_subj": last_by_subject})

    async def has_message(self, stream: str, seq: int) -> bool:
        """Whether the message with sequence ``seq`` is still in the stream."""
        return await self._read_one(stream, {"seq": seq}) is not None

    async def direct_get_subject(self, stream: str, subject: str) -> StoredMsg | None:
        """The newest message on one exact subject, or None (the fast KV read path: the
        subject is in the request's subject, which permissions can scope)."""
        return await self._read_one(stream, {"last_by_subj": subject}, in_subject=True)

    async def leader_get(self, stream: str, subject: str) -> StoredMsg | None:
        """The newest message on one exact subject, or None, as the stream's leader has it.

        A direct get is answered by any replica, and a replica of a replicated stream may not
        have the last acknowledged writes yet; the leader has every one of them. Slower (one
        server answers, through the JetStream API): for the reads a decision must not be
        taken on alone.
        """
        return await self._leader_read(stream, {"last_by_subj": subject})

    async def _read_one(
        self, stream: str, query: dict[str, object], *, in_subject: bool = False
    ) -> StoredMsg | None:
        """One message by ``query``: a direct get (the query's subject in the request's subject
        if ``in_subject``, else the query in its body), or at the leader while the stream is on
        a detour (see :data:`DETOUR`)."""
        direct = f"$JS.API.DIRECT.GET.{stream}"
        if in_subject:
            direct, body = f"{direct}.{query['last_by_subj']}", b""
        else:
            body = msgspec.json.encode(query)
        if self._detours.get(stream, 0.0) <= time.monotonic():
            try:
                return stored_msg(await self._requests.request(direct, body))
            except (TimeoutError, nats.errors.NoRespondersError) as exc:
                if (refusal := self._refused.get(direct.lower())) is not None:
                    raise refusal from None
                log.debug("no replica answered a direct get; asking the leader",
                          stream=stream, cause=type(exc).__name__)  # fmt: skip
                self._detours[stream] = time.monotonic() + DETOUR
            except nats.errors.ConnectionClosedError:
                raise Unavailable("the NATS connection is closed") from None
        if f"$js.api.stream.msg.get.{stream}".lower() not in self._refused:
            with contextlib.suppress(PermissionDenied):
                return await self._leader_read(stream, query)
        msg, _ = await self._ask(direct, body)  # this user may read through direct gets only
        return stored_msg(msg)

    async def _leader_read(self, stream: str, query: dict[str, object]) -> StoredMsg | None:
        try:
            reply = await self._api(f"$JS.API.STREAM.MSG.GET.{stream}", query, _MsgGet)
        except JetStreamError as exc:
            if exc.err_code in NO_MESSAGE:
                return None
            raise
        raw = reply.message or _RawMessage()
        head = base64.b64decode(raw.hdrs) if raw.hdrs else None
        return StoredMsg(
            subject=raw.subject or str(query.get("last_by_subj", "")),
            seq=raw.seq,
            data=base64.b64decode(raw.data) if raw.data else b"",
            headers=parse_headers(head) or {},
        )

    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Delete one message by sequence; False if it was already gone."""
        try:
            reply = await self._api(
                f"$JS.API.STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True}, _Success
            )
        except JetStreamError as exc:
            if exc.err_code in NO_MESSAGE:
                return False
            raise
        return reply.success

    async def purge_subject(self, stream: str, subject: str) -> None:
        """Remove every message on ``subject`` from ``stream``."""
        await self._api(f"$JS.API.STREAM.PURGE.{stream}", {"filter": subject}, _Success)

    async def purge_later(self, stream: str, subject: str) -> None:
        """Ask the server to purge ``subject`` without waiting for the answer. The server runs
        purges apart from storing messages: one can overtake a message sent just before it."""
        await self.nc.publish(
            f"$JS.API.STREAM.PURGE.{stream}", msgspec.json.encode({"filter": subject})
        )

    async def stream_state(self, stream: str) -> StreamState:
        """How many messages the stream holds, and its first and last sequence."""
        return (await self._api(f"$JS.API.STREAM.INFO.{stream}", None, _StreamInfo)).state

    async def stream_limits(self, stream: str) -> StreamLimits:
        """The stream's limits and discard policy, as configured now."""
        return (await self._api(f"$JS.API.STREAM.INFO.{stream}", None, _StreamInfo)).config

    async def stream_exists(self, stream: str) -> bool:
        """Whether the stream exists."""
        try:
            await self.stream_state(stream)
        except JetStreamError as exc:
            if exc.err_code in NOT_FOUND:
                return False
            raise
        return True

    async def stream_names(self, *, subject: str) -> list[str]:
        """The names of the streams that hold subjects matching ``subject``."""
        names: list[str] = []
        while True:
            body = {"subject": subject, "offset": len(names)}
            page = await self._api("$JS.API.STREAM.NAMES", body, _StreamNames)
            names += page.streams or []
            if not page.streams or len(names) >= page.total:
                return names

    async def subjects(self, stream: str, subject_filter: str) -> dict[str, int]:
        """Every subject matching the filter that holds messages, with its message count."""
        found: dict[str, int] = {}
        while True:
            body = {"subjects_filter": subject_filter, "offset": len(found)}
            page = await self._api(f"$JS.API.STREAM.INFO.{stream}", body, _StreamInfo)
            found.update(page.state.subjects or {})
            if not page.state.subjects or len(found) >= page.total:
                return found

    async def create_stream(self, config: Mapping[str, Any]) -> None:
        """Create a stream; one that exists with an equal configuration is left as it is
        (JetStreamError err_code 10058 if it exists with another one)."""
        await self._api(f"$JS.API.STREAM.CREATE.{config['name']}", config, _Reply)

    async def direct_batch(
        self, stream: str, *, start: int, batch: int, subject: str | None = None
    ) -> tuple[list[StoredMsg], int]:
        """Up to ``batch`` messages (matching ``subject``, if given) from sequence ``start`` on,
        in order, and how many more there are after them; asked again while no replica answers."""
        request: dict[str, object] = {"seq": start, "batch": batch}
        if subject is not None:
            request["next_by_subj"] = subject
        backoff = Backoff(self.retry_deadline)
        subject = f"$JS.API.DIRECT.GET.{stream}"
        while True:
            try:
                return await self._direct_batch_once(subject, msgspec.json.encode(request), batch)
            except (TimeoutError, nats.errors.NoRespondersError) as exc:
                if (refusal := self._refused.get(subject.lower())) is not None:
                    raise refusal from None
                if not await backoff.pause():
                    raise Unavailable(
                        f"no replica of stream {stream} answered a batch read within the retry "
                        f"deadline ({exc!r})"
                    ) from None

    async def _direct_batch_once(
        self, subject: str, request: bytes, batch: int
    ) -> tuple[list[StoredMsg], int]:
        inbox = self.new_inbox()
        found: list[StoredMsg] = []
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def received(msg: Msg) -> None:
            if done.done():
                return
            headers = msg.headers or {}
            status = headers.get("Status")
            if status in ("204", "404"):  # end of batch; nothing (more) matches
                done.set_result(0)
                return
            if status:  # 503: no replica answers (an election); 408: the request timed out
                done.set_exception(nats.errors.NoRespondersError())
                return
            stored = stored_msg(msg)
            if stored is not None:
                found.append(stored)
            pending = int(headers.get("Nats-Num-Pending", "0"))
            if len(found) >= batch or pending == 0:
                done.set_result(pending)

        sub = await self.nc.subscribe(inbox, cb=received)
        try:
            await self.nc.publish(subject, request, reply=inbox)
            more = await asyncio.wait_for(done, self.request_timeout)
        finally:
            await sub.unsubscribe()
        return found, more

    # -- consumers ----------------------------------------------------------------------------

    async def create_consumer(
        self, stream: str, config: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        """Create the durable consumer, or update it to ``config``."""
        body = {"stream_name": stream, "config": config}
        await self._api(f"$JS.API.CONSUMER.CREATE.{stream}.{config['name']}", body, _Reply,
                        deadline=deadline)  # fmt: skip

    async def consumer_names(self, stream: str) -> list[str]:
        """The names of the stream's consumers."""
        names: list[str] = []
        while True:
            body = {"offset": len(names)}
            page = await self._api(f"$JS.API.CONSUMER.NAMES.{stream}", body, _ConsumerNames)
            names += page.consumers or []
            if not page.consumers or len(names) >= page.total:
                return names

    async def pause_consumer(self, stream: str, consumer: str, until: str | None) -> bool:
        """Pause the consumer until ``until`` (RFC 3339), or resume it (None); False if it does
        not exist."""
        body = {"pause_until": until or RESUMED}
        try:
            await self._api(f"$JS.API.CONSUMER.PAUSE.{stream}.{consumer}", body, _Reply)
        except JetStreamError as exc:
            if exc.err_code in NOT_FOUND:
                return False
            raise
        return True


PUBLISH_DENIED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
REPLY_DENIED = re.compile(r'permissions violation for publish with reply of "([^"]+)"', re.I)


def denied(subject: str, action: str) -> PermissionDenied:
    """The error of a request the user's permissions refused (the server lowercases the
    subject in its error; the subject is named as it says)."""
    return PermissionDenied(
        f"NATS refused: this user may not {action} {subject} (its permissions; see "
        "`oqron permissions` for what each role needs)",
        subject=subject,
    )


def stored_msg(msg: Msg) -> StoredMsg | None:
    """Translate a direct-get reply; None for 'no message'."""
    headers = dict(msg.headers or {})
    status = headers.get("Status")
    if status == "404":
        return None
    if status:
        raise JetStreamError(int(status), 0, headers.get("Description", "direct get failed"))
    return StoredMsg(
        subject=headers.get("Nats-Subject", ""),
        seq=int(headers.get("Nats-Sequence", "0")),
        data=msg.data,
        headers=headers,
    )


@contextlib.contextmanager
def _as_unavailable() -> Iterator[None]:
    """nats-py's errors of a core call (a closed connection, a full reconnect buffer) as the
    typed Unavailable: a user never meets a raw nats error."""
    try:
        yield
    except nats.errors.Error as exc:
        raise Unavailable(f"NATS could not take the message: {exc}") from exc


class _Failed(Exception):
    """The first connection failed; ``cause`` is the error that tells why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _first_connection(
    settings: Mapping[str, Any], wants_tls: bool, errors: list[BaseException]
) -> DirectClient:
    """The first connection, tried a few rounds; raises _Failed with the telling error.

    nats-py's own first-connect loop retries a refused TLS handshake or refused credentials,
    and after a failed TLS handshake it waits forever for the socket to close (its transport's
    ``wait_closed`` on a stream whose TLS upgrade failed never returns): connect hangs. So each
    round connects with ``allow_reconnect=False``, which raises the first handshake error
    without that wait; nats-py still tries each server a few times while it cannot be reached.
    A refusal (credentials, TLS) ends at once; other failures (a timeout, a reset) get another
    round on a fresh client.
    """
    cause: BaseException = ConnectionError("no server could be reached")
    for attempt in range(INITIAL_ATTEMPTS):
        if attempt:
            await asyncio.sleep(float(settings["reconnect_time_wait"]))
        errors.clear()
        nc = new_client(require_tls=wants_tls)
        try:
            await nc.connect(
                **{**settings, "allow_reconnect": False, "max_reconnect_attempts": INITIAL_ATTEMPTS}
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            _abandon(nc)
            unreachable = isinstance(exc, nats.errors.NoServersError)
            cause = errors[-1] if unreachable and errors else exc
            if unreachable or is_refusal(cause):
                break
            continue
        except BaseException:  # cancelled (a signal while starting), or a bug: no socket left
            _abandon(nc)
            raise
        if nc.is_connected:
            return nc
        # the server closed the connection while it was being set up (nats-py returns then)
        cause = nc.last_error or ConnectionError("the server closed the connection")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), ABANDON_TIMEOUT)
        if is_refusal(cause):
            break
    raise _Failed(cause)


def _abandon(nc: DirectClient) -> None:
    """Close the socket of a client whose first connection failed, waiting for nothing.

    Its reading, ping and flusher tasks start only once connected, so the socket is all
    there is to release; nats-py's close() would wait on it (see :func:`_first_connection`).
    """
    transport = nc._transport
    if transport is not None:
        transport.close()  # type: ignore[no-untyped-call]
