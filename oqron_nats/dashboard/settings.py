"""What a dashboard is told: who may see it (auth), whether it may act (read-only), which payload
fields it masks, where a job's trace is, and the bind check that keeps it safe by default."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict, Unpack
from urllib.parse import quote, urlsplit

from ..core.errors import ConfigError
from ..queue import Queue

LOOPBACK = "127.0.0.1"
"""Where the dashboard binds unless told otherwise."""


@dataclasses.dataclass(frozen=True, repr=False)
class BasicAuth:
    """HTTP basic auth: one user and its password (read from a file, never a flag)."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"BasicAuth(user={self.user!r}, password='***')"


@dataclasses.dataclass(frozen=True, repr=False)
class BearerAuth:
    """A bearer token in the ``Authorization`` header (for a proxy or a script)."""

    token: str

    def __repr__(self) -> str:
        return "BearerAuth(token='***')"


Auth = BasicAuth | BearerAuth


def read_secret(path: Path, what: str) -> str:
    """The first line of file ``path`` (a password or a token); ConfigError if there is none."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {str(path)!r}: {exc.strerror}") from None
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ConfigError(f"the {what} file {str(path)!r} is empty")
    return secret


def parse_auth(spec: str) -> Auth:
    """``basic:USER:PASSWORD_FILE`` or ``bearer:TOKEN_FILE`` (the secret read from the file)."""
    kind, _, rest = spec.partition(":")
    if kind == "basic":
        user, sep, path = rest.partition(":")
        if not user or not sep or not path:
            raise ConfigError("--auth basic needs basic:USER:PASSWORD_FILE")
        return BasicAuth(user, read_secret(Path(path), "password"))
    if kind == "bearer" and rest:
        return BearerAuth(read_secret(Path(rest), "token"))
    raise ConfigError("--auth is basic:USER:PASSWORD_FILE or bearer:TOKEN_FILE")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How one dashboard behaves; see :func:`oqron_nats.dashboard.app`."""

    read_only: bool = False
    auth: Auth | None = None
    secret_fields: frozenset[str] = frozenset()
    """Fields masked in every queue's payloads and results (besides each queue's own)."""
    queue_secrets: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    """The ``secret_fields`` of the queues the dashboard was handed, by queue name."""
    trace_url: str | None = None
    """A link to a job's trace, e.g. ``http://jaeger:16686/trace/{trace_id}``."""
    refresh: float = 5.0
    """Seconds between two reads of the overview when no event arrives (ages, workers)."""
    public_origin: str | None = None
    """The origin browsers reach the dashboard at (``https://ops.example.com``), behind a
    reverse proxy that rewrites ``Host``: an action's ``Origin`` may be this one."""

    def secrets_of(self, queue: str) -> frozenset[str]:
        """The payload fields masked on queue ``queue``."""
        return self.secret_fields | self.queue_secrets.get(queue, frozenset())


class Options(TypedDict, total=False):
    """The dashboard's options, as ``app()`` and :func:`settings` take them."""

    read_only: bool  # default False
    auth: Auth | None  # default None: no auth of its own
    secret_fields: Iterable[str]  # default ()
    queues: Iterable[Queue[Any, Any]]  # default (): whose secret_fields are masked too
    trace_url: str | None  # default None
    refresh: float  # default 5.0 seconds
    public_url: str | None  # default None


def settings(**options: Unpack[Options]) -> Settings:
    """Checked settings (ConfigError on a trace URL template with an unknown field, or a public
    URL that is not an http(s) URL)."""
    trace_url, public_url = options.get("trace_url"), options.get("public_url")
    refresh = options.get("refresh", 5.0)
    if trace_url is not None:
        check_trace_url(trace_url)
    if not 0.1 <= refresh <= 3600:
        raise ConfigError(f"refresh must be from 0.1 to 3600 seconds, not {refresh!r}")
    return Settings(
        read_only=options.get("read_only", False),
        auth=options.get("auth"),
        secret_fields=frozenset(options.get("secret_fields", ())),
        queue_secrets={q.name: q.config.secret_fields for q in options.get("queues", ())},
        trace_url=trace_url,
        refresh=refresh,
        public_origin=public_origin(public_url) if public_url is not None else None,
    )


def public_origin(url: str) -> str:
    """The origin (``scheme://host[:port]``, lower case) of the dashboard's public URL; a path
    (where a proxy mounts it) is allowed and not part of it. ConfigError if it is no such URL."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the public URL must be http(s)://HOST[:PORT][/PATH], not {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"the public URL carries no credentials, query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise ConfigError(f"the public URL's port is not valid: {url!r}") from None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


TRACE_FIELDS = ("trace_id", "correlation_id", "job_id", "queue")


def check_trace_url(template: str) -> None:
    """ConfigError unless ``template`` uses only the fields of :data:`TRACE_FIELDS`."""
    try:
        template.format_map(dict.fromkeys(TRACE_FIELDS, "x"))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"the trace URL template {template!r} may use only {{{'}, {'.join(TRACE_FIELDS)}}}"
            f" ({exc!r})"
        ) from None


def trace_link(template: str | None, values: dict[str, str]) -> str | None:
    """The trace URL of a job, or None if there is no template or it needs a value not known."""
    if template is None:
        return None
    needed = [f for f in TRACE_FIELDS if "{" + f + "}" in template]
    if any(not values.get(f) for f in needed):
        return None
    return template.format_map({f: quote(values.get(f, ""), safe="") for f in TRACE_FIELDS})


def check_bind(host: str, settings: Settings) -> None:
    """ConfigError if ``host`` is not a loopback address while neither auth nor read-only is
    on: a dashboard that can act on every queue is never open to a network by accident."""
    if is_loopback(host) or settings.auth is not None or settings.read_only:
        return
    raise ConfigError(
        f"refusing to serve the dashboard on {host!r} without --auth or --read-only: anyone who "
        f"reaches it could act on every queue (bind to {LOOPBACK}, the default, or add one)"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve to anything
