"""Health endpoints of a worker process, for Kubernetes probes: ``/livez`` and ``/readyz``.

A small HTTP/1.1 server on the worker's own event loop. ``/livez`` answers 200 whenever the loop
can answer at all (a loop blocked by a handler cannot, and the probe times out); it never looks
at NATS, because restarting a worker does not fix a broker outage. ``/readyz`` answers 200 while
the worker is connected and its consumers are bound, 503 otherwise (starting, reconnecting,
stopping).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import msgspec

REQUEST_TIMEOUT = 5.0
"""Seconds a probe connection gets to send its request line and headers."""
MAX_HEADER_LINES = 100


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` on ``host:port`` while started."""

    def __init__(self, port: int, ready: Callable[[], bool], *, host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; ``port`` 0 picks a free port (read it back from ``port``)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close open probe connections."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), REQUEST_TIMEOUT)

    def answer(self, path: str) -> tuple[int, dict[str, str]]:
        """The status code and JSON body for a request path."""
        path = path.split("?", 1)[0]
        if path == "/livez":
            return 200, {"status": "ok"}
        if path == "/readyz":
            return (200, {"status": "ready"}) if self._ready() else (503, {"status": "not ready"})
        return 404, {"status": "not found", "paths": "/livez /readyz"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT)
            if request is None:
                status, body = 400, {"status": "bad request"}
            else:
                status, body = self.answer(request)
            payload = msgspec.json.encode(body)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """The path of a GET request, after reading its headers; None if it is not one."""
    line = await reader.readline()
    parts = line.decode("latin-1").split()
    for _ in range(MAX_HEADER_LINES):
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
    if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
        return None
    return parts[1]
