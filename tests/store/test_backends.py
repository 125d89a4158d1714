"""The store's API on both backends: SQLite (one node) and a real PostgreSQL (several).

Every test here runs twice (``store_url``): once on a SQLite file, once on a fresh
database in the session's throw-away PostgreSQL cluster.
"""

from __future__ import annotations

import threading

import pytest

from routing.actions import QueueLogEntry
from store import Database, nodes, queuelog, systemlog
from store import calls as calls_table
from store.db import SchemaMismatch


def _migrated(url: str) -> Database:
    db = Database(url)
    db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS,
               postgresql=calls_table.PG_MIGRATIONS)
    db.migrate(calls_table.RECORDING_COMPONENT, calls_table.RECORDING_MIGRATIONS,
               postgresql=calls_table.RECORDING_PG_MIGRATIONS)
    db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS, postgresql=queuelog.PG_MIGRATIONS)
    db.migrate(systemlog.COMPONENT, systemlog.MIGRATIONS, postgresql=systemlog.PG_MIGRATIONS)
    nodes.migrate(db)
    return db


def test_the_url_picks_the_backend(store_url: str) -> None:
    """A postgresql:// URL opens PostgreSQL, anything else a SQLite file; both are a
    Database, and the logged path never carries a password."""
    db = Database(store_url)
    assert isinstance(db, Database)
    assert db.dialect == ("postgresql" if store_url.startswith("postgresql://") else "sqlite")
    assert "@" not in db.path
    db.close()


def test_transactions_commit_roll_back_and_nest(store_url: str) -> None:
    """A transaction commits on success, rolls back on error; nested use joins the
    outer one; rows read by index, by name and as a dict; '%' and named parameters work."""
    db = _migrated(store_url)
    with db.transaction() as conn:
        calls_table.insert(conn, call_id="a", line="999", state="queued", arrived_at=1.5,
                           flags=["silent"], caller="07700 900123")
        with db.transaction() as inner:
            calls_table.update(inner, "a", state="connected", handler_id="h1")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        calls_table.insert(conn, call_id="b", line="101", state="queued", arrived_at=2.0)
        raise RuntimeError("rolled back")
    with pytest.raises(db.IntegrityError), db.transaction() as conn:
        calls_table.insert(conn, call_id="a", line="999", state="queued", arrived_at=3.0)
    rows = db.query("SELECT call_id, state, arrived_at FROM calls ORDER BY call_id")
    assert [(r[0], r["state"], r["arrived_at"]) for r in rows] == [("a", "connected", 1.5)]
    row = db.query_one("SELECT * FROM calls WHERE caller LIKE '07700%' AND call_id=?", ("a",))
    assert calls_table.to_dict(row)["flags"] == ["silent"]
    assert db.query_one("SELECT COUNT(*) n FROM calls WHERE line = :line",
                        {"line": "999"})["n"] == 1
    assert db.query_one("SELECT call_id FROM calls WHERE call_id='b'") is None
    db.close()


def test_a_reader_sees_only_committed_rows(store_url: str) -> None:
    """connect_reader() is a separate connection: an open transaction is invisible to it."""
    db = _migrated(store_url)
    reader = db.connect_reader()
    with db.transaction() as conn:
        systemlog.append(conn, at=1.0, type="t", reason="r")
        assert reader.execute("SELECT COUNT(*) FROM system_events").fetchone()[0] == 0
    assert reader.execute("SELECT COUNT(*) FROM system_events").fetchone()[0] == 1
    reader.close()
    db.close()


def test_queue_log_and_system_events_are_append_only(store_url: str) -> None:
    """Entries come back in order with their data; the database itself refuses an UPDATE."""
    db = _migrated(store_url)
    with db.transaction() as conn:
        ids = [queuelog.append(conn, QueueLogEntry(10.0 + i, f"c{i}", "999", "h1", "ENTERQUEUE",
                                                   {"position": i, "wait": float("nan")}))
               for i in range(3)]
        systemlog.append(conn, at=5.0, type="storage.fault", data={"reason": "disk full"})
    assert ids == sorted(ids) and len(set(ids)) == 3
    got = queuelog.load(db, since=11.0)
    assert [(e.call_id, e.data) for e in got] == [("c1", {"position": 1, "wait": None}),
                                                  ("c2", {"position": 2, "wait": None})]
    assert systemlog.load(db) == [{"at": 5.0, "type": "storage.fault", "reason": "",
                                   "data": {"reason": "disk full"}}]
    with pytest.raises(db.DatabaseError, match="queue_log is append-only"):
        db.execute("UPDATE queue_log SET event='x'")
    with pytest.raises(db.DatabaseError, match="system_events is append-only"):
        db.execute("UPDATE system_events SET type='x'")
    db.close()


