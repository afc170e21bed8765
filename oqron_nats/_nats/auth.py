"""Credentials and TLS settings turned into nats-py connect options, and connect failures into
words: the one place that knows how nats-py takes them.

The files are read and checked when connecting (a Client does no I/O when created). Nothing read
from them ever reaches an error message: a malformed file is named, its content is not.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors

from ..core.credentials import ENV_TLS_CA, ENV_TLS_CERT, TLS, Credentials
from ..core.errors import ConfigError

JWT_BEGIN = b"BEGIN NATS USER JWT"
SEED_BEGIN = b"BEGIN USER NKEY SEED"
AUTH_REFUSED = ("authorization violation", "authentication", "user authentication expired")
"""Server refusals of a connection's credentials (case-insensitive parts of its -ERR)."""


@dataclass(frozen=True, slots=True)
class Auth:
    """What :func:`nats_options` made of the settings: the options and what explains failures."""

    options: dict[str, Any] = field(repr=False)
    kind: str
    """The credentials' kind (see :attr:`Credentials.kind`)."""
    wants_tls: bool
    jwt_expires: float | None = None
    """When the user JWT of a .creds file expires (Unix seconds), if it says."""


def nats_options(credentials: Credentials | None, tls: TLS | ssl.SSLContext | None) -> Auth:
    """The nats-py options for ``credentials`` and ``tls``; reads and checks the files
    (ConfigError, naming the file and never its content, if one is missing or malformed)."""
    options: dict[str, Any] = {}
    expires: float | None = None
    if credentials is not None:
        if credentials.creds_file is not None:
            path = Path(credentials.creds_file)
            expires = _check_creds(path)
            options["user_jwt_cb"], options["signature_cb"] = _creds_callbacks(path)
        elif credentials.nkey_file is not None:
            path = Path(credentials.nkey_file)
            _seed_pair(_read(path, "nkey seed file"), path)  # checked now, read again per connect
            options["nkeys_seed"] = str(path)
        elif credentials.token is not None:
            options["token"] = _hidden(credentials.token)
        elif credentials.user is not None:
            options["user"] = credentials.user
            options["password"] = _hidden(credentials.password)
    if isinstance(tls, ssl.SSLContext):
        options["tls"] = tls
    elif tls is not None:
        options["tls"] = _context(tls)
    return Auth(
        options=options,
        kind=credentials.kind if credentials is not None else "none",
        wants_tls=tls is not None,
        jwt_expires=expires,
    )


def _hidden(secret: str | None) -> Callable[[], str]:
    """The secret as nats-py's credential callback: a traceback that shows local variables (a
    structlog default) shows the options that hold it as ``<function ...>``, not its value."""

    def give() -> str:
        return secret or ""

    return give


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _nkeys() -> Any:
    try:
        import nkeys
    except ImportError:  # a dependency of oqron-nats; missing only from a --no-deps install
        raise ConfigError(
            "nkey and .creds authentication need the nkeys package: pip install nkeys"
        ) from None
    return nkeys


def _seed_pair(data: bytes, path: Path) -> Any:
    """The key pair of the nkey seed ``data`` (a file's whole content, or a .creds seed line)."""
    seed = data.strip()
    nkeys = _nkeys()
    try:
        pair = nkeys.from_seed(bytearray(seed))
    except Exception:  # nkeys raises its own errors and binascii's; none may show the seed
        raise ConfigError(
            f"{path} does not hold a valid nkey seed (a line of 58 characters starting with 'S')"
        ) from None
    if not seed.startswith(b"SU"):
        pair.wipe()
        raise ConfigError(f"{path} holds an nkey seed that is not a user's (it must start 'SU')")
    return pair


def _creds_parts(data: bytes, path: Path) -> tuple[bytes, bytes]:
    """The user JWT and the seed of a .creds file's content."""
    lines = data.splitlines()
    found: dict[bytes, bytes] = {}
    for i, line in enumerate(lines[:-1]):
        for marker in (JWT_BEGIN, SEED_BEGIN):
            if marker in line and marker not in found:
                found[marker] = lines[i + 1].strip()
    if not found.get(JWT_BEGIN) or not found.get(SEED_BEGIN):
        raise ConfigError(
            f"{path} is not a .creds file: it needs a '{JWT_BEGIN.decode()}' and a "
            f"'{SEED_BEGIN.decode()}' block, as nsc writes them"
        )
    return found[JWT_BEGIN], found[SEED_BEGIN]


def _check_creds(path: Path) -> float | None:
    """Check a .creds file; returns when its user JWT expires, if it says."""
    jwt, seed = _creds_parts(_read(path, ".creds file"), path)
    _seed_pair(seed, path).wipe()
    try:
        claims = json.loads(base64.urlsafe_b64decode(jwt.split(b".")[1] + b"=="))
    except (IndexError, ValueError, binascii.Error):
        raise ConfigError(f"{path}: its user JWT is not a JWT") from None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and exp > 0 else None


