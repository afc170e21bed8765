"""Flows: a job that runs only after the jobs it depends on (its parents) completed.

A child is stored ``waiting-children``. Each parent -> child edge is its own KV key
(``storage/edges.py``), never a list inside a record that a stale writer could overwrite.
Whenever a job ends (completed, failed, cancelled) its children are looked at again, and so is a
child right after it was added: whoever decides moves the child by compare-and-set, so two
parents that finish together release it exactly once.

``parent_failure_policy`` decides what a parent that failed, was cancelled or was dead-lettered
means for the child: ``block`` (the default) keeps it waiting (a retried parent that completes
releases it), ``cascade-fail`` fails it, ``ignore`` counts the parent as done.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..core.errors import InvalidOption, JobNotFound
from ..core.job import JobFailure, JobState, moved
from ..observe.log import logger
from ..storage.backend import Backend
from ..storage.store import RawJob

log = logger(__name__)

MAX_ANCESTRY = 1000
"""How many ancestors a cycle check walks before it gives up (and refuses the job)."""


async def check_parents(backend: Backend, child_id: str, parents: Sequence[str]) -> None:
    """Refuse a dependency on a missing job, on itself, or one that closes a cycle."""
    if child_id in parents:
        raise InvalidOption(f"job {child_id!r} cannot depend on itself (a cycle)")
    seen: set[str] = set()
    frontier = list(dict.fromkeys(parents))
    for parent in frontier:
        if await backend.store.get(parent) is None:
            raise JobNotFound(
                f"parent job {parent!r} does not exist in queue {backend.names.queue!r}"
            )
    while frontier:
        job_id = frontier.pop()
        if job_id in seen:
            continue
        seen.add(job_id)
        if job_id == child_id:
            raise InvalidOption(
                f"job {child_id!r} would depend on itself through {sorted(parents)}"
            )
        if len(seen) > MAX_ANCESTRY:
            raise InvalidOption(f"job {child_id!r} has more than {MAX_ANCESTRY} ancestors")
        record = await backend.store.get(job_id)
        if record is not None:
            frontier.extend(record.job.depends_on)


async def link(backend: Backend, child: RawJob) -> None:
    """Write the child's edges, then decide it at once (its parents may have finished)."""
    for parent in child.depends_on:
        await backend.edges.link(parent, child.id)
    await resolve(backend, child.id)


async def notify_children(backend: Backend, parent_id: str) -> None:
    """A job ended: look at each of its children again."""
    async for child_id in backend.edges.children(parent_id):
        await resolve(backend, child_id)


async def resolve(backend: Backend, child_id: str) -> None:
    """Release, fail or keep a waiting child, by compare-and-set on its record."""

    async def decided(child: RawJob) -> RawJob | None:
        if child.state != JobState.WAITING_CHILDREN:
            return None  # already decided by someone else
        verdict, reason = await _verdict(backend, child)
        if verdict == JobState.FAILED:
            return moved(
                child, JobState.FAILED, reason, finished_at=datetime.now(UTC),
                error=JobFailure(type="ParentFailed", message=reason),
            )  # fmt: skip
        if verdict is None:
            return None
        state = JobState.DELAYED if child.run_at is not None else JobState.WAITING
        return moved(child, state, reason, enqueued=child.enqueued + 1)

    try:
        changed = await backend.store.transition(child_id, decided, _event_of)
    except JobNotFound:
        return  # gone
    if changed is None:
        return
    if changed[1].state == JobState.FAILED:
        await notify_children(backend, child_id)  # the cascade goes on
    else:
        await backend.broker.enqueue(changed[1])


def _event_of(child: RawJob) -> str:
    """The event of a decided child: failed (its parents failed it) or waiting (released)."""
    return "failed" if child.state == JobState.FAILED else "waiting"


async def _verdict(backend: Backend, child: RawJob) -> tuple[JobState | None, str]:
    """What the parents' states mean for the child: run it, fail it, or (None) keep waiting."""
    pending = False
    for parent_id in child.depends_on:
        record = await backend.store.get(parent_id, fresh=True)
        state = record.job.state if record is not None else JobState.COMPLETED  # removed: done
        if state == JobState.COMPLETED:
            continue
        if state in (JobState.FAILED, JobState.CANCELLED):
            if child.parent_failure_policy == "cascade-fail":
                return JobState.FAILED, f"parent job {parent_id} is {state}"
            if child.parent_failure_policy == "ignore":
                continue
        pending = True
    return (None, "") if pending else (JobState.WAITING, "parents completed")


async def parent_results(backend: Backend, child: RawJob) -> dict[str, Any]:
    """The stored results of a child's parents, by parent id (None for a parent without one)."""
    results: dict[str, Any] = {}
    for parent_id in child.depends_on:
        record = await backend.store.get(parent_id, fresh=True)
        results[parent_id] = record.job.result if record is not None else None
    return results
