"""The NATS connection and the raw JetStream calls oqron_nats makes.

nats-py quirks are translated here (see ``notes/jetstream-facts.md``): timeouts are caught as the
builtin ``TimeoutError`` (nats-py raises two kinds), a publish that timed out is retried with the
same ``Nats-Msg-Id`` because it may still land, and API errors become :class:`JetStreamError`
with the server's ``err_code``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

from ..errors import ConnectionFailed
from .direct import DirectClient, Handler
from .requests import Requests

log = structlog.get_logger("oqron_nats")

INITIAL_ATTEMPTS = 4
"""Connection attempts per server before the first connect gives up."""

NO_LEADER_FIRST_PAUSE = 0.05
NO_LEADER_MAX_PAUSE = 1.0
"""Seconds between the tries of a publish no stream answered (503 no responders): a replicated
stream does not answer while it elects a new leader, for about 5 s after its leader was lost."""

CAS_ERROR_CODES = frozenset({10071, 10164})
"""Server error codes of a failed compare-and-set (10164 comes from replicated streams)."""


class JetStreamError(Exception):
    """The JetStream API refused a request."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (code {code}, err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class CasConflict(JetStreamError):
    """A compare-and-set write found another revision than the one it expected.

    ``after_timeout`` is set when an earlier try of the same write timed out: that try may have
    landed, so the conflict may be with our own write.
    """

    after_timeout = False


