"""Logging for applications: what the entry points (the worker runner, the ``oqron`` command,
the demo) set up. The library itself never calls this: it logs through the standard library
(:mod:`oqron_nats.observe.log`), and this is one way for an application to render those lines.

The root logger gets one handler, on stderr, whose structlog ``ProcessorFormatter`` renders every
record the same way: the library's, the application's own structlog lines (structlog is set up
to hand them to the standard library), and those of nats-py and OpenTelemetry. One line per
event, JSON when stderr is not a terminal and readable console output when it is, with
``trace_id``/``span_id`` of the current span on every line and the job's context (``job_id``,
``queue``, ``correlation_id``, ``attempt``) bound by the worker. Secrets are kept out:
tracebacks never show local variables, and a redaction step masks the values of secret keys
(``password``, ``token``, ``secret``, ... and the payload fields a queue marks with
``secret_fields``), the values of those fields wherever they appear in a line logged while the
job runs (an exception text, an f-string), strings that look like credentials (bearer tokens,
JWTs, ``sk-`` keys, nkey seeds), and the userinfo of URLs (``nats://alice:***@host``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor

from ..core.credentials import mask_url
from ..core.errors import ConfigError
from ..core.redaction import MASK, hidden, scrub

LogFormat = Literal["auto", "json", "console"]
SECRET_KEYS = (
    "password", "passwd", "secret", "token", "authorization", "api_key", "apikey", "cookie",
)  # fmt: skip
"""Key fragments whose values are always masked (case-insensitive; ``api_token`` matches)."""
SECRET_PATTERNS = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"  # Authorization: Bearer ...
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWT
    r"|\bsk[-_](?:live[-_]|test[-_])?[A-Za-z0-9]{8,}"  # API keys in the sk- style
    r"|\bS[UAONCX][A-Z2-7]{56}\b"  # NATS nkey seeds (user, account, operator, ...)
)
LEVELS = ("debug", "info", "warning", "error", "critical")


class Redactor:
    """Masks secret keys and credential-like strings anywhere in an event (structlog processor)."""

    def __init__(self, secret_fields: Iterable[str] = ()) -> None:
        self.fragments = tuple(SECRET_KEYS) + tuple(f.lower() for f in secret_fields)

    def __call__(self, _logger: Any, _method: str, event: EventDict) -> EventDict:
        """Redact the event in place and return it."""
        for key, value in list(event.items()):
            event[key] = self.clean(key, value)
        return event

    def is_secret(self, key: object) -> bool:
        """Whether the values of ``key`` are masked."""
        return isinstance(key, str) and any(f in key.lower() for f in self.fragments)

    def clean(self, key: object, value: Any) -> Any:
        """``value`` with secrets masked (containers are copied, not changed)."""
        if self.is_secret(key) and value is not None:
            return MASK
        if isinstance(value, str):
            return SECRET_PATTERNS.sub(MASK, mask_url(scrub(value, hidden())))
        if isinstance(value, MutableMapping | dict):
            return {k: self.clean(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.clean(None, v) for v in value]
        if hasattr(value, "__struct_fields__"):  # a msgspec Struct payload
            return {f: self.clean(f, getattr(value, f, None)) for f in value.__struct_fields__}
        return value


def add_trace_ids(_logger: Any, _method: str, event: EventDict) -> EventDict:
    """Add ``trace_id`` and ``span_id`` of the current span, when there is one."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure_logging(
    *,
    level: str = "info",
    fmt: LogFormat = "auto",
    secret_fields: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Set up the standard library's logging, and structlog on top of it, for a process: every
    line at ``level`` or above goes to ``stream`` (default: stderr, so stdout stays the
    program's output), rendered by the root logger's one handler."""
    if level.lower() not in LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]
    if console:
        # a plain traceback, never with locals (rich's default shows them), then redacted
        tail: list[Processor] = [
            structlog.processors.format_exc_info,
            Redactor(secret_fields),
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
    else:
        tail = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            Redactor(secret_fields),
            structlog.processors.JSONRenderer(),
        ]
    numeric = logging.getLevelName(level.upper())
    structlog.configure(  # structlog's stdlib setup: the handler below renders its lines too
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
