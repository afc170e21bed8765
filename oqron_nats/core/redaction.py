"""Payload fields a queue marks secret (``secret_fields``): where their values are masked.

The job record keeps the payload as it was added, because the worker needs it; everywhere else
a payload or an error leaves the record, the values of these fields become ``***``: the error
message and traceback stored on a failed attempt (a handler may have put the value in its
exception), the dead-letter copy, and the worker's logs (see :mod:`oqron_nats.observe.logconfig`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextvars import ContextVar
from typing import Any

import msgspec

MASK = "***"
MIN_LENGTH = 4
"""Shorter values are not scrubbed out of free text: masking "1" everywhere would garble it."""

_hidden: ContextVar[tuple[str, ...]] = ContextVar("oqron_secret_values", default=())


def hide(values: Collection[str]) -> None:
    """Mask ``values`` in what the current task (and the tasks it starts) logs from now on."""
    _hidden.set(tuple(values))


def hidden() -> tuple[str, ...]:
    """The secret values of the job the current task runs (longest first)."""
    return _hidden.get()


def values_of(data: Any, fields: Collection[str]) -> list[str]:
    """The values of ``fields`` anywhere in ``data`` (dicts, lists, Structs), as text, longest
    first."""
    found = {str(v) for v in _walk(data, fields) if v is not None and v != ""}
    return sorted((v for v in found if len(v) >= MIN_LENGTH), key=len, reverse=True)


def scrub(text: str, values: Collection[str]) -> str:
    """``text`` with every one of ``values`` replaced by the mask."""
    for value in values:
        text = text.replace(value, MASK)
    return text


def masked(data: Any, fields: Collection[str]) -> Any:
    """A copy of decoded ``data`` with the values of ``fields`` replaced by the mask."""
    if isinstance(data, dict):
        return {k: MASK if k in fields else masked(v, fields) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(v, fields) for v in data]
    return data


def masked_json(raw: bytes, fields: Collection[str]) -> bytes:
    """JSON ``raw`` with the values of ``fields`` masked (returned as it is if it is not JSON)."""
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw
    return msgspec.json.encode(masked(decoded, fields))


def _walk(data: Any, fields: Collection[str]) -> Iterator[Any]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key in fields:
                yield value
            yield from _walk(value, fields)
    elif isinstance(data, list | tuple):
        for item in data:
            yield from _walk(item, fields)
    elif isinstance(data, msgspec.Struct):
        yield from _walk(msgspec.to_builtins(data), fields)
