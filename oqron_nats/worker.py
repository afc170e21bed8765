"""worker(): a process that consumes a queue published elsewhere, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from typing import Generic, TypeVar, Unpack

from .client import Client
from .config import Duration, QueueOptions, seconds
from .errors import ConfigError
from .queue import Handler, Queue, queue

T = TypeVar("T")


class Worker(Generic[T]):
    """Runs one queue's handler; ``await worker.run()`` blocks until the process is told to stop."""

    def __init__(self, queue: Queue[T], *, shutdown_timeout: Duration = 25.0) -> None:
        if queue.handler is None:
            raise ConfigError("a worker needs a handler")
        self.queue = queue
        self.shutdown_timeout = seconds(shutdown_timeout, "shutdown_timeout")
        self._stop: asyncio.Event | None = None
        self.ready = asyncio.Event()
        """Set once ``run()`` has bound the consumers and is claiming jobs."""

    @property
    def name(self) -> str:
        """The name of the queue this worker consumes."""
        return self.queue.name

    async def start(self) -> None:
        """Connect and start consuming (returns once the consumers are bound)."""
        await self.queue.start()

    async def stop(self, timeout: Duration | None = None) -> None:
        """Stop consuming gracefully and close the connection if the worker opened it."""
        await self.queue.stop(self.shutdown_timeout if timeout is None else timeout)
        await self.queue.close()

    def request_stop(self) -> None:
        """Ask a running ``run()`` to shut down gracefully (what SIGTERM does)."""
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> None:
        """Consume until SIGTERM/SIGINT (or request_stop()), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
                pass
        try:
            await self.start()
            self.ready.set()
            await self._stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self.ready.clear()
            await self.stop()


def worker(
    name: str,
    handler: Handler[T],
    *,
    payload: type[T] | None = None,
    shutdown_timeout: Duration = 25.0,
    client: Client | None = None,
    **options: Unpack[QueueOptions],
) -> Worker[T]:
    """Define a worker for queue ``name`` (published elsewhere). Does no I/O.

    Takes the options of :func:`queue`, and ``shutdown_timeout``: the seconds running jobs get
    to finish after SIGTERM before they are handed back.
    """
    if handler is None:
        raise ConfigError("worker() needs a handler")
    return Worker(
        queue(name, handler, payload=payload, client=client, **options),
        shutdown_timeout=shutdown_timeout,
    )
