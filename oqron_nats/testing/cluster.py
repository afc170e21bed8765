"""A local JetStream cluster on loopback: three nats-server processes, for tests and for trying
``replicas=3`` on one machine.

Each node is a :class:`~oqron_nats.testing.server.LocalServer` with a cluster block: its own
client port (picked by the server, read from its log), cluster port, monitoring port and store
directory, a distinct ``server_name``, a shared cluster name, and routes to every node (itself
included; the server drops that route). Cluster ports must be known before any node starts,
because every node's routes name them, so they are taken from the free ports the kernel hands
out; the rare race for one of them is met by starting again on other ports.

``start()`` returns once every node reports healthy on its monitoring port (``/healthz``: a
JetStream meta leader is known and the node's streams and consumers are current). A node can be
killed (SIGKILL, as a crash) and started again on the same ports and store::

    with LocalCluster() as cluster:
        client = Client(cluster.urls, replicas=3)
        ...
        cluster.kill(leader)        # a server_name, e.g. from stream_info().cluster.leader
        cluster.restart(leader)     # back on its ports and store, caught up

A node can also hang instead of dying (``suspend``: SIGSTOP, ``resume``: SIGCONT). Who leads what
is read from the nodes' monitoring endpoints, as a node reports about itself: ``meta_leader()``,
``stream_leader(stream)``, ``consumer_leader(stream, consumer)``; ``connected_node(name)`` is the
node a client with that connection name is connected to (``/connz``). These answer ``None``
while no node claims the role, e.g. during an election.

A cluster started ``partitionable`` routes through links that can be held (``links.py``):
``partition(name)`` cuts a node off from the others silently while its clients stay connected
to it, ``heal(name)`` joins it again.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from ..core.errors import ConfigError
from .links import Links
from .server import LocalServer, ServerError

_MONITOR = re.compile(r"Starting http monitor on [^\s]*:(\d+)")
_PORT_TAKEN = "address already in use"
NOWHERE = "127.0.0.1:1"
"""The route address a node of a partitionable cluster gives the others (no one listens there):
a node that hears of another from a third connects only through its configured links."""
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Opens loopback URLs without any proxy the environment names."""
START_ATTEMPTS = 3
"""How often a cluster start is tried on fresh ports when one of its ports was taken."""
MONITOR_TIMEOUT = 1.0
"""Seconds a monitoring request may take (a suspended node never answers)."""


class ClusterNode(LocalServer):
    """One node of a :class:`LocalCluster`."""

    def __init__(
        self,
        name: str,
        *,
        cluster: str,
        cluster_port: int,
        routes: list[int],
        store_dir: Path,
        binary: str | None = None,
        sync_always: bool = False,
        startup_timeout: float = 15.0,
        advertise: str | None = None,
    ) -> None:
        super().__init__(
            store_dir=store_dir,
            binary=binary,
            sync_always=sync_always,
            startup_timeout=startup_timeout,
        )
        self.name = name
        self.cluster = cluster
        self.cluster_port = cluster_port
        self.routes = routes
        self.advertise = advertise
        self.monitor_port: int | None = None
        self.suspended = False
        """Whether the node was stopped with SIGSTOP (and not continued since)."""

    def _extra_config(self) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.routes)
        monitor = self.monitor_port if self.monitor_port is not None else -1
        advertise = f'  advertise: "{self.advertise}"\n' if self.advertise else ""
        return (
            f"http: {monitor}\n"
            f"cluster {{\n  name: {self.cluster}\n  host: 127.0.0.1\n"
            f"  port: {self.cluster_port}\n  routes: [{routes}]\n{advertise}}}\n"
        )

    def _on_log_line(self, line: str) -> None:
        match = _MONITOR.search(line)
        if match and self.monitor_port is None:
            self.monitor_port = int(match.group(1))

    @property
    def answering(self) -> bool:
        """Whether the node runs and is not suspended."""
        return self.is_running() and not self.suspended

    def healthy(self) -> bool:
        """Whether the node runs and its ``/healthz`` says ok: it knows a JetStream meta leader
        and its replicas of streams and consumers are current."""
        if not self.answering or self.monitor_port is None:
            return False
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with _DIRECT.open(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):  # 503 (not healthy yet), refused, timed out
            return False

    def monitor(self, path: str, timeout: float = MONITOR_TIMEOUT) -> dict[str, Any] | None:
        """The JSON object a monitoring endpoint (``/jsz``, ``/connz?...``) returns, or None if
        the node does not answer in time."""
        if not self.answering or self.monitor_port is None:
            return None
        try:
            with _DIRECT.open(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=timeout) as r:
                value = json.load(r)
        except (urllib.error.URLError, OSError, ValueError):  # refused, timed out, not JSON
            return None
        return value if isinstance(value, dict) else None

    def suspend(self) -> None:
        """Stop the node's process (SIGSTOP): a hung node, holding its connections open."""
        if self.process is not None and self.is_running():
            self.process.send_signal(signal.SIGSTOP)
            self.suspended = True

    def resume(self) -> None:
        """Continue a suspended node (SIGCONT)."""
        if self.process is not None and self.is_running():
            self.process.send_signal(signal.SIGCONT)
        self.suspended = False

    def kill(self) -> None:
        """Kill the node at once (SIGKILL), suspended or not."""
        super().kill()
        self.suspended = False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the node gracefully (SIGTERM), continuing it first if it was suspended."""
        if self.suspended:
            self.resume()
        super().stop(timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the node's log."""
        return "\n".join(list(self.log)[-lines:])


