"""Fixtures for the console tests: temp database, FakeBackend, users of each role."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from config import WebSettings
from console import users
from console.app import create_app
from store.db import Database
from tests.console.fake import FakeBackend

PASSWORD = "correct horse battery"
ROLE_USERS = {"handler": "h1", "supervisor": "sup1", "auditor": "aud1", "admin": "adm1"}


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at production cost takes ~250 ms here; tests use a cheap one."""
    monkeypatch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024,
                                                         parallelism=1))


@pytest.fixture
def db(tmp_path: Path) -> Database:
    d = Database(tmp_path / "console.sqlite")
    users.migrate(d)
    for role, name in ROLE_USERS.items():
        users.create_user(d, name, PASSWORD, [role])
    yield d
    d.close()


@pytest.fixture
def backend(tmp_path: Path) -> FakeBackend:
    fb = FakeBackend(recordings_dir=tmp_path / "rec")
    now = time.time()
    fb.past = fb.add_past_call(  # type: ignore[attr-defined]
        "999", "+447700900123", arrived_at=now - 3600, handler_id="h2",
        transcript=[("handler", "Police emergency, what is happening?"),
                    ("caller", "A man is waving a knife outside the shop on Elm Road")],
        incident="INC-1", grade="1")
    return fb


@pytest.fixture
def app(backend: FakeBackend, db: Database) -> Any:
    return create_app(backend=backend, db=db, settings=WebSettings(), history_interval=3600)


class Api:
    """A test client logged in as one role (cookie set directly, no password round trip)."""

    def __init__(self, client: TestClient, db: Database) -> None:
        self.client, self.db = client, db
        self.csrf = ""

    def as_role(self, role: str | None) -> Api:
        self.client.session.cookie_jar.clear()
        self.csrf = ""
        if role is not None:
            user = users.User(ROLE_USERS[role], frozenset([role]),
                                      ROLE_USERS[role] if role == "handler" else None)
            token, session = users.open_session(self.db, user, hours=1)
            self.client.session.cookie_jar.update_cookies(
                {"cr_session": token}, self.client.make_url("/"))
            self.csrf = session.csrf
        return self

    async def call(self, method: str, path: str, body: Any = None, *,
                   csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        kw: dict[str, Any] = {"headers": headers}
        if body is not None:
            kw["json"] = body
        resp = await self.client.request(method, path, **kw)
        ct = resp.headers.get("Content-Type", "")
        data = await resp.json() if ct.startswith("application/json") else await resp.read()
        return resp.status, data


@pytest.fixture
async def api(aiohttp_client: Callable[..., Awaitable[TestClient]], app: Any, db: Database) -> Api:
    return Api(await aiohttp_client(app), db)
