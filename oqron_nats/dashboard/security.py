"""Who may see the dashboard, and which POSTs it accepts: auth (basic or bearer, compared in
constant time), the CSRF token of every action, and read-only mode's refusal.

CSRF: each browser gets a random cookie (``SameSite=Strict``, HTTP-only); every form carries
the HMAC of that cookie under the dashboard's secret, and a POST without the two matching, or
from another origin, is refused before anything is read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .settings import Auth, BasicAuth

CSRF_COOKIE = "oqron_csrf"
CSRF_FIELD = "csrf"
REALM = 'Basic realm="oqron dashboard", charset="UTF-8"'


def authorized(auth: Auth | None, header: str | None) -> bool:
    """Whether an ``Authorization`` header passes ``auth`` (no auth: every request does)."""
    if auth is None:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if isinstance(auth, BasicAuth):
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        same_user = hmac.compare_digest(user.encode(), auth.user.encode())
        same_password = hmac.compare_digest(password.encode(), auth.password.encode())
        return bool(sep) and same_user and same_password
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), auth.token.encode()
    )


class AuthMiddleware:
    """Refuses every request (pages, events, static files) that does not pass the auth."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorized request on; answer 401 to any other."""
        if scope["type"] not in ("http", "websocket") or self.auth is None:
            await self.app(scope, receive, send)
            return
        if authorized(self.auth, HTTPConnection(scope).headers.get("authorization")):
            await self.app(scope, receive, send)
            return
        challenge = REALM if isinstance(self.auth, BasicAuth) else "Bearer"
        refused = PlainTextResponse(
            "401: this dashboard needs authentication", 401, {"WWW-Authenticate": challenge}
        )
        await refused(scope, receive, send)


class Csrf:
    """Issues and checks the CSRF tokens of one dashboard."""

    def __init__(self, secret: bytes | None = None, public_origin: str | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.public_origin = public_origin
        """The origin browsers reach the dashboard at through a proxy that rewrites ``Host``."""

    def browser_id(self, request: HTTPConnection) -> str | None:
        """The browser's CSRF cookie, if it has a well-formed one."""
        value = request.cookies.get(CSRF_COOKIE, "")
        return value if 20 <= len(value) <= 100 and value.isascii() else None

    def token(self, browser: str) -> str:
        """The token the forms of browser ``browser`` carry."""
        return hmac.new(self._secret, browser.encode(), hashlib.sha256).hexdigest()

    def set_cookie(self, response: Response, browser: str, path: str) -> None:
        """Give the browser its cookie (the same one again if it had one)."""
        response.set_cookie(
            CSRF_COOKIE, browser, path=path or "/", httponly=True, samesite="strict"
        )

    async def check(self, request: Request) -> str | None:
        """Why a POST is refused (None: it passes): its token must match its cookie, and its
        origin, when the browser says it, must be the dashboard's own: the ``Host`` it was
        sent to, or the configured public origin (behind a proxy that rewrites ``Host``)."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin and origin != "null" and not self._ours(origin, request.headers.get("host")):
            return "the request came from another site"
        browser = self.browser_id(request)
        if browser is None:
            return "the request has no CSRF cookie (reload the page)"
        form = await request.form()
        sent = form.get(CSRF_FIELD)
        if not isinstance(sent, str) or not hmac.compare_digest(sent, self.token(browser)):
            return "the request's CSRF token does not match (reload the page)"
        return None

    def _ours(self, origin: str, host: str | None) -> bool:
        """Whether an ``Origin`` (or ``Referer``) names this dashboard."""
        parts = urlsplit(origin)
        if host is not None and parts.netloc == host:
            return True
        said = f"{parts.scheme.lower()}://{parts.netloc.lower()}"
        return self.public_origin is not None and said == self.public_origin


def new_browser_id() -> str:
    """A fresh random CSRF cookie value."""
    return secrets.token_urlsafe(32)
