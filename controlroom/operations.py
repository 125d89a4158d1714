"""What a node needs to be run by operators, wired into :class:`~controlroom.service.Service`:

* metrics beyond the call path's own: routing-decision time (every router call, timed
  by a thin proxy), CAD latency (commit of a message to the broker's PUBACK, read from
  the outbox's ``created_at``/``delivered_at``), free disk, transcription backlog,
  retention counts; and ``/metrics`` on its own listener when ``web.metrics_port`` is set;
* the first admin, created from a secret when the console has no user yet;
* the scheduled retention purge (:mod:`controlroom.retention`) in a thread, its summary
  published to the CAD as a system event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from aiohttp import web

    from controlroom.node import Node

log = structlog.get_logger("controlroom.operations")

ROUTING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
CAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0)
CAD_LATENCY_INTERVAL = 2.0


class TimedRouter:
    """The router with every decision timed (``controlroom_routing_decision_seconds``,
    label ``decision`` = the router method). The router is pure and synchronous, so the
    wall time of a call is the decision's cost."""

    def __init__(self, router: Any, histogram: Any) -> None:
        self._router = router
        self._histogram = histogram
        self._wrapped: dict[str, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._router, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        fn = self._wrapped.get(name)
        if fn is None:
            observe = self._histogram.observe

            def fn(*args: Any, _attr: Any = attr, _name: str = name, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _attr(*args, **kwargs)
                finally:
                    observe(time.perf_counter() - t0, decision=_name)

            self._wrapped[name] = fn
        return fn


def setup_metrics(service: Node) -> None:
    """Add the operations metrics to ``service.metrics`` (after the service's own)."""
    m = service.metrics
    service.m_routing = m.histogram(  # type: ignore[attr-defined]
        "controlroom_routing_decision_seconds",
        "Time the router takes per decision, by router call", ROUTING_BUCKETS)
    service.router = TimedRouter(service.router, service.m_routing)  # type: ignore[assignment, attr-defined]
    service.m_cad_latency = m.histogram(  # type: ignore[attr-defined]
        "controlroom_cad_latency_seconds",
        "CAD message committed to the outbox -> acknowledged by the broker (PUBACK)",
        CAD_BUCKETS)
    service.m_retention = m.counter(  # type: ignore[attr-defined]
        "controlroom_retention_deleted_total",
        "Records deleted past retention, by kind (recording, transcript, call)")

    def disk() -> list[tuple[dict[str, str], float]]:
        out = []
        s = service.settings.storage
        for volume, path in (("data", s.data_dir), ("recordings", s.recordings_dir)):
            try:
                st = os.statvfs(path)
            except OSError:
                continue
            out.append(({"volume": volume, "stat": "free_bytes"}, float(st.f_bavail * st.f_frsize)))
            out.append(({"volume": volume, "stat": "size_bytes"}, float(st.f_blocks * st.f_frsize)))
        return out

    def backlog() -> list[tuple[dict[str, str], float]]:
        db = getattr(service, "transcripts_db", service.db)
        try:
            rows = db.query("SELECT state, COUNT(*) AS n FROM transcription_jobs"
                            " WHERE state IN ('queued', 'running') GROUP BY state")
        except Exception:  # noqa: BLE001 - no transcription tables (engine none): no backlog
            return []
        counts = {"queued": 0.0, "running": 0.0}
        counts.update({r["state"]: float(r["n"]) for r in rows})
        return [({"state": k}, v) for k, v in sorted(counts.items())]

    def holds() -> list[tuple[dict[str, str], float]]:
        try:
            row = service.db.query_one("SELECT COUNT(*) AS n FROM retention_holds")
        except Exception:  # noqa: BLE001
            return []
        return [({}, float(row["n"] if row else 0))]

    m.gauge("controlroom_disk", "Free and total bytes of the data and recordings volumes", disk)
    m.gauge("controlroom_transcription_backlog", "Final transcription jobs waiting or running",
            backlog)
    m.gauge("controlroom_legal_holds", "Calls under legal hold", holds)


# -- /metrics --------------------------------------------------------------------------

def metrics_guard(service: Node, request: web.Request) -> int | None:
    """None when ``request`` may read ``/metrics`` on the console's listener, else the
    status to refuse it with (401 without the token, 403 from a non-loopback client
    when no token is configured)."""
    from config.loader import secret

    w = service.settings.web
    if w.metrics_port:
        return 404  # on its own listener only
    if w.metrics_token is not None:
        token = secret(w.metrics_token, key="web.metrics_token") or ""
        got = request.headers.get("Authorization", "")
        if token and hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return None
        return 401
    peer = (request.transport.get_extra_info("peername") or ("",))[0] if request.transport \
        else ""
    try:
        if ipaddress.ip_address(peer).is_loopback:
            return None
    except ValueError:
        pass
    return 403


def metrics_response(service: Node) -> web.Response:
    from aiohttp import web

    from controlroom.metrics import CONTENT_TYPE

    return web.Response(body=service.metrics.render().encode(),
                        headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})


async def start_metrics_listener(service: Node) -> Any:
    """``/metrics`` alone on ``web.metrics_bind:metrics_port`` (a scrape network); the
    token, when set, is required there too. Returns the runner (None when not set)."""
    from aiohttp import web

    w = service.settings.web
    if not w.metrics_port:
        return None

    async def metrics(request: web.Request) -> web.Response:
        if w.metrics_token is not None:
            from config.loader import secret

            token = secret(w.metrics_token, key="web.metrics_token") or ""
            if not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                       f"Bearer {token}".encode()):
                return web.Response(status=401, text="metrics need the bearer token\n",
                                    headers={"WWW-Authenticate": "Bearer"})
        return metrics_response(service)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, w.metrics_bind, w.metrics_port)
    await site.start()
    log.info("metrics listening", bind=w.metrics_bind, port=w.metrics_port)
    return runner


