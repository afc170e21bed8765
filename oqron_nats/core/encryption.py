"""Payload encryption: a codec seals a job's data, result and error before they reach NATS.

A :class:`Codec` (``queue(..., codec=)``, ``worker(..., codec=)``, or ``Client(codec=)`` for every
queue of a client; :class:`~oqron_nats.core.aesgcm.AesGcmCodec` is shipped) turns the JSON bytes
of a value into sealed bytes and back. The value is validated and encoded (msgspec) first, and the
queue's ``max_payload_size`` applies to that plaintext JSON; the sealed form must then fit the
server's limit. A sealed value is stored in the JSON record as an envelope object, so the record
stays readable with ``nats kv get``::

    {"$oqron_codec": "aes-gcm", "kid": "2026-01", "ct": "<base64: the codec's bytes>"}

An encrypted value is exactly a JSON object whose *first* member is ``$oqron_codec``; a
plaintext payload or result of that shape is refused (PayloadError), so the two never mix up.

Every seal is bound to where the value belongs (:meth:`Sealer.context`: namespace, queue, job
id and field), and a codec must authenticate that context, so a sealed value copied to another
job, queue or field does not open (DecryptionFailed).

What is sealed: the payload (``data``), the handler's ``result`` and a failed attempt's error
message and traceback (``error.type`` stays readable, with the message ``(encrypted)``). The
reason a job could not be decrypted (a CodecError) is stored readable: it holds no payload.
Everything else in a record (ids, state, timestamps, correlation id, tags, progress labels,
timeline reasons) is metadata and stays plaintext.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

from .errors import (
    CodecError,
    ConfigError,
    DecryptionFailed,
    MissingKey,
    NotEncrypted,
    PayloadError,
)

if TYPE_CHECKING:
    from .job import JobFailure

MARK = "$oqron_codec"
"""The first member of an envelope object: it names the codec that sealed the value."""
ENCRYPTED = "(encrypted)"
"""The message a sealed error shows to a reader without the key."""
FORMAT = b"oqron-nats/1"
"""The first part of every seal's context: the layout of what is bound."""
_ENVELOPE = re.compile(rb'\s*\{\s*"\$oqron_codec"\s*:').match
_CODEC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Sealed(msgspec.Struct, frozen=True):
    """A value as a codec sealed it: the id of the key it used and the codec's bytes."""

    key_id: str
    data: bytes


@runtime_checkable
class Codec(Protocol):
    """Seals the JSON bytes of a payload, result or error, and opens them again.

    ``encode`` must authenticate ``context`` (the job and field the value belongs to, see
    :meth:`Sealer.context`), and ``decode`` must raise :class:`~oqron_nats.core.errors.MissingKey`
    for a key id it does not hold and :class:`~oqron_nats.core.errors.DecryptionFailed` when the
    bytes or the context do not authenticate. Any other exception from ``decode`` is taken as
    transient: the worker retries the job. ``name`` is stored in every envelope;
    ``accept_plaintext`` lets the queue's workers run jobs stored unencrypted (a migration).
    """

    @property
    def name(self) -> str:
        """The codec's name in envelopes (letters, digits, ``_.-``)."""
        ...

    @property
    def accept_plaintext(self) -> bool:
        """Whether values stored unencrypted are read as they are (else NotEncrypted)."""
        ...

    def encode(self, data: bytes, context: bytes) -> Sealed:
        """Seal ``data`` bound to ``context``."""
        ...

    def decode(self, sealed: Sealed, context: bytes) -> bytes:
        """Open ``sealed``, which must have been sealed bound to ``context``."""
        ...


def check_codec(codec: object, what: str) -> Codec | None:
    """``codec`` if it is a Codec with a valid name (or None); ConfigError otherwise."""
    if codec is None:
        return None
    if not isinstance(codec, Codec):
        raise ConfigError(
            f"{what} must be a Codec (name, accept_plaintext, encode, decode), e.g. "
            f"AesGcmCodec, not {type(codec).__name__}"
        )
    if not isinstance(codec.name, str) or not _CODEC_NAME.fullmatch(codec.name):
        raise ConfigError(f"{what}: a codec's name must be 1-64 of A-Z a-z 0-9 _ . -")
    return codec


class Envelope(msgspec.Struct, frozen=True, rename={"codec": MARK}):
    """A sealed value as stored in a record: codec name, key id, the codec's bytes (base64 in
    JSON)."""

    codec: str
    kid: str
    ct: bytes


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)
_sealed_error = msgspec.json.Decoder(dict[str, str])


def is_sealed(raw: bytes | msgspec.Raw) -> bool:
    """Whether JSON ``raw`` is an envelope: an object whose first member is ``$oqron_codec``."""
    return _ENVELOPE(raw) is not None


def _sealed_value(value: Any) -> bool:
    """Whether a decoded JSON value is an envelope (a dict whose first key is the mark)."""
    return type(value) is dict and bool(value) and next(iter(value)) == MARK


def _as_envelope(value: Any) -> Envelope:
    """The envelope in stored JSON bytes, or in a decoded value (a record's result)."""
    try:
        if isinstance(value, bytes | msgspec.Raw):
            return _envelope_decoder.decode(value)
        return msgspec.convert(value, Envelope)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecryptionFailed(f"its envelope is malformed: {exc}") from None


