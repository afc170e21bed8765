"""The NATS connection: connecting, reconnecting, closing, and the one retried request path.

Every JetStream request goes through one path, :meth:`Connection._ask`: a request that nobody
answered (a timeout, no responders) or that a cluster refused for the moment (no meta leader,
not the leader any more, see :data:`.retry.TRANSIENT_ERR_CODES`) is asked again with capped,
jittered pauses until the retry deadline, and only then raises :class:`~oqron_nats.core.errors.
Unavailable`. Requests are safe to ask again: reads, creates that accept an equal config,
publishes with a ``Nats-Msg-Id`` or an expected revision (a compare-and-set write that finds its
own earlier try is recognised, see :mod:`.kv`). API errors that are answers become
:class:`~oqron_nats.core.errors.JetStreamError` with the server's ``err_code`` (see
:mod:`.replies`). The JetStream calls built on this path are in :mod:`.streams`, :mod:`.reads`
and :mod:`.publish`; :class:`~.facade.Nats` is the connection with all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import msgspec
import nats
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..core.credentials import TLS, Credentials, conceal
from ..core.errors import ConnectionFailed, PermissionDenied, Unavailable
from ..observe.log import logger
from .auth import describe, is_refusal, nats_options
from .direct import DirectClient, Handler, new_client
from .replies import S, decoded, transient_error
from .requests import Requests
from .retry import Backoff
from .stranded import Stranded

log = logger(__name__)

INITIAL_ATTEMPTS = 4
"""Connection attempts per server before the first connect gives up."""
PING_INTERVAL = 2.0
"""Seconds between the client's PINGs: two unanswered, and the connection is given up."""
CLOSE_TIMEOUT = 5.0
"""Seconds a close waits for the drain, then for the close itself."""
ABANDON_TIMEOUT = 1.0
"""Seconds a failed first connection's close may take."""


class Connection:
    """One NATS connection and its retried request path; :class:`~.facade.Nats` adds the
    JetStream calls."""

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
        self._unsubscribable: set[str] = set()
        """Subjects (lowercased) the server refused us to subscribe to."""
        self._stranded = Stranded(request_timeout=request_timeout)
        self.closing = False
        self.disconnects = 0
        """How many times the connection was lost so far, counted before nats-py reconnects: a
        request answered after a loss always finds it counted."""
        self._batches: set[asyncio.Future[int]] = set()
        """The batch reads waiting for their messages, which come on inboxes of their own
        (outside the requests a lost connection abandons)."""

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
    ) -> Self:
        """Connect, reconnecting forever after a loss; nats-py options may be overridden.

        ``servers`` carry no userinfo (see :func:`~oqron_nats.core.credentials.split_userinfo`);
        ``label`` is how errors name them. The first connection fails fast with
        :class:`ConnectionFailed` saying why (a refusal of the credentials or a TLS failure at
        once; unreachable servers after a few tries), and never shows a credential.
        """
        holder: list[Connection] = []
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
                holder[0]._lost()

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

    @property
    def critical_requests_sent(self) -> int:
        """Of those, the requests awaited one after the other by jobs' own tasks (their
        critical path, see ``requests.on_critical_path``)."""
        return self._requests.critical

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
        elif (subscription := SUBSCRIBE_DENIED.search(text)) is not None:
            self._unsubscribable.add(subscription.group(1).lower())

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

    @property
    def is_closed(self) -> bool:
        """Whether the connection was closed (it does not come back; a reconnect is not this)."""
        return self.closing or bool(self.nc.is_closed)

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

    def _lost(self) -> None:
        """The connection was lost: count it, and let what waits for an answer on it ask again
        at once (not after its timeout)."""
        self.disconnects += 1
        self._requests.abandon()
        for batch in self._batches:
            if not batch.done():
                batch.set_exception(TimeoutError("the connection was lost"))
        self._stranded.interrupted()

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
                    self._stranded.answered()
                    return msg, timed_out
                cause = refused
            await self._unanswered()
            if not await backoff.pause():
                raise Unavailable(
                    f"NATS did not answer a request on {subject} within the retry deadline "
                    f"(last try: {cause}); is the cluster electing leaders, or a node down?",
                    outcome_unknown=timed_out,
                )
            log.debug("no answer from NATS yet; asking again", subject=subject, cause=cause)

    async def _unanswered(self) -> None:
        """A request went unanswered: leave a server that has answered none for a while,
        though the connection stayed up, for another one (see :mod:`.stranded`)."""
        if not self.nc.is_connected or not self._stranded.unanswered():
            return
        if len(self.nc.servers) < 2:
            return  # nowhere else to go
        log.warning(
            "the NATS server answered no JetStream request for a while though it is connected "
            "(cut off from its cluster?); reconnecting to another server",
            server=self.server_name,
        )
        await self.nc.leave_server()

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
        with AS_UNAVAILABLE:
            return await self.nc.subscribe(subject, cb=cb)

    def refused_subscription(self, subject: str) -> PermissionDenied | None:
        """The error, if the server refused this user a subscription to ``subject``: it says
        so after the SUB, so ask after a request sent after the subscription was answered (a
        flush's PING can overtake a SUB still in nats-py's buffer)."""
        if subject.lower() in self._unsubscribable:
            return denied(subject, "subscribe to")
        return None

    async def subscribe_direct(self, subject: str, handler: Handler) -> Subscription:
        """A subscription whose messages go straight to ``handler`` (see :mod:`.direct`)."""
        with AS_UNAVAILABLE:
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
        with AS_UNAVAILABLE:
            await self.nc.publish(subject, payload, reply=reply, headers=headers)


PUBLISH_DENIED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
REPLY_DENIED = re.compile(r'permissions violation for publish with reply of "([^"]+)"', re.I)
SUBSCRIBE_DENIED = re.compile(r'permissions violation for subscription to "([^"]+)"', re.I)


def denied(subject: str, action: str) -> PermissionDenied:
    """The error of a request the user's permissions refused (the server lowercases the
    subject in its error; the subject is named as it says)."""
    return PermissionDenied(
        f"NATS refused: this user may not {action} {subject} (its permissions; see "
        "`oqron permissions` for what each role needs)",
        subject=subject,
    )


class _AsUnavailable:
    """nats-py's errors of a core call (a closed connection, a full reconnect buffer) as the
    typed Unavailable: a user never meets a raw nats error. A class, not a generator: it wraps
    every fire-and-forget publish, several per job."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if isinstance(exc, nats.errors.Error):
            raise Unavailable(f"NATS could not take the message: {exc}") from exc


AS_UNAVAILABLE = _AsUnavailable()
"""The context in which nats-py's errors become Unavailable (stateless: one for all)."""


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
