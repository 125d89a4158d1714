"""Console users, sessions and the DPA 2018 s.62 access log (the ``console`` tables).

Passwords are hashed with Argon2id (argon2-cffi defaults). A session is a random token
held in an HttpOnly cookie; the database keeps only its SHA-256, with the per-session
CSRF token and an expiry, so a stolen database copy cannot be replayed as a cookie.

The access log records every consultation of call content (search, transcript view,
playback, export) with who, when, what and why. It is append-only: triggers abort any
UPDATE or DELETE, so even a bug in this process cannot rewrite history.

All functions here are synchronous and short (one indexed row); argon2 hashing is slow
on purpose, so callers in the event loop run :func:`verify_password` / :func:`create_user`
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from store.db import Database

COMPONENT = "console"

ROLES = ("handler", "supervisor", "auditor", "admin")
"""Every console role."""

ACCESS_ACTIONS = ("search", "view", "playback", "export", "listen", "whisper", "barge")
"""What the access log records."""

MIGRATIONS = [
    """
    CREATE TABLE console_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        roles TEXT NOT NULL,
        handler_id TEXT,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE console_sessions (
        token_sha256 TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES console_users(username) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);
    CREATE TABLE console_access_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        username TEXT NOT NULL,
        roles TEXT NOT NULL,
        action TEXT NOT NULL,
        call_id TEXT,
        query TEXT,
        filters TEXT,
        justification TEXT NOT NULL CHECK (length(trim(justification)) > 0),
        client TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX console_access_log_at ON console_access_log(at);
    CREATE TRIGGER console_access_log_no_update BEFORE UPDATE ON console_access_log
    BEGIN
        SELECT RAISE(ABORT, 'access log is append-only');
    END;
    CREATE TRIGGER console_access_log_no_delete BEFORE DELETE ON console_access_log
    BEGIN
        SELECT RAISE(ABORT, 'access log is append-only');
    END;
    """,
    # 2: who changed which user (and who exported the access log): append-only as well.
    """
    CREATE TABLE console_admin_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        username TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '{}',
        client TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX console_admin_log_at ON console_admin_log(at);
    CREATE TRIGGER console_admin_log_no_update BEFORE UPDATE ON console_admin_log
    BEGIN
        SELECT RAISE(ABORT, 'admin log is append-only');
    END;
    CREATE TRIGGER console_admin_log_no_delete BEFORE DELETE ON console_admin_log
    BEGIN
        SELECT RAISE(ABORT, 'admin log is append-only');
    END;
    """,
    # 3: the phone a supervisor's listen / whisper / barge rings (admin page).
    "ALTER TABLE console_users ADD COLUMN phone TEXT;",
]

ADMIN_ACTIONS = ("user.create", "user.disable", "user.enable", "user.password_reset",
                 "user.roles", "user.phone", "access_log.export")
"""What the admin log records."""

MIN_PASSWORD = 12
"""The one password policy (console and CLI): at least this long, and not a common one."""

_COMMON = Path(__file__).with_name("common_passwords.txt")


@functools.cache
def _common_passwords() -> frozenset[str]:
    words = _COMMON.read_text(encoding="utf-8").split()
    return frozenset(w.strip().lower() for w in words if w.strip())


def password_problem(password: str, username: str = "") -> str | None:
    """Why ``password`` is refused, or None: shorter than :data:`MIN_PASSWORD`, one of the
    bundled common passwords (compared without case, also with the spaces and digits
    around it stripped), or the user name itself."""
    p = password or ""
    if len(p) < MIN_PASSWORD:
        return f"password must be at least {MIN_PASSWORD} characters"
    low = p.lower()
    core = low.strip(" 0123456789!.")
    if low in _common_passwords() or core in _common_passwords() \
            or low.replace(" ", "") in _common_passwords():
        return "password is too common (it is on the list of common passwords); choose another"
    rest = low.replace(username.lower(), "").strip(" 0123456789!.-_") if username else low
    if username and len(rest) < 6:
        return "password must not be the user name"
    return None
PG_MIGRATIONS = [
    # PostgreSQL: the same tables; the access log refuses UPDATE, DELETE and TRUNCATE
    # (a statement trigger fires even when no row matches).
    """
    CREATE OR REPLACE FUNCTION controlroom_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only', TG_ARGV[0];
    END $$;
    CREATE TABLE console_users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        roles TEXT NOT NULL,
        handler_id TEXT,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE console_sessions (
        token_sha256 TEXT PRIMARY KEY,
        username TEXT NOT NULL REFERENCES console_users(username) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);
    CREATE TABLE console_access_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        username TEXT NOT NULL,
        roles TEXT NOT NULL,
        action TEXT NOT NULL,
        call_id TEXT,
        query TEXT,
        filters TEXT,
        justification TEXT NOT NULL CHECK (length(trim(justification)) > 0),
        client TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX console_access_log_at ON console_access_log(at);
    CREATE TRIGGER console_access_log_no_change
        BEFORE UPDATE OR DELETE OR TRUNCATE ON console_access_log
        FOR EACH STATEMENT EXECUTE FUNCTION controlroom_append_only('access log');
    """,
    # 2: the admin log, append-only like the access log (was missing on PostgreSQL).
    """
    CREATE TABLE console_admin_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        username TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '{}',
        client TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX console_admin_log_at ON console_admin_log(at);
    CREATE TRIGGER console_admin_log_no_change
        BEFORE UPDATE OR DELETE OR TRUNCATE ON console_admin_log
        FOR EACH STATEMENT EXECUTE FUNCTION controlroom_append_only('admin log');
    """,
    # 3
    "ALTER TABLE console_users ADD COLUMN phone TEXT;",
]

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_hasher = PasswordHasher()


class UserError(ValueError):
    """A user could not be created or changed (bad name, weak password, duplicate)."""


@dataclass(frozen=True)
class User:
    """A console user as the web layer sees it."""

    username: str
    roles: frozenset[str]
    handler_id: str | None
    """The handler this user answers calls as (``None`` when not a handler)."""


@dataclass(frozen=True)
class Session:
    """A live login."""

    user: User
    csrf: str
    """Token the pages send back in ``X-CSRF-Token`` on every state-changing request."""
    expires_at: float


def migrate(db: Database) -> None:
    """Create or upgrade the console tables."""
    db.migrate(COMPONENT, MIGRATIONS, postgresql=PG_MIGRATIONS)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(db: Database, username: str, password: str, roles: list[str] | tuple[str, ...],
                *, handler_id: str | None = None) -> User:
    """Create a console user (used by ``controlroom user add`` and the admin page).

    A user with the ``handler`` role answers calls as ``handler_id`` (default: the
    username). Raises :class:`UserError` with a message for the operator.
    """
    migrate(db)
    if not _USERNAME.match(username or ""):
        raise UserError("username must be 1-64 letters, digits, '.', '_' or '-'")
    if (problem := password_problem(password, username)) is not None:
        raise UserError(problem)
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise UserError(f"roles must be a non-empty subset of {', '.join(ROLES)}; got {list(roles)}")
    if "handler" in roles:
        handler_id = handler_id or username
    else:
        handler_id = None
    digest = _hasher.hash(password)
    with db.transaction() as conn:
        if conn.execute("SELECT 1 FROM console_users WHERE username=?", (username,)).fetchone():
            raise UserError(f"user {username!r} already exists")
        conn.execute(
            "INSERT INTO console_users(username, password_hash, roles, handler_id, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (username, digest, json.dumps(sorted(set(roles))), handler_id, time.time()))
    return User(username, frozenset(roles), handler_id)


def _user(row: Any) -> User:
    return User(row["username"], frozenset(json.loads(row["roles"])), row["handler_id"])


def list_users(db: Database) -> list[dict[str, Any]]:
    """Every user (no password hashes)."""
    return [{"username": r["username"], "roles": json.loads(r["roles"]),
             "handler_id": r["handler_id"], "disabled": bool(r["disabled"]),
             "created_at": r["created_at"], "phone": r["phone"] or ""}
            for r in db.query("SELECT * FROM console_users ORDER BY username")]


def verify_password(db: Database, username: str, password: str) -> User | None:
    """The user if the password matches (and the account is enabled), else ``None``.

    Slow on purpose (Argon2); call it in a thread from the event loop.
    """
    row = db.query_one("SELECT * FROM console_users WHERE username=?", (username,))
    if row is None:
        # Spend the same time as a real check so timing does not reveal valid names.
        try:
            _hasher.verify(_DUMMY_HASH, password)
        except VerificationError:
            pass
        return None
    try:
        _hasher.verify(row["password_hash"], password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row["disabled"]:
        return None
    if _hasher.check_needs_rehash(row["password_hash"]):
        db.execute("UPDATE console_users SET password_hash=? WHERE username=?",
                   (_hasher.hash(password), username))
    return _user(row)


_DUMMY_HASH = _hasher.hash("not-a-real-password-ever")


def open_session(db: Database, user: User, *, hours: float, now: float | None = None
                 ) -> tuple[str, Session]:
    """Start a session; returns the cookie token (shown once) and the session."""
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    expires = now + hours * 3600.0
    with db.transaction() as conn:
        # Expired sessions are purged here rather than by a timer: logins are rare.
        conn.execute("DELETE FROM console_sessions WHERE expires_at < ?", (now,))
        conn.execute(
            "INSERT INTO console_sessions(token_sha256, username, csrf, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)", (_sha(token), user.username, csrf, now, expires))
    return token, Session(user, csrf, expires)


def get_session(db: Database, token: str, *, now: float | None = None) -> Session | None:
    """The live session for a cookie token, or ``None`` (unknown, expired, disabled user)."""
    if not token or len(token) > 128:
        return None
    now = time.time() if now is None else now
    row = db.query_one(
        "SELECT s.csrf, s.expires_at, u.* FROM console_sessions s"
        " JOIN console_users u ON u.username = s.username WHERE s.token_sha256=?",
        (_sha(token),))
    if row is None or row["expires_at"] < now or row["disabled"]:
        return None
    return Session(_user(row), row["csrf"], row["expires_at"])


def close_session(db: Database, token: str) -> None:
    """Log out: forget the session."""
    db.execute("DELETE FROM console_sessions WHERE token_sha256=?", (_sha(token),))


def log_access(db: Database, user: User, *, action: str, justification: str,
               call_id: str | None = None, query: str | None = None,
               filters: dict[str, Any] | None = None, client: str = "",
               now: float | None = None) -> int:
    """Append one consultation to the access log; returns its id."""
    if action not in ACCESS_ACTIONS:
        raise ValueError(f"unknown access action {action!r}")
    if not justification.strip():
        raise ValueError("a justification is required")
    with db.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO console_access_log(at, username, roles, action, call_id, query,"
            " filters, justification, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (time.time() if now is None else now, user.username, json.dumps(sorted(user.roles)),
             action, call_id, query, json.dumps(filters or {}, sort_keys=True),
             justification.strip(), client))
        return int(cur.fetchone()[0])


def access_log(db: Database, *, limit: int = 200, before_id: int | None = None,
               username: str | None = None, action: str | None = None,
               since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """Newest-first access log entries (for the admin page); ``since``/``until``: epoch
    seconds, ``since <= at < until``."""
    sql = "SELECT * FROM console_access_log WHERE 1=1"
    args: list[Any] = []
    if since is not None:
        sql += " AND at >= ?"
        args.append(since)
    if until is not None:
        sql += " AND at < ?"
        args.append(until)
    if before_id is not None:
        sql += " AND id < ?"
        args.append(before_id)
    if username:
        sql += " AND username = ?"
        args.append(username)
    if action:
        sql += " AND action = ?"
        args.append(action)
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    out = []
    for r in db.query(sql, args):
        d = dict(r)
        d["roles"] = json.loads(d["roles"])
        d["filters"] = json.loads(d["filters"] or "{}")
        out.append(d)
    return out


# ---------------------------------------------------------------------- user lifecycle
def log_admin(db: Database, admin: User | str, action: str, *, target: str = "",
              detail: dict[str, Any] | None = None, client: str = "") -> int:
    """Append one administrative change to the admin log; returns its id."""
    if action not in ADMIN_ACTIONS:
        raise ValueError(f"unknown admin action {action!r}")
    migrate(db)
    who = admin.username if isinstance(admin, User) else admin
    with db.transaction() as conn:   # RETURNING: SQLite and PostgreSQL alike
        cur = conn.execute(
            "INSERT INTO console_admin_log(at, username, action, target, detail, client)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (time.time(), who, action, target, json.dumps(detail or {}, sort_keys=True), client))
        return int(cur.fetchone()[0])


def admin_log(db: Database, *, limit: int = 200) -> list[dict[str, Any]]:
    """Newest-first admin log entries."""
    migrate(db)
    return [{**dict(r), "detail": json.loads(r["detail"] or "{}")}
            for r in db.query("SELECT * FROM console_admin_log ORDER BY id DESC LIMIT ?",
                              (limit,))]


def _existing(db: Database, username: str) -> Any:
    row = db.query_one("SELECT * FROM console_users WHERE username=?", (username,))
    if row is None:
        raise UserError(f"no user {username!r}")
    return row


def _enabled_admins(conn: Any, *, without: str) -> int:
    rows = conn.execute("SELECT roles FROM console_users WHERE disabled=0 AND username<>?",
                        (without,)).fetchall()
    return sum(1 for r in rows if "admin" in json.loads(r["roles"]))


def set_disabled(db: Database, username: str, disabled: bool) -> None:
    """Disable (sessions end at once, login refused) or re-enable a user. The last enabled
    admin cannot be disabled (nobody could undo it from the console)."""
    row = _existing(db, username)
    with db.transaction() as conn:
        if disabled and "admin" in json.loads(row["roles"]) \
                and _enabled_admins(conn, without=username) == 0:
            raise UserError("cannot disable the last enabled admin")
        conn.execute("UPDATE console_users SET disabled=? WHERE username=?",
                     (1 if disabled else 0, username))
        if disabled:
            conn.execute("DELETE FROM console_sessions WHERE username=?", (username,))


def reset_password(db: Database, username: str, password: str) -> None:
    """Set a new password (same policy as creation); the user's sessions end."""
    _existing(db, username)
    if (problem := password_problem(password, username)) is not None:
        raise UserError(problem)
    digest = _hasher.hash(password)
    with db.transaction() as conn:
        conn.execute("UPDATE console_users SET password_hash=? WHERE username=?",
                     (digest, username))
        conn.execute("DELETE FROM console_sessions WHERE username=?", (username,))


