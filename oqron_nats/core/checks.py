"""Checks of what is given to ``queue()`` and ``add()``: each returns the value resolved or raises
an error that names what is wrong (a ConfigError when a queue is defined).

The ``Resolve`` functions here are the resolvers of the queue options declared in
:class:`oqron_nats.core.config.QueueOptions`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

from .errors import ConfigError
from .job import Retention
from .middleware import Middleware
from .naming import PRIORITY_LEVELS

Resolve: TypeAlias = Callable[[Any, str], Any]
"""Checks the value given for an option (ConfigError naming the option) and returns it resolved."""

G = TypeVar("G")


def check_retention(
    value: object, what: str, error: type[Exception] = ConfigError
) -> Retention | None:
    """Return a valid retention setting (bool, count >= 0, positive timedelta) or raise."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, timedelta) and value.total_seconds() >= 1:
        return value
    raise error(
        f"{what} must be True, False, a count (int >= 0) or an age (timedelta of 1 s or more), "
        f"not {value!r}"
    )


def check_priority(priority: object, error: type[Exception]) -> int:
    """Return ``priority`` if it is an int lane number (0 = first), else raise ``error``."""
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise error(f"priority must be an int, not {priority!r}")
    if not 0 <= priority < PRIORITY_LEVELS:
        raise error(f"priority must be between 0 and {PRIORITY_LEVELS - 1}, not {priority}")
    return priority


# -- how a given value is checked and resolved (one Resolve per kind of option) ---------------


def at_least(minimum: int, *, none: bool = False) -> Resolve:
    """An int of at least ``minimum`` (or None, with ``none``)."""

    def check(value: object, key: str) -> int | None:
        if none and value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key} must be an int >= {minimum}, not {value!r}")
        return value

    return check


def one_of(*choices: str) -> Resolve:
    """One of ``choices``."""
    quoted = [repr(choice) for choice in choices]
    wording = f"{', '.join(quoted[:-1])} or {quoted[-1]}"

    def check(value: object, key: str) -> object:
        if value not in choices:
            raise ConfigError(f"{key} must be {wording}, not {value!r}")
        return value

    return check


def group(cls: type[G], *, off: G | None = None, false: G | None = None) -> Resolve:
    """An option group: True is its defaults, None is ``off``, False is ``false`` (if given,
    else ``off``), else an instance."""

    def check(value: object, key: str) -> G | None:
        if value is False and false is not None:
            return false
        if value is None or value is False:
            return off
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        raise ConfigError(f"{key} must be True, False or a {cls.__name__}, not {value!r}")

    return check


def instance(cls: type[G]) -> Resolve:
    """An option group that has no defaults: None, or an instance."""

    def check(value: object, key: str) -> G | None:
        if value is None or isinstance(value, cls):
            return value
        raise ConfigError(f"{key} must be a {cls.__name__}, not {value!r}")

    return check


def strings(wording: str, *, named: bool = False) -> Resolve:
    """Strings (not one string) as a tuple; with ``named``, non-empty ones as a frozenset."""

    def check(value: object, key: str) -> tuple[str, ...] | frozenset[str]:
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ConfigError(f"{key} must be {wording}")
        items = tuple(value)
        if not all(isinstance(item, str) and (item or not named) for item in items):
            raise ConfigError(f"{key} must be {wording}")
        return frozenset(items) if named else items

    return check


def middlewares(value: object, key: str) -> tuple[Middleware, ...]:
    """A list of Middleware instances, as a tuple."""
    if isinstance(value, Middleware) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(f"{key} must be a list of Middleware instances, not {value!r}")
    wrong = [m for m in value if not isinstance(m, Middleware)]
    if wrong:
        raise ConfigError(
            f"{key} must be instances of oqron_nats.Middleware (subclass it): {wrong[0]!r}"
        )
    return tuple(value)


def check_handler(handler: object) -> None:
    """ConfigError unless ``handler`` can be called with the job's context and return a
    result: a function (``async def`` or plain) or callable object taking one argument."""
    if not callable(handler):
        raise ConfigError(f"handler must be callable, not {handler!r}")
    plain = inspect.isfunction(handler) or inspect.ismethod(handler)
    call: Any = handler if plain else getattr(handler, "__call__", handler)  # noqa: B004
    if inspect.isasyncgenfunction(call) or inspect.isgeneratorfunction(call):
        raise ConfigError(
            f"handler {_name(handler)} is a generator: it must return (or await) its result, "
            "not yield it"
        )
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin without a signature: it is called and seen
        return
    try:
        signature.bind(object())
    except TypeError:
        raise ConfigError(
            f"handler {_name(handler)}{signature} must take one argument, the job's context "
            "(def handler(ctx): ...)"
        ) from None


def _name(handler: object) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
