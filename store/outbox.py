"""The transactional outbox: every message for the CAD, durable before it is sent.

Theory of operation: the service changes a call's state and appends the matching outbox
row in ONE write transaction (:meth:`store.db.Database.transaction`), so the CAD never
hears of a change that was rolled back and never misses one that was committed. A
separate publisher task (:mod:`cad.publisher`) reads :func:`pending` rows in commit
order, publishes them and :func:`mark_delivered` them after the broker's PUBACK. A
``kill -9`` at any point loses nothing: a row is either not committed (the call's state
change is not either) or committed and pending until acknowledged; the only duplicates
are rows that were in flight when the process died (consumers dedupe on ``event_id``).

Sequence numbers: each call has a counter row in ``outbox_seq`` bumped inside the same
transaction, so ``seq`` is 1, 2, 3... per call with no gap (a rolled-back transaction
rolls back its counter bump too) and keeps counting after delivered rows are purged.

Global order: there is one writer and ``BEGIN IMMEDIATE`` serialises transactions, so the
``AUTOINCREMENT`` id is assigned in commit order; :func:`pending` reads by id, which keeps
each call's rows in seq order.

On PostgreSQL (one outbox for the cluster, every node appending) ids come from an
identity assigned at insert, so a lower id can commit after a higher one and reading
"``id > last``" could skip it: publishers there use :func:`claim` instead, which takes
whole calls under row locks (``FOR UPDATE SKIP LOCKED``) and keeps each call in seq
order; the counter row in ``outbox_seq`` is locked by its bump until commit, so two
nodes appending for one call get consecutive seqs in commit order. Event ids are the
ones given: nothing is renumbered across a failover.

Memory: nothing is held in memory; the publisher pages through the table ``limit`` rows
at a time, so an outage of any length is bounded by disk only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .db import Database

COMPONENT = "outbox"

MIGRATIONS = [
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        line TEXT NOT NULL,
        type TEXT NOT NULL,
        event_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        delivered_at REAL,
        UNIQUE (call_id, seq)
    );
    CREATE INDEX outbox_pending ON outbox(id) WHERE delivered_at IS NULL;
    CREATE INDEX outbox_delivered ON outbox(delivered_at) WHERE delivered_at IS NOT NULL;
    CREATE TABLE outbox_seq (
        call_id TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    );
    """,
]

