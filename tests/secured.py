"""Secured nats-servers for tests: certificates, nkeys and JWTs made here, never checked in.

* :class:`Pki` writes a CA, a server certificate for 127.0.0.1/localhost, a client certificate,
  and a second, unrelated CA with a client certificate of its own (the "unknown CA" cases).
* :func:`new_key`, :func:`operator_jwt`, :func:`account_jwt`, :func:`user_jwt` and
  :func:`creds_file` build what ``nsc`` would: base64url JSON claims signed with ed25519 nkeys,
  in the nats-io/jwt v2 format (``alg: ed25519-nkey``, ``nats.type``/``nats.version``).
* :class:`SecuredServer` is a LocalServer with extra config blocks (``authorization``,
  ``tls``, operator mode with a memory resolver).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from oqron_nats.testing.server import LocalServer

# -- certificates ---------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


class Pki:
    """A CA, a server and a client certificate it signed, and an unrelated CA and client."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca = self._ca("oqron test CA", "ca")
        other_key, other = self._ca("an unrelated CA", "other-ca")
        self._leaf(ca_key, ca, "localhost", "server", server=True)
        self._leaf(ca_key, ca, "oqron test client", "client", server=False)
        self._leaf(other_key, other, "a stranger", "stranger", server=False)

    def path(self, name: str) -> Path:
        """``ca``, ``other-ca``, ``server``, ``client``, ``stranger`` (certificates), or
        ``server-key``, ``client-key``, ``stranger-key``."""
        return self.dir / f"{name}.pem"

    def _ca(self, subject: str, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        cert = (
            _builder(subject, _name(subject), key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        self._write(name, cert, None)
        return key, cert

    def _leaf(
        self,
        ca_key: ec.EllipticCurvePrivateKey,
        ca: x509.Certificate,
        subject: str,
        name: str,
        *,
        server: bool,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(subject, ca.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        self._write(name, builder.sign(ca_key, hashes.SHA256()), key)

    def _write(
        self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None
    ) -> None:
        self.path(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            self.path(f"{name}-key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            self.path(f"{name}-key").chmod(0o600)


def tls_block(pki: Pki, *, verify: bool) -> str:
    """A server ``tls {}`` block; ``verify`` asks every client for a certificate (mutual TLS)."""
    return (
        "tls {\n"
        f'  cert_file: "{pki.path("server")}"\n'
        f'  key_file: "{pki.path("server-key")}"\n'
        f'  ca_file: "{pki.path("ca")}"\n'
        f"  verify: {'true' if verify else 'false'}\n"
        "  timeout: 2\n"
        "}\n"
    )


# -- nkeys and JWTs -------------------------------------------------------------------------------

OPERATOR = nkeys.PREFIX_BYTE_OPERATOR
ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT
USER = nkeys.PREFIX_BYTE_USER


def new_key(prefix: int) -> Any:
    """A fresh nkey pair of the kind ``prefix`` (OPERATOR, ACCOUNT or USER)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def public(key: Any) -> str:
    """The public key (``O...``, ``A...``, ``U...``) of a key pair."""
    return str(key.public_key.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(claims: dict[str, Any], signer: Any) -> str:
    """A JWT of ``claims`` issued and signed by ``signer``, with its ``jti`` (claims hash)."""
    claims = {**claims, "iat": int(time.time()), "iss": public(signer), "jti": ""}
    digest = hashlib.sha512(json.dumps(claims, sort_keys=True).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = signer.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(signature)}"


def operator_jwt(operator: Any) -> str:
    """A self-signed operator JWT."""
    return _jwt({"sub": public(operator), "name": "oqron-test-operator",
                 "nats": {"type": "operator", "version": 2}}, operator)  # fmt: skip


def account_jwt(operator: Any, account: Any, *, jetstream: bool = True) -> str:
    """An account JWT signed by the operator; unlimited, with JetStream unless told not."""
    js = -1 if jetstream else 0
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1, "mem_storage": js,
              "disk_storage": js, "streams": js, "consumer": js}  # fmt: skip
    claims = {"type": "account", "version": 2, "limits": limits}
    return _jwt({"sub": public(account), "name": "oqron-test-account", "nats": claims}, operator)


def user_jwt(account: Any, user: Any, *, expires: float | None = None) -> str:
    """A user JWT signed by the account, with no limits; ``expires`` in Unix seconds."""
    claims: dict[str, Any] = {
        "sub": public(user),
        "name": "oqron-test-user",
        "nats": {"type": "user", "version": 2, "pub": {}, "sub": {},
                 "subs": -1, "data": -1, "payload": -1},
    }  # fmt: skip
    if expires is not None:
        claims["exp"] = int(expires)
    return _jwt(claims, account)


def creds_file(path: Path, jwt: str, user: Any) -> Path:
    """Write a .creds file as ``nsc`` does: the user JWT, then the user's seed."""
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
    path.chmod(0o600)
    return path


class Operator:
    """An operator, a JetStream account and a system account: the server's trust chain."""

    def __init__(self) -> None:
        self.operator = new_key(OPERATOR)
        self.account = new_key(ACCOUNT)
        self.system = new_key(ACCOUNT)

    def config(self) -> str:
        """Operator mode with a memory resolver that preloads both accounts."""
        op, acct, sys_ = self.operator, self.account, self.system
        return (
            f'operator: "{operator_jwt(op)}"\n'
            f"system_account: {public(sys_)}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  {public(acct)}: "{account_jwt(op, acct)}"\n'
            f'  {public(sys_)}: "{account_jwt(op, sys_, jetstream=False)}"\n'
            "}\n"
        )

    def creds(self, path: Path, *, expires: float | None = None) -> Path:
        """A .creds file of a new user of the account."""
        user = new_key(USER)
        return creds_file(path, user_jwt(self.account, user, expires=expires), user)


# -- servers --------------------------------------------------------------------------------------


class SecuredServer(LocalServer):
    """A LocalServer with more configuration (authorization, tls, operator blocks)."""

    def __init__(self, config: str, store_dir: Path) -> None:
        super().__init__(store_dir=store_dir)
        self.config = config

    def _extra_config(self) -> str:
        return self.config

    @property
    def localhost_url(self) -> str:
        """The URL by host name (the server certificate names localhost and 127.0.0.1)."""
        return self.url.replace("127.0.0.1", "localhost")
