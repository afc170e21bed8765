"""The links between the nodes of a local cluster, which can be held to partition a node.

Each ordered pair of nodes gets a loopback forwarder, and a node's routes to the others go
through its own forwarders (a route accepted from another node comes in through that node's).
Holding a node's links partitions it silently, as a network does that drops packets: the route
connections stay open, no byte gets through in either direction (bytes already sent wait in the
forwarder), and a new route connection gets as far as the forwarder and no further. Releasing
them lets everything through again, what waited first. The node's clients are not touched: they
connect to its client port directly, and it still answers them.

The forwarders run on an event loop in a daemon thread, so that the cluster's synchronous
callers (tests, the chaos suite) can hold and release links from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

CALL_TIMEOUT = 5.0
"""Seconds a call into the links' loop may take (starting a forwarder, holding, closing)."""
CHUNK = 65536


class Link:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target`` (node ``destination``'s cluster port)
    for node ``source``'s routes, while it flows."""

    def __init__(self, source: str, destination: str, target: int) -> None:
        self.source = source
        self.destination = destination
        self.target = target
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> None:
        """Listen on a free loopback port (``port``)."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        self.flowing.set()
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            await self.flowing.wait()  # a held link connects onward only once released
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            self.writers.discard(writer)
            return
        self.writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes while the link flows, until either side closes; then close the other."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


class Links:
    """Every link of one cluster, on an event loop of their own."""

    def __init__(self) -> None:
        self._links: list[Link] = []
        self._held: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def open(self, source: str, destination: str, target: int) -> int:
        """A link from node ``source`` to node ``destination`` (listening on ``target``);
        returns the port ``source`` routes to instead."""
        link = Link(source, destination, target)
        self._call(link.listen())
        self._links.append(link)
        return link.port

    def hold(self, node: str) -> None:
        """Let nothing through between ``node`` and any other node (a silent partition)."""
        self._held.add(node)
        self._apply()

    def release(self, node: str) -> None:
        """Let everything through between ``node`` and the others again (unless the other end
        is held too)."""
        self._held.discard(node)
        self._apply()

    def held(self, node: str) -> bool:
        """Whether ``node``'s links are held."""
        return node in self._held

    def close(self) -> None:
        """Drop every link and stop the loop."""
        if self._loop is None:
            return

        async def close_all() -> None:
            await asyncio.gather(*(link.close() for link in self._links))

        with contextlib.suppress(Exception):  # closing: a link that will not close is dropped
            self._call(close_all())
        loop, thread = self._loop, self._thread
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(CALL_TIMEOUT)
        if thread is None or not thread.is_alive():
            loop.close()
        self._loop, self._thread, self._links = None, None, []
        self._held.clear()

    def _apply(self) -> None:
        """Let each link flow unless one of its ends is held."""
        held = frozenset(self._held)

        async def switch() -> None:
            for link in self._links:
                flowing = not {link.source, link.destination} & held
                (link.flowing.set if flowing else link.flowing.clear)()

        self._call(switch())

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on the links' loop (started on first use) and wait for it."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="oqron-links", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        future: Future[None] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        future.result(CALL_TIMEOUT)
