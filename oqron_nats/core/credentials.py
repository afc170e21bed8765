"""How a client proves who it is to NATS, and how it checks the server: one place for both.

Settable three ways, all ending in the two frozen settings types of this module:

* ``Client(url, credentials=Credentials(...), tls=TLS(...))`` from Python;
* environment variables (read by ``Client`` when those arguments are not given):
  ``OQRON_NATS_CREDS``, ``OQRON_NATS_NKEY``, ``OQRON_NATS_TOKEN``, ``OQRON_NATS_USER`` with
  ``OQRON_NATS_PASSWORD``, ``OQRON_NATS_TLS_CA``, ``OQRON_NATS_TLS_CERT`` with
  ``OQRON_NATS_TLS_KEY``;
* command-line flags of ``oqron`` and of the worker runner (:func:`add_security_arguments`):
  each overrides its environment variable. Secret *values* never go on a command line (where
  ``ps`` shows them): the flags take files (``--password-file``, ``--token-file``).

Secret rules: a credential file (``.creds``, nkey seed, password or token file, TLS key) is read
(the connection's files when connecting) and its content is never logged nor put in an error; a
password or token never appears in an error, a log line or a stored record; URLs are shown with
their userinfo masked (``nats://alice:***@host:4222``, ``nats://***@host`` for a token). A
password or token written into a URL is moved out of it before the URL goes to nats-py, so every
server of a cluster, discovered ones included, gets the credentials.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import ConfigError

MASK = "***"

ENV_CREDS = "OQRON_NATS_CREDS"
ENV_NKEY = "OQRON_NATS_NKEY"
ENV_TOKEN = "OQRON_NATS_TOKEN"
ENV_USER = "OQRON_NATS_USER"
ENV_PASSWORD = "OQRON_NATS_PASSWORD"
ENV_TLS_CA = "OQRON_NATS_TLS_CA"
ENV_TLS_CERT = "OQRON_NATS_TLS_CERT"
ENV_TLS_KEY = "OQRON_NATS_TLS_KEY"

_KINDS = {
    "creds_file": f"a .creds file (--creds, {ENV_CREDS})",
    "nkey_file": f"an nkey seed file (--nkey, {ENV_NKEY})",
    "token": f"a token (--token-file, {ENV_TOKEN})",
    "user": f"a user and password (--user, --password-file, {ENV_USER}, {ENV_PASSWORD})",
}
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/]+)@")
"""A URL's userinfo, up to the last ``@`` of its authority (an unescaped ``@`` in a password)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """How the client authenticates: one of user + password, token, nkey seed file, .creds file.

    ``creds_file`` is a ``.creds`` file (user JWT and nkey seed, as ``nsc`` writes it: read
    again at every reconnect, so a rotated file is picked up); ``nkey_file`` holds the user's
    nkey seed (``SU...``). ``password`` and ``token`` are never shown by ``repr``.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_file: str | Path | None = None
    creds_file: str | Path | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not str(value):
                raise ConfigError(f"credentials: {f.name} is empty")
        if (self.user is None) != (self.password is None):
            raise ConfigError("credentials: a user needs a password, and a password a user")
        given = [kind for kind in _KINDS if getattr(self, kind) is not None]
        if len(given) > 1:
            raise ConfigError(
                "give one kind of NATS credentials, not several: "
                + " and ".join(_KINDS[kind] for kind in given)
            )

    @property
    def kind(self) -> str:
        """What authenticates: "creds", "nkey", "token", "user/password" or "none"."""
        if self.creds_file is not None:
            return "creds"
        if self.nkey_file is not None:
            return "nkey"
        if self.token is not None:
            return "token"
        return "user/password" if self.user is not None else "none"

    def secrets(self) -> tuple[str, ...]:
        """The secret values to keep out of errors and logs (the password, the token)."""
        return tuple(s for s in (self.password, self.token) if s)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **given: str | Path | None
    ) -> Credentials | None:
        """Credentials from ``OQRON_NATS_*`` variables, each overridden by a ``given`` field that
        is not None; None when nothing is set."""
        env = os.environ if environ is None else environ
        values: dict[str, str | Path | None] = {
            "user": env.get(ENV_USER) or None,
            "password": env.get(ENV_PASSWORD) or None,
            "token": env.get(ENV_TOKEN) or None,
            "nkey_file": env.get(ENV_NKEY) or None,
            "creds_file": env.get(ENV_CREDS) or None,
        }
        values.update({k: v for k, v in given.items() if v is not None})
        if all(v is None for v in values.values()):
            return None
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS to NATS: ``ca_file`` verifies the server; ``cert_file`` + ``key_file`` are the
    client's certificate for mutual TLS. ``TLS()`` alone: TLS, trusting the system's CAs.

    With TLS set, a server that offers no TLS is refused before any credential is sent.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError(
                "TLS: a client certificate needs its key, and a key its certificate "
                f"(--tls-cert with --tls-key, {ENV_TLS_CERT} with {ENV_TLS_KEY})"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not str(value):
                raise ConfigError(f"TLS: {f.name} is empty")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **given: str | Path | None
    ) -> TLS | None:
        """TLS settings from ``OQRON_NATS_TLS_*`` variables, each overridden by a ``given``
        field that is not None; None when nothing is set."""
        env = os.environ if environ is None else environ
        values: dict[str, str | Path | None] = {
            "ca_file": env.get(ENV_TLS_CA) or None,
            "cert_file": env.get(ENV_TLS_CERT) or None,
            "key_file": env.get(ENV_TLS_KEY) or None,
        }
        values.update({k: v for k, v in given.items() if v is not None})
        if all(v is None for v in values.values()):
            return None
        return cls(**values)


