"""The dashboard served for real (uvicorn on a loopback port, in a thread of its own with its
own event loop and client), for the HTTP and browser tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import uvicorn

from oqron_nats import Client
from oqron_nats.dashboard import app


class Served:
    """A dashboard over ``namespace`` at ``self.url`` until ``close()``."""

    def __init__(self, nats_url: str, namespace: str, **options: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.nats_url = nats_url
        self.namespace = namespace
        self.options = options
        self.server: uvicorn.Server | None = None
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def start(self) -> Served:
        self.thread.start()
        if not self.ready.wait(15):
            raise RuntimeError(f"the dashboard did not start: {self.failed!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.failed = exc
            self.ready.set()

    async def _serve(self) -> None:
        client = Client(self.nats_url, namespace=self.namespace)
        await client.connect()
        web = app(client=client, **self.options)
        self.loop = asyncio.get_running_loop()
        self.hub = web.state.dashboard.hub
        config = uvicorn.Config(web, log_level="warning", lifespan="on", access_log=False,
                                timeout_graceful_shutdown=1)  # fmt: skip
        self.server = uvicorn.Server(config)
        serving = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        try:
            async with asyncio.timeout(10):
                while not self.server.started and not serving.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)  # uvicorn offers no event for it
            self.ready.set()
            await serving
        finally:
            await client.close()

    def close(self) -> None:
        if self.server is not None:
            self.loop.call_soon_threadsafe(self.hub.end_pages)
            self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
