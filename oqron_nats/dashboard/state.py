"""One dashboard's parts, shared by its pages, actions and events: the client, the settings,
the queue handles, the live hub, the CSRF tokens and the templates, and how a page renders."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..client import Client
from ..observe.events import Event
from .history import merged
from .live import Hub
from .reads import STATES, Handles, QueueRow
from .security import Csrf, new_browser_id
from .settings import Settings


class Dashboard:
    """Everything one dashboard app holds."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.handles = Handles(client)
        self.csrf = Csrf(public_origin=settings.public_origin)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("oqron_nats.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["age"] = age
        self.templates.filters["when"] = when
        self.root = ""
        """Where the app is mounted (the ASGI root path; the same for every request)."""
        self.hub = Hub(self.handles, settings, self.render_overview, self.render_progress)

    async def close(self) -> None:
        """Stop listening and close the queue handles (the client stays open)."""
        await self.hub.close()
        await self.handles.close()

    def render(self, template: str, **values: Any) -> str:
        """``template`` filled with ``values``."""
        return self.templates.get_template(template).render(**values)

    def page(
        self, request: Request, template: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        """A whole page or a fragment, with what every template may use (the CSRF token of
        this browser, whose cookie is set if it had none)."""
        browser = self.csrf.browser_id(request) or new_browser_id()
        root = request.scope.get("root_path", "")
        body = self.render(
            template,
            root=root,
            namespace=self.client.namespace,
            read_only=self.settings.read_only,
            csrf=self.csrf.token(browser),
            flash=values.pop("flash", None),
            **values,
        )
        response = HTMLResponse(body, status)
        response.headers["Cache-Control"] = "no-store"
        if self.csrf.browser_id(request) is None:
            self.csrf.set_cookie(response, browser, root)
        return response

    def render_overview(self, rows: list[QueueRow]) -> str:
        """The overview's table (also pushed to open overview pages)."""
        charts = {
            row.name: chart(merged(row.finished, self.hub.rates.series(row.name))
                            if row.finished else self.hub.rates.series(row.name))
            for row in rows
        }  # fmt: skip
        return self.render(
            "_overview.html", rows=rows, states=STATES, charts=charts, root=self.root,
            since=datetime.fromtimestamp(self.hub.started_at, UTC),
        )  # fmt: skip

    def render_progress(self, event: Event) -> str:
        """A running job's progress bar (pushed to its page and its queue's page)."""
        return self.render("_progress.html", percent=event.progress or 0.0, label=None)


def chart(series: list[tuple[int, int]]) -> dict[str, Any]:
    """The bars of a queue's last hour: completed up, failed down, scaled to the busiest minute."""
    peak = max([max(c, f) for c, f in series] + [1])
    bars = [
        {"x": i * 2, "done": round(10 * c / peak, 1), "failed": round(10 * f / peak, 1),
         "title": f"{60 - i} min ago: {c} completed, {f} failed"}
        for i, (c, f) in enumerate(series)
    ]  # fmt: skip
    completed = sum(c for c, _ in series)
    failed = sum(f for _, f in series)
    return {"bars": bars, "completed": completed, "failed": failed, "peak": peak}


def age(seconds: float | None) -> str:
    """A duration for people: 42s, 3m 5s, 2h 10m, 3d 4h."""
    if seconds is None or math.isnan(seconds):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(moment: datetime | None) -> str:
    """A UTC time for people, with how long ago it was."""
    if moment is None:
        return "-"
    ago = (datetime.now(UTC) - moment).total_seconds()
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({age(ago)} ago)" if ago >= 0 else f"{moment:%c}"
