"""The connection shared by queues and workers: NATS URL, namespace, replicas, telemetry.

Creating a Client does no I/O; it connects on first use (or ``await client._connection()``), checks
that the server is new enough, and creates each queue's streams and buckets once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ._nats import Nats, ensure_bucket, ensure_stream
from ._nats.names import Names
from .core.codec import stored_limit
from .core.config import QueueConfig
from .core.credentials import TLS, Credentials, mask_url, split_userinfo
from .core.encryption import Codec, check_codec
from .core.errors import (
    ConfigError,
    PermissionDenied,
    QueueNotFound,
    ServerVersionError,
    Unavailable,
)
from .core.naming import check_namespace
from .observe.audience import ANNOUNCE, Announce
from .observe.metrics import DEFAULT_INTERVAL, metrics_for
from .observe.tracing import Tracing
from .storage.backend import Backend, Consumers, Shared
from .storage.index_migration import migrate_legacy

N = TypeVar("N", int, float)
DEFAULT_URL = "nats://127.0.0.1:4222"
MIN_SERVER_VERSION = (2, 12, 0)
"""Message schedules (delays and retries) need nats-server 2.12."""
DEFAULT_RETRY_DEADLINE = 30.0
"""Seconds an operation is asked again while NATS cannot answer (an election takes 5-7 s)."""
NAMESPACE_READY = "=namespace"
"""Marks, in ``_ready``, that the namespace's shared streams and buckets exist."""
JOB_MESSAGE_LIMIT = 16 * 1024
"""Bytes a message on a queue's work stream may have: a job id and its headers (the record holds
the payload; a copy of a record of up to ``broker.RECORD_COPY_MAX`` bytes may ride in a header);
anything larger is refused by the server before it is stored."""
INDEX_ENTRY_LIMIT = 1024
"""Bytes a message on a queue's state index may have: its entries and delete markers carry a few
headers and no body; a larger foreign one (each page reads hundreds at once) is refused."""
DEAD_LETTERS_KEPT = 30 * 24 * 3600.0
"""Seconds a dead letter is kept (the failed record itself: 14 days by default, see retention)."""
RATE_WINDOWS_KEPT = 24 * 3600.0
"""Seconds a rate-limit window's counter is kept (longer than any sensible window)."""


def urls_from(value: str | Sequence[str] | None) -> list[str]:
    """Server URLs from an argument, else ``OQRON_NATS_URL`` (comma-separated), else the default."""
    if value is None:
        value = os.environ.get("OQRON_NATS_URL") or DEFAULT_URL
    if isinstance(value, str):
        value = value.split(",")
    urls = [u.strip() for u in value if u.strip()]
    if not urls:
        raise ConfigError("no NATS server URL given")
    return urls


