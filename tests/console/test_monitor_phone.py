"""The supervisor's own monitor phone (issue 17 item 5): set per user on the admin API
(logged), checked as a SIP URI, kept in the store on SQLite and PostgreSQL, cleared by an
empty value."""

from __future__ import annotations

import pytest

from console import users
from store.db import Database

from .conftest import Api


def test_phone_per_user_on_both_stores(store_url: str) -> None:
    """Set, read back from a new connection, refused when not a SIP URI, cleared; the
    admin log takes user.phone on PostgreSQL too (its migration was missing there)."""
    db = Database(store_url)
    users.create_user(db, "sup1", "a long supervisor pass", ["supervisor"])
    assert users.user_phone(db, "sup1") == ""
    assert users.set_phone(db, "sup1", " sip:sup1@controlroom.local ") == "sip:sup1@controlroom.local"
    with pytest.raises(users.UserError, match="phone must be a SIP URI"):
        users.set_phone(db, "sup1", "07700 900123")
    with pytest.raises(users.UserError, match="no user"):
        users.set_phone(db, "nobody", "sip:x@y")
    users.log_admin(db, "adm1", "user.phone", target="sup1", detail={"phone": "sip:sup1@x"})
    db.close()
    db = Database(store_url)
    users.migrate(db)
    assert users.user_phone(db, "sup1") == "sip:sup1@controlroom.local"
    assert [u["phone"] for u in users.list_users(db)] == ["sip:sup1@controlroom.local"]
    assert users.admin_log(db)[0]["action"] == "user.phone"
    users.set_phone(db, "sup1", "")
    assert users.user_phone(db, "sup1") == ""
    db.close()


async def test_admin_sets_the_phone_logged(api: Api, db: Database) -> None:
    """POST /api/admin/users/{u} {phone}: stored, listed, in the admin log; a bad URI is
    a 400 with the reason; phone is one change on its own."""
    a = api.as_role("admin")
    assert await a.call("POST", "/api/admin/users/h1",
                        {"phone": "sip:desk7@controlroom.local"}) == (200, {"ok": True})
    listed = {u["username"]: u for u in (await a.call("GET", "/api/admin/users"))[1]}
    assert listed["h1"]["phone"] == "sip:desk7@controlroom.local"
    status, data = await a.call("POST", "/api/admin/users/h1", {"phone": "desk 7"})
    assert status == 400 and "SIP URI" in data["error"]
    status, _ = await a.call("POST", "/api/admin/users/h1", {"phone": "sip:a@b", "disabled": True})
    assert status == 400
    log = (await a.call("GET", "/api/admin/admin-log"))[1]
    assert (log[0]["action"], log[0]["target"], log[0]["detail"]) == (
        "user.phone", "h1", {"phone": "sip:desk7@controlroom.local"})
