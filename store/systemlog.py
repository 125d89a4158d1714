"""The ``system_events`` table: the node's own health record (storage faults, recoveries).

Append-only. A storage fault is recorded here when the storage returns (the record goes
through the same spool as everything else, in order), so the database tells afterwards
when it was not taking writes, why, and how much waited or was lost.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

COMPONENT = "systemlog"

MIGRATIONS = [
    """
    CREATE TABLE system_events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data))
    );
    CREATE INDEX system_events_at ON system_events(at);
    CREATE TRIGGER system_events_no_update BEFORE UPDATE ON system_events
    BEGIN SELECT RAISE(ABORT, 'system_events is append-only'); END;
    """,
]

PG_MIGRATIONS = [
    """
    CREATE OR REPLACE FUNCTION controlroom_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only', TG_ARGV[0];
    END $$;
    CREATE TABLE system_events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}' CHECK (data::jsonb IS NOT NULL)
    );
    CREATE INDEX system_events_at ON system_events(at);
    CREATE TRIGGER system_events_no_update BEFORE UPDATE ON system_events
        FOR EACH STATEMENT EXECUTE FUNCTION controlroom_append_only('system_events');
    """,
]


def append(conn: sqlite3.Connection, *, at: float, type: str,  # noqa: A002 - column name
           reason: str = "", data: dict[str, Any] | None = None) -> int:
    """Insert one event (inside the caller's transaction); returns its row id."""
    cur = conn.execute("INSERT INTO system_events(at, type, reason, data) VALUES (?, ?, ?, ?)"
                       " RETURNING id",
                       (at, type, reason, json.dumps(data or {}, separators=(",", ":"))))
    return int(cur.fetchone()[0])


def load(db: Any) -> list[dict[str, Any]]:
    """Every event in insertion order."""
    return [{"at": r["at"], "type": r["type"], "reason": r["reason"],
             "data": json.loads(r["data"])}
            for r in db.query("SELECT at, type, reason, data FROM system_events ORDER BY id")]
