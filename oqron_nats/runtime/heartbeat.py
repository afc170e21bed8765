"""The heartbeat of a running attempt: renew its lease and its message's ack deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..observe.log import logger
from ..storage.lease import LeaseLost

log = logger(__name__)


class Heartbeat:
    """Calls ``renew`` every ``interval`` seconds until stopped, and ``on_lost`` with the reason
    once the lease is lost: taken over, or not renewable for ``lock_ttl`` seconds.

    The first beat waits on a timer, not in a task: most jobs end before it is due.
    """

    def __init__(
        self,
        interval: float,
        lock_ttl: float,
        renew: Callable[[], Awaitable[None]],
        on_lost: Callable[[str], None],
    ) -> None:
        self.interval = interval
        self.lock_ttl = lock_ttl
        self._renew = renew
        self._on_lost = on_lost
        self._running = False  # checked as well as the cancel: 3.11's wait_for can swallow one
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start beating (on the running loop)."""
        self._running = True
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._first_beat)

    def stop(self) -> None:
        """Stop beating."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def _first_beat(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        last_renewed = time.monotonic() - self.interval
        while self._running:
            try:
                await asyncio.wait_for(self._renew(), self.interval)
                last_renewed = time.monotonic()
            except LeaseLost:
                self._on_lost("the lease was taken over or expired")
                return
            except Exception as exc:  # NATS unreachable: the lease survives until lock_ttl
                if time.monotonic() - last_renewed >= self.lock_ttl:
                    self._on_lost(f"the lease could not be renewed for lock_ttl ({exc!r})")
                    return
                log.warning("heartbeat failed; retrying", error=repr(exc))
            await asyncio.sleep(self.interval)
