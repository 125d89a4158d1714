"""The service's HTTP surface: the desk (console package) plus operations endpoints."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from config import ConfigError, WebSettings

if TYPE_CHECKING:
    from controlroom.desk import DeskNode


def tls_context(settings: WebSettings) -> ssl.SSLContext | None:
    """The console's HTTPS context from ``web.certificate`` and ``web.key`` (TLS 1.2 or
    later, Python's default ciphers); None when they are not set (plain HTTP). A file
    that cannot be read or a key that does not match is a start-up ConfigError."""
    if not settings.certificate:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.certificate, settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("web.certificate", f"cannot load {settings.certificate} with "
                          f"{settings.key}: {exc}") from None
    return ctx


def console_url(settings: WebSettings, port: int | None) -> str:
    """Where the console is, for start-up lines: ``https://`` when it serves TLS."""
    scheme = "https" if settings.certificate else "http"
    return f"{scheme}://{settings.bind}:{port or settings.port}/"


def build_app(service: DeskNode) -> web.Application:
    """The console app with ``/healthz``, ``/readyz`` and ``/metrics`` added."""
    try:
        from console.app import create_app
        from controlroom.desk import ServiceDesk
    except ImportError:  # console not installed: operations endpoints only
        app = web.Application()
    else:
        app = create_app(backend=ServiceDesk(service), db=service.db,
                         settings=service.settings.web)
        from console.live import HUB

        app[HUB].on_resync = lambda stage: (
            service.m_live_resyncs.inc(stage="page") if stage == "page" else None)

    async def healthz(_: web.Request) -> web.Response:
        # 200 even when degraded: the node still takes calls (Service.health).
        return web.json_response(service.health())

    async def readyz(_: web.Request) -> web.Response:
        ok = service.ready and not service._draining
        return web.json_response({"ready": ok, "draining": service._draining},
                                 status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        from controlroom.operations import metrics_guard, metrics_response

        # the token, or loopback only, or not here at all (web.metrics_port)
        refused = metrics_guard(service, request)
        if refused is not None:
            return web.Response(status=refused, text="metrics: refused\n",
                                headers={"WWW-Authenticate": "Bearer"} if refused == 401 else {})
        return metrics_response(service)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
