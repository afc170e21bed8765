"""The dashboard's pages (GET): the overview, a queue, a job, the search, and the server-sent
events that keep them live."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from ..core.errors import InvalidInput
from ..core.job import Job, JobState
from ..ops import admin
from ..storage.store import CorruptJob
from . import reads
from .live import Page
from .masking import Masker
from .settings import trace_link
from .state import Dashboard

PING = 15.0
"""Seconds between two keep-alive comments on an idle event stream."""
PACE = 0.5
"""Seconds between two sends to one page: at most two refreshes a second, the last always."""
DEAD_LETTERS_SHOWN = 100
DONE = {
    "pause": "Paused: running jobs finish, nothing new starts.",
    "resume": "Resumed.",
    "drain": "Drained: the queue is paused and no job is active.",
    "retry-failed": "Every failed job was retried.",
    "obliterate": "The queue was obliterated.",
    "replay": "The dead letters were replayed.",
    "retry": "The job was retried.",
    "rerun": "The job runs again.",
    "cancel": "The job was cancelled.",
    "promote": "The job was promoted: it runs now.",
    "remove": "The job was removed.",
}
"""What a finished action says on the page it returns to (``?done=<action>``)."""


def flash(request: Request) -> str | None:
    """The message of the action just done, if any (only our own words, never the URL's)."""
    return DONE.get(request.query_params.get("done", ""))


async def overview_page(dash: Dashboard, request: Request) -> Response:
    """Every queue of the namespace, live."""
    table = dash.render_overview(await dash.hub.rows())
    return dash.page(request, "overview.html", table=table, flash=flash(request),
                     events=urlencode({"overview": "1"}))  # fmt: skip


async def queue_page(dash: Dashboard, request: Request) -> Response:
    """A queue: its actions, its jobs by state in tabs (or its dead letters), and a search."""
    name = request.path_params["name"]
    values = await queue_values(dash, request, name)
    values["queue_actions"] = not dash.settings.read_only
    return dash.page(request, "queue.html", flash=flash(request),
                     events=urlencode({"queue": name}), **values)  # fmt: skip


async def jobs_fragment(dash: Dashboard, request: Request) -> Response:
    """The tabs and the list of a queue's page, refetched when its queue changes."""
    name = request.path_params["name"]
    return dash.page(request, "_jobs.html", **await queue_values(dash, request, name))


async def queue_values(dash: Dashboard, request: Request, name: str) -> dict[str, Any]:
    """What the queue page and its list show, from the query: ``state``, ``page``, ``find``."""
    row = await reads.queue_row(dash.handles, name)
    tab = request.query_params.get("state", "waiting")
    number = _page_number(request.query_params.get("page", "1"))
    find = request.query_params.get("find", "").strip()
    values: dict[str, Any] = {"row": row, "name": name, "tab": tab, "find": find,
                              "states": reads.STATES, "number": number, "pages": 1,
                              "jobs": [], "dead": []}  # fmt: skip
    if find:
        values["jobs"] = await reads.find(dash.handles, name, find)
    elif tab == "dead":
        dead = await admin.dead_letters(dash.client, name, DEAD_LETTERS_SHOWN)
        values["dead"] = await asyncio.gather(*(_dead(dash, name, d) for d in dead))
    else:
        state = _state(tab)
        values["pages"] = max(1, math.ceil(row.counts[state.value] / reads.PAGE_SIZE))
        values["jobs"] = await reads.page(dash.handles, name, state, number)
    values["jobs"] = [_row(j) for j in values["jobs"]]
    return values


async def job_page(dash: Dashboard, request: Request) -> Response:
    """One job: its data (secrets masked), result, error, timeline, flow and actions, live."""
    name, job_id = request.path_params["name"], request.path_params["job_id"]
    values = await job_values(dash, name, job_id)
    return dash.page(request, "job.html", flash=flash(request), status=values.pop("status"),
                     events=urlencode({"queue": name, "job": job_id}), **values)  # fmt: skip


async def job_fragment(dash: Dashboard, request: Request) -> Response:
    """A job's details, refetched when it changes."""
    name, job_id = request.path_params["name"], request.path_params["job_id"]
    values = await job_values(dash, name, job_id)
    return dash.page(request, "_job.html", status=values.pop("status"), **values)


async def job_values(dash: Dashboard, name: str, job_id: str) -> dict[str, Any]:
    """What a job's page shows, masked."""
    found = await reads.job(dash.handles, name, job_id)
    values: dict[str, Any] = {"name": name, "job_id": job_id, "job": None, "corrupt": None,
                              "status": 200}  # fmt: skip
    if found is None:
        values["status"] = 404
        return values
    if isinstance(found, CorruptJob):
        values["corrupt"] = found
        return values
    masker = Masker(found.data, dash.settings.secrets_of(name))
    trace_id = found.trace.get("traceparent", "").split("-")
    values["job"] = {
        "record": found,
        "data": masker.pretty(found.data),
        "result": None if found.result is None else masker.pretty(found.result),
        "error": masker.failure(found.error),
        "attempts": [(e.attempt, e.at, masker.failure(e.error)) for e in reversed(found.errors)],
        "data_error": masker.text(found.data_error),
        "timeline": [(t.at, t.state.value, masker.text(t.reason)) for t in found.timeline],
        "children": await reads.children(dash.handles, name, job_id),
        "revision": await reads.revision(dash.handles, name, job_id),
        "trace_url": trace_link(dash.settings.trace_url, {
            "trace_id": trace_id[1] if len(trace_id) == 4 else "",
            "correlation_id": found.correlation_id, "job_id": found.id, "queue": name,
        }),
        "actions": _job_actions(found) if not dash.settings.read_only else [],
    }  # fmt: skip
    return values


async def find_page(dash: Dashboard, request: Request) -> Response:
    """Go to the job whose id was typed in the header, wherever it is."""
    job_id = request.query_params.get("id", "").strip()
    try:
        found = await reads.find_anywhere(dash.handles, job_id) if job_id else None
    except InvalidInput:
        found = None
    if found is None:
        return dash.page(request, "error.html", status=404,
                         message=f"There is no job {job_id!r} in this namespace.")  # fmt: skip
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}/queues/{found[0]}/jobs/{found[1]}", 303)


