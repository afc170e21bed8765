"""Progress of a running attempt, stored in the background, newest value first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..observe.log import logger

log = logger(__name__)

Store = Callable[[float, str | None], Awaitable[bool]]
"""Writes one progress value; returns False once the attempt may write no more."""


class ProgressWriter:
    """Coalesces a handler's progress calls into as few record writes as possible.

    A call made while a write is in flight is not queued: the next write takes the newest value.
    Each call returns a future that resolves once a value at least as new is stored (or once
    nothing more will be stored), so ``await ctx.progress(...)`` can wait for it.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._latest: tuple[float, str | None] = (0.0, None)
        self._wanted = 0
        self._saved = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    def update(self, percent: float, label: str | None) -> asyncio.Future[None]:
        """Ask for ``percent``/``label`` to be stored; the returned future tells when it is."""
        self._latest = (percent, label)
        self._wanted += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._wanted, waiter))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write())
        return waiter

    async def flushed(self) -> None:
        """Wait until the latest progress asked for is stored (or nothing more will be)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task])  # not cancelled with the caller

    async def _write(self) -> None:
        try:
            while self._saved < self._wanted:
                wanted = self._wanted
                if not await self._store(*self._latest):
                    break
                self._saved = wanted
                self._wake(wanted)
        except Exception as exc:  # progress is best effort: the attempt goes on
            log.warning("progress could not be saved", error=repr(exc))
        finally:
            self._wake(self._wanted)

    def _wake(self, upto: int) -> None:
        waiting = []
        for version, waiter in self._waiters:
            if version > upto:
                waiting.append((version, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        self._waiters = waiting
