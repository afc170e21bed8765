"""Calls made a fixed delay after they were asked for, on one loop timer for all of them.

Every running job asks for two such calls: its first heartbeat, ``heartbeat`` seconds after its
handler starts, and its late index entry, ``LIST_AFTER`` seconds after its claim; most jobs end
before either and cancel them. A loop timer per call (a heap entry, a copy of the context, a
cancel the loop cleans up later) cost a no-op job ~5 % of its CPU. With one delay for all, calls
fall due in the order they were asked for: a queue in that order and one loop timer, set for its
oldest call, serve them all.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable

from ..observe.log import logger

log = logger(__name__)

SLACK = 0.001
"""Seconds early a call may be made: the loop runs a timer up to its clock's resolution early."""


class Call:
    """One call asked for; :meth:`cancel` before it is due, and it is not made."""

    __slots__ = ("callback", "context", "due")

    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback: Callable[[], None] | None = callback
        self.context = contextvars.copy_context()
        """The caller's context, as the loop's call_later keeps it: a job's heartbeat logs
        with its own job id."""

    def cancel(self) -> None:
        """Do not make the call (nothing if it was made)."""
        self.callback = None


class FixedDelay:
    """Makes each callback ``delay`` seconds after :meth:`call_later` was asked for it, on
    ``loop``."""

    def __init__(self, delay: float, loop: asyncio.AbstractEventLoop) -> None:
        self.delay = delay
        self._loop = loop
        self._calls: deque[Call] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def call_later(self, callback: Callable[[], None]) -> Call:
        """Call ``callback`` (on the loop) ``delay`` seconds from now."""
        loop = self._loop
        calls = self._calls
        while calls and calls[0].callback is None:  # cancelled ones ahead: most jobs end first
            calls.popleft()
        call = Call(loop.time() + self.delay, callback)
        calls.append(call)
        if self._timer is None:
            self._arm(loop, call.due)
        return call

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        # in a context of its own: the calls run in their callers' contexts
        self._timer = loop.call_at(due, self._on_timer, context=contextvars.Context())

    def _on_timer(self) -> None:
        loop = self._loop
        self._timer = None
        calls, now = self._calls, loop.time() + SLACK
        try:
            while calls and (calls[0].callback is None or calls[0].due <= now):
                call = calls.popleft()
                callback, call.callback = call.callback, None
                if callback is not None:
                    try:
                        call.context.run(callback)
                    except Exception:  # one failed call must not stop the others
                        log.exception("a delayed call failed")
        finally:
            if calls and self._timer is None:  # (a call may have asked for another)
                self._arm(loop, calls[0].due)
