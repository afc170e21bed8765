"""Payloads and results: validated and encoded once with msgspec, within a size limit."""

from __future__ import annotations

import math
from typing import Any, Generic, TypeVar

import msgspec

from .encryption import Sealer
from .errors import PayloadError, PayloadTooLarge

T = TypeVar("T")

RECORD_HEADROOM = 64 * 1024
"""Bytes of a job record kept for everything but the payload (state, error, trace context)."""


def encode_value(value: object, what: str) -> bytes:
    """JSON-encode ``value``; a value msgspec cannot encode, or one holding NaN or infinity
    (which JSON has no way to write: msgspec would store null), raises PayloadError."""
    try:
        raw = msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise PayloadError(f"{what} cannot be encoded as JSON: {exc}") from None
    if b"null" in raw and _holds_non_finite(msgspec.to_builtins(value)):  # nulls are rare
        raise PayloadError(f"{what} holds NaN or infinity, which JSON cannot represent")
    return raw


def _holds_non_finite(value: object) -> bool:
    """Whether a value of builtins (dicts, lists, scalars) holds a float NaN or infinity."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


class PayloadCodec(Generic[T]):
    """Encodes payloads for a queue and decodes them strictly for its handler.

    With a payload type (a msgspec Struct, dataclass, TypedDict, ...) the encoded bytes are decoded
    back into that type on add, so a wrong field type fails at the publisher with the path of the
    field, exactly as the worker would decode it. Without one, any JSON-encodable value is taken.
    """

    def __init__(self, payload_type: type[T] | None, max_size: int) -> None:
        self.payload_type = payload_type
        self.max_size = max_size
        self.sealer: Sealer | None = None
        """Seals and opens stored values with the queue's codec; set by the queue on first use."""
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            payload_type if payload_type is not None else Any
        )

    def encode(self, data: object) -> tuple[T, bytes]:
        """Validate ``data``; return it as stored (decoded back: typed, or the JSON value of a
        queue without a payload type) with its JSON bytes.

        What the caller gets back is what ``get_job`` and the handler will see: without a
        payload type, bytes come back as base64 text, sets and tuples as lists, datetimes as
        ISO text (JSON cannot carry them as they were); a payload type keeps them typed.
        """
        raw = encode_value(data, "payload")
        check_size(raw, self.max_size)
        return self.decode(raw), raw

    def decode(self, raw: bytes) -> T:
        """Decode stored payload bytes strictly into the payload type."""
        try:
            value: T = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            name = getattr(self.payload_type, "__name__", str(self.payload_type))
            raise PayloadError(f"payload does not match {name}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise PayloadError(f"payload is not valid JSON: {exc}") from None
        return value


def check_size(raw: bytes | msgspec.Raw, limit: int, what: str = "payload") -> None:
    """Raise PayloadTooLarge if ``raw`` is over ``limit`` bytes."""
    if len(raw) > limit:
        raise PayloadTooLarge(len(raw), limit, what)


def stored_limit(max_payload: int) -> int:
    """The largest sealed value a record can hold on a server with ``max_payload``: a codec's
    output is checked against this, while ``max_payload_size`` applies to the plaintext."""
    return max(1, max_payload - RECORD_HEADROOM)
