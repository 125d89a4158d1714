"""The ``calls`` table: one row per call, the record every other view joins to.

Owned by the service (controlroom/service.py writes it); read by the desk, the auditor
search and the reports. Times are epoch seconds (REAL). JSON columns hold small dicts.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

MIGRATIONS = [
    """
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        line TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        caller TEXT NOT NULL DEFAULT '',
        display_name TEXT NOT NULL DEFAULT '',
        dialled TEXT NOT NULL DEFAULT '',
        location TEXT,
        sip_call_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        arrived_at REAL NOT NULL,
        answered_at REAL,
        ended_at REAL,
        handler_id TEXT,
        ended_by TEXT,
        end_reason TEXT,
        wait REAL,
        talk REAL,
        incident_number TEXT,
        grade TEXT,
        thrive TEXT,
        notes TEXT,
        flags TEXT NOT NULL DEFAULT '[]',
        recording_path TEXT,
        recording_sha256 TEXT,
        recording_duration REAL
    );
    CREATE INDEX calls_caller ON calls(caller, arrived_at);
    CREATE INDEX calls_arrived ON calls(arrived_at);
    CREATE INDEX calls_handler ON calls(handler_id, arrived_at);
    CREATE INDEX calls_incident ON calls(incident_number);
    """,
    # 2: the caller number as E.164 (previous calls match on it: +447700900123 and
    # 07700900123 are one caller) and the location as read from a PIDF-LO (JSON)
    """
    ALTER TABLE calls ADD COLUMN caller_normalised TEXT NOT NULL DEFAULT '';
    ALTER TABLE calls ADD COLUMN location_detail TEXT;
    CREATE INDEX calls_caller_normalised ON calls(caller_normalised, arrived_at);
    """,
]

COMPONENT = "calls"

RECORDING_COMPONENT = "calls.recording"
"""Recording columns, migrated as their own component (the engine's recordings disk
work), so their numbering never races the ``calls`` component's."""
RECORDING_MIGRATIONS = [
    # 1: a recording's files (more than one when the recordings disk failed during the
    # call) and the audio it lacks, as JSON lists; the partial index finds the recordings
    # whose checksum a crash kept from the record (start-up recovery)
    """
    ALTER TABLE calls ADD COLUMN recording_segments TEXT;
    ALTER TABLE calls ADD COLUMN recording_gaps TEXT;
    CREATE INDEX calls_unrecorded ON calls(arrived_at) WHERE recording_path IS NULL;
    """,
    # 2: recordings sealed on a file system that had turned read-only keep their
    # temporary name (the rename failed); start-up looks at these few rows
    """
    CREATE INDEX calls_recording_part ON calls(arrived_at)
        WHERE recording_path LIKE '%.part';
    """,
]

NODE_COMPONENT = "calls.node"
"""The node that wrote the row (cluster), migrated as its own component."""
NODE_MIGRATIONS = [
    # 1: which node of the cluster took the call (config ``cluster.node_id``; the same
    # SQL is valid PostgreSQL); rows from before have '' (a single node)
    """
    ALTER TABLE calls ADD COLUMN node TEXT NOT NULL DEFAULT '';
    """,
]

PG_MIGRATIONS = [
    # PostgreSQL (a shared store): the same columns; epoch seconds as DOUBLE PRECISION
    # (PostgreSQL's REAL is 4 bytes). 1 and 2 are SQLite's 1 and 2.
    """
    CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        line TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        caller TEXT NOT NULL DEFAULT '',
        display_name TEXT NOT NULL DEFAULT '',
        dialled TEXT NOT NULL DEFAULT '',
        location TEXT,
        sip_call_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        arrived_at DOUBLE PRECISION NOT NULL,
        answered_at DOUBLE PRECISION,
        ended_at DOUBLE PRECISION,
        handler_id TEXT,
        ended_by TEXT,
        end_reason TEXT,
        wait DOUBLE PRECISION,
        talk DOUBLE PRECISION,
        incident_number TEXT,
        grade TEXT,
        thrive TEXT,
        notes TEXT,
        flags TEXT NOT NULL DEFAULT '[]',
        recording_path TEXT,
        recording_sha256 TEXT,
        recording_duration DOUBLE PRECISION
    );
    CREATE INDEX calls_caller ON calls(caller, arrived_at);
    CREATE INDEX calls_arrived ON calls(arrived_at);
    CREATE INDEX calls_handler ON calls(handler_id, arrived_at);
    CREATE INDEX calls_incident ON calls(incident_number);
    """,
    """
    ALTER TABLE calls ADD COLUMN caller_normalised TEXT NOT NULL DEFAULT '';
    ALTER TABLE calls ADD COLUMN location_detail TEXT;
    CREATE INDEX calls_caller_normalised ON calls(caller_normalised, arrived_at);
    """,
]

RECORDING_PG_MIGRATIONS = [
    """
    ALTER TABLE calls ADD COLUMN recording_segments TEXT;
    ALTER TABLE calls ADD COLUMN recording_gaps TEXT;
    CREATE INDEX calls_unrecorded ON calls(arrived_at) WHERE recording_path IS NULL;
    """,
    """
    CREATE INDEX calls_recording_part ON calls(arrived_at)
        WHERE recording_path LIKE '%.part';
    """,
]

_JSON = {"thrive", "flags", "location_detail"}
_JSON |= {"recording_segments", "recording_gaps"}


def insert(conn: sqlite3.Connection, **row: Any) -> None:
    cols = list(row)
    vals = [json.dumps(row[c]) if c in _JSON else row[c] for c in cols]
    conn.execute(f"INSERT INTO calls({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)


def update(conn: sqlite3.Connection, call_id: str, **row: Any) -> None:
    if not row:
        return
    cols = list(row)
    vals = [json.dumps(row[c]) if c in _JSON else row[c] for c in cols]
    conn.execute(f"UPDATE calls SET {', '.join(f'{c}=?' for c in cols)} WHERE call_id=?",
                 [*vals, call_id])


def to_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for c in _JSON:
        if d.get(c) is not None:
            d[c] = json.loads(d[c])
    return d
