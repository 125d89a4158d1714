"""DPA 2018 s.62: search, view, playback and export need a justification and are logged."""

from __future__ import annotations

import sqlite3

import pytest

from console import users
from store.db import Database
from tests.console.fake import FakeBackend

from .conftest import Api


async def test_search_needs_justification_and_is_logged(api: Api, backend: FakeBackend, db: Database) -> None:
    """No justification -> 400 and nothing logged; with one -> hits and one log row with the query."""
    a = api.as_role("auditor")
    status, data = await a.call("POST", "/api/audit/search", {"query": "knife"})
    assert (status, data) == (400, {"error": "body: 'justification' is a required property"})
    status, data = await a.call("POST", "/api/audit/search", {"query": "knife", "justification": "   "})
    assert status == 400
    assert users.access_log(db) == []
    status, data = await a.call("POST", "/api/audit/search", {
        "query": "knife", "justification": "complaint ref 123", "line": "999", "date_from": "2020-01-01"})
    assert status == 200
    [hit] = data["hits"]
    assert hit["call_id"] == backend.past  # type: ignore[attr-defined]
    assert hit["snippet"] == "A man is waving a <mark>knife</mark> outside the shop on Elm Road"
    [entry] = users.access_log(db)
    assert (entry["username"], entry["action"], entry["query"], entry["justification"]) == (
        "aud1", "search", "knife", "complaint ref 123")
    assert entry["filters"]["line"] == "999" and entry["filters"]["date_from"] == 1577836800.0


async def test_view_verifies_checksum_and_is_logged(api: Api, backend: FakeBackend, db: Database) -> None:
    """Opening a call logs a view and recomputes the recording's SHA-256; tampering shows."""
    cid = backend.past  # type: ignore[attr-defined]
    a = api.as_role("auditor")
    assert (await a.call("POST", f"/api/audit/calls/{cid}", {}))[0] == 400
    status, detail = await a.call("POST", f"/api/audit/calls/{cid}", {"justification": "IOPC review"})
    assert status == 200
    assert detail["call"]["incident_number"] == "INC-1"
    assert [s["channel"] for s in detail["transcript"]] == ["handler", "caller"]
    assert [e["event"] for e in detail["timeline"]] == ["ENTER", "CONNECT", "COMPLETE"]
    rec = detail["recording"]
    assert rec["verified"] is True and rec["computed_sha256"] == rec["sha256"]
    path, _ = backend.recordings[cid]
    path.write_bytes(path.read_bytes()[:-2] + b"\x00\x01")
    _, detail = await a.call("POST", f"/api/audit/calls/{cid}", {"justification": "IOPC review"})
    assert detail["recording"]["verified"] is False
    assert detail["recording"]["computed_sha256"] != detail["recording"]["sha256"]
    log = users.access_log(db)
    assert [(e["action"], e["call_id"]) for e in log] == [("view", cid), ("view", cid)]
    assert (await a.call("POST", "/api/audit/calls/nope", {"justification": "IOPC review"})) == (
        404, {"error": "no call 'nope'"})
    assert len(users.access_log(db)) == 2


