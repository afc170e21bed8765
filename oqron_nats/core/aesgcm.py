"""The shipped payload codec: AES-GCM with key ids for rotation (extra: ``oqron-nats[crypto]``).

Each value is sealed with the current key under a fresh random 96-bit nonce; the codec's bytes
are ``nonce (12) || ciphertext || tag (16)``, and the associated data is the seal's context (the
job and field, see :meth:`~oqron_nats.core.encryption.Sealer.context`) and the key id. Opening picks
the key by the envelope's key id, so adding a new current key leaves every older value readable
for as long as its key is kept; removing a key makes what it sealed unreadable.

Keys are bytes (16, 24 or 32: AES-128/192/256; 32 recommended), or text ``KEY_ID:BASE64`` entries,
one per line or comma-separated, the first being the current key, read from
``OQRON_PAYLOAD_KEYS_FILE`` (a file) or ``OQRON_PAYLOAD_KEYS`` (the text itself). Keys are held
only inside the cipher objects; the repr shows key ids, and no error shows a key.

Random nonces bound how much one key may seal: NIST SP 800-38D allows 2**32 seals per key
(three per job at most: payload, result, error), so rotate well before a billion jobs.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .encryption import Sealed
from .errors import ConfigError, DecryptionFailed, MissingKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYS_ENV = "OQRON_PAYLOAD_KEYS"
KEYS_FILE_ENV = "OQRON_PAYLOAD_KEYS_FILE"
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZES = (16, 24, 32)
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class AesGcmCodec:
    """AES-GCM payload codec: seals with the ``current`` key, opens with any key it holds.

    ``keys`` maps key ids (1-64 of ``A-Z a-z 0-9 _ . -``) to keys of 16, 24 or 32 bytes;
    ``current`` defaults to the first. ``accept_plaintext`` lets workers run jobs stored
    unencrypted (while turning encryption on for a queue with jobs in flight).
    """

    name = "aes-gcm"

    def __init__(
        self,
        keys: Mapping[str, bytes],
        *,
        current: str | None = None,
        accept_plaintext: bool = False,
    ) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigError(
                "AesGcmCodec needs the cryptography package: pip install 'oqron-nats[crypto]'"
            ) from None
        if not isinstance(keys, Mapping) or not keys:
            raise ConfigError("AesGcmCodec needs at least one key: {key_id: key bytes}")
        self._ciphers: dict[str, AESGCM] = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KEY_ID.fullmatch(kid):
                raise ConfigError("a payload key id must be 1-64 of A-Z a-z 0-9 _ . -")
            if not isinstance(key, bytes | bytearray):
                raise ConfigError(
                    f"payload key {kid!r} must be bytes, not {type(key).__name__} (for base64 "
                    "text use AesGcmCodec.from_text)"
                )
            if len(key) not in KEY_SIZES:
                raise ConfigError(
                    f"payload key {kid!r} is {len(key)} bytes; AES-GCM takes 16, 24 or 32"
                )
            self._ciphers[kid] = AESGCM(bytes(key))
        self.current = next(iter(self._ciphers)) if current is None else current
        """The id of the key that seals new values."""
        if self.current not in self._ciphers:
            raise ConfigError(f"current key id {self.current!r} is not among the keys given")
        self.accept_plaintext = accept_plaintext

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys held, the current one first."""
        return (self.current, *(k for k in self._ciphers if k != self.current))

    @staticmethod
    def generate_key() -> bytes:
        """A new random 256-bit key."""
        return os.urandom(32)

    @classmethod
    def from_text(cls, text: str, *, accept_plaintext: bool = False) -> AesGcmCodec:
        """A codec from ``KEY_ID:BASE64`` entries (lines or commas; ``#`` comments), the first
        being the current key."""
        keys: dict[str, bytes] = {}
        entries = [e.strip() for e in text.replace(",", "\n").splitlines()]
        for number, entry in enumerate((e for e in entries if e and not e.startswith("#")), 1):
            kid, sep, encoded = entry.partition(":")
            kid = kid.strip()
            if not sep or not _KEY_ID.fullmatch(kid):
                raise ConfigError(f"payload key entry {number} is not KEY_ID:BASE64")
            if kid in keys:
                raise ConfigError(f"payload key id {kid!r} is given twice")
            try:
                keys[kid] = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"payload key {kid!r} is not valid base64") from None
        if not keys:
            raise ConfigError("no payload keys given (expected KEY_ID:BASE64 entries)")
        return cls(keys, accept_plaintext=accept_plaintext)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, accept_plaintext: bool = False
    ) -> AesGcmCodec:
        """A codec from a file of ``KEY_ID:BASE64`` lines (see :meth:`from_text`)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"cannot read the payload keys file {os.fspath(path)}: {reason}"
            ) from None
        return cls.from_text(text, accept_plaintext=accept_plaintext)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, accept_plaintext: bool = False
    ) -> AesGcmCodec | None:
        """A codec from ``OQRON_PAYLOAD_KEYS_FILE`` or ``OQRON_PAYLOAD_KEYS`` (of ``environ``,
        default the process's); None if neither is set."""
        environ = os.environ if environ is None else environ
        path, text = environ.get(KEYS_FILE_ENV), environ.get(KEYS_ENV)
        if path and text:
            raise ConfigError(f"set {KEYS_FILE_ENV} or {KEYS_ENV}, not both")
        if path:
            return cls.from_file(path, accept_plaintext=accept_plaintext)
        if text:
            return cls.from_text(text, accept_plaintext=accept_plaintext)
        return None

    def encode(self, data: bytes, context: bytes) -> Sealed:
        """Seal ``data`` with the current key and a fresh nonce, bound to ``context``."""
        nonce = os.urandom(NONCE_SIZE)
        kid = self.current
        sealed = self._ciphers[kid].encrypt(nonce, data, _associated(context, kid))
        return Sealed(kid, nonce + sealed)

    def decode(self, sealed: Sealed, context: bytes) -> bytes:
        """Open ``sealed`` with the key of its id; MissingKey or DecryptionFailed if it cannot."""
        from cryptography.exceptions import InvalidTag

        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            held = ", ".join(repr(k) for k in self.key_ids)
            raise MissingKey(
                f"it is sealed with key id {sealed.key_id[:64]!r}, which this codec does not "
                f"hold (it holds {held})"
            )
        if len(sealed.data) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionFailed(f"its ciphertext is {len(sealed.data)} bytes: too short")
        nonce, body = sealed.data[:NONCE_SIZE], sealed.data[NONCE_SIZE:]
        try:
            return cipher.decrypt(nonce, body, _associated(context, sealed.key_id))
        except InvalidTag:
            raise DecryptionFailed(
                f"it does not authenticate with key {sealed.key_id!r}: the ciphertext was "
                "changed, moved from another job or field, or sealed with another key of that id"
            ) from None

    def __repr__(self) -> str:
        return f"AesGcmCodec(key_ids={list(self.key_ids)!r}, current={self.current!r})"


def _associated(context: bytes, kid: str) -> bytes:
    return context + b"\0" + kid.encode()
