"""The library's loggers: structlog's API, the standard library's ``logging`` underneath.

Every module logs through ``log = logger(__name__)``, so its lines are records of a standard
library logger named ``oqron_nats`` or ``oqron_nats.<module>``. The library never configures
logging (no handler, no level, no ``structlog.configure()``), and what a user sees is what the
application set up:

nothing configured     Python's defaults: debug and info lines are dropped before an event is
                       even built, warnings and errors reach stderr through logging's
                       last-resort handler, one readable line each (the event, then its fields
                       as ``key=value``). Nothing is ever written on stdout.
the standard library   (``logging.basicConfig(level=logging.DEBUG)``, ``dictConfig``, ...) the
                       lines arrive through its handlers at the levels it chose. A record's
                       message is that readable line; ``record.msg`` is the event itself, a
                       dict (formatters that read dicts, e.g. python-json-logger, get fields).
structlog              when the application called ``structlog.configure()``, an event goes
                       through the configured processors and then to the standard library
                       logger, like the application's own lines in structlog's stdlib setup:
                       a ``ProcessorFormatter`` renders the library's lines as its own.
                       Levels are still the standard library's (``oqron_nats`` and below).

Every line carries the structlog context variables bound where it was logged: the worker binds
``job_id``, ``queue``, ``correlation_id`` and ``attempt`` while a handler runs.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from types import FrameType
from typing import Any

import structlog
from structlog.contextvars import merge_contextvars

__all__ = ["BoundLogger", "Event", "logger", "render"]

_STACKLEVEL = 3
"""A record's caller (file, line, function) is the library code that logged: not this module's
``_emit``, nor the level method that called it."""
_CALLER: ContextVar[FrameType] = getattr(
    structlog.contextvars, "_ASYNC_CALLING_STACK", None
) or ContextVar("oqron_nats_caller")
"""Where structlog's frame lookup starts when set (a private name of structlog's: without it,
CallsiteParameterAdder would show this module as the caller, nothing worse)."""
_NOT_SHOWN = frozenset({"event", "exc_info", "stack_info"})
_QUOTE = re.compile(r'[\s"=]')
_METHODS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def logger(name: str) -> BoundLogger:
    """The logger of a library module (``log = logger(__name__)``): the standard library logger
    ``name`` with structlog's API: ``log.info("event", key=value, ...)``, ``bind()``."""
    return BoundLogger(logging.getLogger(name), (), {})


def render(event: Mapping[str, Any]) -> str:
    """One readable line: the event, then every field as ``key=value`` (strings with spaces,
    quotes or ``=`` quoted, other values as their repr)."""
    parts = [str(event.get("event", ""))]
    parts.extend(f"{k}={_shown(v)}" for k, v in event.items() if k not in _NOT_SHOWN)
    return " ".join(parts)


def _shown(value: object) -> str:
    if isinstance(value, str):
        return value if value and not _QUOTE.search(value) else json.dumps(value)
    return repr(value)


class Event(dict[str, Any]):
    """An event dict whose ``str()`` is its readable line: the message of a record a standard
    library formatter prints, while formatters that read dicts still get the fields."""

    __slots__ = ()

    def __str__(self) -> str:
        return render(self)


class BoundLogger(structlog.BoundLoggerBase):
    """structlog's logging API over a standard library logger. Each method first asks the
    logger whether its level is enabled, so a disabled line costs one cached lookup."""

    _logger: logging.Logger

    def debug(self, event: str, **kw: Any) -> None:
        """Log at DEBUG."""
        if self._logger.isEnabledFor(logging.DEBUG):
            self._emit(logging.DEBUG, event, kw)

    def info(self, event: str, **kw: Any) -> None:
        """Log at INFO."""
        if self._logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        """Log at WARNING."""
        if self._logger.isEnabledFor(logging.WARNING):
            self._emit(logging.WARNING, event, kw)

    def error(self, event: str, **kw: Any) -> None:
        """Log at ERROR."""
        if self._logger.isEnabledFor(logging.ERROR):
            self._emit(logging.ERROR, event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        """Log at ERROR with the exception being handled (its traceback)."""
        if self._logger.isEnabledFor(logging.ERROR):
            kw.setdefault("exc_info", True)
            self._emit(logging.ERROR, event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        """Log at CRITICAL."""
        if self._logger.isEnabledFor(logging.CRITICAL):
            self._emit(logging.CRITICAL, event, kw)

    def log(self, level: int, event: str, **kw: Any) -> None:
        """Log at a numeric ``level`` (``logging.INFO``, ...)."""
        if self._logger.isEnabledFor(level):
            self._emit(level, event, kw)

    def is_enabled_for(self, level: int) -> bool:
        """Whether a line at ``level`` would be logged (to skip costly fields)."""
        return self._logger.isEnabledFor(level)

    def _emit(self, level: int, event: str, kw: dict[str, Any]) -> None:
        if kw.get("exc_info") is not None:
            kw["exc_info"] = _exc_info(kw["exc_info"])
        ed: Any = dict(self._context)
        ed.update(kw)
        ed["event"] = event
        method = _METHODS.get(level) or logging.getLevelName(level).lower()
        if not structlog.is_configured():
            args, options = _as_record(merge_contextvars(self._logger, method, ed))
        else:  # the application's structlog processors render it
            processors = structlog.get_config()["processors"]
            if merge_contextvars not in processors:
                ed = merge_contextvars(self._logger, method, ed)
            # processors that look for the caller (CallsiteParameterAdder) find the line that
            # logged, not this module: structlog's async methods mark their caller the same way
            token = _CALLER.set(sys._getframe(2))
            try:
                for processor in processors:
                    ed = processor(self._logger, method, ed)
            except structlog.DropEvent:
                return
            finally:
                _CALLER.reset(token)
            args, options = _as_call(ed)
        options.setdefault("stacklevel", _STACKLEVEL)
        self._logger.log(level, *args, **options)

    warn = warning
    fatal = critical


def _exc_info(value: object) -> object:
    """``exc_info=True`` as the exception being handled now, while it is (a handler that
    formats later, in another thread, would find none); an exception as its triple."""
    if value is True:
        return sys.exc_info()
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    return value


def _as_record(ed: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of ``Logger.log`` for an event no structlog processor rendered."""
    exc_info = ed.pop("exc_info", None)
    stack_info = bool(ed.pop("stack_info", False))
    return (Event(ed),), {"exc_info": exc_info or None, "stack_info": stack_info}


def _as_call(result: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of ``Logger.log`` for what the last structlog processor returned: a
    rendered line, ``(args, kwargs)`` (``ProcessorFormatter.wrap_for_formatter``), the keyword
    arguments of ``render_to_log_kwargs``, or an event dict no processor rendered."""
    if isinstance(result, str):
        return (result,), {}
    if isinstance(result, bytes | bytearray):
        return (bytes(result).decode("utf-8", "replace"),), {}
    if isinstance(result, tuple):
        args, options = result[0], dict(result[1])
        if args and type(args[0]) is dict:  # an event for a ProcessorFormatter: readable for a
            args = (Event(args[0]), *args[1:])  # plain formatter too, with its traceback
            if isinstance(args[0].get("exc_info"), tuple):
                options.setdefault("exc_info", args[0]["exc_info"])
        return tuple(args), options
    if isinstance(result, dict) and "event" not in result:
        options = dict(result)
        return (options.pop("msg", ""),), options
    return _as_record(dict(result))