def set_roles(db: Database, username: str, roles: list[str], *,
              handler_id: str | None = None) -> User:
    """Replace a user's roles (a handler answers as ``handler_id``, default the name).
    The last enabled admin keeps the admin role."""
    row = _existing(db, username)
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise UserError(f"roles must be a non-empty subset of {', '.join(ROLES)}; got {list(roles)}")
    hid = (handler_id or row["handler_id"] or username) if "handler" in roles else None
    with db.transaction() as conn:
        if "admin" in json.loads(row["roles"]) and "admin" not in roles \
                and not row["disabled"] and _enabled_admins(conn, without=username) == 0:
            raise UserError("cannot take the admin role from the last enabled admin")
        conn.execute("UPDATE console_users SET roles=?, handler_id=? WHERE username=?",
                     (json.dumps(sorted(set(roles))), hid, username))
        # Sessions carry the roles they were opened with: end them so the change holds now.
        conn.execute("DELETE FROM console_sessions WHERE username=?", (username,))
    return User(username, frozenset(roles), hid)


_PHONE = re.compile(r"^sips?:[^\s<>\"]{1,200}$")


def set_phone(db: Database, username: str, phone: str) -> str:
    """The phone this user's listen / whisper / barge rings (a SIP URI through the
    proxy, e.g. ``sip:sup1@controlroom.local``); empty clears it (the handler entry of
    the configuration with this user name is used then). Returns what was stored."""
    _existing(db, username)
    phone = (phone or "").strip()
    if phone and not _PHONE.match(phone):
        raise UserError("phone must be a SIP URI (sip:user@host or sips:...), at most 200 characters")
    db.execute("UPDATE console_users SET phone=? WHERE username=?", (phone or None, username))
    return phone


def user_phone(db: Database, username: str) -> str:
    """The phone set for ``username`` on the admin page, or ``""``."""
    row = db.query_one("SELECT phone FROM console_users WHERE username=?", (username,))
    return (row["phone"] or "") if row is not None else ""


ACCESS_LOG_COLUMNS = ("id", "at", "when_utc", "username", "roles", "action", "call_id",
                      "query", "filters", "justification", "client")


def access_log_csv(rows: list[dict[str, Any]]) -> str:
    """The access log as CSV (UTF-8, one header row; times as epoch and ISO 8601 UTC)."""
    import datetime as dt

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(ACCESS_LOG_COLUMNS)
    for r in rows:
        when = dt.datetime.fromtimestamp(r["at"], dt.UTC).isoformat(timespec="seconds")
        w.writerow([r["id"], f"{r['at']:.3f}", when, r["username"], " ".join(r["roles"]),
                    r["action"], r["call_id"] or "", r["query"] or "",
                    json.dumps(r["filters"], sort_keys=True) if r["filters"] else "",
                    r["justification"], r["client"]])
    return buf.getvalue()
