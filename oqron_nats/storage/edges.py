"""The parent -> child edges of a queue's flows: one KV key each in the namespace's deps bucket
(``<queue>.<parent>.<child>``), never a list inside a record that a stale writer could
overwrite. ``runtime/dag.py`` decides the children; this module only keeps the edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .._nats import Bucket, CasConflict, Nats
from .._nats.names import Names


class Edges:
    """Links and lists the children of one queue's jobs."""

    def __init__(self, conn: Nats, names: Names) -> None:
        self.names = names
        self._bucket = Bucket(conn, names.deps_bucket)

    async def link(self, parent_id: str, child_id: str) -> None:
        """Record that ``child_id`` waits for ``parent_id`` (a second link changes nothing)."""
        with contextlib.suppress(CasConflict):  # already linked by an earlier try
            await self._bucket.create(self.names.edge(parent_id, child_id), b"")

    async def children(self, parent_id: str) -> AsyncIterator[str]:
        """The ids of the jobs that wait for ``parent_id``."""
        async for entry in self._bucket.scan(self.names.edges_of(parent_id)):
            yield entry.key.rsplit(".", 1)[1]

    async def remove_all(self) -> None:
        """Remove every edge of the queue."""
        await self._bucket.purge(self.names.all_edges)
