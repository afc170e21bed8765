"""Fixtures: one real nats-server per test session, one namespace per test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from oqron_nats import Client
from oqron_nats.testing.server import LocalServer

from .support import server_name


@pytest.fixture(scope="session")
def nats_server() -> Iterator[LocalServer]:
    """A nats-server with JetStream on a free loopback port and a temporary store."""
    server = LocalServer().start()
    try:
        yield server
    finally:
        server.kill()  # its store is thrown away: a graceful stop of every test's streams took 5 s
        server.close()


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so nothing leaks between tests."""
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
async def client(nats_server: LocalServer, namespace: str) -> AsyncIterator[Client]:
    """A connected client in the test's namespace, checked to talk to our own server."""
    async with Client(nats_server.url, namespace=namespace) as c:
        assert nats_server.is_running()
        assert await server_name(c) == nats_server.name, "connected to a server we did not start"
        yield c
