"""The console web application: pages, REST API, live WebSocket.

``create_app`` is the only entry point; the service passes its :class:`DeskBackend`,
the shared :class:`Database` and the ``web`` settings. Everything the pages load is
served from ``console/static`` (no CDN, no build step) under a strict
Content-Security-Policy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from config import WebSettings
from store.db import Database

from . import users
from .api import add_routes
from .backend import DeskBackend, DeskError, Pending
from .http import FORWARDED_HTTPS, ApiError, is_https, session_of
from .keys import (
    BACKEND,
    DB,
    SESSION_RECHECK_KEY,
    SESSIONS_SEEN,
    SETTINGS,
    THROTTLE,
    TICKETS,
    LoginThrottle,
)
from .live import HISTORY, HUB, SESSION_RECHECK, History, Hub, live_ctx, websocket

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"

PAGES = {"desk": "handler", "wallboard": "supervisor", "auditor": "auditor", "admin": "admin"}
"""Page name -> role it needs."""

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'")


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """API refusals as ``{"error": ...}``; never a stack trace or a 500 for bad input."""
    try:
        return await handler(request)
    except ApiError as e:
        return _json_error(e.status, e.message)
    except Pending as e:  # not an error, and not a success either
        return web.json_response({"ok": False, "pending": True, "error": e.message},
                                 status=e.status)
    except DeskError as e:
        return _json_error(e.status, e.message)
    except web.HTTPException as e:
        if request.path.startswith("/api/") and e.status >= 400:
            return _json_error(e.status, e.reason)
        raise
    except Exception:
        log.exception("console.unhandled", path=request.path, method=request.method)
        if request.path.startswith("/api/"):
            return _json_error(500, "internal error")
        raise


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    hsts = request.app[SETTINGS].hsts_seconds
    if hsts and is_https(request):  # (over plain HTTP browsers ignore it: RFC 6797 §8.1)
        response.headers.setdefault("Strict-Transport-Security", f"max-age={hsts}")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")


def _page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    role = PAGES.get(name)

    async def serve(request: web.Request) -> web.StreamResponse:
        if role is not None:
            s = await session_of(request)
            if s is None:
                raise web.HTTPFound(f"/login?next=/{name}")
            if role not in s.user.roles:
                raise web.HTTPFound("/")
        return web.FileResponse(STATIC / f"{name}.html", headers={"Cache-Control": "no-store"})

    return serve


async def _home(request: web.Request) -> web.StreamResponse:
    s = await session_of(request)
    if s is None:
        raise web.HTTPFound("/login")
    for page, role in PAGES.items():
        if role in s.user.roles:
            raise web.HTTPFound(f"/{page}")
    raise web.HTTPForbidden(text="no role")


def forwarded(trusted: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: behind a trusted reverse proxy, the request as the browser made it.

    Only when the connection comes from an address in ``trusted`` (``web.trusted_proxies``)
    are ``X-Forwarded-Proto`` and ``X-Forwarded-For`` read: ``https`` makes the request
    count as HTTPS (``request.secure``: HSTS, the Secure ``__Host-`` cookie), and the
    client address (``request.remote``, for logs, the audit trail and login throttling)
    becomes the nearest address in X-Forwarded-For that is not itself a trusted proxy
    (each proxy appends the address it saw, so earlier entries are the client's word and
    only the last untrusted one is known). From anyone else both headers are ignored, so
    a browser cannot claim HTTPS or another address by sending them."""
    nets = [ipaddress.ip_network(n, strict=False) for n in trusted]

    def is_trusted(addr: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(addr or "")
        except ValueError:
            return False
        return any(ip in n for n in nets)

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not nets or not peer or not is_trusted(peer[0]):
            return await handler(request)
        changes: dict[str, Any] = {}
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            changes["scheme"] = proto
            request[FORWARDED_HTTPS] = proto == "https"  # (the clone copies it)
        hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", []))
                .split(",") if h.strip()]
        for hop in reversed(hops):
            if not is_trusted(hop):
                try:
                    changes["remote"] = str(ipaddress.ip_address(hop))
                except ValueError:
                    log.warning("console.bad_forwarded_for", peer=peer[0], value=hop[:64])
                break
        return await handler(request.clone(**changes) if changes else request)

    return middleware


def create_app(*, backend: DeskBackend, db: Database, settings: WebSettings,
               history_interval: float = 60.0, history_hours: float = 4.0) -> web.Application:
    """The console application (pages, ``/api/*``, ``/api/ws``).

    ``history_interval``: seconds between wallboard samples kept for the chart.
    """
    users.migrate(db)
    app = web.Application(middlewares=[forwarded(settings.trusted_proxies), errors],
                          client_max_size=256 * 1024)
    app[BACKEND] = backend
    app[DB] = db
    app[SETTINGS] = settings
    app[HUB] = Hub(backend, client_queue=settings.live_queue)
    app[HISTORY] = History(interval=history_interval, hours=history_hours)
    app[TICKETS] = {}
    app[THROTTLE] = LoginThrottle()
    app[SESSIONS_SEEN] = {}
    app[SESSION_RECHECK_KEY] = SESSION_RECHECK
    add_routes(app)
    app.router.add_get("/api/ws", websocket)
    app.router.add_get("/", _home)
    app.router.add_get("/login", _page("login"))
    for name in PAGES:
        app.router.add_get(f"/{name}", _page(name))
    app.router.add_static("/static/", STATIC, append_version=False)
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(live_ctx(history_interval))
    app.on_shutdown.append(app[HUB].close_all)
    return app