# -- URLs --------------------------------------------------------------------------------------


def mask_url(text: str) -> str:
    """``text`` with the userinfo of every URL in it masked: ``nats://alice:***@host``, or
    ``nats://***@host`` for a token."""
    return _USERINFO.sub(_masked_userinfo, text)


def _masked_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def split_userinfo(urls: Sequence[str]) -> tuple[list[str], Credentials | None]:
    """The URLs without userinfo, and the credentials that were in them (user and password,
    or a token); ConfigError if two URLs carry different ones."""
    bare: list[str] = []
    found: set[tuple[str | None, str | None]] = set()
    for url in urls:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            bare.append(url)
            continue
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        found.add((unquote(user), unquote(password)) if colon else (None, unquote(user)))
        bare.append(urlunsplit(parts._replace(netloc=hostport)))
    if not found:
        return bare, None
    if len(found) > 1:
        raise ConfigError("the NATS URLs carry different credentials; give one set")
    [(name, secret)] = found
    if name is None:
        return bare, Credentials(token=secret)
    return bare, Credentials(user=name, password=secret)


def conceal(text: str, credentials: Credentials | None = None) -> str:
    """``text`` with URL userinfo masked, and the password or token of ``credentials`` too."""
    for secret in credentials.secrets() if credentials is not None else ():
        text = text.replace(secret, MASK)
    return mask_url(text)


# -- command-line flags --------------------------------------------------------------------------


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The credential and TLS flags; each overrides its ``OQRON_NATS_*`` variable."""
    group = parser.add_argument_group(
        "NATS credentials and TLS",
        "Secrets are given as files, never as values on the command line. Each flag "
        "overrides its environment variable.",
    )
    add = group.add_argument
    add("--creds", metavar="FILE", help=f"a .creds file: user JWT + nkey seed ({ENV_CREDS})")
    add("--nkey", metavar="FILE", help=f"a file holding the user's nkey seed ({ENV_NKEY})")
    add("--user", metavar="NAME", help=f"user name ({ENV_USER}); its password from "
        f"--password-file or {ENV_PASSWORD}")  # fmt: skip
    add("--password-file", metavar="FILE", help=f"a file holding the password ({ENV_PASSWORD})")
    add("--token-file", metavar="FILE", help=f"a file holding the token ({ENV_TOKEN})")
    add("--tls-ca", metavar="FILE", help=f"CA certificates that sign the server's ({ENV_TLS_CA})")
    add("--tls-cert", metavar="FILE", help=f"client certificate, mutual TLS ({ENV_TLS_CERT})")
    add("--tls-key", metavar="FILE", help=f"the client certificate's key ({ENV_TLS_KEY})")


def security_from(args: argparse.Namespace) -> tuple[Credentials | None, TLS | None]:
    """The credentials and the TLS settings of the flags of :func:`add_security_arguments`, each
    merged over the environment, or None where no flag was given (a Client reads the
    environment itself); reads the password and token files (ConfigError if it cannot)."""
    given = {
        "user": args.user,
        "password": _secret_file(args.password_file, "--password-file"),
        "token": _secret_file(args.token_file, "--token-file"),
        "nkey_file": args.nkey,
        "creds_file": args.creds,
    }
    tls = {"ca_file": args.tls_ca, "cert_file": args.tls_cert, "key_file": args.tls_key}
    return (
        Credentials.from_env(**given) if any(v is not None for v in given.values()) else None,
        TLS.from_env(**tls) if any(v is not None for v in tls.values()) else None,
    )


def _secret_file(path: str | None, flag: str) -> str | None:
    """The secret held in a file (its first line, without the line break)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"{flag}: cannot read {path}: {reason}") from None
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ConfigError(f"{flag}: {path} is empty")
    return secret
