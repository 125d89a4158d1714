"""The spooled writer: writes wait in order while SQLite refuses them, and are written
when it takes them again; a full spool counts and logs what it loses.

The refusal is SQLite's own: ``PRAGMA query_only`` makes the real connection answer every
write with SQLITE_READONLY, as a read-only database does. The real file systems (a full
tmpfs, a file system the kernel made read-only) are in ``test_spool_tmpfs`` below and in
``tests/faults/test_storage_full.py``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from harness.fs import can_mount, fill, tmpfs
from store import Database, outbox
from store.spool import SpooledWriter, StorageFaulted, StorageRecovered, WritesLost, classify


def _db(tmp_path: Path) -> Database:
    db = Database(tmp_path / "x.sqlite3")
    db.migrate(outbox.COMPONENT, outbox.MIGRATIONS)
    db.execute("CREATE TABLE t (n INTEGER, call_id TEXT)")
    return db


def _refuse(db: Database, on: bool) -> None:
    db._conn.execute(f"PRAGMA query_only={1 if on else 0}")


def _unit(n: int, call_id: str = "c1"):  # type: ignore[no-untyped-def]
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, call_id))
        outbox.append(conn, call_id=call_id, line="999", type=f"call.e{n}",
                      payload={"event_id": f"{call_id}-{n}"})
    return write


def test_writes_wait_in_order_and_are_written_when_the_database_returns(tmp_path: Path) -> None:
    """Refused writes are spooled; later ones go behind them even once SQLite would take
    them; the flush writes them all in the decided order with gap-free per-call seq; the
    fault and the recovery are each logged once and reported as events."""
    db = _db(tmp_path)
    events: list[object] = []
    w = SpooledWriter(db, on_event=events.append)
    assert w.write(_unit(1), call_id="c1", what="call.e1", now=100.0) is True
    _refuse(db, True)
    with capture_logs() as logs:
        for n in (2, 3):
            assert w.write(_unit(n), call_id="c1", what=f"call.e{n}", now=101.0) is False
        assert w.write(_unit(1, "c2"), call_id="c2", what="call.e1", now=101.0) is False
        assert w.degraded and w.depth == 3 and w.fault.reason == "read-only"
        assert w.flush(now=200.0) == 0 and w.depth == 3  # still refused: nothing moves
        _refuse(db, False)
        # SQLite would take this one now, but it must not overtake the spool.
        assert w.write(_unit(4), call_id="c1", what="call.e4", now=201.0) is False
        assert w.flush(now=202.0) == 4
    assert not w.degraded and w.depth == 0 and w.lost == 0
    assert [r["n"] for r in db.query("SELECT n FROM t ORDER BY rowid")] == [1, 2, 3, 1, 4]
    rows = outbox.pending(db)
    assert [(r.call_id, r.seq, r.type) for r in rows] == [
        ("c1", 1, "call.e1"), ("c1", 2, "call.e2"), ("c1", 3, "call.e3"),
        ("c2", 1, "call.e1"), ("c1", 4, "call.e4")]
    names = [e["event"] for e in logs]
    assert names.count("storage.fault") == 1 and names.count("storage.recovered") == 1
    fault = next(e for e in logs if e["event"] == "storage.fault")
    assert fault["reason"] == "read-only" and fault["log_level"] == "error"
    assert isinstance(events[0], StorageFaulted) and events[0].at == 101.0
    assert events[-1] == StorageRecovered(reason="read-only", since=101.0, at=202.0,
                                          flushed=4, lost=0)
    assert not db._conn.in_transaction
    db.close()


def test_a_full_spool_counts_and_logs_each_lost_write(tmp_path: Path) -> None:
    """Past ``max_pending`` a write is lost: counted, logged with its call id and what
    it recorded; everything that fitted is written when the database returns."""
    db = _db(tmp_path)
    events: list[object] = []
    w = SpooledWriter(db, max_pending=3, on_event=events.append)
    _refuse(db, True)
    with capture_logs() as logs:
        for n in range(1, 6):
            w.write(_unit(n, f"c{n}"), call_id=f"c{n}", what="call.arrived", now=float(n))
    assert w.depth == 3 and w.lost == 2
    lost = [e for e in logs if e["event"] == "storage.write_lost"]
    assert [(e["call_id"], e["what"], e["why"]) for e in lost] == [
        ("c4", "call.arrived", "spool full"), ("c5", "call.arrived", "spool full")]
    assert [e.call_id for e in events if isinstance(e, WritesLost)] == ["c4", "c5"]
    _refuse(db, False)
    assert w.flush(now=10.0) == 3
    assert [r["n"] for r in db.query("SELECT n FROM t ORDER BY rowid")] == [1, 2, 3]
    assert events[-1] == StorageRecovered(reason="read-only", since=1.0, at=10.0,
                                          flushed=3, lost=2)
    db.close()


def test_a_failing_unit_is_dropped_alone_and_never_blocks_the_spool(tmp_path: Path) -> None:
    """A unit that fails for another reason than the storage (a constraint: a bug) is
    logged and dropped on its own, directly or from the spool; the rest is written."""
    db = _db(tmp_path)
    db.execute("CREATE UNIQUE INDEX t_n ON t(n)")
    w = SpooledWriter(db)
    with capture_logs() as logs:
        assert w.write(_unit(1)) is True
        assert w.write(_unit(1)) is False  # duplicate: IntegrityError, not a storage fault
        assert not w.degraded and w.failed == 1
        _refuse(db, True)
        w.write(_unit(2))
        w.write(_unit(2))  # will fail on flush
        w.write(_unit(3))
        _refuse(db, False)
        assert w.flush() == 2
    assert [r["n"] for r in db.query("SELECT n FROM t ORDER BY rowid")] == [1, 2, 3]
    assert w.failed == 2 and w.depth == 0 and not w.degraded
    assert [r.seq for r in outbox.pending(db)] == [1, 2, 3]  # the failed units left no seq
    assert sum(e["event"] == "storage.write_failed" for e in logs) == 2
    db.close()


def test_close_logs_what_is_still_spooled_as_lost(tmp_path: Path) -> None:
    """Stopping while the database still refuses writes loses the spool: counted, logged."""
    db = _db(tmp_path)
    w = SpooledWriter(db)
    _refuse(db, True)
    w.write(_unit(1), call_id="c9", what="call.ended")
    with capture_logs() as logs:
        assert w.close() == 1
    assert w.lost == 1
    assert [(e["call_id"], e["what"]) for e in logs if e["event"] == "storage.write_lost"] == [
        ("c9", "call.ended")]
    db.close()


@pytest.mark.parametrize(("exc", "reason"), [
    (sqlite3.OperationalError("database or disk is full"), "disk full"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "read-only"),
    (sqlite3.OperationalError("disk I/O error"), "I/O error"),
    (sqlite3.OperationalError("unable to open database file"), "cannot open"),
    (sqlite3.IntegrityError("UNIQUE constraint failed: t.n"), None),
    (sqlite3.OperationalError("no such table: x"), None),
    (ValueError("bug"), None),
])
def test_classify_names_storage_faults_only(exc: BaseException, reason: str | None) -> None:
    """Only errors that mean 'the storage will not take writes' put the writer in a fault."""
    assert classify(exc) == reason


# ---------------------------------------------------------------- a real full tmpfs

needs_root = pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")


@needs_root
@pytest.mark.faults
@pytest.mark.realparts
def test_spool_on_a_real_full_tmpfs(tmp_path: Path) -> None:
    """The database on a 2 MB tmpfs filled to the last byte: SQLite says SQLITE_FULL,
    writes are spooled (disk full); the filler deleted, they are all written in order."""
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        db = _db(mnt)
        w = SpooledWriter(db)
        w.write(_unit(1))
        db.checkpoint()  # an empty WAL: the next write needs new blocks
        fill(mnt / "filler")
        for n in range(2, 40):
            w.write(_unit(n), call_id="c1", what=f"call.e{n}")
        assert w.degraded and w.fault.reason == "disk full" and w.depth == 38
        assert w.flush() == 0 and not db._conn.in_transaction
        (mnt / "filler").unlink()
        while w.depth:
            assert w.flush() > 0
        assert not w.degraded
        assert [r.seq for r in outbox.pending(db)] == list(range(1, 40))
        db.close()
