"""The ``queue_log`` table: every routing event, append-only (Asterisk queue_log in spirit).

The router returns :class:`routing.QueueLogEntry` actions; the service appends each one in
the same transaction as the state change it describes (``append(conn, entry)`` inside
``db.transaction()``). ``routing.stats.replay(load(db))`` rebuilds the service level, so
the live figures can be audited from this table alone.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

from routing.actions import QueueLogEntry

COMPONENT = "queuelog"

MIGRATIONS = [
    """
    CREATE TABLE queue_log (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        call_id TEXT NOT NULL DEFAULT '',
        line TEXT NOT NULL DEFAULT '',
        handler_id TEXT NOT NULL DEFAULT '',
        event TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data))
    );
    CREATE INDEX queue_log_at ON queue_log(at);
    CREATE INDEX queue_log_call ON queue_log(call_id, id);
    CREATE TRIGGER queue_log_no_update BEFORE UPDATE ON queue_log
    BEGIN SELECT RAISE(ABORT, 'queue_log is append-only'); END;
    """,
]

APPEND_ONLY_FN = """
    CREATE OR REPLACE FUNCTION controlroom_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only', TG_ARGV[0];
    END $$;
"""
"""PostgreSQL: the trigger function behind every append-only table (the message names
the table as the SQLite triggers do)."""

PG_MIGRATIONS = [
    APPEND_ONLY_FN + """
    CREATE TABLE queue_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        call_id TEXT NOT NULL DEFAULT '',
        line TEXT NOT NULL DEFAULT '',
        handler_id TEXT NOT NULL DEFAULT '',
        event TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}' CHECK (data::jsonb IS NOT NULL)
    );
    CREATE INDEX queue_log_at ON queue_log(at);
    CREATE INDEX queue_log_call ON queue_log(call_id, id);
    CREATE TRIGGER queue_log_no_update BEFORE UPDATE ON queue_log
        FOR EACH STATEMENT EXECUTE FUNCTION controlroom_append_only('queue_log');
    """,
]


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; the router never produces them, but a bad row must not be lost
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def append(conn: sqlite3.Connection, entry: QueueLogEntry) -> int:
    """Insert one entry (inside the caller's transaction); returns its row id."""
    data = json.dumps(_json_safe(entry.data), separators=(",", ":"), allow_nan=False,
                      default=str)
    cur = conn.execute(
        "INSERT INTO queue_log(at, call_id, line, handler_id, event, data)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        (entry.at, entry.call_id, entry.line, entry.handler_id, entry.event, data))
    return int(cur.fetchone()[0])


def load(db: Any, since: float | None = None) -> list[QueueLogEntry]:
    """Entries in insertion order (all, or those at or after ``since``)."""
    if since is None:
        rows = db.query("SELECT at, call_id, line, handler_id, event, data FROM queue_log"
                        " ORDER BY id")
    else:
        rows = db.query("SELECT at, call_id, line, handler_id, event, data FROM queue_log"
                        " WHERE at >= ? ORDER BY id", (since,))
    return [QueueLogEntry(r["at"], r["call_id"], r["line"], r["handler_id"], r["event"],
                          json.loads(r["data"])) for r in rows]
