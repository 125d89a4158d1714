"""Login, desk actions, supervisor actions and bad input through the REST API."""

from __future__ import annotations

import time
from typing import Any

from aiohttp.test_utils import TestClient

from config import WebSettings
from console import users
from console.app import create_app
from store.db import Database
from tests.console.fake import FakeBackend

from .conftest import PASSWORD, Api

THRIVE = {"threat": "knife seen", "harm": "none yet", "risk": "high", "investigation": "CCTV",
          "vulnerability": "elderly caller", "engagement": "stay on line"}


async def test_login_cookie_flags_and_me(api: Api) -> None:
    """Login sets an HttpOnly SameSite=Strict cookie (no Secure over plain HTTP) and /api/me works."""
    resp = await api.client.post("/api/login", json={"username": "h1", "password": PASSWORD})
    assert resp.status == 200
    me = await resp.json()
    assert me["username"] == "h1" and me["roles"] == ["handler"] and me["handler_id"] == "h1"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("cr_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    r2 = await api.client.get("/api/me")
    assert (await r2.json())["csrf"] == me["csrf"]
    # logout ends the session server-side
    r3 = await api.client.post("/api/logout", headers={"X-CSRF-Token": me["csrf"]})
    assert r3.status == 200
    assert (await api.client.get("/api/me")).status == 401


async def test_secure_cookie_uses_host_prefix(aiohttp_client: Any, backend: FakeBackend,
                                              db: Database) -> None:
    """With secure_cookies the cookie is __Host- prefixed and carries Secure."""
    app = create_app(backend=backend, db=db, settings=WebSettings(secure_cookies=True))
    client: TestClient = await aiohttp_client(app)
    resp = await client.post("/api/login", json={"username": "h1", "password": PASSWORD})
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("__Host-cr_session=") and "Secure" in cookie and "Path=/" in cookie


async def test_wrong_password_and_throttle(api: Api) -> None:
    """Wrong password -> 401; after 5 failures the name is blocked (429) even with the right one."""
    for _ in range(5):
        resp = await api.client.post("/api/login", json={"username": "h1", "password": "wrong pw!"})
        assert (resp.status, await resp.json()) == (401, {"error": "wrong user name or password"})
    resp = await api.client.post("/api/login", json={"username": "h1", "password": PASSWORD})
    assert resp.status == 429
    resp = await api.client.post("/api/login", json={"username": "nobody", "password": PASSWORD})
    assert resp.status == 401


async def test_expired_session_refused(api: Api, db: Database) -> None:
    """A session past its expiry is refused."""
    user = users.User("h1", frozenset({"handler"}), "h1")
    token, _ = users.open_session(db, user, hours=1, now=time.time() - 7200)
    api.client.session.cookie_jar.update_cookies({"cr_session": token}, api.client.make_url("/"))
    assert (await api.client.get("/api/desk")).status == 401


async def test_bad_requests_are_4xx_with_message(api: Api) -> None:
    """Malformed JSON, wrong content type, schema violations and unknown paths give clear 4xx."""
    a = api.as_role("handler")
    h = {"X-CSRF-Token": a.csrf}
    r = await a.client.post("/api/desk/state", data=b"{nope", headers={**h, "Content-Type": "application/json"})
    assert (r.status, await r.json()) == (400, {"error": "body is not valid JSON"})
    r = await a.client.post("/api/desk/state", data=b"state=available", headers=h)
    assert (r.status, await r.json()) == (415, {"error": "body must be application/json"})
    assert await a.call("POST", "/api/desk/state", {"state": "sleeping"}) == (
        400, {"error": "state: 'sleeping' is not one of ['available', 'not_ready', 'logged_out']"})
    assert await a.call("POST", "/api/desk/state", {"state": "available", "x": 1}) == (
        400, {"error": "body: Additional properties are not allowed ('x' was unexpected)"})
    assert await a.call("POST", "/api/desk/state", [1, 2]) == (400, {"error": "body: [1, 2] is not of type 'object'"})
    assert await a.call("GET", "/api/nothing-here") == (404, {"error": "Not Found"})
    assert await a.call("DELETE", "/api/desk") == (405, {"error": "Method Not Allowed"})
    status, data = await a.call("GET", "/api/calls/previous?number=")
    assert (status, data) == (400, {"error": "number is required (max 64 characters)"})
    status, data = await a.call("GET", "/api/calls/previous?number=1&limit=x")
    assert (status, data) == (400, {"error": "limit must be an integer"})
    status, data = await a.call("POST", "/api/desk/calls/x/transfer", {"to_line": "101", "to_handler": "h2"})
    assert status == 400 and "has too many properties" in data["error"]
    s = api.as_role("auditor")
    status, data = await s.call("POST", "/api/audit/search", {"query": "knife", "justification": "audit",
                                                              "date_from": "23/11/2026"})
    assert (status, data) == (400, {"error": "date_from must be YYYY-MM-DD, YYYY-MM-DD HH:MM or epoch seconds"})


async def test_handler_call_flow(api: Api, backend: FakeBackend) -> None:
    """Offer -> accept -> hold -> end -> wrap-up -> ready reaches the backend in order, own calls only."""
    a = api.as_role("handler")
    assert await a.call("POST", "/api/desk/state", {"state": "available"}) == (200, {"ok": True})
    cid = backend.arrive("999", "+447700900999", display_name="A CALLER", location="52.48,-1.89")
    other = backend.arrive("101", "+447700900111")
    backend.offer(other, "h2")
    backend.offer(cid, "h1")
    status, view = await a.call("GET", "/api/desk")
    assert view["offer"]["call_id"] == cid and view["offer"]["line"] == "999"
    assert view["offer"]["caller"] == "+447700900999"
    # someone else's ringing call cannot be accepted from this desk
    assert await a.call("POST", "/api/desk/offer/accept", {"call_id": other}) == (
        409, {"error": f"call {other} is not ringing on your phone"})
    assert await a.call("POST", "/api/desk/offer/accept", {"call_id": cid}) == (200, {"ok": True})
    assert await a.call("POST", f"/api/desk/calls/{cid}/hold", {"on": True}) == (200, {"ok": True})
    assert await a.call("POST", f"/api/desk/calls/{cid}/transfer", {"to_handler": "h1"}) == (
        400, {"error": "cannot transfer a call to yourself"})
    assert await a.call("POST", f"/api/desk/calls/{other}/end") == (
        409, {"error": f"call {other} is not your connected call"})
    assert await a.call("POST", f"/api/desk/calls/{cid}/end") == (200, {"ok": True})
    body = {"thrive": THRIVE, "grade": "1", "notes": "knife, officers sent"}
    assert await a.call("POST", f"/api/desk/calls/{cid}/wrapup", body) == (200, {"ok": True})
    assert await a.call("POST", "/api/desk/wrapup/end") == (200, {"ok": True})
    assert await a.call("POST", "/api/desk/wrapup/end") == (409, {"error": "handler h1 is available, not in wrap-up"})
    assert backend.actions == [
        ("set_handler_state", "h1", "available", ""), ("accept_offer", "h1", cid),
        ("hold", cid, True), ("end_call", cid),
        ("wrapup", cid, "h1", THRIVE, "1", "knife, officers sent"), ("end_wrapup", "h1")]


async def test_reject_and_transfer_to_line(api: Api, backend: FakeBackend) -> None:
    """Reject puts the call back at the head of the queue; transfer to a line re-queues it."""
    a = api.as_role("handler")
    cid = backend.arrive("101", "+441210000000")
    backend.offer(cid, "h1")
    assert await a.call("POST", "/api/desk/offer/reject", {"call_id": cid}) == (200, {"ok": True})
    assert backend.waiting[0] == cid
    backend.offer(cid, "h1")
    await a.call("POST", "/api/desk/offer/accept", {"call_id": cid})
    assert await a.call("POST", f"/api/desk/calls/{cid}/transfer", {"to_line": "999"}) == (200, {"ok": True})
    assert backend.calls[cid]["line"] == "999" and backend.waiting[0] == cid
    assert await a.call("POST", f"/api/desk/calls/{cid}/transfer", {"to_line": "nowhere"}) == (
        409, {"error": f"call {cid} is not your connected call"})


async def test_callbacks(api: Api, backend: FakeBackend) -> None:
    """An abandoned 999 appears on the call-back list; a handler takes it and closes it."""
    cid = backend.arrive("999", "+447700900321")
    backend.hang_up(cid)
    a = api.as_role("handler")
    status, cbs = await a.call("GET", "/api/callbacks")
    assert status == 200 and [c["call_id"] for c in cbs] == [cid] and cbs[0]["state"] == "open"
    cb = cbs[0]["cb_id"]
    assert await a.call("POST", f"/api/callbacks/{cb}/take") == (200, {"ok": True})
    assert await a.call("POST", f"/api/callbacks/{cb}/take") == (409, {"error": f"call-back {cb} is taken"})
    assert await a.call("POST", f"/api/callbacks/{cb}/complete", {"outcome": "spoke - no police need"}) == (200, {"ok": True})
    _, cbs = await a.call("GET", "/api/callbacks")
    assert cbs == [] and backend.cbs[cb]["state"] == "done" and backend.cbs[cb]["taken_by"] == "h1"
    assert await a.call("POST", "/api/callbacks/zzz/complete", {"outcome": "x"}) == (404, {"error": "no call-back 'zzz'"})


async def test_supervisor_actions(api: Api, backend: FakeBackend) -> None:
    """Supervisor reads the wallboard, re-prioritises a waiting call, sets not ready and skills."""
    first = backend.arrive("101", "+441")
    second = backend.arrive("101", "+442")
    s = api.as_role("supervisor")
    status, snap = await s.call("GET", "/api/wallboard")
    line101 = next(ln for ln in snap["lines"] if ln["name"] == "101")
    assert [w["call_id"] for w in line101["waiting"]] == [first, second]
    assert await s.call("POST", f"/api/supervisor/calls/{second}/priority", {"priority": 0}) == (200, {"ok": True})
    _, snap = await s.call("GET", "/api/wallboard")
    line101 = next(ln for ln in snap["lines"] if ln["name"] == "101")
    assert [w["call_id"] for w in line101["waiting"]] == [second, first]
    assert (await s.call("POST", "/api/supervisor/handlers/h2/state", {"state": "not_ready"}))[0] == 400
    assert await s.call("POST", "/api/supervisor/handlers/h2/state",
                        {"state": "not_ready", "reason": "Debrief"}) == (200, {"ok": True})
    assert backend.handlers["h2"]["reason"] == "Debrief (set by sup1)"
    assert await s.call("POST", "/api/supervisor/handlers/h2/skills", {"skills": {"999": 7, "welsh": 3}}) == (200, {"ok": True})
    assert backend.handlers["h2"]["skills"] == {"999": 7, "welsh": 3}
    status, data = await s.call("POST", "/api/supervisor/handlers/h2/skills", {"skills": {"999": 11}})
    assert status == 400 and data["error"] == "skills/999: 11 is greater than the maximum of 10"
    assert await s.call("POST", "/api/supervisor/handlers/zz/state", {"state": "not_ready", "reason": "x"}) == (
        404, {"error": "no handler 'zz'"})
    status, hist = await s.call("GET", "/api/wallboard/history")
    assert status == 200 and hist["interval"] == 3600


async def test_admin_creates_user(api: Api, db: Database) -> None:
    """Admin lists and creates users; a weak password or duplicate is a 400 with the reason."""
    a = api.as_role("admin")
    status, data = await a.call("POST", "/api/admin/users", {"username": "h9", "password": "short", "roles": ["handler"]})
    assert (status, data) == (400, {"error": "password must be at least 12 characters"})
    status, data = await a.call("POST", "/api/admin/users", {"username": "h9", "password": "Password2026!", "roles": ["handler"]})
    assert status == 400 and "too common" in data["error"]
    status, data = await a.call("POST", "/api/admin/users", {"username": "h9", "password": "long enough to pass", "roles": ["handler"]})
    assert (status, data) == (200, {"username": "h9", "roles": ["handler"], "handler_id": "h9"})
    status, data = await a.call("POST", "/api/admin/users", {"username": "h9", "password": "long enough to pass", "roles": ["handler"]})
    assert (status, data) == (400, {"error": "user 'h9' already exists"})
    _, listed = await a.call("GET", "/api/admin/users")
    assert "h9" in [u["username"] for u in listed] and all("password_hash" not in u for u in listed)
    assert users.verify_password(db, "h9", "long enough to pass") is not None


async def test_openapi_lists_every_endpoint(api: Api) -> None:
    """/api/openapi.json is public and documents every route with its body schema."""
    from console.api import ENDPOINTS
    status, doc = await api.as_role(None).call("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for ep in ENDPOINTS:
        op = doc["paths"][ep.path][ep.method.lower()]
        assert op["summary"] == ep.summary
        assert ("requestBody" in op) == (ep.body is not None)
    assert "/api/ws" in doc["paths"]


def test_create_user_validation(db: Database) -> None:
    """create_user refuses bad names, unknown roles; a non-handler has no handler id."""
    import pytest
    with pytest.raises(users.UserError, match="username must be"):
        users.create_user(db, "bad name", "long enough to pass", ["admin"])
    with pytest.raises(users.UserError, match="roles must be"):
        users.create_user(db, "x1", "long enough to pass", ["root"])
    u = users.create_user(db, "boss", "long enough to pass", ["admin", "supervisor"])
    assert u.handler_id is None and u.roles == {"admin", "supervisor"}
    u = users.create_user(db, "hx", "long enough to pass", ["handler"], handler_id="H-77")
    assert u.handler_id == "H-77"
