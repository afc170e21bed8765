"""Stream and consumer administration: a stream's state, limits, subjects and messages by
sequence (delete, purge); creating streams and consumers, listing, pausing and deleting
consumers.

Each call is one JetStream API request through the connection's retried request path (see
:mod:`.conn`); errors that are answers come typed (see :mod:`.replies`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

import msgspec

from ..core.errors import JetStreamError
from .conn import AS_UNAVAILABLE, Connection
from .replies import (
    NO_MESSAGE,
    NOT_FOUND,
    ConsumerNames,
    Reply,
    StreamInfo,
    StreamLimits,
    StreamNames,
    StreamState,
    Success,
)

RESUMED = "1970-01-01T00:00:00Z"
"""A consumer's ``pause_until`` in the past: not paused."""


async def found(request: Awaitable[object]) -> bool:
    """Await ``request``; False if the stream or consumer it names does not exist."""
    try:
        await request
    except JetStreamError as exc:
        if exc.err_code in NOT_FOUND:
            return False
        raise
    return True


class StreamAdmin(Connection):
    """The connection's calls that inspect and administer streams and consumers."""

    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Delete one message by sequence; False if it was already gone."""
        try:
            reply = await self._api(
                f"$JS.API.STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True}, Success
            )
        except JetStreamError as exc:
            if exc.err_code in NO_MESSAGE:
                return False
            raise
        return reply.success

    async def purge_subject(self, stream: str, subject: str) -> None:
        """Remove every message on ``subject`` from ``stream``."""
        await self._api(f"$JS.API.STREAM.PURGE.{stream}", {"filter": subject}, Success)

    async def purge_before(self, stream: str, subject: str, seq: int) -> int:
        """Remove the messages on ``subject`` below sequence ``seq``; how many there were."""
        body = {"filter": subject, "seq": seq}
        return (await self._api(f"$JS.API.STREAM.PURGE.{stream}", body, Success)).purged

    async def purge_later(self, stream: str, subject: str) -> None:
        """Ask the server to purge ``subject`` without waiting for the answer. The server runs
        purges apart from storing messages: one can overtake a message sent just before it."""
        with AS_UNAVAILABLE:
            await self.nc.publish(
                f"$JS.API.STREAM.PURGE.{stream}", msgspec.json.encode({"filter": subject})
            )

    async def delete_stream(self, stream: str) -> bool:
        """Delete the stream; False if it did not exist."""
        return await found(self._api(f"$JS.API.STREAM.DELETE.{stream}", None, Success))

    async def stream_state(self, stream: str) -> StreamState:
        """How many messages the stream holds, and its first and last sequence."""
        return (await self._api(f"$JS.API.STREAM.INFO.{stream}", None, StreamInfo)).state

    async def stream_limits(self, stream: str) -> StreamLimits:
        """The stream's limits and discard policy, as configured now."""
        return (await self._api(f"$JS.API.STREAM.INFO.{stream}", None, StreamInfo)).config

    async def stream_exists(self, stream: str) -> bool:
        """Whether the stream exists."""
        return await found(self.stream_state(stream))

    async def stream_names(self, *, subject: str) -> list[str]:
        """The names of the streams that hold subjects matching ``subject``."""
        names: list[str] = []
        while True:
            body = {"subject": subject, "offset": len(names)}
            page = await self._api("$JS.API.STREAM.NAMES", body, StreamNames)
            names += page.streams or []
            if not page.streams or len(names) >= page.total:
                return names

    async def subjects(self, stream: str, subject_filter: str) -> dict[str, int]:
        """Every subject matching the filter that holds messages, with its message count."""
        found: dict[str, int] = {}
        while True:
            body = {"subjects_filter": subject_filter, "offset": len(found)}
            page = await self._api(f"$JS.API.STREAM.INFO.{stream}", body, StreamInfo)
            found.update(page.state.subjects or {})
            if not page.state.subjects or len(found) >= page.total:
                return found

    async def create_stream(self, config: Mapping[str, Any]) -> None:
        """Create a stream; one that exists with an equal configuration is left as it is
        (JetStreamError err_code 10058 if it exists with another one)."""
        await self._api(f"$JS.API.STREAM.CREATE.{config['name']}", config, Reply)

    async def create_consumer(
        self, stream: str, config: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        """Create the durable consumer, or update it to ``config``."""
        body = {"stream_name": stream, "config": config}
        await self._api(f"$JS.API.CONSUMER.CREATE.{stream}.{config['name']}", body, Reply,
                        deadline=deadline)  # fmt: skip

    async def consumer_names(self, stream: str) -> list[str]:
        """The names of the stream's consumers."""
        names: list[str] = []
        while True:
            body = {"offset": len(names)}
            page = await self._api(f"$JS.API.CONSUMER.NAMES.{stream}", body, ConsumerNames)
            names += page.consumers or []
            if not page.consumers or len(names) >= page.total:
                return names

    async def delete_consumer(self, stream: str, consumer: str) -> bool:
        """Delete the durable consumer; False if it does not exist."""
        return await found(self._api(f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}", {}, Reply))

    async def pause_consumer(self, stream: str, consumer: str, until: str | None) -> bool:
        """Pause the consumer until ``until`` (RFC 3339), or resume it (None); False if it does
        not exist."""
        body = {"pause_until": until or RESUMED}
        return await found(self._api(f"$JS.API.CONSUMER.PAUSE.{stream}.{consumer}", body, Reply))
