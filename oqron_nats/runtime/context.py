"""What a handler receives: the job's data and the calls it may make while it runs.

Every call works from ``async def`` handlers and from plain ``def`` handlers, which run in a
worker thread: ``progress()`` and ``log()`` are ordinary calls, and ``signal`` can be checked
(``ctx.signal.aborted``), awaited (``await ctx.signal``) or waited on from a thread
(``ctx.signal.wait_blocking(1.0)``).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any, Generic, TypeVar

from ..core.errors import InvalidOption
from ..observe.log import logger

T = TypeVar("T")

LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})


class Signal:
    """Fires when the running attempt must stop: its lease was lost, or the worker shuts down.

    After it fired, nothing the attempt returns is committed (lease loss) or the job is handed
    back to the queue (shutdown); a well-behaved handler stops soon after.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._fired = False
        self._event: asyncio.Event | None = None  # made on first use: most attempts never wait
        self._thread_event: threading.Event | None = None
        self._thread_lock = threading.Lock()

    @property
    def aborted(self) -> bool:
        """Whether the signal has fired."""
        return self._fired

    def fire(self, reason: str) -> None:
        """Fire the signal (from the event loop); the first reason is kept."""
        if self.reason is None:
            self.reason = reason
        self._fired = True
        with self._thread_lock:
            if self._thread_event is not None:
                self._thread_event.set()
        if self._event is not None:
            self._event.set()

    async def wait(self) -> str:
        """Wait until the signal fires; return why."""
        if not self._fired:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        return self.reason or ""

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """From a sync handler's thread: wait up to ``timeout`` seconds; True if it fired."""
        with self._thread_lock:
            if self._thread_event is None:
                self._thread_event = threading.Event()
                if self._fired:
                    self._thread_event.set()
            event = self._thread_event
        return event.wait(timeout)

    def __await__(self) -> Generator[Any, None, str]:
        return self.wait().__await__()


class Saved:
    """Returned by ``progress()``: await it to wait until the progress is stored (optional)."""

    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[None] | None) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, None]:
        if self._future is not None:
            yield from self._future.__await__()


ProgressSink = Callable[[float, str | None], "asyncio.Future[None]"]


class JobContext(Generic[T]):
    """The running attempt of one job, as its handler sees it."""

    def __init__(
        self,
        *,
        id: str,
        queue: str,
        data: T,
        attempt: int,
        max_attempts: int,
        correlation_id: str,
        created_at: datetime,
        priority: int,
        tags: list[str],
        fencing_token: int,
        signal: Signal,
        parent_results: dict[str, Any],
        on_progress: ProgressSink,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.id = id
        self.queue = queue
        self.data = data
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.correlation_id = correlation_id
        self.created_at = created_at
        self.priority = priority
        self.tags = tags
        self.fencing_token = fencing_token
        """Grows with every claim of the job: pass it to systems that must reject stale writers."""
        self.signal = signal
        self.parent_results = parent_results
        """The results of the jobs this one depended on, by job id (flows)."""
        self.discarded: str | None = None
        self._on_progress = on_progress
        self._loop = loop
        self._loop_thread = threading.get_ident()

    @functools.cached_property
    def logger(self) -> Any:
        """This job's logger, ``oqron_nats.core.job`` (structlog's API over the standard library's
        ``logging``), bound to its id, queue, correlation id and attempt (made on first use)."""
        return logger("oqron_nats.core.job").bind(
            job_id=self.id,
            queue=self.queue,
            correlation_id=self.correlation_id,
            attempt=self.attempt,
        )

    def progress(self, percent: float, label: str | None = None) -> Saved:
        """Record progress (0-100) on the job; the write happens in the background."""
        if (
            isinstance(percent, bool)
            or not isinstance(percent, int | float)
            or not 0 <= percent <= 100
        ):
            raise InvalidOption(f"progress must be a number from 0 to 100, not {percent!r}")
        if label is not None and (not isinstance(label, str) or len(label) > 200):
            raise InvalidOption("progress label must be a string of at most 200 characters")
        if threading.get_ident() == self._loop_thread:
            return Saved(self._on_progress(float(percent), label))
        self._loop.call_soon_threadsafe(self._on_progress, float(percent), label)
        return Saved(None)

    def log(self, level: str, msg: str, **fields: Any) -> None:
        """Log a line of :attr:`logger`: bound to job_id, queue, correlation_id and attempt, and
        shown as the application set up logging (by default, warnings and errors only)."""
        if level not in LOG_LEVELS:
            raise InvalidOption(f"log level must be one of {sorted(LOG_LEVELS)}, not {level!r}")
        getattr(self.logger, level)(msg, **fields)

    def discard(self, reason: str = "discarded by the handler") -> None:
        """Fail the job when the handler ends, with no further retries."""
        self.discarded = reason
