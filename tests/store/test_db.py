"""The SQLite store base."""

from __future__ import annotations

from pathlib import Path


def test_database_checkpoints_off_the_writer(tmp_path: Path) -> None:
    """The writer never auto-checkpoints; the background checkpointer folds the WAL in,
    and committed rows survive closing and reopening."""
    import time

    from store import Database

    db = Database(tmp_path / "x.sqlite3", checkpoint_interval=1.0)
    assert db.query_one("PRAGMA wal_autocheckpoint")[0] == 0
    db.execute("CREATE TABLE t (x INTEGER, pad TEXT)")
    with db.transaction() as conn:
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 50) for i in range(1000)])
    assert (tmp_path / "x.sqlite3").stat().st_size < 8192  # nothing checkpointed on commit
    main = tmp_path / "x.sqlite3"
    # The rows are in the WAL; only the background thread copies them into the file.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and main.stat().st_size < 8192:
        time.sleep(0.05)
    assert main.stat().st_size >= 8192
    db.close()
    again = Database(tmp_path / "x.sqlite3")
    assert again.query_one("SELECT COUNT(*) FROM t")[0] == 1000
    again.close()
