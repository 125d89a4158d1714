"""Every endpoint refuses the wrong role, the anonymous caller and a missing CSRF token."""

from __future__ import annotations

import re
from typing import Any

import pytest

from console.api import ENDPOINTS, Endpoint
from console.users import ROLES
from tests.console.fake import FakeBackend

from .conftest import Api

THRIVE = {k: "x" for k in ("threat", "harm", "risk", "investigation", "vulnerability", "engagement")}
BODIES: dict[str, Any] = {
    "logout": None,
    "desk_state": {"state": "not_ready", "reason": "break"},
    "offer_accept": {"call_id": "nope"},
    "offer_reject": {"call_id": "nope"},
    "call_hold": {"on": True},
    "call_transfer": {"to_line": "101"},
    "supervisor_monitor": {"mode": "listen", "justification": "quality check"},
    "call_consult": {"step": "conference"},
    "call_wrapup": {"thrive": THRIVE, "grade": "2", "notes": ""},
    "callback_complete": {"outcome": "no reply"},
    "reprioritise": {"priority": 1},
    "supervisor_state": {"state": "not_ready", "reason": "training"},
    "supervisor_skills": {"skills": {"999": 5}},
    "search": {"query": "knife", "justification": "role test"},
    "call_view": {"justification": "role test"},
    "playback": {"justification": "role test"},
    "add_user": {"username": "newbie", "password": "long enough pw", "roles": ["handler"]},
    "change_user": {"disabled": True},
    "call_draft": {"grade": "2"},
    "wrapup_extend": {"seconds": 30},
    "wrapup_limit": {"seconds": 60},
}
GUARDED = [ep for ep in ENDPOINTS if ep.roles is not None]


def _path(ep: Endpoint, backend: FakeBackend) -> str:
    values = {"call_id": backend.past, "handler_id": "h2", "cb_id": "nope",
              "username": "nobody", "line": "999"}  # type: ignore[attr-defined]
    path = re.sub(r"{(\w+)}", lambda m: values[m.group(1)], ep.path)
    if ep.handler.__name__ == "previous":
        path += "?number=%2B447700900123"
    return path


def _id(ep: Endpoint) -> str:
    return f"{ep.method} {ep.path}"


@pytest.mark.parametrize("ep", GUARDED, ids=_id)
async def test_anonymous_refused(api: Api, backend: FakeBackend, ep: Endpoint) -> None:
    """No session cookie -> 401 with a JSON error, for every guarded endpoint."""
    status, data = await api.as_role(None).call(ep.method, _path(ep, backend), BODIES.get(ep.handler.__name__))
    assert status == 401
    assert data == {"error": "not logged in"}


@pytest.mark.parametrize("ep", [ep for ep in GUARDED if ep.roles], ids=_id)
async def test_wrong_roles_refused(api: Api, backend: FakeBackend, ep: Endpoint) -> None:
    """Each role outside the endpoint's roles gets 403 naming the role needed."""
    assert ep.roles is not None
    for role in ROLES:
        if role in ep.roles:
            continue
        status, data = await api.as_role(role).call(ep.method, _path(ep, backend),
                                                     BODIES.get(ep.handler.__name__))
        assert status == 403, (role, data)
        assert data["error"].startswith("needs role "), data


@pytest.mark.parametrize("ep", GUARDED, ids=_id)
async def test_allowed_role_passes_the_guard(api: Api, backend: FakeBackend, ep: Endpoint) -> None:
    """The allowed role is not refused by auth/CSRF (the backend may still say 404/409)."""
    role = sorted(ep.roles)[0] if ep.roles else "handler"
    status, data = await api.as_role(role).call(ep.method, _path(ep, backend),
                                                BODIES.get(ep.handler.__name__))
    assert status not in (401, 403, 415) and status < 500, (status, data)


@pytest.mark.parametrize("ep", [ep for ep in GUARDED if ep.csrf], ids=_id)
async def test_csrf_required(api: Api, backend: FakeBackend, ep: Endpoint) -> None:
    """Every state-changing endpoint refuses a request without the CSRF header, or with a wrong one."""
    role = sorted(ep.roles)[0] if ep.roles else "handler"
    a = api.as_role(role)
    body = BODIES.get(ep.handler.__name__)
    status, data = await a.call(ep.method, _path(ep, backend), body, csrf=False)
    assert (status, data) == (403, {"error": "missing or wrong X-CSRF-Token header"})
    a.csrf = "forged-" + a.csrf
    status, data = await a.call(ep.method, _path(ep, backend), body)
    assert (status, data) == (403, {"error": "missing or wrong X-CSRF-Token header"})
    assert backend.actions == []


async def test_websocket_roles(api: Api) -> None:
    """The WebSocket refuses anonymous (401) and auditor/admin (403); handler and supervisor connect."""
    for role, expect in ((None, 401), ("auditor", 403), ("admin", 403)):
        api.as_role(role)
        resp = await api.client.get("/api/ws")
        assert resp.status == expect
        assert "error" in await resp.json()
    for role in ("handler", "supervisor"):
        api.as_role(role)
        ws = await api.client.ws_connect("/api/ws")
        first = await ws.receive_json(timeout=5)
        assert first["type"] in ("desk.view", "wallboard.snapshot")
        await ws.close()


async def test_pages_redirect_by_role(api: Api) -> None:
    """Pages need a session (-> /login) and the page's role (-> / which picks the user's page)."""
    resp = await api.as_role(None).client.get("/desk", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/login?next=/desk")
    api.as_role("auditor")
    resp = await api.client.get("/desk", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/")
    resp = await api.client.get("/", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/auditor")
    resp = await api.client.get("/auditor")
    assert resp.status == 200
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