class LocalCluster:
    """``size`` nats-server nodes with JetStream, clustered over loopback routes."""

    def __init__(
        self,
        size: int = 3,
        *,
        name: str | None = None,
        store_dir: str | Path | None = None,
        binary: str | None = None,
        sync_always: bool = False,
        startup_timeout: float = 30.0,
        partitionable: bool = False,
    ) -> None:
        if size < 1:
            raise ConfigError(f"a cluster needs at least one node, not {size}")
        self.size = size
        self.name = name or f"oqron-{uuid.uuid4().hex[:8]}"
        """The cluster name; nodes are ``<name>-1`` ... ``<name>-<size>``. Give the same name to
        start a cluster again on a ``store_dir`` it used before."""
        self.binary = binary
        self.sync_always = sync_always
        self.startup_timeout = startup_timeout
        self._given_store = Path(store_dir) if store_dir else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.nodes: list[ClusterNode] = []
        self.links = Links() if partitionable else None
        """The forwarders the routes go through, if the cluster can be partitioned."""

    @property
    def urls(self) -> list[str]:
        """The client URLs of all nodes (pass them all: a client then fails over)."""
        if not self.nodes:
            raise ServerError("the cluster has not been started")
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The client URLs comma-separated, as ``OQRON_NATS_URL`` takes them."""
        return ",".join(self.urls)

    @property
    def store_dir(self) -> Path:
        """The directory holding one store directory per node."""
        if self._given_store is not None:
            return self._given_store
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="oqron-cluster-")
        return Path(self._tmp.name)

    def node(self, name: str) -> ClusterNode:
        """The node with this ``server_name`` (as a stream's ``cluster.leader`` names it)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise ServerError(f"no node named {name!r} in cluster {self.name}")

    def answering(self) -> list[ClusterNode]:
        """The nodes that run and are not suspended."""
        return [node for node in self.nodes if node.answering]

    def joined(self) -> list[ClusterNode]:
        """The answering nodes not cut off by ``partition`` (a node cut off may still say it
        leads what the others have given a new leader)."""
        return [node for node in self.answering() if not self.partitioned(node.name)]

    def partitioned(self, name: str) -> bool:
        """Whether the node is cut off from the others by ``partition``."""
        return self.links is not None and self.links.held(name)

    def meta_leader(self) -> str | None:
        """The node that says it leads the JetStream meta group (``/jsz``), if one does."""
        for node in self.joined():
            jsz = node.monitor("/jsz")
            if jsz and (jsz.get("meta_cluster") or {}).get("leader") == node.name:
                return node.name
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The node that says it leads ``stream`` (``/jsz``), if one does."""
        for node in self.joined():
            for detail in _stream_details(node):
                if detail.get("name") == stream and _leader(detail) == node.name:
                    return node.name
        return None

    def consumer_leader(self, stream: str, consumer: str) -> str | None:
        """The node that says it leads the durable ``consumer`` of ``stream``, if one does."""
        for node in self.joined():
            for detail in _stream_details(node):
                if detail.get("name") != stream:
                    continue
                for info in detail.get("consumer_detail") or []:
                    if info.get("name") == consumer and _leader(info) == node.name:
                        return node.name
        return None

    def connected_node(self, client_name: str) -> str | None:
        """The node a client with this connection name is connected to (``/connz``), if any."""
        for node in self.answering():
            connz = node.monitor("/connz?limit=100000")
            for conn in (connz or {}).get("connections") or []:
                if conn.get("name") == client_name:
                    return node.name
        return None

    def start(self) -> LocalCluster:
        """Start every node that is not running and wait until all of them are healthy."""
        if not self.nodes:
            self._start_new()
        else:
            for node in self.nodes:
                node.start()
        self.wait_healthy(self.nodes)
        return self

    def _start_new(self) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            ports = _free_ports(self.size)
            self.nodes = [
                ClusterNode(
                    f"{self.name}-{n}",
                    cluster=self.name,
                    cluster_port=port,
                    routes=self._routes(n, ports),
                    store_dir=self.store_dir / f"node{n}",
                    binary=self.binary,
                    sync_always=self.sync_always,
                    startup_timeout=self.startup_timeout,
                    advertise=NOWHERE if self.links is not None else None,
                )
                for n, port in enumerate(ports, 1)
            ]
            try:
                for node in self.nodes:
                    node.start()
                self.wait_healthy(self.nodes)
            except ServerError:
                taken = any(_PORT_TAKEN in line for node in self.nodes for line in node.log)
                for node in self.nodes:
                    node.kill()
                if self.links is not None:
                    self.links.close()  # links to the ports of this try
                if not taken or attempt == START_ATTEMPTS:
                    raise
            else:
                return

    def _routes(self, n: int, ports: list[int]) -> list[int]:
        """The ports node ``n`` (from 1) routes to: every node's cluster port, or with links,
        a link to each other node."""
        if self.links is None:
            return ports
        source = f"{self.name}-{n}"
        return [
            self.links.open(source, f"{self.name}-{m}", port)
            for m, port in enumerate(ports, 1)
            if m != n
        ]

    def wait_healthy(self, nodes: list[ClusterNode] | None = None) -> None:
        """Wait until ``nodes`` (default: every running node not suspended) are healthy;
        ServerError if one is not running, or not healthy within the startup timeout."""
        waiting = list(nodes if nodes is not None else self.answering())
        deadline = time.monotonic() + self.startup_timeout
        while waiting:
            for node in waiting:
                if not node.is_running():
                    raise ServerError(
                        f"node {node.name} exited; its log ends with:\n{node.log_tail()}"
                    )
            waiting = [node for node in waiting if not node.healthy()]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(node.name for node in waiting)
                raise ServerError(
                    f"cluster nodes not healthy after {self.startup_timeout} s: {names}; "
                    f"the log of {waiting[0].name} ends with:\n{waiting[0].log_tail()}"
                )
            time.sleep(0.05)  # test tooling: a short poll of /healthz until a deadline

    def kill(self, name: str) -> ClusterNode:
        """Kill one node at once (SIGKILL), as a crash would."""
        node = self.node(name)
        node.kill()
        return node

    def suspend(self, name: str) -> ClusterNode:
        """Hang one node (SIGSTOP): it keeps its sockets open but answers nothing."""
        node = self.node(name)
        node.suspend()
        return node

    def resume(self, name: str) -> ClusterNode:
        """Continue a suspended node (SIGCONT); it is not waited for (see ``wait_healthy``)."""
        node = self.node(name)
        node.resume()
        return node

    def restart(self, name: str) -> ClusterNode:
        """Start one node again on its ports and store; return once it is healthy (caught up)."""
        node = self.node(name)
        node.restart()
        self.wait_healthy([node])
        return node

    def partition(self, name: str) -> ClusterNode:
        """Cut one node off from the others (its links held: see ``links``); its clients stay
        connected to it. The cluster must have been made ``partitionable``."""
        self._partitionable().hold(name)
        return self.node(name)

    def heal(self, name: str) -> ClusterNode:
        """Join a node cut off by ``partition`` to the others again; it is not waited for."""
        self._partitionable().release(name)
        return self.node(name)

    def _partitionable(self) -> Links:
        if self.links is None:
            raise ServerError(f"cluster {self.name} was not started partitionable")
        return self.links

    def stop(self) -> None:
        """Stop every node gracefully."""
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Stop every node and remove a temporary store."""
        self.stop()
        if self.links is not None:
            self.links.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _stream_details(node: ClusterNode) -> list[dict[str, Any]]:
    """Every stream (with its consumers) the node's ``/jsz`` reports, over all accounts."""
    jsz = node.monitor("/jsz?accounts=true&streams=true&consumers=true&config=false")
    return [
        detail
        for account in (jsz or {}).get("account_details") or []
        for detail in account.get("stream_detail") or []
    ]


def _leader(detail: dict[str, Any]) -> str | None:
    """The leader a stream's or consumer's ``cluster`` block names."""
    leader = (detail.get("cluster") or {}).get("leader")
    return leader if isinstance(leader, str) and leader else None


def _free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