def test_migrations_apply_once_and_a_newer_schema_is_refused(store_url: str) -> None:
    """A second start applies nothing; a node whose code knows fewer versions than the
    database has refuses to start, naming the component and both versions."""
    db = _migrated(store_url)
    assert db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS,
                      postgresql=queuelog.PG_MIGRATIONS) == 0
    newer = ["CREATE TABLE extra (x INTEGER)"]
    assert db.migrate("demo", newer, postgresql=newer) == 1
    two = [newer[0], "CREATE TABLE extra2 (x INTEGER)"]
    assert db.migrate("demo", two, postgresql=two) == 1  # an older database moves forward
    with pytest.raises(SchemaMismatch) as err:
        db.migrate("demo", newer, postgresql=newer)  # older code than the database
    assert "schema version 2 for 'demo'" in str(err.value)
    assert "knows versions up to 1" in str(err.value)
    db.close()


def test_nodes_starting_together_migrate_once(store_url: str) -> None:
    """Four nodes migrating one fresh store at once: each migration is applied exactly
    once and every node comes up (PostgreSQL: under the advisory lock)."""
    if not store_url.startswith("postgresql://"):
        pytest.skip("SQLite is one node")
    results: list[object] = []

    def start() -> None:
        try:
            d = _migrated(store_url)
            results.append("ok")
            d.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)
    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["ok"] * 4
    db = Database(store_url)
    rows = db.query("SELECT component, COUNT(*) n FROM schema_migrations GROUP BY component"
                    " ORDER BY component")
    assert [(r[0], r[1]) for r in rows] == [("calls", 2), ("calls.recording", 2),
                                            ("nodes", 1), ("queuelog", 1), ("systemlog", 1)]
    db.close()


def test_two_nodes_with_one_id_refuse_to_run_together(store_url: str) -> None:
    """The second run of an id is refused while the first's heartbeat is fresh (message
    names the other's host and pid); it may take over once the first stopped or went
    stale, and the first then learns from its heartbeat that it lost the id."""
    db = _migrated(store_url)
    first, second = nodes.new_instance(), nodes.new_instance()
    nodes.register(db, "fcr1", first, stale_after=10, now=100.0)
    nodes.register(db, "fcr1", first, stale_after=10, now=101.0)  # its own restart
    assert nodes.heartbeat(db, "fcr1", first, now=105.0)
    with pytest.raises(nodes.NodeIdInUse, match=r"node id 'fcr1' is already running .*pid"):
        nodes.register(db, "fcr1", second, stale_after=10, now=110.0)
    nodes.register(db, "fcr2", second, stale_after=10, now=110.0)  # another id is fine
    assert [n["node_id"] for n in nodes.running(db, stale_after=10, now=111.0)] == [
        "fcr1", "fcr2"]
    nodes.register(db, "fcr1", second, stale_after=10, now=116.0)  # first went stale
    assert not nodes.heartbeat(db, "fcr1", first, now=117.0)
    nodes.unregister(db, "fcr1", second, now=118.0)
    nodes.register(db, "fcr1", first, stale_after=10, now=118.5)  # stopped: free at once
    db.close()


def test_a_restart_after_kill_9_on_the_same_host_takes_over_at_once(store_url: str) -> None:
    """A row whose process on this host no longer exists (the node was killed) is taken
    over at once by the restarted node, without waiting for the heartbeat to go stale;
    a live process on this host still keeps its id."""
    import subprocess
    import sys

    db = _migrated(store_url)
    nodes.register(db, "fcr1", nodes.new_instance(), stale_after=60, now=100.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    db.execute("UPDATE nodes SET pid=? WHERE node_id=?", (int(dead.stdout), "fcr1"))
    nodes.register(db, "fcr1", nodes.new_instance(), stale_after=60, now=101.0)
    with pytest.raises(nodes.NodeIdInUse):  # this process is alive: refused
        nodes.register(db, "fcr1", nodes.new_instance(), stale_after=60, now=102.0)
    db.close()
