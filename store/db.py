"""SQLite access shared by every part of the service.

Theory of operation: one file, WAL mode, ``synchronous=NORMAL`` (a committed
transaction survives ``kill -9`` of the process; only an OS crash can lose the last
few). Each component owns its tables and registers its own ordered list of migrations
under a component name; :meth:`Database.migrate` applies the ones not yet applied, each
in its own transaction, and records them in ``schema_migrations``.

Checkpoints (copying the WAL back into the database file, with an fsync) are taken off
the writer: ``wal_autocheckpoint`` is off on the writer connection and a daemon thread
runs a PASSIVE checkpoint every ``checkpoint_interval`` seconds on its own connection, so
a commit on the event loop never pays for one.

Writes from the event loop are short (a row or two, well under a millisecond in WAL);
anything that scans (search, reports) runs in a thread with its own connection from
:meth:`Database.connect_reader`. The writer connection is guarded by a lock so a worker
thread may also write.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if path != ":memory:" and readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               timeout=30.0)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=30.0,
                               isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SchemaMismatch(RuntimeError):
    """The database's schema is not the one this code was built for: the node must not
    start (a newer database than the code, or a component with no migrations for it)."""


def check_versions(component: str, done: set[int] | Sequence[int], known: int, *,
                   where: str) -> None:
    """Refuse a database whose ``component`` schema is ahead of this code.

    Migrations are forward-only: an older database is brought up to date; a newer one
    was migrated by a newer controlroom, and this node would misread it.
    """
    ahead = max(done, default=0)
    if ahead > known:
        raise SchemaMismatch(
            f"database {where} has schema version {ahead} for {component!r}; this controlroom "
            f"knows versions up to {known}: upgrade this node (or point it at its own "
            "database); it will not start against a newer schema")


class Database:
    """The service's database: SQLite (one writer connection, readers on demand), or
    PostgreSQL when given a ``postgresql://`` URL (:class:`store.pg.PgDatabase`).

    A subclass serving URLs names their prefixes (``class PgDatabase(Database,
    schemes=(...))``) and ``Database(url)`` builds that subclass; the package imports
    its backends (``store/__init__.py``), so this module needs none of them."""

    dialect = "sqlite"
    """``sqlite`` or ``postgresql``: for the few places whose SQL differs."""
    Error: type[Exception] = sqlite3.Error
    DatabaseError: type[Exception] = sqlite3.DatabaseError
    IntegrityError: type[Exception] = sqlite3.IntegrityError
    """The driver's exceptions (DB-API style), so callers catch the right ones."""
    OperationalError: type[Exception] = sqlite3.OperationalError

    _by_scheme: ClassVar[dict[str, type[Database]]] = {}
    """URL prefix -> the subclass that serves it (filled by ``__init_subclass__``)."""

    def __init_subclass__(cls, *, schemes: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for prefix in schemes:
            Database._by_scheme[prefix] = cls

    def __new__(cls, path: str | Path = ":memory:", **kwargs: Any) -> Database:
        if cls is Database and isinstance(path, str):
            for prefix, backend in Database._by_scheme.items():
                if path.startswith(prefix):
                    return super().__new__(backend)
        return super().__new__(cls)

    def __init__(self, path: str | Path, *, checkpoint_interval: float = 1.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path)
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_interval,),
                name="sqlite-checkpoint", daemon=True)
            self._checkpointer.start()
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.RLock()
        self._depth = 0
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL,"
            " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),"
            " PRIMARY KEY (component, version))"
        )

    # -- schema --------------------------------------------------------------
    def migrate(self, component: str, migrations: Sequence[str], *,
                postgresql: Sequence[str] | None = None) -> int:
        """Apply ``migrations[i]`` (SQL scripts) not yet applied for ``component``.

        ``postgresql`` is the component's own list for a PostgreSQL store (the SQLite
        list is used here). Returns how many were applied. Never edit a shipped
        migration; append a new one. Raises :class:`SchemaMismatch` when the database
        already has a newer version than ``migrations`` knows.
        """
        applied = 0
        with self._lock:
            done = {r[0] for r in self._conn.execute(
                "SELECT version FROM schema_migrations WHERE component=?", (component,))}
            check_versions(component, done, len(migrations), where=self.path)
            for version, script in enumerate(migrations, start=1):
                if version in done:
                    continue
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _split_sql(script):
                        self._conn.execute(statement)
                    self._conn.execute(
                        "INSERT INTO schema_migrations(component, version) VALUES (?, ?)",
                        (component, version))
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                applied += 1
        return applied

    # -- writing -------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested use joins the outer one. Commits on success."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                self._depth = 0

    def _rollback(self) -> None:
        """Roll back what is left of a failed transaction, whatever failed.

        SQLite may already have rolled the transaction back itself (SQLITE_FULL,
        SQLITE_IOERR), and a COMMIT that failed on a full or read-only disk leaves it
        open: either way the connection must come out with no transaction, or every
        later BEGIN fails. A ROLLBACK that fails too is not allowed to hide the error
        that matters (the one being raised).
        """
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """One statement in its own transaction (or the current one)."""
        with self.transaction() as conn:
            return conn.execute(sql, params)

    # -- reading -------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """A short read on the writer connection (sees uncommitted work of this process)."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def connect_reader(self) -> sqlite3.Connection:
        """A separate connection for a thread doing long reads (search, reports)."""
        return _connect(self.path)

    def _checkpoint_loop(self, interval: float) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(interval):
                try:
                    if conn is None:
                        conn = _connect(self.path)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    # Busy or locked: the next round catches up; the WAL just grows a bit.
                    continue
        finally:
            if conn is not None:
                conn.close()

    def checkpoint(self) -> None:
        """A full checkpoint now (tests, shutdown)."""
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=5)
        with self._lock:
            try:
                if self.path != ":memory:":
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (handles triggers' BEGIN...END)."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
