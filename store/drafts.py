"""The ``grading_drafts`` table: the wrap-up grading a handler is typing, kept with its call.

Theory of operation: the desk saves what is typed (THRIVE, grade, notes) as it is typed,
keyed by the call it belongs to, and drops the row when the grading is saved onto the
call (``calls`` then holds it). A node restart, or the handler's browser reaching another
node of a cluster (shared PostgreSQL store), finds the draft here. One row per call: the
call id is the primary key, so a draft can never be written onto another call, and the
handler who typed it is kept with it (only they are shown it).

Plain SQL that SQLite and PostgreSQL both take (``ON CONFLICT ... DO UPDATE``); the draft
itself is JSON text, as ``queue_log.data`` is.
"""

from __future__ import annotations

import json
from typing import Any

COMPONENT = "drafts"

MIGRATIONS = [
    """
    CREATE TABLE grading_drafts (
        call_id TEXT PRIMARY KEY,
        handler_id TEXT NOT NULL,
        draft TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX grading_drafts_handler ON grading_drafts(handler_id);
    """,
]

PG_MIGRATIONS = [
    """
    CREATE TABLE grading_drafts (
        call_id TEXT PRIMARY KEY,
        handler_id TEXT NOT NULL,
        draft TEXT NOT NULL CHECK (draft::jsonb IS NOT NULL),
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX grading_drafts_handler ON grading_drafts(handler_id);
    """,
]

FIELDS = ("thrive", "grade", "notes")
"""What a draft holds (anything else sent is not kept)."""


def migrate(db: Any) -> None:
    db.migrate(COMPONENT, MIGRATIONS, postgresql=PG_MIGRATIONS)


def save(db: Any, call_id: str, handler_id: str, draft: dict[str, Any], at: float) -> None:
    """Keep ``draft`` as the grading of ``call_id`` being typed by ``handler_id``."""
    body = json.dumps({k: draft[k] for k in FIELDS if k in draft}, sort_keys=True)
    db.execute("INSERT INTO grading_drafts(call_id, handler_id, draft, at) VALUES (?, ?, ?, ?) "
               "ON CONFLICT(call_id) DO UPDATE SET handler_id=excluded.handler_id, "
               "draft=excluded.draft, at=excluded.at", (call_id, handler_id, body, at))


def _row(r: Any) -> dict[str, Any]:
    return {**json.loads(r["draft"]), "call_id": r["call_id"], "handler_id": r["handler_id"],
            "at": r["at"]}


def get(db: Any, call_id: str) -> dict[str, Any] | None:
    """The draft of ``call_id`` (with ``handler_id`` and ``at``), or None."""
    r = db.query_one("SELECT * FROM grading_drafts WHERE call_id=?", (call_id,))
    return _row(r) if r is not None else None


def of_handler(db: Any, handler_id: str) -> list[dict[str, Any]]:
    """Every unsaved draft of ``handler_id``, oldest first."""
    return [_row(r) for r in db.query(
        "SELECT * FROM grading_drafts WHERE handler_id=? ORDER BY at", (handler_id,))]


def delete(db: Any, call_id: str) -> None:
    """The grading was saved onto the call: its draft is done."""
    db.execute("DELETE FROM grading_drafts WHERE call_id=?", (call_id,))