async def test_playback_ticket_range_and_log(api: Api, backend: FakeBackend, db: Database) -> None:
    """Playback needs a logged ticket; the file is served with HTTP Range; export is an attachment."""
    cid = backend.past  # type: ignore[attr-defined]
    a = api.as_role("auditor")
    status, data = await a.call("GET", f"/api/audit/calls/{cid}/recording")
    assert status == 400 and data["error"].startswith("a justification is required")
    status, t = await a.call("POST", f"/api/audit/calls/{cid}/playback", {"justification": "court bundle"})
    assert status == 200
    raw = backend.recordings[cid][0].read_bytes()
    resp = await a.client.get(t["url"], headers={"Range": "bytes=100-199"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(raw)}"
    assert await resp.read() == raw[100:200]
    resp = await a.client.get(t["url"])
    assert resp.status == 200 and await resp.read() == raw
    assert "Content-Disposition" not in resp.headers
    # a ticket is bound to its call
    other = backend.add_past_call("101", "+44", arrived_at=1.0, handler_id="h2", transcript=[("caller", "hi")])
    resp = await a.client.get(t["url"].replace(cid, other))
    assert resp.status == 400
    _, t2 = await a.call("POST", f"/api/audit/calls/{cid}/playback", {"justification": "disclosure to CPS", "export": True})
    resp = await a.client.get(t2["url"])
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{cid}.wav"'
    log = users.access_log(db)
    assert [(e["action"], e["justification"]) for e in log] == [
        ("export", "disclosure to CPS"), ("playback", "court bundle")]


async def test_access_log_is_append_only(api: Api, db: Database) -> None:
    """UPDATE and DELETE on the access log are refused by the database itself."""
    user = users.User("aud1", frozenset({"auditor"}), None)
    users.log_access(db, user, action="view", call_id="c1", justification="check")
    with pytest.raises(sqlite3.DatabaseError, match="access log is append-only"):
        db.execute("UPDATE console_access_log SET justification='x'")
    with pytest.raises(sqlite3.DatabaseError, match="access log is append-only"):
        db.execute("DELETE FROM console_access_log")
    with pytest.raises(ValueError, match="a justification is required"):
        users.log_access(db, user, action="view", call_id="c1", justification=" ")
    assert [e["justification"] for e in users.access_log(db)] == ["check"]


async def test_admin_reads_access_log(api: Api, db: Database) -> None:
    """Only admin reads the log; filters by action and user work; bad action is a 400."""
    user = users.User("aud1", frozenset({"auditor"}), None)
    users.log_access(db, user, action="view", call_id="c1", justification="one")
    users.log_access(db, user, action="search", query="knife", justification="two")
    a = api.as_role("admin")
    status, rows = await a.call("GET", "/api/admin/access-log")
    assert status == 200 and [r["justification"] for r in rows] == ["two", "one"]
    _, rows = await a.call("GET", "/api/admin/access-log?action=view")
    assert [r["call_id"] for r in rows] == ["c1"]
    _, rows = await a.call("GET", f"/api/admin/access-log?before_id={rows[0]['id']}")
    assert rows == []
    assert (await a.call("GET", "/api/admin/access-log?action=delete"))[0] == 400
    assert (await api.as_role("auditor").call("GET", "/api/admin/access-log"))[0] == 403


async def test_search_snippet_is_escaped_with_marks(api: Api, backend: FakeBackend) -> None:
    """FakeBackend, like the real search, HTML-escapes the text and marks the words."""
    backend.add_past_call("101", "+44", arrived_at=1.0, handler_id="h2",
                          transcript=[("caller", "he said <b>stop</b> & ran with a gun")])
    status, data = await api.as_role("auditor").call(
        "POST", "/api/audit/search", {"query": "gun", "justification": "escaping check"})
    assert status == 200
    assert [h["snippet"] for h in data["hits"]] == [
        "he said &lt;b&gt;stop&lt;/b&gt; &amp; ran with a <mark>gun</mark>"]


async def test_supervisor_monitor_needs_justification_and_is_logged(
        api: Api, backend: FakeBackend, db: Database) -> None:
    """Listen, whisper and barge on a live call need a justification and each is in the
    access log with the call; stop is not a consultation (not logged)."""
    h = api.as_role("handler")
    await h.call("POST", "/api/desk/state", {"state": "available"})
    cid = backend.arrive("999", "+447700900999")
    backend.offer(cid, "h1")
    assert await h.call("POST", "/api/desk/offer/accept", {"call_id": cid}) == (200, {"ok": True})
    s = api.as_role("supervisor")
    path = f"/api/supervisor/calls/{cid}/monitor"
    status, _ = await s.call("POST", path, {"mode": "listen"})
    assert status == 400 and users.access_log(db) == []
    for mode in ("listen", "whisper", "barge", "stop"):
        status, data = await s.call("POST", path, {"mode": mode, "justification": "QA review 42"})
        assert status == 200 and data["mode"] == mode, data
    log = users.access_log(db)
    assert [(e["action"], e["call_id"], e["justification"]) for e in reversed(log)] == [
        (m, cid, "QA review 42") for m in ("listen", "whisper", "barge")]
    assert [a[3] for a in backend.actions if a[0] == "monitor"] == \
        ["listen", "whisper", "barge", "stop"]
