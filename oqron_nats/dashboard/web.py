"""The dashboard's ASGI app: its routes, its auth, its errors as pages, its lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..client import Client
from ..core.errors import InvalidInput, InvalidState, JobNotFound, OqronError, QueueNotFound
from . import actions, views
from .security import AuthMiddleware
from .settings import Settings
from .state import Dashboard

View = Callable[[Dashboard, Request], Awaitable[Response]]


def build(client: Client, checked: Settings) -> Starlette:
    """The dashboard as an ASGI app (see :func:`oqron_nats.dashboard.app`)."""
    dash = Dashboard(client, checked)

    def route(path: str, view: View, methods: tuple[str, ...] = ("GET",)) -> Route:
        async def endpoint(request: Request) -> Response:
            dash.root = request.scope.get("root_path", "")
            dash.hub.start()  # listening from the first request on
            try:
                return await view(dash, request)
            except OqronError as exc:
                return dash.page(request, "error.html", status=_status(exc), message=str(exc))

        return Route(path, endpoint, methods=list(methods))

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dash.close()

    web = Starlette(
        routes=[
            route("/", views.overview_page),
            route("/events", views.events),
            route("/find", views.find_page),
            route("/queues/{name}", views.queue_page),
            route("/queues/{name}/list", views.jobs_fragment),
            route("/queues/{name}/jobs/{job_id}", views.job_page),
            route("/queues/{name}/jobs/{job_id}/detail", views.job_fragment),
            route("/queues/{name}/jobs/{job_id}/{action}", actions.job_action, ("POST",)),
            route("/queues/{name}/{action}", actions.queue_action, ("POST",)),
            Mount("/static", StaticFiles(packages=[("oqron_nats.dashboard", "static")])),
        ],
        lifespan=lifespan,
    )
    web.add_middleware(AuthMiddleware, auth=checked.auth)
    web.state.dashboard = dash
    return web


def _status(exc: OqronError) -> int:
    if isinstance(exc, JobNotFound | QueueNotFound):
        return 404
    if isinstance(exc, InvalidState):
        return 409
    if isinstance(exc, InvalidInput):
        return 400
    return 503
