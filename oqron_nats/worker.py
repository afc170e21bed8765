"""worker(): a process that consumes a queue published elsewhere, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from typing import Generic, TypeVar, Unpack

from .client import Client
from .core.background import unless_stopped
from .core.config import Duration, QueueOptions, seconds
from .core.credentials import TLS, Credentials
from .core.errors import ConfigError
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

    @property
    def is_ready(self) -> bool:
        """Consuming, and connected to NATS right now."""
        return self.queue.is_consuming and self.queue.client.connected

    def override(
        self,
        *,
        concurrency: int | None = None,
        shutdown_timeout: Duration | None = None,
        credentials: Credentials | None = None,
        tls: TLS | None = None,
    ) -> None:
        """Change the concurrency, shutdown timeout, credentials or TLS before start (what the
        CLI options do)."""
        if credentials is not None or tls is not None:
            self.queue.client._override_security(credentials, tls)
        if concurrency is not None:
            if concurrency < 1:
                raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
            self.queue.config = dataclasses.replace(self.queue.config, concurrency=concurrency)
        if shutdown_timeout is not None:
            self.shutdown_timeout = seconds(shutdown_timeout, "shutdown_timeout")

    async def start(self) -> None:
        """Connect and start consuming (returns once the consumers are bound)."""
        await self.queue.start()

    def hurry(self) -> None:
        """Cut a running stop() short: running jobs are handed back now (a second SIGTERM)."""
        self.queue.hurry()

    async def stop(self, timeout: Duration | None = None) -> None:
        """Stop consuming gracefully and close the connection if the worker opened it."""
        await self.queue.stop(self.shutdown_timeout if timeout is None else timeout)
        await self.queue.close()

    def request_stop(self) -> None:
        """Ask a running ``run()`` to shut down gracefully (what SIGTERM does); asked again, it
        stops at once (running jobs are handed back now)."""
        if self._stop is None:
            return
        if self._stop.is_set():
            self.hurry()
        self._stop.set()

    async def run(self) -> None:
        """Consume until SIGTERM/SIGINT (or request_stop()), then shut down gracefully; a second
        signal hands the running jobs back at once. For a whole process, with logging and health
        endpoints, use :func:`oqron_nats.ops.runner.run_main`."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
                pass
        try:
            try:
                if await unless_stopped(self.start(), self._stop):  # a signal stops a slow start
                    self.ready.set()
                    await self._stop.wait()
            finally:
                self.ready.clear()
                await self.stop()
        finally:  # after stop(): a second signal during the grace period must reach us
            for sig in installed:
                loop.remove_signal_handler(sig)


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