class NoStream(Exception):
    """No stream listens on the subject (the stream was deleted or never created)."""


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """The server's answer to a JetStream publish."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    val: str | None = None
    """The new total, for a counter stream."""
    error: _ApiError | None = None


class _Success(msgspec.Struct):
    success: bool = False
    error: _ApiError | None = None


class StreamState(msgspec.Struct):
    """The message counts and sequence range of a stream."""

    messages: int = 0
    first_seq: int = 0
    last_seq: int = 0
    subjects: dict[str, int] | None = None


class _StreamInfo(msgspec.Struct):
    state: StreamState = msgspec.field(default_factory=StreamState)
    total: int = 0
    error: _ApiError | None = None


class _StreamNames(msgspec.Struct):
    streams: list[str] | None = None
    total: int = 0
    error: _ApiError | None = None


_pub_ack = msgspec.json.Decoder(PubAck)
_stream_names = msgspec.json.Decoder(_StreamNames)
_stream_info = msgspec.json.Decoder(_StreamInfo)
_success = msgspec.json.Decoder(_Success)


def api_error(err: _ApiError) -> JetStreamError:
    """The exception for an API error payload."""
    cls = CasConflict if err.err_code in CAS_ERROR_CODES else JetStreamError
    return cls(err.code, err.err_code, err.description)


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read straight from a stream (direct get)."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


class Nats:
    """One NATS connection, with the JetStream calls the rest of oqron_nats uses."""

    def __init__(
        self, nc: DirectClient, *, request_timeout: float, publish_deadline: float
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=request_timeout)
        self.request_timeout = request_timeout
        self.publish_deadline = publish_deadline
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._requests = Requests(nc, request_timeout)
        self.closing = False

    @classmethod
    async def connect(
        cls,
        servers: Sequence[str],
        *,
        name: str,
        request_timeout: float = 5.0,
        publish_deadline: float = 30.0,
        options: Mapping[str, Any] | None = None,
    ) -> Nats:
        """Connect, reconnecting forever after a loss; nats-py options may be overridden."""
        holder: list[Nats] = []

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", error=str(exc), error_type=type(exc).__name__)

        async def on_disconnected() -> None:
            if holder and not holder[0].closing:
                log.warning("nats disconnected")

        async def on_reconnected() -> None:
            log.info("nats reconnected")
            for listener in list(holder[0]._reconnect_listeners) if holder else []:
                listener()

        settings: dict[str, Any] = {
            "servers": list(servers),
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "drain_timeout": 10,
            "skip_subject_validation": True,  # every subject is built from validated names
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
        }
        settings.update(options or {})
        reconnects = settings["max_reconnect_attempts"]
        try:  # a first connection gives up, so a wrong URL is an error, not a hang
            nc = DirectClient()
            await nc.connect(**{**settings, "max_reconnect_attempts": INITIAL_ATTEMPTS})
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            raise ConnectionFailed(
                f"could not connect to NATS at {', '.join(servers)}: {exc!r}"
            ) from exc
        nc.options["max_reconnect_attempts"] = reconnects  # once up, reconnect as configured
        conn = cls(nc, request_timeout=request_timeout, publish_deadline=publish_deadline)
        await conn._requests.start()
        holder.append(conn)
        return conn

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
    def max_payload(self) -> int:
        """The largest message the server accepts, in bytes."""
        return int(self.nc.max_payload)

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up right now."""
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close."""
        if self.nc.is_closed:
            return
        self.closing = True
        try:
            await self.nc.drain()
        except (nats.errors.Error, TimeoutError, OSError):
            await self.nc.close()

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Msg:
        return await self._requests.request(subject, payload, headers)

    def new_inbox(self) -> str:
        """A unique inbox subject."""
        return self.nc.new_inbox()

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """A core NATS subscription delivering to ``cb``."""
        return await self.nc.subscribe(subject, cb=cb)

    async def subscribe_direct(self, subject: str, handler: Handler) -> Subscription:
        """A subscription whose messages go straight to ``handler`` (see :mod:`.direct`)."""
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
        await self.nc.publish(subject, payload, reply=reply, headers=headers)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> PubAck:
        """A JetStream publish, retried on timeout (send a Nats-Msg-Id so a retry cannot duplicate).

        Raises TimeoutError when every try timed out within the publish deadline: the outcome is
        then unknown. No responders (no stream, or a replicated stream between leaders) is tried
        again until the deadline, then raises NoStream: nothing was stored. A KV compare-and-set
        that fails raises CasConflict.
        """
        deadline = time.monotonic() + self.publish_deadline
        timed_out = False
        pause = NO_LEADER_FIRST_PAUSE
        while True:
            try:
                msg = await self._request(subject, payload, headers)
            except nats.errors.NoRespondersError:
                # Nothing was stored. In a cluster this is a stream between leaders (its leader
                # was lost, an election takes seconds), so try again until the deadline.
                if time.monotonic() + pause > deadline:
                    raise NoStream(subject) from None
                log.debug("no stream leader answered the publish; retrying", subject=subject)
                await asyncio.sleep(pause)  # a retry's back-off: no event announces the leader
                pause = min(2 * pause, NO_LEADER_MAX_PAUSE)
                continue
            except TimeoutError:
                if time.monotonic() + self.request_timeout > deadline:
                    raise
                log.debug("publish timed out, retrying", subject=subject)
                timed_out = True
                continue
            ack = _pub_ack.decode(msg.data)
            if ack.error is not None:
                error = api_error(ack.error)
                if isinstance(error, CasConflict):
                    error.after_timeout = timed_out
                raise error
            return ack

    async def increment(self, subject: str, by: int = 1) -> int:
        """Add to a JetStream counter (a stream with allow_msg_counter); return the new total."""
        ack = await self.publish(subject, b"", {"Nats-Incr": f"{by:+d}"})
        return int(ack.val or 0)

    async def direct_get(self, stream: str, *, last_by_subject: str) -> StoredMsg | None:
        """The newest message on ``last_by_subject`` (wildcards allowed), or None."""
        request = msgspec.json.encode({"last_by_subj": last_by_subject})
        msg = await self._request(f"$JS.API.DIRECT.GET.{stream}", request)
        return stored_msg(msg)

    async def has_message(self, stream: str, seq: int) -> bool:
        """Whether the message with sequence ``seq`` is still in the stream."""
        request = msgspec.json.encode({"seq": seq})
        msg = await self._request(f"$JS.API.DIRECT.GET.{stream}", request)
        return stored_msg(msg) is not None

    async def _read(self, subject: str, payload: bytes) -> Msg:
        """An API read that only a stream's leader answers, tried again when it times out until
        the publish deadline (a replicated stream answers nothing while it elects a leader)."""
        deadline = time.monotonic() + self.publish_deadline
        while True:
            try:
                return await self._request(subject, payload)
            except TimeoutError:
                if time.monotonic() + self.request_timeout > deadline:
                    raise
                log.debug("no answer to a JetStream read, retrying", subject=subject)

    async def stream_state(self, stream: str) -> StreamState:
        """How many messages the stream holds, and its first and last sequence."""
        msg = await self._read(f"$JS.API.STREAM.INFO.{stream}", b"")
        info = _stream_info.decode(msg.data)
        if info.error is not None:
            raise api_error(info.error)
        return info.state

    async def purge_later(self, stream: str, subject: str) -> None:
        """Ask the server to purge ``subject`` without waiting for the answer. The server runs
        purges apart from storing messages: one can overtake a message sent just before it."""
        await self.nc.publish(
            f"$JS.API.STREAM.PURGE.{stream}", msgspec.json.encode({"filter": subject})
        )

    async def stream_names(self, *, subject: str) -> list[str]:
        """The names of the streams that hold subjects matching ``subject``."""
        names: list[str] = []
        while True:
            request = msgspec.json.encode({"subject": subject, "offset": len(names)})
            page = _stream_names.decode((await self._read("$JS.API.STREAM.NAMES", request)).data)
            if page.error is not None:
                raise api_error(page.error)
            names += page.streams or []
            if not page.streams or len(names) >= page.total:
                return names

    async def subjects(self, stream: str, subject_filter: str) -> dict[str, int]:
        """Every subject matching the filter that holds messages, with its message count."""
        found: dict[str, int] = {}
        while True:
            request = {"subjects_filter": subject_filter, "offset": len(found)}
            msg = await self._read(f"$JS.API.STREAM.INFO.{stream}", msgspec.json.encode(request))
            page = _stream_info.decode(msg.data)
            if page.error is not None:
                raise api_error(page.error)
            found.update(page.state.subjects or {})
            if not page.state.subjects or len(found) >= page.total:
                return found

    async def direct_batch(
        self, stream: str, *, start: int, batch: int, subject: str | None = None
    ) -> tuple[list[StoredMsg], int]:
        """Up to ``batch`` messages (matching ``subject``, if given) from sequence ``start`` on,
        in order, and how many more there are after them."""
        inbox = self.new_inbox()
        found: list[StoredMsg] = []
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def received(msg: Msg) -> None:
            headers = msg.headers or {}
            if headers.get("Status"):  # 204: end of batch; 404: nothing (more) matches
                if not done.done():
                    done.set_result(0)
                return
            stored = stored_msg(msg)
            if stored is not None:
                found.append(stored)
            pending = int(headers.get("Nats-Num-Pending", "0"))
            if (len(found) >= batch or pending == 0) and not done.done():
                done.set_result(pending)

        sub = await self.nc.subscribe(inbox, cb=received)
        try:
            request: dict[str, object] = {"seq": start, "batch": batch}
            if subject is not None:
                request["next_by_subj"] = subject
            await self.nc.publish(
                f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode(request), reply=inbox
            )
            more = await asyncio.wait_for(done, self.request_timeout)
        finally:
            await sub.unsubscribe()
        return found, more

    async def direct_get_subject(self, stream: str, subject: str) -> StoredMsg | None:
        """The newest message on one exact subject, or None (the fast KV read path)."""
        msg = await self._request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"")
        return stored_msg(msg)

    async def leader_get(self, stream: str, subject: str) -> StoredMsg | None:
        """The newest message on one exact subject, or None, as the stream's leader has it.

        A direct get is answered by any replica, and a replica of a replicated stream may not
        have the last acknowledged writes yet; the leader has every one of them. Slower (one
        server answers, through the JetStream API): for the reads a decision must not be
        taken on alone.
        """
        try:
            msg = await self.js.get_msg(stream, subject=subject)
        except nats.js.errors.NotFoundError:
            return None
        return StoredMsg(
            subject=msg.subject or subject,
            seq=int(msg.seq or 0),
            data=msg.data or b"",
            headers=dict(msg.headers or {}),
        )

    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Delete one message by sequence; False if it was already gone."""
        msg = await self._request(
            f"$JS.API.STREAM.MSG.DELETE.{stream}",
            msgspec.json.encode({"seq": seq, "no_erase": True}),
        )
        result = _success.decode(msg.data)
        if result.error is not None:
            if result.error.err_code == 10057:  # no message found
                return False
            raise api_error(result.error)
        return result.success

    async def purge_subject(self, stream: str, subject: str) -> None:
        """Remove every message on ``subject`` from ``stream``."""
        msg = await self._request(
            f"$JS.API.STREAM.PURGE.{stream}", msgspec.json.encode({"filter": subject})
        )
        result = _success.decode(msg.data)
        if result.error is not None:
            raise api_error(result.error)


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
