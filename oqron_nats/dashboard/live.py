"""The dashboard's live side: one listener per queue on the events the library publishes
(``Queue.events``), fanned out to every open page through server-sent events.

Nothing here polls NATS per browser: each dashboard process listens once per queue, counts the
jobs completed and failed per minute, and re-reads the overview at most once per
:data:`MIN_INTERVAL` when events say something changed (and every ``refresh`` seconds for the
ages and the workers online), then pushes the same rendered table to every overview page.
Queue and job pages are told that their queue or job changed, and refetch that fragment.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..core.background import finish
from ..observe.events import Event
from ..observe.log import logger
from .reads import Handles, QueueRow, overview
from .settings import Settings

log = logger(__name__)

MIN_INTERVAL = 0.5
"""Seconds between two reads of the overview, however many events arrive."""
FRESH = 1.0
"""An overview read this recently is served from memory."""
MINUTES = 60

Message = tuple[str, str]
"""A server-sent event: its name and its data."""


@dataclass(eq=False)
class Page:
    """An open page listening: the overview, a queue's page or a job's page.

    Messages are kept by name, the latest of each, so a page that reads slowly gets the last
    state of everything and never a growing backlog.
    """

    overview: bool = False
    queue: str | None = None
    job: str | None = None
    pending: dict[str, str] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    """Set when the dashboard shuts down: the page's event stream ends."""

    def send(self, name: str, data: str) -> None:
        """Keep ``data`` as the latest message ``name`` for the page."""
        self.pending[name] = data
        self.wake.set()

    async def next(self, timeout: float) -> list[Message]:
        """The messages kept since the last call, once there is one (none after ``timeout``
        seconds)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake.wait()
        self.wake.clear()
        messages, self.pending = list(self.pending.items()), {}
        return messages


class Rates:
    """Jobs completed and failed per minute, per queue, over the last hour (counted from the
    events this process received)."""

    def __init__(self) -> None:
        self._minutes: dict[str, collections.OrderedDict[int, list[int]]] = {}

    def count(self, queue: str, name: str, at: float | None = None) -> None:
        """Count a ``completed`` or ``failed`` event."""
        minute = int((time.time() if at is None else at) // 60)
        buckets = self._minutes.setdefault(queue, collections.OrderedDict())
        bucket = buckets.setdefault(minute, [0, 0])
        bucket[0 if name == "completed" else 1] += 1
        while buckets and next(iter(buckets)) <= minute - MINUTES:
            buckets.popitem(last=False)

    def series(self, queue: str, now: float | None = None) -> list[tuple[int, int]]:
        """(completed, failed) for each of the last 60 minutes, oldest first."""
        current = int((time.time() if now is None else now) // 60)
        buckets: dict[int, list[int]] = self._minutes.get(queue, {})
        minutes = range(current - MINUTES + 1, current + 1)
        return [(buckets.get(m, [0, 0])[0], buckets.get(m, [0, 0])[1]) for m in minutes]


class Hub:
    """Listens to every queue of the namespace and keeps the open pages up to date."""

    def __init__(
        self,
        handles: Handles,
        settings: Settings,
        render_overview: Callable[[list[QueueRow]], str],
        render_progress: Callable[[Event], str],
    ) -> None:
        self.handles = handles
        self.settings = settings
        self.rates = Rates()
        self.started_at = time.time()
        self._render_overview = render_overview
        self._render_progress = render_progress
        self._pages: set[Page] = set()
        self._listeners: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._rows: list[QueueRow] = []
        self._read_at = -math.inf
        self._read_lock = asyncio.Lock()
        self._shown = ""
        self._closing = False

    def end_pages(self) -> None:
        """End every open page's event stream (the server is shutting down: it waits for
        open connections, and an event stream would never end by itself)."""
        self._closing = True
        for page in list(self._pages):
            page.closed = True
            page.wake.set()

    def start(self) -> None:
        """Start listening (idempotent: the first page that needs it starts it)."""
        if not self._tasks:
            self.started_at = time.time()
            self._tasks = [
                asyncio.create_task(self._discover(), name="oqron-dashboard-discover"),
                asyncio.create_task(self._push_overview(), name="oqron-dashboard-overview"),
            ]

    async def close(self) -> None:
        """Stop every listener."""
        tasks = [*self._tasks, *self._listeners.values()]
        self._tasks, self._listeners = [], {}
        for task in tasks:
            await finish(task, grace=0)

    @contextlib.asynccontextmanager
    async def page(self, page: Page) -> AsyncIterator[Page]:
        """Keep ``page`` informed while the context is open."""
        self.start()
        self._pages.add(page)
        try:
            yield page
        finally:
            self._pages.discard(page)

    async def rows(self) -> list[QueueRow]:
        """The overview's rows: read now, unless a read less than a second old is still true."""
        async with self._read_lock:
            if time.monotonic() - self._read_at >= FRESH:
                self._rows = await overview(self.handles)
                self._read_at = time.monotonic()
            return self._rows

    def received(self, event: Event) -> None:
        """Count an event and tell the pages it concerns."""
        if event.name in ("completed", "failed"):
            self.rates.count(event.queue, event.name)
        progress = event.name == "progress"
        if not progress:
            self._read_at = -math.inf
            self._changed.set()
        for page in list(self._pages):
            if page.job == event.job_id and page.queue == event.queue:
                if progress:
                    page.send("progress", self._render_progress(event))
                else:
                    page.send("job", event.name)
            elif page.queue == event.queue and page.job is None:
                if progress:
                    page.send(f"progress-{event.job_id}", self._render_progress(event))
                else:
                    page.send("queue", event.name)

    async def _discover(self) -> None:
        """Listen to every queue, and to new ones as they appear (every ``refresh`` seconds)."""
        while True:
            try:
                names = set(await self.handles.names())
            except Exception as exc:  # NATS away for a while: try again next round
                log.warning("dashboard cannot list the queues", error=repr(exc))
                names = set(self._listeners)
            for name in names:
                listener = self._listeners.get(name)
                if listener is None or listener.done():
                    self._listeners[name] = asyncio.create_task(
                        self._listen(name), name=f"oqron-dashboard-{name}"
                    )
                    self._changed.set()
            for gone in set(self._listeners) - names:
                await finish(self._listeners.pop(gone), grace=0)
                self._changed.set()
            await asyncio.sleep(self.settings.refresh)

    async def _listen(self, name: str) -> None:
        """Receive queue ``name``'s events until cancelled (or it fails: the next discovery
        round listens again)."""
        try:
            q = await self.handles.get(name)
            async for event in q.events():
                self.received(event)
        except Exception as exc:
            log.warning("dashboard stopped listening to a queue", queue=name, error=repr(exc))

    async def _push_overview(self) -> None:
        """Send the overview to the overview pages when it changed (and every ``refresh``)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.refresh):
                    await self._changed.wait()
            self._changed.clear()
            if any(p.overview for p in self._pages):
                try:
                    self._read_at = -math.inf
                    shown = self._render_overview(await self.rows())
                except Exception as exc:  # NATS away for a while: the pages keep the last one
                    log.warning("dashboard cannot read the overview", error=repr(exc))
                else:
                    if shown != self._shown:
                        self._shown = shown
                        for page in list(self._pages):
                            if page.overview:
                                page.send("overview", shown)
            await asyncio.sleep(MIN_INTERVAL)
