"""HTTP basics shared by the console's API, its live WebSocket and its app: the session
cookie, the error a handler raises and the endpoint table's types (the table itself is
:data:`console.api.ENDPOINTS`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from store.spool import classify

from . import users
from .keys import DB, SESSIONS_SEEN, SETTINGS

Handler = Callable[[web.Request, "Ctx"], Awaitable[web.StreamResponse]]

CSRF_HEADER = "X-CSRF-Token"


FORWARDED_HTTPS = web.RequestKey("forwarded_https", bool)
"""Request key: a trusted proxy said the browser used HTTPS (set by
:func:`console.app.forwarded` on the request as received, so the response-prepare
signal, which sees that one rather than the middleware's clone, knows it too)."""


def is_https(request: web.Request) -> bool:
    """The browser reached us over HTTPS: our own TLS (``web.certificate``), a trusted
    proxy's ``X-Forwarded-Proto: https`` (``web.trusted_proxies``, applied by
    :func:`console.app.forwarded`), or any TLS proxy in front (``web.secure_cookies``)."""
    return (request.secure or request.get(FORWARDED_HTTPS, False)
            or request.app[SETTINGS].secure_cookies)


def cookie_name(request: web.Request) -> str:
    """``__Host-`` prefixed when Secure, so a sibling host cannot plant the cookie."""
    return "__Host-cr_session" if is_https(request) else "cr_session"


class ApiError(Exception):
    """A refused request; becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Ctx:
    """What a checked request carries into its handler."""

    session: users.Session | None
    body: dict[str, Any]

    @property
    def user(self) -> users.User:
        assert self.session is not None
        return self.session.user


@dataclass(frozen=True)
class Endpoint:
    """One API operation (also an OpenAPI operation)."""

    method: str
    path: str
    handler: Handler
    roles: frozenset[str] | None
    summary: str
    body: dict[str, Any] | None = None
    query: tuple[tuple[str, str, str], ...] = ()
    """(name, JSON type, description) of each query parameter."""
    binary: bool = False

    @property
    def csrf(self) -> bool:
        return self.method not in ("GET", "HEAD") and self.roles is not None


SESSIONS_SEEN_MAX = 10_000
"""Most sessions remembered for a store outage (then the memory starts again)."""


def forget_session(request: web.Request, token: str) -> None:
    """Logout: this node no longer honours the session, even while the store is away."""
    seen = request.app.get(SESSIONS_SEEN)
    if seen is not None and token:
        seen.pop(hashlib.sha256(token.encode()).hexdigest(), None)


async def session_of(request: web.Request) -> users.Session | None:
    """The request's live session. While the store is away (a restart, a cut: the
    lookup fails at once) a session this node looked up before is honoured until it
    expires, so handlers' desks keep working; a logout or a disabled user on another
    node meanwhile takes effect here when the store is back."""
    token = request.cookies.get(cookie_name(request), "")
    if not token:
        return None
    seen = request.app.get(SESSIONS_SEEN)
    key = hashlib.sha256(token.encode()).hexdigest()
    try:
        session = users.get_session(request.app[DB], token)
    except Exception as exc:
        if seen is None or classify(exc) is None:
            raise
        hit = seen.get(key)
        return hit if hit is not None and hit.expires_at > time.time() else None
    if seen is not None:
        if session is None:
            seen.pop(key, None)
        else:
            if len(seen) >= SESSIONS_SEEN_MAX:
                seen.clear()
            seen[key] = session
    return session