def env_number(name: str, kind: type[N], default: N) -> N:
    """A number from the environment variable ``name`` (ConfigError if it is not one)."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {text!r}") from None


def _codec_variables() -> dict[str, str]:
    """The payload-key variables set now (read into a codec when a queue first needs it)."""
    names = ("OQRON_PAYLOAD_KEYS", "OQRON_PAYLOAD_KEYS_FILE")
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def _security(
    in_url: Credentials | None, credentials: Credentials | None, tls: TLS | ssl.SSLContext | None
) -> tuple[Credentials | None, TLS | ssl.SSLContext | None]:
    """The credentials and TLS settings a client uses: as given, else from the environment."""
    if credentials is None:
        credentials = Credentials.from_env()
        if in_url is not None and credentials is not None:
            raise ConfigError(
                f"NATS credentials are in the URL and in the environment ({credentials.kind}); "
                "give them one way"
            )
    elif in_url is not None:
        raise ConfigError("NATS credentials are in the URL and in credentials=; give them one way")
    return credentials or in_url, tls if tls is not None else TLS.from_env()


class Client:
    """A lazily opened NATS connection for one namespace.

    ``request_timeout`` is how long one request waits for its reply; ``retry_deadline`` how long
    an operation is asked again while NATS cannot answer (a cluster electing leaders, a node
    restarting, a failover) before it fails with :class:`~oqron_nats.core.errors.Unavailable`
    (default: ``OQRON_RETRY_DEADLINE``, else 30 seconds). ``credentials`` and ``tls`` (see
    :mod:`oqron_nats.core.credentials`) default to the ``OQRON_NATS_*`` environment variables;
    ``codec`` (payload encryption for every queue of the client that sets none) to
    ``OQRON_PAYLOAD_KEYS_FILE`` / ``OQRON_PAYLOAD_KEYS`` (an AesGcmCodec). ``announce`` says
    when its queues publish lifecycle events: while some process listens (``"listened"``, the
    default, else ``OQRON_ANNOUNCE``), or ``"always"``, for listeners of an oqron_nats older
    than listener keys (see observe/audience.py).
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        namespace: str | None = None,
        replicas: int | None = None,
        name: str | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        metrics_interval: float = DEFAULT_INTERVAL,
        request_timeout: float = 5.0,
        retry_deadline: float | None = None,
        credentials: Credentials | None = None,
        tls: TLS | ssl.SSLContext | None = None,
        connect_options: Mapping[str, Any] | None = None,
        codec: Codec | None = None,
        announce: Announce | None = None,
    ) -> None:
        given = urls_from(url)
        self.urls, in_url = split_userinfo(given)
        """The server URLs, without userinfo: credentials in a URL move to ``credentials``."""
        self.label = ", ".join(mask_url(u) for u in given)
        """The URLs as errors and logs show them: userinfo masked."""
        self._credentials, self._tls = _security(in_url, credentials, tls)
        self.namespace = check_namespace(
            namespace or os.environ.get("OQRON_NAMESPACE") or "default"
        )
        self.replicas = replicas if replicas is not None else env_number("OQRON_REPLICAS", int, 1)
        if self.replicas not in (1, 3, 5):
            raise ConfigError(f"replicas must be 1, 3 or 5, not {self.replicas}")
        self.name = name or f"oqron-{socket.gethostname()}-{os.getpid()}"
        self.tracing = Tracing(tracer_provider)
        self.metrics = metrics_for(meter_provider)
        if not metrics_interval > 0:
            raise ConfigError(
                f"metrics_interval must be positive seconds, not {metrics_interval!r}"
            )
        self.metrics_interval = metrics_interval
        if retry_deadline is None:
            retry_deadline = env_number("OQRON_RETRY_DEADLINE", float, DEFAULT_RETRY_DEADLINE)
        for option, value in (("request_timeout", request_timeout),
                              ("retry_deadline", retry_deadline)):  # fmt: skip
            if not value > 0:
                raise ConfigError(f"{option} must be positive seconds, not {value!r}")
        self._request_timeout = request_timeout
        self._retry_deadline = retry_deadline
        self._connect_options = dict(connect_options or {})
        self._codec = check_codec(codec, "Client codec")
        self._codec_env = None if codec is not None else _codec_variables()
        self._conn: Nats | None = None
        self._lock = asyncio.Lock()
        self._ready: set[str] = set()
        chosen = announce or os.environ.get("OQRON_ANNOUNCE") or "listened"
        if chosen not in ANNOUNCE:
            raise ConfigError(f"announce must be one of {', '.join(ANNOUNCE)}, not {chosen!r}")
        self._shared = Shared(
            self.replicas, self.tracing, metrics_interval, Consumers(), chosen == "always"
        )

    async def connect(self) -> None:
        """Connect now and check the server (otherwise done on first use); ConnectionFailed,
        ServerVersionError or Unavailable say why it cannot be used."""
        await self._connection()

    async def _connection(self) -> Nats:
        """The open connection, connecting (and checking the server version) on first use."""
        if self._conn is not None:
            return self._conn
        async with self._lock:
            if self._conn is None:
                conn = await Nats.connect(
                    self.urls,
                    name=self.name,
                    request_timeout=self._request_timeout,
                    retry_deadline=self._retry_deadline,
                    credentials=self._credentials,
                    tls=self._tls,
                    label=self.label,
                    options=self._connect_options,
                )
                if not conn.has_jetstream:
                    await conn.close()
                    raise Unavailable(
                        f"the NATS server {conn.server_name or 'at ' + self.label} "
                        "runs without JetStream; start it with -js (or a jetstream {} block)"
                    )
                if conn.server_version < MIN_SERVER_VERSION:
                    version = ".".join(map(str, conn.server_version))
                    await conn.close()
                    raise ServerVersionError(
                        f"nats-server {version} is too old: oqron_nats needs 2.12 or newer "
                        "(message schedules for delays and retries); upgrade the server"
                    )
                self._conn = conn
        return self._conn

    def _override_security(
        self, credentials: Credentials | None, tls: TLS | ssl.SSLContext | None
    ) -> None:
        """Replace the credentials and TLS settings given (the worker runner's flags); before
        the first connect only."""
        if self._conn is not None:
            raise ConfigError("credentials and TLS cannot change once the client is connected")
        if credentials is not None:
            self._credentials = credentials
        if tls is not None:
            self._tls = tls

    @property
    def codec(self) -> Codec | None:
        """The payload codec of this client's queues: as given, else an AesGcmCodec from
        ``OQRON_PAYLOAD_KEYS_FILE`` or ``OQRON_PAYLOAD_KEYS`` as they were when the client was
        created (the file is read on first use), else None."""
        if self._codec_env is not None:
            from .core.aesgcm import AesGcmCodec

            self._codec = AesGcmCodec.from_env(self._codec_env) if self._codec_env else None
            self._codec_env = None
        return self._codec

    @property
    def connected(self) -> bool:
        """Whether a connection is open and up."""
        return self._conn is not None and self._conn.is_connected

    def names(self, queue: str) -> Names:
        """The NATS resource names of ``queue`` in this client's namespace."""
        return Names(self.namespace, queue)

    def payload_limit(self, conn: Nats, configured: int) -> int:
        """The largest payload a job may carry on this server."""
        return max(1, min(configured, stored_limit(conn.max_payload)))

    async def _open_queue(self, config: QueueConfig) -> Backend:
        """Connect, prepare the queue's streams and buckets, and wire its parts."""
        names = self.names(config.name)
        conn = await self._prepare_queue(names)
        return await Backend.open(
            conn,
            names,
            config,
            self._shared,
            metrics=self.metrics.queue(config.name, consumer_group=config.strategy),
            payload_limit=self.payload_limit(conn, config.max_payload_size),
        )

    async def _prepare_queue(self, names: Names) -> Nats:
        """Connect and create the queue's streams and the namespace's buckets where missing.

        A user whose permissions do not allow creating them (a least-privilege publisher)
        only checks they exist, and gets QueueNotFound naming the queue if they do not.
        """
        conn = await self._connection()
        if names.stream in self._ready:
            return conn
        async with self._lock:
            if names.stream not in self._ready:
                try:
                    await self._provision(conn, names)
                except PermissionDenied as exc:
                    if ".STREAM.CREATE." not in exc.subject.upper():
                        raise  # it may not even look: not a missing queue
                    raise QueueNotFound(
                        f"queue {names.queue!r} is not provisioned in namespace "
                        f"{self.namespace!r}, and this NATS user may not create it "
                        f"({exc.subject}): run `oqron provision {names.queue}` as an admin, or "
                        "start one of its workers first"
                    ) from exc
                self._ready.add(names.stream)
        return conn

    async def _provision(self, conn: Nats, names: Names) -> None:
        """Create what is missing, all at once: a request lost to an election then costs its
        timeout once, not once per stream."""
        creations = [
            ensure_stream(
                conn,
                name=names.index_stream,
                subjects=[names.index_entries_of_queue],
                replicas=self.replicas,
                work_queue=False,
                max_msgs_per_subject=1,
                max_msg_size=INDEX_ENTRY_LIMIT,
                ttl=True,
            )
        ]
        creations.append(
            ensure_stream(
                conn,
                name=names.stream,
                subjects=[names.lanes, names.schedules, names.run_lane, names.helds],
                replicas=self.replicas,
                work_queue=True,
                schedules=True,
                republish=(names.lanes, names.bell),
                max_msg_size=JOB_MESSAGE_LIMIT,
            )
        )
        creations.append(
            ensure_bucket(
                conn, bucket=names.jobs_bucket, replicas=self.replicas,
                max_value_size=conn.max_payload,
            )
        )  # fmt: skip
        if NAMESPACE_READY not in self._ready:
            creations += self._namespace_streams(conn, names)
        await asyncio.gather(*creations)
        self._ready.add(NAMESPACE_READY)
        await migrate_legacy(conn, names)  # the per-state index streams of 0.1, if any

    def _namespace_streams(self, conn: Nats, names: Names) -> list[Coroutine[Any, Any, None]]:
        """The creations of what every queue of the namespace shares."""
        buckets = (names.locks_bucket, names.queues_bucket, names.deps_bucket)
        return [
            *(
                ensure_bucket(
                    conn, bucket=bucket, replicas=self.replicas, max_value_size=conn.max_payload
                )
                for bucket in buckets
            ),
            ensure_stream(
                conn,
                name=names.rate_stream,
                subjects=[names.rate_subjects],
                replicas=self.replicas,
                work_queue=False,
                max_msgs_per_subject=1,
                counter=True,
                max_age=RATE_WINDOWS_KEPT,
            ),
            ensure_stream(
                conn,
                name=names.dlq_stream,
                subjects=[names.dlq_subjects],
                replicas=self.replicas,
                work_queue=False,
                max_msgs_per_subject=1,
                max_age=DEAD_LETTERS_KEPT,
            ),
        ]

    async def close(self) -> None:
        """Drain and close the connection (a later use connects again)."""
        conn, self._conn = self._conn, None
        self._ready.clear()
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