async def events(dash: Dashboard, request: Request) -> Response:
    """Server-sent events for one page: ``overview=1``, ``queue=<name>``, ``job=<id>``."""
    page = Page(
        overview=request.query_params.get("overview") == "1",
        queue=request.query_params.get("queue") or None,
        job=request.query_params.get("job") or None,
    )

    async def stream() -> AsyncIterator[str]:
        async with dash.hub.page(page):
            # subscribed first, then one refresh: nothing that happened since the page was
            # read is missed
            yield ": connected\n\n"
            if page.overview:
                yield message("overview", dash.render_overview(await dash.hub.rows()))
            elif page.job is not None:
                yield message("job", "connected")
            elif page.queue is not None:
                yield message("queue", "connected")
            while not page.closed:
                messages = await page.next(PING)
                if not messages:
                    yield ": ping\n\n"
                for name, data in messages:
                    yield message(name, data)
                await asyncio.sleep(PACE)  # what arrives meanwhile is sent together, once

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def message(name: str, data: str) -> str:
    """One server-sent event (each line of ``data`` on a ``data:`` line of its own)."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {name}\n{lines}\n"


async def _dead(dash: Dashboard, name: str, dead: admin.DeadLetter) -> dict[str, Any]:
    """A dead letter as listed, its error masked with the secret values of its job's payload
    (read from its record while it is kept)."""
    found = await reads.job(dash.handles, name, dead.id)
    data = found.data if isinstance(found, Job) else None
    masker = Masker(data, dash.settings.secrets_of(name))
    return {"id": dead.id, "attempts": dead.attempts, "failed_at": dead.failed_at,
            "error": masker.failure(dead.error), "correlation_id": dead.correlation_id}  # fmt: skip


def _row(job: Job[Any] | CorruptJob) -> dict[str, Any]:
    """A job as a line of the list (no payload: a list never shows data)."""
    if isinstance(job, CorruptJob):
        return {"id": job.id, "state": "corrupt", "corrupt": job.error}
    entered = job.timeline[-1].at if job.timeline else job.created_at
    return {"id": job.id, "state": job.state.value, "attempt": job.attempt,
            "created_at": job.created_at, "entered_at": entered, "progress": job.progress,
            "correlation_id": job.correlation_id,
            "error": job.error.type if job.error else None, "corrupt": None}  # fmt: skip


def _job_actions(job: Job[Any]) -> list[str]:
    """The actions a job in its state allows (an active one is cancelled before it is removed)."""
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        return ["retry", "rerun", "remove"]
    if job.state == JobState.COMPLETED:
        return ["rerun", "remove"]
    if job.state == JobState.DELAYED:
        return ["promote", "cancel", "remove"]
    if job.state == JobState.ACTIVE:
        return ["cancel"]
    return ["cancel", "remove"]


def _state(tab: str) -> JobState:
    try:
        return JobState(tab)
    except ValueError:
        raise InvalidInput(f"there is no tab {tab!r}") from None


def _page_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"page {text!r} is not a number") from None
    if not 1 <= number <= 1_000_000:
        raise InvalidInput(f"page {number} is out of range")
    return number
