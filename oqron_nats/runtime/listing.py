"""A queue's jobs as its users list and count them: from the state index, not by scanning
records (``storage/index.py``), newest first."""

from __future__ import annotations

import asyncio

from ..core.errors import InvalidOption
from ..core.job import JobState
from ..storage.backend import Backend
from ..storage.index import newest_across
from ..storage.store import Listing

PAGE_SLACK = 16
"""Extra index entries read per page, for entries of jobs that moved on meanwhile."""


def check_page(limit: int, offset: int) -> None:
    """InvalidOption unless ``limit`` and ``offset`` are ints >= 0."""
    for name, value in (("limit", limit), ("offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidOption(f"{name} must be an int >= 0, not {value!r}")


async def newest(backend: Backend, state: JobState | None, limit: int, offset: int) -> Listing:
    """A page of the jobs that entered ``state`` (None: any state) last, skipping ``offset``,
    and the records on it that do not decode."""
    states = [state] if state is not None else list(JobState)
    want = offset + limit + PAGE_SLACK  # a few entries may belong to jobs that moved on
    pages = await asyncio.gather(*(backend.store.index.newest(s, want) for s in states))
    listing = await backend.store.listed(newest_across(pages, want))
    return Listing(listing.jobs[offset : offset + limit], listing.corrupt)


async def count(backend: Backend, state: JobState | None) -> int:
    """How many jobs are in ``state`` (None: in any state), from the index."""
    states = [state] if state is not None else list(JobState)
    return sum(await asyncio.gather(*(backend.store.index.count(s) for s in states)))
