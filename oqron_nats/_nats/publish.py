"""Publishing to JetStream: a stored message acknowledged by its stream, and counters.

A publish rides the connection's retried request path (see :mod:`.conn`): send a
``Nats-Msg-Id`` or an expected revision, so that a retry cannot store it twice.
"""

from __future__ import annotations

from .conn import Connection
from .replies import CasConflict, PubAck, decoded


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

    async def increment(self, subject: str, by: int = 1) -> int:
        """Add to a JetStream counter (a stream with allow_msg_counter); return the new total."""
        ack = await self.publish(subject, b"", {"Nats-Incr": f"{by:+d}"})
        return int(ack.val or 0)
