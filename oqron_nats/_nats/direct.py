"""nats-py's client with direct subscriptions, whose messages skip the subscription queue.

nats-py hands every message of a callback subscription through an asyncio.Queue to a task of the
subscription's own, which then awaits the callback: two task switches per message. A worker
receives several messages per job (the delivery, then the replies to its requests) and needs none
of that: a direct subscription's handler is a plain function, called in the connection's reading
task as soon as the message is parsed. It must be quick and must not block; what it raises is
logged and dropped, so it cannot stop the reading task. Their headers are parsed here too, in one
decode and one split (nats-py decodes every name and value apart).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = structlog.get_logger("oqron_nats")

Handler = Callable[[Msg], None]


class DirectClient(Client):
    """A nats-py client that can also call a handler inline for a subscription's messages."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Handler] = {}

    async def subscribe_direct(self, subject: str, handler: Handler) -> Subscription:
        """Subscribe; ``handler`` is called in the reading task for each message."""
        sub = await self.subscribe(subject)
        self._direct[sub._id] = handler
        return sub

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