# -- first admin --------------------------------------------------------------------------

def ensure_first_admin(service: Node) -> bool:
    """Create ``web.first_admin`` (admin role) from its secret when no console user
    exists. True when created. The secret is never logged."""
    from config.loader import secret

    w = service.settings.web
    if not w.first_admin:
        return False
    from console import users

    users.migrate(service.db)
    if service.db.query_one("SELECT 1 FROM console_users LIMIT 1") is not None:
        return False
    from config import ConfigError

    password = secret(w.first_admin_password, key="web.first_admin_password") or ""
    try:
        users.create_user(service.db, w.first_admin, password, ["admin"])
    except users.UserError as exc:
        raise ConfigError("web.first_admin_password", str(exc)) from None
    log.info("console.first_admin_created", user=w.first_admin)
    return True


# -- scheduled tasks ----------------------------------------------------------------------

async def cad_latency_loop(service: Node) -> None:
    """Observe each newly acknowledged outbox message's commit -> PUBACK time."""
    try:
        row = service.db.query_one("SELECT MAX(id) AS id FROM outbox")
        last = int(row["id"] or 0) if row else 0
    except Exception:  # noqa: BLE001
        last = 0
    while True:
        await asyncio.sleep(CAD_LATENCY_INTERVAL)
        try:
            rows = service.db.query(
                "SELECT id, delivered_at, created_at FROM outbox WHERE id > ?"
                " ORDER BY id LIMIT 5000", (last,))
        except Exception:  # noqa: BLE001 - the store is away: the spool reports that
            continue
        for r in rows:
            if r["delivered_at"] is None:
                break  # in order: wait for the rest
            service.m_cad_latency.observe(  # type: ignore[attr-defined]
                max(0.0, r["delivered_at"] - r["created_at"]))
            last = r["id"]


async def retention_loop(service: Node) -> None:
    """Run the purge every ``retention.interval`` seconds in a thread."""
    from controlroom import retention

    s = service.settings
    retention.migrate(service.db)
    tdb = getattr(service, "transcripts_db", service.db)
    while True:
        try:
            summary = await asyncio.to_thread(
                retention.purge, service.db, tdb, s.retention, client="controlroom serve")
        except Exception:  # noqa: BLE001 - a failed run is retried next interval
            log.exception("retention.run_failed")
        else:
            for kind, n in summary.deleted.items():
                if n:
                    service.m_retention.inc(n, kind=kind)  # type: ignore[attr-defined]
            if summary.calls:
                msg = retention.system_message(s.node_id, summary)
                retention.record(service.db, msg)
                if service.publisher is not None:
                    service.publisher.publish_system(msg)
                log.info("retention.purged", **summary.deleted, held=summary.held)
        await asyncio.sleep(s.retention.interval)


async def start(service: Node) -> list[asyncio.Task[Any]]:
    """First admin, metrics listener and the scheduled tasks (call after the store and
    the publisher exist, before the web console starts)."""
    from controlroom import retention

    ensure_first_admin(service)
    retention.migrate(service.db)
    service.metrics_runner = await start_metrics_listener(service)  # type: ignore[attr-defined]
    tasks = [asyncio.create_task(cad_latency_loop(service), name="cad-latency")]
    if service.settings.retention.enabled:
        tasks.append(asyncio.create_task(retention_loop(service), name="retention"))
    return tasks


async def stop(service: Node) -> None:
    runner = getattr(service, "metrics_runner", None)
    if runner is not None:
        with contextlib.suppress(Exception):
            await runner.cleanup()
