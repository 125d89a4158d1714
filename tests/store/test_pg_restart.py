"""PostgreSQL restarted (crashed) mid-run: the node spools its writes and reconciles.

A private cluster (not the session's: this test stops it) is stopped with ``pg_ctl -m
immediate`` while the node writes; the spooled writer names the fault, keeps the units
in order, and writes them all, gap-free and in order, once the server is back.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from harness import postgres as pg
from store import Database, outbox
from store.spool import SpooledWriter, StorageFaulted, StorageRecovered, classify

pytestmark = pytest.mark.realparts


def _unit(n: int, call_id: str = "c1"):  # type: ignore[no-untyped-def]
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, call_id))
        outbox.append(conn, call_id=call_id, line="999", type=f"call.e{n}",
                      payload={"event_id": f"{call_id}-{n}"})
    return write


def test_a_postgresql_restart_degrades_then_reconciles_in_order() -> None:
    """Writes during the outage wait in the spool (degraded, reason named); after the
    restart they are written in the decided order with gap-free per-call seq, and the
    fault and recovery are reported once each."""
    if not pg.available():
        pytest.skip("PostgreSQL is not installed")
    with pg.Postgres() as cluster:
        db = Database(cluster.database("restart"))
        db.migrate(outbox.COMPONENT, outbox.MIGRATIONS, postgresql=outbox.PG_MIGRATIONS)
        db.execute("CREATE TABLE t (n INTEGER, call_id TEXT)")
        events: list[object] = []
        w = SpooledWriter(db, on_event=events.append)
        assert w.write(_unit(1), call_id="c1", what="call.e1") is True
        cluster.stop()  # a crash: every connection is cut
        for n in (2, 3):
            assert w.write(_unit(n), call_id="c1", what=f"call.e{n}") is False
        assert w.write(_unit(1, "c2"), call_id="c2", what="call.e1") is False
        assert w.degraded and w.depth == 3
        assert w.fault is not None and w.fault.reason in ("database unreachable",
                                                          "database unavailable")
        assert w.flush() == 0 and w.depth == 3  # still down: nothing moves
        cluster.start()
        assert w.write(_unit(4), call_id="c1", what="call.e4") is False  # behind the spool
        # Only the store's prober thread tries the server while it is away (store.pg):
        # writes resume once it has reached it (back-off at most 2 s).
        deadline = time.monotonic() + 10
        while not getattr(db, "reachable", True) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert getattr(db, "reachable", True)
        while w.depth:
            assert w.flush() > 0
        assert not w.degraded and w.lost == 0
        assert [tuple(r) for r in db.query("SELECT n, call_id FROM t ORDER BY n, call_id")] == [
            (1, "c1"), (1, "c2"), (2, "c1"), (3, "c1"), (4, "c1")]
        assert [r.seq for r in outbox.for_call(db, "c1")] == [1, 2, 3, 4]
        assert [(r.call_id, r.seq) for r in outbox.pending(db)] == [
            ("c1", 1), ("c1", 2), ("c1", 3), ("c2", 1), ("c1", 4)]
        assert [type(e) for e in events] == [StorageFaulted, StorageRecovered]
        db.close()


def test_classify_names_postgresql_faults_only() -> None:
    """Connection loss, shutdown and a full disk are storage faults; a constraint
    violation or a syntax error is not."""
    import psycopg
    from psycopg import errors

    assert classify(psycopg.OperationalError("connection refused")) == "database unreachable"
    assert classify(errors.AdminShutdown("terminating")) == "database unavailable"
    assert classify(errors.DiskFull("no space")) == "disk full"
    assert classify(errors.ReadOnlySqlTransaction("standby")) == "read-only"
    assert classify(errors.UniqueViolation("dup")) is None
    assert classify(errors.SyntaxError("bad")) is None
