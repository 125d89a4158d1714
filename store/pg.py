"""PostgreSQL behind the same :class:`store.db.Database` API (several nodes, one store).

Theory of operation: ``Database("postgresql://...")`` returns a :class:`PgDatabase`.
Its writer connection is in autocommit mode and :meth:`PgDatabase.transaction` issues
``BEGIN``/``COMMIT`` itself, as the SQLite writer does, so nested use, savepoints and
``conn.in_transaction`` behave the same. The code that owns each table keeps writing
SQLite-flavoured SQL with ``?`` (or ``:name``) placeholders; :func:`to_pg` rewrites
the placeholders for psycopg (``%s`` / ``%(name)s``) and doubles literal ``%``. Rows
come back as :class:`Row`, readable by index and by column name like ``sqlite3.Row``.
What differs in the schema (identity columns, ``DOUBLE PRECISION`` for epoch seconds,
triggers as PL/pgSQL functions) lives in each component's own PostgreSQL migrations.

Connection loss: a broken writer connection is replaced on the next use; while the
server is away that use raises ``psycopg.OperationalError``, which
:func:`store.spool.classify` names a storage fault, so the node spools its writes in
order and writes them when the server is back (a restart mid-run).

Migrations run under a session advisory lock, so when several nodes start together one
applies them and the others wait, then find nothing left to do.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .db import Database, SchemaMismatch, check_versions

if TYPE_CHECKING:
    import psycopg

MIGRATE_LOCK = 0x636F6E74726F6C  # "control": the advisory lock key for migrations
CONNECT_TIMEOUT = 3


class Row(tuple[Any, ...]):
    """A result row: ``row[0]``, ``row["column"]``, ``dict(row)``."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    names = {d.name: i for i, d in reversed(list(enumerate(desc or ())))}

    def make(values: Sequence[Any]) -> Row:
        r = Row(values)
        r._names = names
        return r
    return make


@functools.lru_cache(maxsize=4096)
def to_pg(sql: str, named: bool = False) -> str:
    """Rewrite SQLite placeholders for psycopg: ``?`` -> ``%s``, ``:name`` ->
    ``%(name)s`` (when ``named``), a literal ``%`` -> ``%%``; quoted text is left alone
    except for its ``%``."""
    out: list[str] = []
    i, n = 0, len(sql)
    quote = ""
    while i < n:
        c = sql[i]
        if quote:
            out.append("%%" if c == "%" else c)
            if c == quote:
                quote = ""
        elif c in ("'", '"'):
            quote = c
            out.append(c)
        elif c == "?":
            out.append("%s")
        elif c == "%":
            out.append("%%")
        elif (c == ":" and named and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_")
              and (i == 0 or sql[i - 1] != ":")):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            out.append(f"%({sql[i + 1:j]})s")
            i = j
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


class PgConnection:
    """A psycopg connection that takes the SQL the SQLite code writes (see module doc)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = ()) -> Any:
        if not params:
            # No parameters: psycopg sends the text as is (a '%' needs no doubling).
            return self.raw.execute(sql)
        if isinstance(params, dict):
            return self.raw.execute(to_pg(sql, True), params)  # type: ignore[arg-type]
        return self.raw.execute(to_pg(sql), tuple(params))  # type: ignore[arg-type]

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Any:
        cur = self.raw.cursor()
        cur.executemany(to_pg(sql), [tuple(p) for p in seq])  # type: ignore[arg-type]
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(url: str) -> PgConnection:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           row_factory=_row_factory)
    return PgConnection(conn)


class PgDatabase(Database, schemes=("postgresql://", "postgres://")):
    """The shared PostgreSQL store (one writer connection per node, readers on demand).

    psycopg is imported when one is opened, so a SQLite node never loads it."""

    dialect = "postgresql"

    def __init__(self, path: Any, *, checkpoint_interval: float = 1.0) -> None:  # noqa: ARG002
        import psycopg

        self.Error = psycopg.Error
        self.DatabaseError = psycopg.DatabaseError
        self.IntegrityError = psycopg.IntegrityError
        self.OperationalError = psycopg.OperationalError
        self.url = str(path)
        self.path = self._where()
        """The URL without user or password (for logs)."""
        self._lock = threading.RLock()
        self._depth = 0
        self._conn_: PgConnection | None = None
        with self._lock:
            conn = self._ensure()
            # IF NOT EXISTS races between nodes starting together: under the lock.
            conn.execute("SELECT pg_advisory_lock(?)", (MIGRATE_LOCK,))
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " component TEXT NOT NULL, version INTEGER NOT NULL,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                    " PRIMARY KEY (component, version))")
            finally:
                conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATE_LOCK,))

    # -- connection ----------------------------------------------------------
    def _ensure(self) -> PgConnection:
        """The writer connection, re-made if the server dropped it (restart)."""
        c = self._conn_
        if c is None or c.closed or c.raw.broken:
            if c is not None:
                with contextlib.suppress(self.Error):
                    c.close()
            self._conn_ = None
            self._conn_ = c = _connect(self.url)
        return c

    @property
    def _conn(self) -> PgConnection:  # type: ignore[override]
        return self._ensure()

    # -- schema --------------------------------------------------------------
    def migrate(self, component: str, migrations: Sequence[str], *,
                postgresql: Sequence[str] | None = None) -> int:
        if postgresql is None:
            raise SchemaMismatch(f"component {component!r} has no PostgreSQL migrations: "
                                 "it cannot use a PostgreSQL store yet")
        applied = 0
        with self._lock:
            conn = self._ensure()
            conn.execute("SELECT pg_advisory_lock(?)", (MIGRATE_LOCK,))
            try:
                done = {r[0] for r in conn.execute(
                    "SELECT version FROM schema_migrations WHERE component=?", (component,))}
                check_versions(component, done, len(postgresql), where=self._where())
                for version, script in enumerate(postgresql, start=1):
                    if version in done:
                        continue
                    conn.execute("BEGIN")
                    try:
                        conn.execute(script)
                        conn.execute("INSERT INTO schema_migrations(component, version)"
                                     " VALUES (?, ?)", (component, version))
                        conn.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(self.Error):
                            conn.execute("ROLLBACK")
                        raise
                    applied += 1
            finally:
                with contextlib.suppress(self.Error):
                    conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATE_LOCK,))
        return applied

    def _where(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)
        return f"postgresql://{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"

    # -- writing -------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn_
                finally:
                    self._depth -= 1
                return
            conn = self._ensure()
            conn.execute("BEGIN")
            self._depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            finally:
                self._depth = 0

    def _rollback(self) -> None:
        c = self._conn_
        if c is not None and not c.closed and c.in_transaction:
            with contextlib.suppress(self.Error):
                c.execute("ROLLBACK")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        with self.transaction() as conn:
            return conn.execute(sql, params)

    # -- reading -------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        with self._lock:
            return self._ensure().execute(sql, params).fetchall()  # type: ignore[no-any-return]

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        with self._lock:
            return self._ensure().execute(sql, params).fetchone()

    def connect_reader(self) -> PgConnection:  # type: ignore[override]
        """A separate autocommit connection (sees committed rows only)."""
        return _connect(self.url)

    def checkpoint(self) -> None:
        """Nothing to do: the server owns its checkpoints."""

    def close(self) -> None:
        with self._lock:
            if self._conn_ is not None:
                with contextlib.suppress(self.Error):
                    self._conn_.close()
                self._conn_ = None


def is_url(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))
