"""nats-py's client with direct subscriptions, whose messages skip the subscription queue.

nats-py hands every message of a callback subscription through an asyncio.Queue to a task of the
subscription's own, which then awaits the callback: two task switches per message. A worker
receives several messages per job (the delivery, then the replies to its requests) and needs none
of that: a direct subscription's handler is a plain function, called in the connection's reading
task as soon as the message is parsed. It must be quick and must not block; what it raises is
logged and dropped, so it cannot stop the reading task. Their headers are parsed here too, in one
decode and one split (nats-py decodes every name and value apart).

A publish while connected takes a shorter path too: the same protocol bytes as nats-py's, with
each header name checked once per client instead of by a regular expression on every publish.

Both take nats-py's private members (see :func:`problems`): its parser must call
``_process_msg``, and ``_build_message``, ``_send_command``, ``_flush_pending``, ``_remove_sub``,
``_flush_queue``, ``_status``, ``_max_payload``, ``_pending_data_size``, ``_max_pending_size`` and
``Subscription._id`` must be what they were in
nats-py 2.16. The pin is ``nats-py~=2.16.0`` and tests/test_nats_contract.py checks each of them;
:func:`new_client` checks them too, once per process, and when one is not as expected it warns
and returns a :class:`PlainClient`: the same client on nats-py's public paths only (a direct
subscription is a plain one there), slower but never silent (a parser that stopped calling
``_process_msg`` would leave every request and pull unanswered).
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from collections.abc import Callable, Mapping
from typing import Any

from nats.aio import client as nats_client
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadHeaderError, SecureConnWantedError
from nats.protocol.parser import Parser

from ..core.errors import ConfigError
from ..observe.log import logger

log = logger(__name__)

Handler = Callable[[Msg], None]
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
SEND_MARGIN = 64 * 1024
"""Bytes kept free in nats-py's pending buffer for a publish's headers and protocol line."""


class DirectClient(Client):
    """A nats-py client that can also call a handler inline for a subscription's messages."""

    def __init__(self, *, require_tls: bool = False) -> None:
        super().__init__()
        self._direct: dict[int, Handler] = {}
        self._header_names: set[str] = set()
        self.require_tls = require_tls
        """Refuse a server that offers no TLS, before any credential is sent (nats-py would
        connect in plaintext whenever the server's INFO does not ask for TLS)."""

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        """nats-py's INFO handling; with ``require_tls``, a first INFO without TLS is refused
        (on every connect and reconnect, before CONNECT and its credentials go out)."""
        if (
            initial_connection
            and self.require_tls
            and not info.get("tls_required")
            and not self.options.get("tls_handshake_first")
        ):
            raise SecureConnWantedError
        await super()._process_info(info, initial_connection)

    async def subscribe_direct(self, subject: str, handler: Handler) -> Subscription:
        """Subscribe; ``handler`` is called in the reading task for each message."""
        sub = await self.subscribe(subject)
        self._direct[sub._id] = handler
        return sub

    async def leave_server(self) -> None:
        """Reconnect to a server of the pool other than the current one.

        nats-py's ``force_reconnect`` shuffles the pool and may pick the server it leaves (one
        time in three, in a pool of three): for that one reconnect, a server-choosing handler
        takes the first other server; it then gives the choice back to nats-py's rotation."""
        leaving = self._current_server
        before = self._reconnect_to_server_handler

        def elsewhere(servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
            self._reconnect_to_server_handler = before
            others = [s for s in servers if leaving is None or s.uri.netloc != leaving.uri.netloc]
            return (others[0] if others else None), 0.0

        self._reconnect_to_server_handler = elsewhere
        await self.force_reconnect()
        if not self.is_reconnecting:  # nats-py did not start a reconnect: nothing to choose
            self._reconnect_to_server_handler = before

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publish a core NATS message (nats-py's checks and errors off the connected path)."""
        if self._status != Client.CONNECTED or not subject or len(payload) > self._max_payload:
            await super().publish(subject, payload, reply, headers)
            return
        if headers:
            head = self._encode_headers(headers)
            size = len(head) + len(payload)
            command = f"HPUB {subject} {reply} {len(head)} {size}\r\n".encode() + head
        else:
            command = f"PUB {subject} {reply} {len(payload)}\r\n".encode()
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        await self._send_command(command + payload + b"\r\n")
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    def sends_at_once(self, size: int) -> bool:
        """Whether a publish of about ``size`` bytes goes out without waiting: connected, and
        nats-py's pending buffer has room (when full, nats-py waits for its flusher)."""
        return self._status == Client.CONNECTED and (
            self._max_pending_size <= 0
            or self._pending_data_size + size + SEND_MARGIN <= self._max_pending_size
        )

    def _encode_headers(self, headers: Mapping[str, str]) -> bytes:
        known, text = self._header_names, "NATS/1.0\r\n"
        for name, value in headers.items():  # the common case: checked names, one-line values
            if name not in known or value != value.strip():
                return self._encode_checked(headers)
            text += f"{name}: {value}\r\n"
        lines = len(headers) + 1
        if text.count("\n") != lines or text.count("\r") != lines:  # a line break in a value
            return self._encode_checked(headers)
        return (text + "\r\n").encode()

    def _encode_checked(self, headers: Mapping[str, str]) -> bytes:
        """The headers encoded with their names checked and their values made one line."""
        lines = [
            f"{name}: {one_line(value)}\r\n" for name, value in self._checked_names(headers).items()
        ]
        return ("NATS/1.0\r\n" + "".join(lines) + "\r\n").encode()

    def _checked_names(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers with names stripped, empty ones left out; BadHeaderError for a name
        that is not a header name. Names that pass are remembered (checked once per client)."""
        checked = {}
        for key, value in headers.items():
            name = key.strip()
            if not name:
                continue
            if name not in self._header_names:
                if not HEADER_NAME.fullmatch(name):
                    raise BadHeaderError(name)
                self._header_names.add(name)
            checked[name] = value
        return checked

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        deliver(handler, self._build_message(sid, subject, reply, data, parse_headers(headers)))

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._direct.pop(sid, None)
        super()._remove_sub(sid, max_msgs)


class PlainClient(DirectClient):
    """A DirectClient on nats-py's public paths: its direct subscriptions are plain ones."""

    # nats-py's own methods again: this class must work whatever nats-py's internals look like
    _process_msg = Client._process_msg  # type: ignore[assignment]
    _remove_sub = Client._remove_sub
    publish = Client.publish

    def sends_at_once(self, size: int) -> bool:
        """Never assumed on nats-py's public path: every request's send gets its deadline."""
        return False

    async def subscribe_direct(self, subject: str, handler: Handler) -> Subscription:
        """Subscribe; ``handler`` is called in the subscription's task for each message."""

        async def callback(msg: Msg) -> None:
            deliver(handler, msg)

        return await self.subscribe(subject, cb=callback)

    async def leave_server(self) -> None:
        """Reconnect through nats-py's ``force_reconnect`` (which may pick the same server)."""
        await self.force_reconnect()


def deliver(handler: Handler, msg: Msg) -> None:
    """Call a direct subscription's handler; what it raises is logged, and the message dropped."""
    try:
        handler(msg)
    except Exception:
        log.exception("a message handler failed; the message is dropped", subject=msg.subject)


def new_client(*, require_tls: bool = False) -> DirectClient:
    """A DirectClient, or a PlainClient (with a warning) when nats-py's internals differ.

    With ``require_tls``, a nats-py whose INFO handling is not as expected is refused
    (ConfigError): the check that keeps credentials off a plaintext connection lives there, and
    it must never be skipped silently.
    """
    if require_tls and (found := tls_problems()):
        raise ConfigError(
            "cannot make sure the server speaks TLS before credentials are sent with this "
            f"nats-py ({'; '.join(found)}); install nats-py~=2.16.0"
        )
    if _problems_once():
        return PlainClient(require_tls=require_tls)
    return DirectClient(require_tls=require_tls)


@functools.cache
def _problems_once() -> tuple[str, ...]:
    found = tuple(problems())
    if found:
        log.warning(
            "nats-py's internals are not as oqron_nats expects: direct subscriptions fall back "
            "to plain nats-py subscriptions (slower); install nats-py~=2.16.0",
            nats_py=getattr(nats_client, "__version__", "unknown"),
            problems="; ".join(found),
        )
    return found


METHODS: dict[str, tuple[tuple[str, ...], bool]] = {
    "_process_msg": (("self", "sid", "subject", "reply", "data", "headers"), True),
    "_build_message": (("self", "sid", "subject", "reply", "data", "headers"), False),
    "_send_command": (("self", "cmd", "priority"), True),
    "_flush_pending": (("self", "force_flush"), True),
    "_remove_sub": (("self", "sid", "max_msgs"), False),
}
"""nats-py's private methods that DirectClient overrides or calls: their parameters as we call
them (positionally), and whether they are coroutine functions (awaited)."""
ATTRIBUTES = (
    "_flush_queue", "_status", "_max_payload", "stats", "_pending_data_size", "_max_pending_size",
    "_current_server", "_reconnect_to_server_handler",
)  # fmt: skip
"""The attributes of nats-py's client that DirectClient reads, set in its ``__init__``."""
USES: tuple[tuple[type, str, str], ...] = (
    (Parser, "parse", "_process_msg"),  # a message read goes to _process_msg
    (Subscription, "unsubscribe", "_remove_sub"),  # DirectClient forgets the handler there
    (Subscription, "_drain", "_remove_sub"),
    (Subscription, "__init__", "_id"),  # the sid DirectClient keys its handlers by
    (Client, "_attempt_reconnect", "_reconnect_to_server_handler"),  # asked on each try
)
"""(class, method, name): where nats-py must use (call, or set) a member DirectClient needs."""


def problems(client: type[Client] = Client) -> list[str]:
    """What in nats-py's internals is not as DirectClient expects (an empty list: all is)."""
    found = []
    for name, (params, coroutine) in METHODS.items():
        method = inspect.getattr_static(client, name, None)
        if not inspect.isfunction(method):
            found.append(f"no method {name}")
            continue
        got = tuple(inspect.signature(method).parameters)
        if got != params:
            found.append(f"{name}({', '.join(got)}), expected {name}({', '.join(params)})")
        if inspect.iscoroutinefunction(method) != coroutine:
            found.append(f"{name} is {'not ' if coroutine else ''}a coroutine function")
    for name in ATTRIBUTES:
        if not uses(client, "__init__", name):
            found.append(f"Client.__init__ does not set {name}")
    for owner, method, name in USES:
        if not uses(owner, method, name):
            found.append(f"{owner.__name__}.{method} does not use {name}")
    if not isinstance(getattr(client, "CONNECTED", None), int):
        found.append("no Client.CONNECTED")
    return found


def tls_problems(client: type[Client] = Client) -> list[str]:
    """What keeps DirectClient's ``require_tls`` check from running on this nats-py: its
    ``_process_info`` override must have nats-py's signature and be called on connect."""
    found = []
    method = inspect.getattr_static(client, "_process_info", None)
    expected = ("self", "info", "initial_connection")
    if not inspect.iscoroutinefunction(method):
        found.append("no coroutine method _process_info")
    elif tuple(inspect.signature(method).parameters) != expected:
        found.append(f"_process_info does not take ({', '.join(expected)})")
    if not uses(client, "_process_connect_init", "_process_info"):
        found.append("Client._process_connect_init does not call _process_info")
    return found


def uses(owner: type, method: str, name: str) -> bool:
    """Whether ``owner.method`` (or a function nested in it) names attribute or global ``name``."""
    code = getattr(inspect.getattr_static(owner, method, None), "__code__", None)
    stack = [code] if isinstance(code, types.CodeType) else []
    while stack:
        code = stack.pop()
        if name in code.co_names:
            return True
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return False


def one_line(value: str) -> str:
    """A header value on one line, as nats-py sends it (line breaks become spaces)."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    return value.strip()


STATUS_AT = len("NATS/1.0 ")


def parse_headers(raw: bytes | None) -> dict[str, str] | None:
    """The headers of a message, with an inline status as ``Status`` and ``Description``."""
    if not raw:
        return None
    first, *lines = raw.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, str] = {}
    if len(first) > STATUS_AT:  # NATS/1.0 404 No Messages
        status, _, description = first[STATUS_AT:].partition(" ")
        if status.isdigit():
            headers["Status"] = status
        if description:
            headers["Description"] = description
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip()
        if colon and name and " " not in name and "\t" not in name:
            headers[name] = value.strip()
    return headers or None
