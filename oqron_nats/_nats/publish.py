"""Publishing to JetStream: a stored message acknowledged by its stream, and counters.

A publish rides the connection's retried request path (see :mod:`.conn`): send a
``Nats-Msg-Id`` or an expected revision, so that a retry cannot store it twice. Publishes can
also make only their first try, many at once (:meth:`Publishing.publish_at_once`: an add's
records and messages): the caller decides what a try that was not plainly answered comes to.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from nats.aio.msg import Msg

from ..core.errors import JetStreamError
from .conn import Connection
from .replies import CasConflict, PubAck, decoded, transient_error
from .requests import Ask


class Publishing(Connection):
    """The connection's JetStream publishes."""

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

    async def publish_at_once(
        self, messages: Sequence[Ask]
    ) -> list[PubAck | JetStreamError | None]:
        """The first try of each JetStream publish, all sent at once: for each, in order, its
        PubAck, the JetStream error the stream refused it with (CasConflict, ...), or None if
        it was not plainly answered (no reply in time, no responders, an error a cluster gives
        while it elects leaders, a connection problem): it may have been stored or not, and
        the caller decides what comes next (:meth:`publish` retries until the deadline)."""
        answers = []
        for reply in await self._first_tries(messages):
            answer = _first_answer(reply)
            if answer is not None:
                self._stranded.answered()
            answers.append(answer)
        return answers

    async def _first_tries(self, messages: Sequence[Ask]) -> list[Msg | Exception]:
        if len(messages) != 1:
            return await self._requests.request_many(messages)
        try:  # one (add()): a plain request, without the wait for a set of answers
            return [await self._requests.request(*messages[0])]
        except Exception as exc:
            return [exc]

    async def increment(self, subject: str, by: int = 1) -> int:
        """Add to a JetStream counter (a stream with allow_msg_counter); return the new total."""
        ack = await self.publish(subject, b"", {"Nats-Incr": f"{by:+d}"})
        return int(ack.val or 0)


def _first_answer(reply: Msg | Exception) -> PubAck | JetStreamError | None:
    """A first try's PubAck or refusal; None if it was not plainly answered."""
    if isinstance(reply, Exception) or transient_error(reply.data) is not None:
        return None
    try:
        return decoded(reply.data, PubAck)
    except JetStreamError as refused:
        return refused
    except msgspec.DecodeError:  # not a JetStream answer: as good as none
        return None