def _creds_callbacks(path: Path) -> tuple[Callable[[], bytes], Callable[[str], bytes]]:
    """nats-py's JWT and signature callbacks for a .creds file, read at every (re)connect.

    A file that became unreadable or malformed is a nats error (the connection attempt fails
    and a reconnect tries again), never an exception that would end nats-py's reconnect loop,
    nor the endless read nats-py's own reader does on a file without a JWT block.
    """

    def parts() -> tuple[bytes, bytes]:
        try:
            return _creds_parts(_read(path, ".creds file"), path)
        except ConfigError as exc:
            raise nats.errors.Error(f"nats: {exc}") from None

    def user_jwt() -> bytes:
        return parts()[0]

    def signature(nonce: str) -> bytes:
        try:
            pair = _seed_pair(parts()[1], path)
        except ConfigError as exc:
            raise nats.errors.Error(f"nats: {exc}") from None
        try:
            return base64.b64encode(pair.sign(nonce.encode()))
        finally:
            pair.wipe()

    return user_jwt, signature


def _context(tls: TLS) -> ssl.SSLContext:
    """A client context: the CA file (else the system's CAs), and the client certificate."""
    try:
        cafile = None if tls.ca_file is None else str(tls.ca_file)
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the TLS CA file {tls.ca_file} (--tls-ca, {ENV_TLS_CA}): {_reason(exc)}"
        ) from None
    if tls.cert_file is not None and tls.key_file is not None:

        def no_passphrase() -> bytes:  # never a prompt on the terminal
            raise ConfigError(f"the TLS key file {tls.key_file} is encrypted; give it unencrypted")

        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), no_passphrase)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the TLS client certificate {tls.cert_file} with the key "
                f"{tls.key_file} (--tls-cert, {ENV_TLS_CERT}): {_reason(exc)}"
            ) from None
    return context


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc.strerror} (not PEM, or the key does not match)"
    return str(exc.strerror or exc)


# -- why a first connection failed ----------------------------------------------------------------


def is_refusal(exc: BaseException) -> bool:
    """Whether trying again cannot help: the server refused the credentials, or TLS failed."""
    if isinstance(exc, ssl.SSLError | nats.errors.AuthorizationError):
        return True
    if isinstance(exc, nats.errors.SecureConnWantedError):
        return True
    text = str(exc).lower()
    return isinstance(exc, nats.errors.Error) and any(r in text for r in AUTH_REFUSED)


def describe(exc: BaseException, auth: Auth) -> str:
    """Why a connection attempt failed, in words, with the server's or TLS layer's reason."""
    if isinstance(exc, ssl.SSLError):
        return _tls_failure(exc)
    if isinstance(exc, nats.errors.SecureConnWantedError):
        return (
            "TLS was asked for, and the server offers none (no credentials were sent); "
            "enable TLS on the server, or connect without the TLS options"
        )
    if is_refusal(exc):
        return _refusal(str(exc), auth)
    if isinstance(exc, TimeoutError):
        return "no answer within the connect timeout"
    if auth.wants_tls and isinstance(exc, CUT_AFTER_HANDSHAKE):
        return f"TLS: {CLOSED_AFTER_HANDSHAKE} ({str(exc) or type(exc).__name__})"
    return str(exc) or type(exc).__name__


CUT_AFTER_HANDSHAKE = (ConnectionResetError, BrokenPipeError, nats.errors.UnexpectedEOF)
CLOSED_AFTER_HANDSHAKE = (
    "the server closed the connection after the TLS handshake; a server that requires a client "
    "certificate (mutual TLS) does so when none is given (--tls-cert and --tls-key) or when it "
    "does not trust the one given"
)
"""With TLS 1.3 the server checks the client certificate after the handshake; its alert saying
why is lost when the connection is reset before the client reads it."""


TLS_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate (mutual "
    "TLS): give --tls-cert and --tls-key",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate",
    "TLSV1_ALERT_BAD_CERTIFICATE": "the server refused the client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server refused the client certificate",
    "TLSV1_ALERT_CERTIFICATE_EXPIRED": "the server refused the expired client certificate",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS there",
}
"""OpenSSL's reasons for a failed handshake, and what they mean to the client."""


def _tls_failure(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate was not accepted ({exc.verify_message}; "
            f"CERTIFICATE_VERIFY_FAILED); give the CA that signed it (--tls-ca, {ENV_TLS_CA})"
        )
    reason = str(exc.reason or "")
    hint = TLS_HINTS.get(reason, "the TLS handshake failed")
    return f"TLS: {hint} ({reason or exc.strerror})"


def _refusal(text: str, auth: Auth) -> str:
    if "authoriz" in text.lower():
        text = "Authorization Violation"
    said = f"the server refused the connection: {text.removeprefix('nats: ').strip(chr(39))}"
    if auth.kind == "none":
        return f"{said}; it requires credentials (see --creds, --nkey, --user, --token-file)"
    if auth.jwt_expires is not None and auth.jwt_expires <= time.time():
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(auth.jwt_expires))
        return f"{said} (the user JWT of the .creds file expired at {stamp})"
    return f"{said} (with {auth.kind} credentials)"
