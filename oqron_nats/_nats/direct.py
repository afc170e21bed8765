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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadHeaderError, SecureConnWantedError

from ..log import logger

log = logger(__name__)

Handler = Callable[[Msg], None]
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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

    def _encode_headers(self, headers: Mapping[str, str]) -> bytes:
        lines = ["NATS/1.0\r\n"]
        for key, value in headers.items():
            name = key.strip()
            if name not in self._header_names:
                if not name:
                    continue
                if not HEADER_NAME.fullmatch(name):
                    raise BadHeaderError(name)
                self._header_names.add(name)
            lines.append(f"{name}: {one_line(value)}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        msg = self._build_message(sid, subject, reply, data, parse_headers(headers))
        try:
            handler(msg)
        except Exception:
            log.exception("a message handler failed; the message is dropped", subject=msg.subject)

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self._direct.pop(sid, None)
        super()._remove_sub(sid, max_msgs)


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
