"""What the dashboard shows of a job's payload, result and errors: secrets masked as in the logs.

The values of the queue's ``secret_fields`` (and of the dashboard's own) become ``***`` in the
payload and the result, and wherever they appear in an error message or traceback; keys that
name a secret (``password``, ``token``, ...) and strings that look like credentials are masked as
the log redaction masks them (:class:`oqron_nats.observe.logconfig.Redactor`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from ..core.job import JobFailure
from ..core.redaction import masked, scrub, values_of
from ..observe.logconfig import Redactor


class Masker:
    """Masks what one job shows, given its payload and the fields secret on its queue."""

    def __init__(self, data: Any, fields: Collection[str]) -> None:
        self.fields = frozenset(fields)
        self.values = values_of(data, self.fields)
        self._redactor = Redactor(self.fields)

    def value(self, data: Any) -> Any:
        """A payload or result, decoded, with its secrets masked."""
        return self._redactor.clean(None, masked(_builtins(data), self.fields))

    def text(self, text: str | None) -> str:
        """Free text (an error message, a traceback, a reason) with secret values masked."""
        if not text:
            return ""
        cleaned = self._redactor.clean(None, scrub(text, self.values))
        return cleaned if isinstance(cleaned, str) else ""

    def failure(self, failure: JobFailure | None) -> dict[str, str] | None:
        """An error as shown: type, message and traceback, masked."""
        if failure is None:
            return None
        return {
            "type": failure.type,
            "message": self.text(failure.message),
            "traceback": self.text(failure.traceback),
        }

    def pretty(self, data: Any) -> str:
        """A payload or result as indented JSON, masked."""
        shown = self.value(data)
        try:
            return msgspec.json.format(msgspec.json.encode(shown), indent=2).decode()
        except (TypeError, msgspec.EncodeError):
            return self.text(repr(shown))


def _builtins(data: Any) -> Any:
    """Decoded data as dicts and lists (a Struct payload, a raw JSON value)."""
    if isinstance(data, msgspec.Raw):
        try:
            return msgspec.json.decode(bytes(data))
        except msgspec.DecodeError:
            return "(undecodable)"
    try:
        return msgspec.to_builtins(data)
    except (TypeError, msgspec.EncodeError):
        return repr(data)