class Sealer:
    """Seals and opens the values of one queue's jobs with its codec.

    Without a codec it stores plaintext and refuses to open a sealed value (MissingKey), so a
    process without the key never takes an envelope for a payload.
    """

    def __init__(self, codec: Codec | None, namespace: str, queue: str) -> None:
        self.codec = codec
        self.active = codec is not None
        """Whether values are sealed (a codec is configured)."""
        self._strict = codec is not None and not codec.accept_plaintext
        self._prefix = b"\0".join((FORMAT, namespace.encode(), queue.encode()))

    def context(self, job_id: str, field: str) -> bytes:
        """What a seal is bound to: format, namespace, queue, job id and field, NUL-separated
        (names cannot hold NUL)."""
        return b"\0".join((self._prefix, job_id.encode(), field.encode()))

    def seal(self, job_id: str, field: str, raw: bytes) -> bytes:
        """JSON ``raw`` as stored: an envelope, or ``raw`` itself without a codec.

        A value shaped like an envelope is refused (PayloadError): it would be taken for one.
        """
        if _ENVELOPE(raw) is not None:
            raise PayloadError(
                f"a {_NOUN[field]} may not be an object whose first key is {MARK!r}: that key "
                "marks encrypted values"
            )
        if self.codec is None:
            return raw
        return _encoder.encode(self._envelope(self.codec.encode(raw, self.context(job_id, field))))

    def open(self, job_id: str, field: str, raw: bytes | msgspec.Raw) -> bytes | msgspec.Raw:
        """The plaintext JSON of stored ``raw``; CodecError if it cannot be opened here."""
        if _ENVELOPE(raw) is None:  # plaintext
            if self._strict:
                self._refuse_plaintext(field)
            return raw
        return self._open(job_id, field, _as_envelope(raw))

    def open_value(self, job_id: str, field: str, value: Any) -> Any:
        """A decoded stored value (a record's ``result``) opened and decoded; None stays None."""
        if value is None:
            return None
        if not _sealed_value(value):
            if self._strict:
                self._refuse_plaintext(field)
            return value
        return msgspec.json.decode(self._open(job_id, field, _as_envelope(value)))

    def seal_failure(self, job_id: str, failure: JobFailure) -> JobFailure:
        """The failure as stored: message and traceback sealed, its type readable."""
        if self.codec is None:
            return failure
        raw = _encoder.encode({"message": failure.message, "traceback": failure.traceback})
        try:
            sealed = self._envelope(self.codec.encode(raw, self.context(job_id, "error")))
        except Exception as exc:  # never store the plaintext instead
            message = f"{ENCRYPTED[:-1]}: the codec failed to seal it: {type(exc).__name__})"
            return msgspec.structs.replace(failure, message=message, traceback="")
        return msgspec.structs.replace(failure, message=ENCRYPTED, traceback="", sealed=sealed)

    def open_failure(self, job_id: str, failure: JobFailure) -> JobFailure:
        """A stored failure with its message and traceback opened (CodecError if they cannot)."""
        if isinstance(failure.sealed, msgspec.UnsetType):
            return failure
        opened = _sealed_error.decode(self._open(job_id, "error", failure.sealed))
        return msgspec.structs.replace(
            failure,
            message=opened.get("message", ""),
            traceback=opened.get("traceback", ""),
            sealed=msgspec.UNSET,
        )

    def _envelope(self, sealed: Sealed) -> Envelope:
        assert self.codec is not None
        if not isinstance(sealed, Sealed) or not _KEY_ID.fullmatch(sealed.key_id):
            raise CodecError(f"codec {self.codec.name!r} returned no Sealed with a valid key id")
        return Envelope(codec=self.codec.name, kid=sealed.key_id, ct=sealed.data)

    def _refuse_plaintext(self, field: str) -> None:
        assert self.codec is not None
        raise NotEncrypted(
            f"the {_NOUN[field]} is stored unencrypted, and the queue's codec "
            f"({self.codec.name}) requires encryption (accept_plaintext=False)"
        )

    def _open(self, job_id: str, field: str, envelope: Envelope) -> bytes:
        noun = _NOUN[field]
        kid = envelope.kid[:64]
        if self.codec is None:
            raise MissingKey(
                f"the {noun} is encrypted (codec {envelope.codec[:64]!r}, key id {kid!r}) and this "
                "process has no codec to decrypt it: give the queue, worker or Client codec=, "
                "or set OQRON_PAYLOAD_KEYS_FILE"
            )
        if envelope.codec != self.codec.name:
            raise MissingKey(
                f"the {noun} is encrypted with codec {envelope.codec[:64]!r} (key id {kid!r}); "
                f"this queue's codec is {self.codec.name!r}"
            )
        try:
            sealed = Sealed(envelope.kid, envelope.ct)
            return self.codec.decode(sealed, self.context(job_id, field))
        except CodecError as exc:
            raise prefixed(exc, f"the {noun}") from None


_NOUN = {"data": "payload", "result": "result", "error": "error"}


def prefixed(exc: CodecError, prefix: str) -> CodecError:
    """``exc`` with ``prefix`` before its message (a codec's own subclass stays as it is)."""
    if type(exc) in (MissingKey, DecryptionFailed, NotEncrypted, CodecError):
        return type(exc)(f"{prefix}: {exc}")
    return exc


def unreadable(exc: Exception) -> str:
    """Why a value could not be opened, for a listing: a CodecError's message, or only the type
    of anything else a codec raised (its text could hold anything)."""
    if isinstance(exc, CodecError | PayloadError):
        return str(exc)
    return f"the codec failed: {type(exc).__name__}"
