"""What a queue name, a job id, a namespace and a priority may be: safe tokens of a NATS subject."""

from __future__ import annotations

import re
from typing import Final

from .errors import InvalidName

NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAMESPACE_PATTERN: Final = re.compile(r"^[A-Za-z0-9-]{1,32}$")
PRIORITY_LEVELS: Final = 10
"""Job priorities are 0 (first) .. 9; each has its own lane subject."""


def check_name(value: str, what: str = "queue name") -> str:
    """Return ``value`` if it is a safe name (letters, digits, ``_``, ``-``; 1-64), else raise."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InvalidName(f"{what} {value!r} must match {NAME_PATTERN.pattern}")
    return value


def check_namespace(value: str) -> str:
    """Return ``value`` if it is a valid namespace (letters, digits, ``-``; 1-32), else raise."""
    if not isinstance(value, str) or not NAMESPACE_PATTERN.match(value):
        raise InvalidName(f"namespace {value!r} must match {NAMESPACE_PATTERN.pattern}")
    return value
