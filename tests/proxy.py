"""A loopback TCP proxy in front of a nats-server, to cut one client's connection on demand.

Cutting closes every connection through the proxy (the client sees its connection drop and
reconnects through the proxy again), while the server and every other client stay up: a
failover as the client sees it, with nothing else disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pytest


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target>``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        """How many client connections came through so far."""
        self.refusing = False
        """While set, a new connection is closed at once (the client keeps trying)."""
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        """The proxy's NATS URL."""
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stall(self) -> None:
        """Forward nothing until :meth:`flow` (a hung link: bytes wait in the proxy)."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again."""
        self._flowing.set()

    def hang_then_drop(self, seconds: float) -> None:
        """Stall now; ``seconds`` later drop every connection (what the hung link held is
        lost), then forward again."""

        def drop() -> None:
            self.cut()
            self.flow()

        self.stall()
        asyncio.get_running_loop().call_later(seconds, drop)

    def drop_after(
        self,
        monkeypatch: pytest.MonkeyPatch,
        owner: type,
        method: str,
        when: Callable[..., bool] = lambda *args, **kwargs: True,
        seconds: float = 0.3,
    ) -> asyncio.Event:
        """Make ``owner.method`` (awaited) :meth:`hang_then_drop` the link right after its first
        call for which ``when(*args, **kwargs)`` holds has returned: what its caller sends next
        goes into the hung link and is lost. Returns the event set when that happened."""
        original = getattr(owner, method)
        hung = asyncio.Event()

        async def hanging(target: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(target, *args, **kwargs)
            if not hung.is_set() and when(*args, **kwargs):
                hung.set()
                self.hang_then_drop(seconds)
            return result

        monkeypatch.setattr(owner, method, hanging)
        return hung

    def cut(self) -> None:
        """Drop every connection that goes through the proxy now."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        self.flow()
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy bytes until either side closes; then close the other side too."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
