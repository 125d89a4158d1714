"""Typed application keys shared by the console's modules (the live hub's own, HUB and
HISTORY, are in :mod:`console.live`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from config import WebSettings
from store.db import Database

from .backend import DeskBackend


@dataclass
class Ticket:
    """Permission to stream one recording, granted after a logged justification."""

    username: str
    call_id: str
    expires_at: float
    export: bool


@dataclass
class LoginThrottle:
    """Recent failed logins per user name (a brute-force brake, in memory)."""

    window: float = 300.0
    limit: int = 5
    failures: dict[str, list[float]] = field(default_factory=dict)

    def blocked(self, username: str, now: float) -> bool:
        recent = [t for t in self.failures.get(username, []) if now - t < self.window]
        self.failures[username] = recent
        return len(recent) >= self.limit

    def failed(self, username: str, now: float) -> None:
        self.failures.setdefault(username, []).append(now)
        # Bound memory under a spray of random names.
        if len(self.failures) > 10_000:
            self.failures.clear()

    def succeeded(self, username: str) -> None:
        self.failures.pop(username, None)


BACKEND: web.AppKey[DeskBackend] = web.AppKey("backend", DeskBackend)
DB: web.AppKey[Database] = web.AppKey("db", Database)
SETTINGS: web.AppKey[WebSettings] = web.AppKey("settings", WebSettings)
TICKETS: web.AppKey[dict[str, Ticket]] = web.AppKey("tickets", dict)
THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("throttle", LoginThrottle)
SESSIONS_SEEN: web.AppKey[dict[str, Any]] = web.AppKey("sessions_seen", dict)
"""Sessions this node looked up lately, by token hash: honoured while the store is away
(``console.http.session_of``)."""
SESSION_RECHECK_KEY: web.AppKey[float] = web.AppKey("session_recheck", float)
"""Seconds between WebSocket session re-checks (tests shorten it)."""
