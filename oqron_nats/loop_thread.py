"""One background event loop per process, for the blocking API (:mod:`oqron_nats.sync`).

The loop runs in a daemon thread started on first use; every thread of the process submits its
calls to it, and each call waits for its answer within a timeout. A call runs in a copy of the
caller's context (``contextvars``), so the correlation id and the OpenTelemetry span current in
the calling thread reach the add, as they do in the async API.

After ``os.fork()`` the child has the parent's loop object but not its thread, and the
connections on it are the parent's sockets: the child never touches them (a write would corrupt
the parent's protocol stream). A fork hook forgets them, and the child's first call starts a new
loop, whose queues connect again.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

from .client import Client
from .core.errors import InvalidState
from .observe.log import logger

R = TypeVar("R")
log = logger(__name__)

SHUTDOWN_TIMEOUT = 5.0
"""Seconds the loop gets at interpreter exit to close its connections."""


class CallTimeout(Exception):
    """A call to the loop did not finish within its timeout (it has been cancelled)."""


class LoopThread:
    """This process's background event loop and the clients opened on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.clients: dict[Hashable, Client] = {}
        self.closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        """What to close before the clients (the queues opened on this loop)."""
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="oqron-sync-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, work: Coroutine[Any, Any, R], timeout: float) -> R:
        """Run ``work`` on the loop in the caller's context and return its result; CallTimeout
        (the work cancelled) if it takes longer than ``timeout`` seconds."""
        if threading.current_thread() is self._thread:
            work.close()
            raise InvalidState(
                "the blocking oqron_nats.sync API was called on its own event loop; "
                "use the async API there"
            )
        # call_soon_threadsafe (inside) copies the calling thread's context for the new task
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        done, _ = concurrent.futures.wait([future], timeout=timeout)
        if not done:
            future.cancel()
            raise CallTimeout
        return future.result()

    def client(self, key: Hashable, make: Callable[[], Client]) -> Client:
        """The client of this loop for ``key``, made on first use (call under the module lock)."""
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = make()
        return client

    def close(self, timeout: float) -> None:
        """Close the clients and stop the loop, within ``timeout`` seconds."""
        self.closed = True

        async def close_all() -> None:
            await asyncio.gather(*(close() for close in self.closers))
            await asyncio.gather(*(c.close() for c in self.clients.values()))
            current = asyncio.current_task()
            left = [task for task in asyncio.all_tasks() if task is not current]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        try:
            self.call(asyncio.wait_for(close_all(), timeout), timeout + 1.0)
        except (CallTimeout, TimeoutError, InvalidState, RuntimeError):
            log.warning("sync API: connections not closed in time", timeout=timeout)
        except Exception as exc:  # closing anyway: only say what went wrong
            log.warning("sync API: closing a connection failed", error=repr(exc))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


class _Process:
    """This process's loop thread and the lock that guards it (made anew in a forked child)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: LoopThread | None = None
        self.abandoned: list[LoopThread] = []
        """Loops inherited from the parent process: kept, never closed (their sockets are the
        parent's)."""

    def forked(self) -> None:
        """Start afresh in a forked child, keeping the parent's loop untouched."""
        self.lock = threading.Lock()  # the parent's may be held by a thread that is gone here
        if self.current is not None:
            self.abandoned.append(self.current)
        self.current = None


_process = _Process()


def current() -> LoopThread:
    """This process's loop thread, started on first use (and again after a fork or shutdown)."""
    with _process.lock:
        running = _process.current
        if running is None or running.closed or running.pid != os.getpid():
            running = _process.current = LoopThread()
        return running


def lock() -> threading.Lock:
    """The lock that guards this process's loop and what is bound to it."""
    return _process.lock


def shutdown(timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Close the connections of the blocking API and stop its loop (a later call starts anew)."""
    with _process.lock:
        running, _process.current = _process.current, None
    if running is not None and running.pid == os.getpid():
        running.close(timeout)


def _forget_after_fork() -> None:
    """In a forked child: the parent's loop has no thread here; start afresh on first use."""
    _process.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(shutdown)
