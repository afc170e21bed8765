"""``Nats``: the one object the rest of oqron_nats talks to NATS through.

It is the connection (:mod:`.conn`: connecting, reconnecting, the one retried request path) with
the JetStream calls of each concept mixed in: stream and consumer administration
(:mod:`.streams`), reading stored messages with the leader detour (:mod:`.reads`) and
publishing (:mod:`.publish`). Each of those is a subclass of :class:`~.conn.Connection` that
adds calls over its request path and holds no connection of its own, so callers keep one
object and call ``conn.direct_get(...)``, ``conn.publish(...)``, ``conn.stream_state(...)``.
"""

from __future__ import annotations

from .publish import Publishing
from .reads import Reads
from .streams import StreamAdmin


class Nats(Reads, Publishing, StreamAdmin):
    """One NATS connection, with the JetStream calls the rest of oqron_nats uses."""