PG_MIGRATIONS = [
    # PostgreSQL: one outbox for the cluster. ``id`` is an identity (assigned at insert,
    # not commit: see claim()); the second partial index finds a call's head row.
    """
    CREATE TABLE outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        call_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        line TEXT NOT NULL,
        type TEXT NOT NULL,
        event_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION,
        UNIQUE (call_id, seq)
    );
    CREATE INDEX outbox_pending ON outbox(id) WHERE delivered_at IS NULL;
    CREATE INDEX outbox_pending_call ON outbox(call_id, seq) WHERE delivered_at IS NULL;
    CREATE INDEX outbox_delivered ON outbox(delivered_at) WHERE delivered_at IS NOT NULL;
    CREATE TABLE outbox_seq (
        call_id TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    );
    """,
]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One message waiting for (or done with) delivery."""

    id: int
    """Global commit order."""
    call_id: str
    seq: int
    """Per-call sequence number, 1-based and gap-free."""
    line: str
    """Line name (a topic level)."""
    type: str
    """Message type, e.g. ``call.arrived``."""
    event_id: str
    payload: str
    """The message as JSON text, ``seq`` included."""
    created_at: float


def _next_seq(conn: sqlite3.Connection, call_id: str) -> int:
    row = conn.execute(
        "INSERT INTO outbox_seq(call_id, last_seq) VALUES (?, 1) "
        "ON CONFLICT(call_id) DO UPDATE SET last_seq = outbox_seq.last_seq + 1"
        " RETURNING last_seq",
        (call_id,),
    ).fetchone()
    return int(row[0])


def append(
    conn: sqlite3.Connection,
    *,
    call_id: str,
    line: str,
    type: str,  # noqa: A002 - the message's own field name
    payload_fn: Callable[[int], Mapping[str, Any]] | None = None,
    payload: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    now: float | None = None,
) -> int:
    """Append one message for ``call_id`` and return its per-call ``seq``.

    Call it with the connection yielded by ``db.transaction()``, in the same transaction
    as the state change it reports. Give either ``payload_fn(seq) -> dict`` (so the
    message can carry its seq, e.g. ``lambda seq: to_message(ev, seq=seq, ...)``) or a
    ready ``payload``; in both cases the stored JSON's ``seq`` is set to the assigned
    seq. ``event_id`` defaults to the payload's ``event_id``.
    """
    if (payload_fn is None) == (payload is None):
        raise ValueError("give exactly one of payload_fn or payload")
    if not conn.in_transaction:
        # Outside a transaction the state change and the message could diverge.
        raise ValueError("outbox.append must run inside db.transaction()")
    seq = _next_seq(conn, call_id)
    body = dict(payload_fn(seq) if payload_fn is not None else payload)  # type: ignore[arg-type]
    body["seq"] = seq
    eid = event_id or body.get("event_id")
    if not isinstance(eid, str) or not eid:
        raise ValueError("the message needs an event_id (in the payload or as argument)")
    conn.execute(
        "INSERT INTO outbox(call_id, seq, line, type, event_id, payload, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (call_id, seq, line, type, eid, json.dumps(body, separators=(",", ":"),
                                                    ensure_ascii=False),
         time.time() if now is None else now),
    )
    return seq


_COLS = "id, call_id, seq, line, type, event_id, payload, created_at"


def _row(r: sqlite3.Row | tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(id=r[0], call_id=r[1], seq=r[2], line=r[3], type=r[4], event_id=r[5],
                     payload=r[6], created_at=r[7])


def pending(db: Database | sqlite3.Connection, limit: int = 500,
            after_id: int = 0) -> list[OutboxRow]:
    """Up to ``limit`` undelivered rows with ``id > after_id``, in global commit order.

    ``db`` may be the :class:`Database` or a reader connection
    (``db.connect_reader()``); a reader only sees committed rows, which is what a
    publisher must send.
    """
    sql = (f"SELECT {_COLS} FROM outbox WHERE delivered_at IS NULL AND id > ?"
           " ORDER BY id LIMIT ?")
    if isinstance(db, Database):
        rows = db.query(sql, (after_id, limit))
    else:
        rows = db.execute(sql, (after_id, limit)).fetchall()
    return [_row(r) for r in rows]


def claim(conn: Any, *, limit: int = 200, calls: int = 100) -> list[OutboxRow]:
    """PostgreSQL, several publishers on one outbox: claim calls and return their rows.

    Call it on a publisher's own connection inside a transaction it keeps open while it
    publishes, then :func:`mark_claimed` and commit (or roll back to give the rows back).
    It locks the *head* row (the oldest pending) of up to ``calls`` calls with ``FOR
    UPDATE SKIP LOCKED`` and returns every pending row of those calls (at most
    ``limit``) in id order. Holding a call's head row is owning the call: another
    publisher skips it, and a later row of the call is never a head while an earlier
    one is pending, so no two publishers ever send one call's messages at once and each
    call stays in seq order. The locks go with the transaction: a publisher (or node)
    that dies gives its calls back at once, and the next one sends what was not marked
    again (at least once; consumers dedupe on ``event_id``). Writers only insert, so
    they never wait for a publisher.
    """
    heads = conn.execute(
        "SELECT o.call_id FROM outbox o WHERE o.delivered_at IS NULL AND NOT EXISTS ("
        "SELECT 1 FROM outbox p WHERE p.call_id = o.call_id AND p.delivered_at IS NULL"
        " AND p.seq < o.seq) ORDER BY o.id LIMIT ? FOR UPDATE OF o SKIP LOCKED",
        (calls,)).fetchall()
    if not heads:
        return []
    rows = conn.execute(
        f"SELECT {_COLS} FROM outbox WHERE delivered_at IS NULL AND call_id = ANY(?)"
        " ORDER BY id LIMIT ?", ([h[0] for h in heads], limit)).fetchall()
    return [_row(r) for r in rows]


def mark_claimed(conn: Any, ids: Iterable[int], *, now: float | None = None) -> int:
    """Mark rows returned by :func:`claim` delivered, in the claiming transaction."""
    ids = list(ids)
    if not ids:
        return 0
    at = time.time() if now is None else now
    return int(conn.execute("UPDATE outbox SET delivered_at=? WHERE delivered_at IS NULL"
                            " AND id = ANY(?)", (at, ids)).rowcount)

def mark_delivered(db: Database, ids: Iterable[int], *, now: float | None = None) -> int:
    """Record that the broker acknowledged these rows; returns how many were pending."""
    ids = list(ids)
    if not ids:
        return 0
    at = time.time() if now is None else now
    n = 0
    with db.transaction() as conn:
        # Chunks stay under SQLite's bound-parameter limit.
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            cur = conn.execute(
                f"UPDATE outbox SET delivered_at=? WHERE delivered_at IS NULL"
                f" AND id IN ({','.join('?' * len(chunk))})", (at, *chunk))
            n += cur.rowcount
    return n


def depth(db: Database | sqlite3.Connection) -> int:
    """How many rows are waiting for delivery."""
    sql = "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"
    row = db.query_one(sql) if isinstance(db, Database) else db.execute(sql).fetchone()
    return int(row[0]) if row else 0


def oldest_pending_age(db: Database, *, now: float | None = None) -> float | None:
    """Seconds the oldest undelivered row has waited (None when nothing is pending)."""
    row = db.query_one("SELECT MIN(created_at) FROM outbox WHERE delivered_at IS NULL")
    if row is None or row[0] is None:
        return None
    return max(0.0, (time.time() if now is None else now) - float(row[0]))


def for_call(db: Database, call_id: str) -> list[OutboxRow]:
    """Every row of one call (delivered or not), in seq order: for audit and tests."""
    rows = db.query(f"SELECT {_COLS} FROM outbox WHERE call_id=? ORDER BY seq", (call_id,))
    return [_row(r) for r in rows]


def purge_delivered(db: Database, *, before: float) -> int:
    """Delete rows delivered before ``before`` (epoch s); returns how many.

    Per-call counters are kept, so a call that gets more events later continues its seq.
    """
    with db.transaction() as conn:
        return conn.execute("DELETE FROM outbox WHERE delivered_at IS NOT NULL"
                            " AND delivered_at < ?", (before,)).rowcount
