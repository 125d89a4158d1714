"""`controlroom user phone`: a supervisor's monitor phone set from the command line, run as
a user would (subprocess), stored and logged as the admin page does it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_cli import config, run

PASSWORD = "correct-horse-battery"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A config with an admin, a supervisor and a handler."""
    cfg = config(tmp_path)
    for name, role in (("adm1", "admin"), ("sup1", "supervisor"), ("h1", "handler")):
        r = run("user", "add", name, "--role", role, "--config", str(cfg), "--password", PASSWORD)
        assert r.returncode == 0, r.stderr
    return cfg


def _db(tmp_path: Path):  # noqa: ANN202 - store.Database
    from store import Database

    return Database(tmp_path / "data" / "controlroom.sqlite3")


def test_user_phone_sets_and_clears_the_monitor_phone_and_logs_each_change(
        tmp_path: Path, cfg: Path) -> None:
    """The phone is stored where the monitor endpoint reads it, each change is one admin-log
    entry (user.phone, by the admin, from the CLI), and --clear removes it."""
    from console import users

    r = run("user", "phone", "sup1", "sip:sup1@controlroom.local", "--by", "adm1",
            "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "monitor phone of sup1: sip:sup1@controlroom.local"
    db = _db(tmp_path)
    assert users.user_phone(db, "sup1") == "sip:sup1@controlroom.local"
    entry = users.admin_log(db)[0]
    assert (entry["action"], entry["username"], entry["target"], entry["detail"]) == (
        "user.phone", "adm1", "sup1", {"phone": "sip:sup1@controlroom.local"})
    assert entry["client"].startswith("cli user phone ")

    r = run("user", "phone", "sup1", "--clear", "--by", "adm1", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "monitor phone of sup1 cleared" in r.stdout
    assert users.user_phone(db, "sup1") == ""
    log = users.admin_log(db)
    assert [(e["action"], e["detail"]) for e in log[:2]] == [
        ("user.phone", {"phone": ""}), ("user.phone", {"phone": "sip:sup1@controlroom.local"})]


@pytest.mark.parametrize(("args", "message"), [
    (("sup1", "not a uri", "--by", "adm1"),
     "cannot set the phone: phone must be a SIP URI (sip:user@host or sips:...), at most 200 characters"),
    (("nobody", "sip:x@controlroom.local", "--by", "adm1"), "cannot set the phone: no user"),
    (("sup1", "sip:x@controlroom.local", "--by", "sup1"),
     "refused: 'sup1' is not an enabled console user with the admin role; pass --by NAME"),
    (("sup1", "sip:x@controlroom.local", "--clear", "--by", "adm1"),
     "give the phone (a SIP URI) or --clear, not both"),
    (("sup1", "--by", "adm1"), "give the phone (a SIP URI) or --clear, not both"),
])
def test_user_phone_refuses_bad_input_with_one_line_and_changes_nothing(
        tmp_path: Path, cfg: Path, args: tuple[str, ...], message: str) -> None:
    """A malformed URI, an unknown user, a non-admin --by, or both/neither of phone and
    --clear: exit 2, one clear line, nothing stored and nothing logged."""
    from console import users

    r = run("user", "phone", *args, "--config", str(cfg))
    assert r.returncode == 2
    assert r.stderr.startswith(message), r.stderr
    assert "Traceback" not in r.stderr
    db = _db(tmp_path)
    assert users.user_phone(db, "sup1") == ""
    assert not [e for e in users.admin_log(db) if e["action"] == "user.phone"]
