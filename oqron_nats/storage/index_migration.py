"""Moving a queue's state index from the layout of oqron_nats 0.1 (a stream per state) to one
stream per queue (see :mod:`.index`).

Run when a worker or an admin opens the queue, after the new stream exists: every entry of the
old streams is copied (with the time it entered its state, so pages stay in order), the copy is
confirmed by one acked write behind it, and the old streams are deleted. Two processes migrating
at once copy the same entries twice (one message per subject: the second copy replaces the
first) and the slower one finds the old streams gone. An entry copied after a newer process
moved its job on is stale, and repaired like any other (pages, reconciliation). A process whose
NATS user may not list or delete streams (a publisher) leaves the migration to the next worker.
"""

from __future__ import annotations

from .._nats import Nats
from .._nats.names import INDEX_ENTERED_HEADER, TTL_HEADER, Names
from ..core.errors import PermissionDenied
from ..core.job import JobState

BATCH = 1024
"""Old entries read per request."""


async def migrate_legacy(conn: Nats, names: Names) -> int:
    """Copy the entries of the queue's old per-state index streams into its index stream, then
    delete them; returns how many entries were copied (0 if there was nothing to migrate)."""
    try:  # 0.1 made the nine streams together: one tells
        if not await conn.stream_exists(names.legacy_index_stream(JobState.WAITING)):
            return 0
        old = [(state, names.legacy_index_stream(state)) for state in JobState]
        old = [(state, stream) for state, stream in old if await conn.stream_exists(stream)]
    except PermissionDenied:
        return 0
    try:
        copied = await _copy(conn, names, old)
        for _, stream in old:
            await conn.delete_stream(stream)
    except PermissionDenied:
        return 0  # a role that may not read or delete them: the next worker migrates
    return copied


async def _copy(conn: Nats, names: Names, old: list[tuple[JobState, str]]) -> int:
    """Copy the old streams' entries; returns once every copy is stored."""
    copied, last = 0, ""
    entered: dict[str, str] = {}
    for state, stream in old:
        start = 1
        while True:
            stored, more = await conn.direct_batch(stream, start=start, batch=BATCH)
            for msg in stored:
                last = names.index_entry(state, msg.subject.rsplit(".", 1)[1])
                entered = {INDEX_ENTERED_HEADER: msg.headers.get("Nats-Time-Stamp", "")}
                if TTL_HEADER in msg.headers:  # it expires with its record (from now on)
                    entered[TTL_HEADER] = msg.headers[TTL_HEADER]
                await conn.publish_core(last, headers=entered)
                copied += 1
            if not stored or not more:
                break
            start = stored[-1].seq + 1
    if last:  # the same connection, the same stream: acked, it lands after every copy
        await conn.publish(last, b"", entered)
    return copied
