"""User lifecycle on the admin API (issue 17): disable and re-enable, reset password,
change roles, one password policy, the admin log, the access log's date filter and its
CSV export (itself logged)."""

from __future__ import annotations

import csv
import io
import time

import pytest

from console import users
from store.db import Database

from .conftest import PASSWORD, Api


def test_one_password_policy() -> None:
    """At least 12 characters; not a common password (with digits around it); not the
    user name. The same check serves the console and the CLI."""
    assert users.password_problem("short") == "password must be at least 12 characters"
    for weak in ("password1234", "Qwertyuiop12", "  letmein2026!", "correcthorsebatterystaple"):
        assert "too common" in (users.password_problem(weak) or ""), weak
    assert users.password_problem("jsmith123456", "jsmith") == "password must not be the user name"
    assert users.password_problem(PASSWORD, "h1") is None


async def test_disable_reset_roles_all_logged(api: Api, db: Database) -> None:
    """Disabling ends the user's sessions and refuses login; re-enabling restores it; a
    reset password works and ends sessions; roles change; each is in the admin log; the
    last admin cannot lock themselves out."""
    token, _ = users.open_session(db, users.User("h1", frozenset({"handler"}), "h1"), hours=1)
    a = api.as_role("admin")
    assert await a.call("POST", "/api/admin/users/h1", {"disabled": True}) == (200, {"ok": True})
    assert users.get_session(db, token) is None
    assert users.verify_password(db, "h1", PASSWORD) is None
    assert await a.call("POST", "/api/admin/users/h1", {"disabled": False}) == (200, {"ok": True})
    assert users.verify_password(db, "h1", PASSWORD) is not None
    status, data = await a.call("POST", "/api/admin/users/h1", {"password": "short"})
    assert (status, data) == (400, {"error": "password must be at least 12 characters"})
    new = "a brand new passphrase"
    assert await a.call("POST", "/api/admin/users/h1", {"password": new}) == (200, {"ok": True})
    assert users.verify_password(db, "h1", new) is not None
    assert users.verify_password(db, "h1", PASSWORD) is None
    assert await a.call("POST", "/api/admin/users/h1",
                        {"roles": ["handler", "supervisor"]}) == (200, {"ok": True})
    listed = {u["username"]: u for u in (await a.call("GET", "/api/admin/users"))[1]}
    assert listed["h1"]["roles"] == ["handler", "supervisor"] and listed["h1"]["handler_id"] == "h1"
    assert (await a.call("POST", "/api/admin/users/adm1", {"disabled": True}))[0] == 400
    assert (await a.call("POST", "/api/admin/users/nobody", {"disabled": True}))[0] == 404
    with pytest.raises(users.UserError, match="last enabled admin"):
        users.set_disabled(db, "adm1", True)
    status, log = await a.call("GET", "/api/admin/admin-log")
    assert [(e["username"], e["action"], e["target"]) for e in reversed(log)] == [
        ("adm1", "user.disable", "h1"), ("adm1", "user.enable", "h1"),
        ("adm1", "user.password_reset", "h1"), ("adm1", "user.roles", "h1")]
    assert new not in str(log)


async def test_access_log_date_filter_and_csv_export(api: Api, db: Database) -> None:
    """date_from/date_to select by day (local) or epoch; the CSV holds the same rows and
    the export itself goes into the admin log with its filters."""
    u = users.User("aud1", frozenset({"auditor"}), None)
    now = time.time()
    users.log_access(db, u, action="view", call_id="old", justification="case A", now=now - 5 * 86400)
    users.log_access(db, u, action="view", call_id="new", justification="case B", now=now)
    a = api.as_role("admin")
    _, rows = await a.call("GET", f"/api/admin/access-log?date_from={now - 86400:.0f}")
    assert [r["call_id"] for r in rows] == ["new"]
    day = time.strftime("%Y-%m-%d", time.localtime(now - 5 * 86400))
    _, rows = await a.call("GET", f"/api/admin/access-log?date_from={day}&date_to={day}")
    assert [r["call_id"] for r in rows] == ["old"]
    assert (await a.call("GET", "/api/admin/access-log?date_from=yesterday"))[0] == 400
    r = await a.client.get(f"/api/admin/access-log.csv?date_from={day}")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(await r.text())))
    assert [(t["call_id"], t["justification"]) for t in table] == [("new", "case B"), ("old", "case A")]
    _, log = await a.call("GET", "/api/admin/admin-log")
    assert log[0]["action"] == "access_log.export" and log[0]["detail"]["rows"] == 2
