"""The dashboard's actions (POST), through the same code as the ``oqron`` command: the methods of
:class:`~oqron_nats.Queue` (``runtime/management.py``) and :mod:`oqron_nats.ops.admin`.

Each is refused in read-only mode and without a matching CSRF token, before anything is read;
a done action returns to its page (303), a refused one says why on an error page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..core.errors import InvalidInput, InvalidState
from ..core.naming import check_name
from ..observe.log import logger
from ..ops import admin
from ..queue import Queue
from .state import Dashboard

log = logger(__name__)

DRAIN_WAIT = 5.0
"""Seconds a drain from the dashboard waits for the active jobs before it answers (the queue
stays paused, and they go on finishing)."""
REPLAY_LIMIT = 1_000_000
"""The most dead letters one replay runs again (as ``oqron dlq replay``)."""


async def refused(dash: Dashboard, request: Request) -> Response | None:
    """The answer to a POST that read-only mode or the CSRF check refuses; None if it passes."""
    if dash.settings.read_only:
        return dash.page(request, "error.html", status=403,
                         message="This dashboard is read-only: it takes no action.")  # fmt: skip
    why = await dash.csrf.check(request)
    if why is not None:
        return dash.page(request, "error.html", status=403, message=f"Refused: {why}.")
    return None


async def queue_action(dash: Dashboard, request: Request) -> Response:
    """pause, resume, drain, retry-failed, obliterate (typed confirmation) or replay."""
    if (refusal := await refused(dash, request)) is not None:
        return refusal
    name, action = request.path_params["name"], request.path_params["action"]
    form = await request.form()
    q = await dash.handles.get(name)
    act = QUEUE_ACTIONS.get(action)
    if act is None:
        return dash.page(request, "error.html", status=404, message=f"No action {action!r}.")
    log.info("dashboard action", queue=name, action=action)
    await act(dash, q, {k: v for k, v in form.items() if isinstance(v, str)})
    root = request.scope.get("root_path", "")
    tab = "&state=dead" if action == "replay" else ""
    return RedirectResponse(f"{root}/queues/{name}?done={action}{tab}", 303)


async def job_action(dash: Dashboard, request: Request) -> Response:
    """retry, rerun, cancel, promote or remove one job (remove returns to the queue's page)."""
    if (refusal := await refused(dash, request)) is not None:
        return refusal
    name, action = request.path_params["name"], request.path_params["action"]
    job_id = check_name(request.path_params["job_id"], "job id")
    if action not in ("retry", "rerun", "cancel", "promote", "remove"):
        return dash.page(request, "error.html", status=404, message=f"No action {action!r}.")
    q = await dash.handles.get(name)
    log.info("dashboard action", queue=name, job_id=job_id, action=action)
    outcome = await getattr(q, action)(job_id)
    if outcome is False:  # cancel of a job that had finished (as `oqron jobs cancel` says)
        raise InvalidState(f"job {job_id!r} had already finished")
    root = request.scope.get("root_path", "")
    if action == "remove":  # its page is gone
        return RedirectResponse(f"{root}/queues/{name}?done=remove", 303)
    return RedirectResponse(f"{root}/queues/{name}/jobs/{job_id}?done={action}", 303)


async def _pause(_dash: Dashboard, q: Queue[Any], _form: dict[str, str]) -> None:
    await q.pause()


async def _resume(_dash: Dashboard, q: Queue[Any], _form: dict[str, str]) -> None:
    await q.resume()


async def _drain(_dash: Dashboard, q: Queue[Any], _form: dict[str, str]) -> None:
    try:
        await q.drain(DRAIN_WAIT)
    except TimeoutError:
        raise InvalidState(
            f"queue {q.name!r} is paused, and still has active jobs after {DRAIN_WAIT:g} s: "
            "they go on finishing (resume it to start new ones)"
        ) from None


async def _retry_failed(_dash: Dashboard, q: Queue[Any], _form: dict[str, str]) -> None:
    await q.retry_all_failed()


async def _obliterate(_dash: Dashboard, q: Queue[Any], form: dict[str, str]) -> None:
    if form.get("confirm", "").strip() != q.name:
        raise InvalidInput(f"type the queue's name, {q.name!r}, to obliterate it")
    await q.obliterate(force=form.get("force") == "on")


async def _replay(dash: Dashboard, q: Queue[Any], form: dict[str, str]) -> None:
    """As ``oqron dlq replay`` (admin.replay), on the handle the dashboard keeps."""
    job_id = form.get("job_id") or None
    if job_id:
        ids = [check_name(job_id, "job id")]
    else:
        ids = [d.id for d in await admin.dead_letters(dash.client, q.name, REPLAY_LIMIT)]
    for one in ids:
        await q.retry(one)


QUEUE_ACTIONS: dict[str, Callable[[Dashboard, Queue[Any], dict[str, str]], Awaitable[None]]] = {
    "pause": _pause,
    "resume": _resume,
    "drain": _drain,
    "retry-failed": _retry_failed,
    "obliterate": _obliterate,
    "replay": _replay,
}
