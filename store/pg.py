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

Connection loss: while the server is away a use raises ``psycopg.OperationalError``,
which :func:`store.spool.classify` names a storage fault, so the node spools its writes
in order and writes them when the server is back (a restart mid-run).

A silent cut (a firewall, a switch port: packets dropped, no reset) must not hold the
event loop, which also carries the SIP and RTP of every call. So:

- the event loop has a connection of its own (threads share another, so the loop never
  waits for a lock a thread holds while its statement hangs), and every statement on it
  is watched: one still unanswered after :data:`LOOP_DEADLINE` seconds whose request
  the server's TCP has not even acknowledged (``TCP_INFO``: the path is silent, not the
  server slow) has its socket shut down by a watchdog thread, so it fails then instead
  of after TCP's retransmissions (~15 minutes). A statement the server has and works on
  (a migration waiting for the advisory lock, a long read) is left alone; a path that
  goes silent while it waits is found by the keepalives;
- the first connection-level failure, on any connection, opens a circuit breaker
  (:mod:`store.breaker`): from then on every use fails at once without touching the
  network, on the loop and in threads alike, and only the prober thread tries the
  server (connect, ``SELECT 1``, with back-off up to :data:`PROBE_MAX`); when it
  answers the prober hands its connection to the loop and closes the breaker. The loop
  never connects itself after start-up. A cut therefore costs the loop one wait of at
  most :data:`LOOP_DEADLINE` (plus the watchdog's tick) per outage;
- every connection has libpq's TCP options (:data:`TCP_OPTIONS`: keepalives and
  ``tcp_user_timeout``), so a thread's statement on a silent path fails in seconds too,
  and asks the server for the same on its side (:data:`SERVER_TCP`), so a session the
  cut left inside a transaction is ended by the server during the cut instead of
  keeping its locks until after the restore;
- the loop's connection never waits for a lock longer than :data:`LOOP_LOCK_TIMEOUT`
  (``lock_timeout``, lifted for migrations): the writer spools and retries instead.

Migrations run under a session advisory lock, so when several nodes start together one
applies them and the others wait, then find nothing left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from .breaker import Breaker
from .db import Database, SchemaMismatch, check_versions

if TYPE_CHECKING:
    import psycopg

log = structlog.get_logger("store.pg")

MIGRATE_LOCK = 0x636F6E74726F6C  # "control": the advisory lock key for migrations
CONNECT_TIMEOUT = 3
PROBE_CONNECT_TIMEOUT = 2
"""The prober's connect timeout (s; libpq's least): a probe begun while the path is cut
waits this long, so the store is found within ~``PROBE_CONNECT_TIMEOUT`` +
:data:`PROBE_MAX` s of its return (was 3 + 2: 4.4 to 4.9 s in the store-cut test)."""
PROBE_MAX = 1.0
"""The prober's longest back-off between tries (s)."""
TCP_OPTIONS: dict[str, Any] = {
    "keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 2,
    "tcp_user_timeout": 3000,
}
"""libpq's TCP options on every connection: an idle connection whose path went silent
is found dead in ~4 s (keepalives), and data the server does not acknowledge fails the
connection after 3 s (``tcp_user_timeout``, ms) instead of TCP's ~15 minutes."""
LOOP_LOCK_TIMEOUT = 0.25
"""Longest a statement on the event loop's connection waits for a lock (s,
``lock_timeout``): a lock held by a session the path's cut left on the server, or by a
slow thread, fails the statement (SQLSTATE 55P03: the spool keeps the unit and retries)
instead of holding the loop until the holder goes."""
SERVER_TCP: dict[str, int] = {
    "tcp_keepalives_idle": 2, "tcp_keepalives_interval": 1, "tcp_keepalives_count": 2,
    "tcp_user_timeout": 3000,
}
"""The server side's TCP settings for each of our sessions (as :data:`TCP_OPTIONS` on
ours): a session whose client went silent (a cut) is ended by the server in seconds, so
the transaction it was in (a cut mid-transaction) does not keep its row locks until the
server's own TCP gives up (its reply retransmitted with back-off: after a 12 s cut the
next try is ~12 s after the restore; keepalives: hours by default)."""
LOOP_DEADLINE = 0.3
"""Longest a statement on the event loop waits on a silent path to the store (s) before
the watchdog fails it and the breaker opens."""


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
    """A psycopg connection that takes the SQL the SQLite code writes (see module doc).

    With a ``guard`` (the :class:`PgDatabase` that made it) each statement is reported
    to it: watched by the watchdog when the connection is the event loop's, and a
    connection-level failure opens the database's breaker."""

    def __init__(self, conn: psycopg.Connection[Any], guard: PgDatabase | None = None,
                 *, loop: bool = False) -> None:
        self.raw = conn
        self.guard = guard
        self.loop = loop
        """The event loop's connection: its statements are watched."""

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] | None) -> Any:
        if not params:
            # No parameters: psycopg sends the text as is (a '%' needs no doubling).
            return self.raw.execute(sql)
        if isinstance(params, dict):
            return self.raw.execute(to_pg(sql, True), params)  # type: ignore[arg-type]
        return self.raw.execute(to_pg(sql), tuple(params))  # type: ignore[arg-type]

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = ()) -> Any:
        g = self.guard
        if g is None:
            return self._run(sql, params)
        if self.loop:
            g._watchdog.arm(self)
        try:
            return self._run(sql, params)
        except g.Error as exc:
            g._failed(self, exc)
            raise
        finally:
            if self.loop:
                g._watchdog.disarm()

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Any:
        g = self.guard
        if g is not None and self.loop:
            g._watchdog.arm(self)
        try:
            cur = self.raw.cursor()
            cur.executemany(to_pg(sql), [tuple(p) for p in seq])  # type: ignore[arg-type]
            return cur
        except Exception as exc:
            if g is not None and isinstance(exc, g.Error):
                g._failed(self, exc)
            raise
        finally:
            if g is not None and self.loop:
                g._watchdog.disarm()

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    @property
    def closed(self) -> bool:
        return self.raw.closed

    @property
    def dead(self) -> bool:
        """Closed, broken, or failed by the watchdog: not to be used again."""
        return self.raw.closed or self.raw.broken or self.guard is not None and (
            self.guard._watchdog.fired_on is self)

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.lru_cache(maxsize=16)
def _options(url: str, loop: bool) -> str:
    """libpq's ``options`` for a connection: the URL's own, then :data:`SERVER_TCP`,
    and on the loop's connection ``lock_timeout`` (:data:`LOOP_LOCK_TIMEOUT`)."""
    from psycopg.conninfo import conninfo_to_dict

    settings = dict(SERVER_TCP)
    if loop:
        settings["lock_timeout"] = int(LOOP_LOCK_TIMEOUT * 1000)
    ours = " ".join(f"-c {k}={v}" for k, v in settings.items())
    return f"{conninfo_to_dict(url).get('options') or ''} {ours}".strip()


def server_options(url: str) -> str:
    """libpq's ``options`` with :data:`SERVER_TCP` (and the URL's own), for a connection
    made outside :class:`PgDatabase`. Not for the global queue's bus reader: the leader
    reads its open session as "cut off, may route alone" (``controlroom.leader``)."""
    return _options(url, False)


def _connect(url: str, guard: PgDatabase | None = None, *, loop: bool = False,
             timeout: int = CONNECT_TIMEOUT) -> PgConnection:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, connect_timeout=timeout,
                           row_factory=_row_factory, options=_options(url, loop),
                           **TCP_OPTIONS)
    return PgConnection(conn, guard, loop=loop)


def _on_loop() -> bool:
    return asyncio._get_running_loop() is not None


class _Watchdog:
    """Fails a statement on the event loop's connection that has no answer after
    ``deadline`` seconds and whose request is still unacknowledged: shuts its socket
    down (the blocked call returns at once with a connection error). One thread, started
    on first use, ticking every ``tick`` s."""

    def __init__(self, deadline: float, tick: float = 0.05) -> None:
        self.deadline = deadline
        self.tick = tick
        self.fired_on: PgConnection | None = None
        """The connection it last failed (dead from then on)."""
        self.fired = 0
        self._armed: tuple[PgConnection, float] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, conn: PgConnection) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="store-watchdog",
                                            daemon=True)
            self._thread.start()
        self._armed = (conn, time.monotonic() + self.deadline)

    def disarm(self) -> None:
        # Under the lock: once this returns the watchdog cannot fire on a statement that
        # is over (nor on a socket number the connection's close gave back).
        with self._lock:
            self._armed = None

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            armed = self._armed
            if armed is None or time.monotonic() < armed[1]:
                continue
            with self._lock:
                if self._armed is not armed:
                    continue
                conn = armed[0]
                if not _unacknowledged(conn):
                    # The server has the statement and is working on it (a lock wait, a
                    # long read): slow, not cut. A path that goes silent later is found
                    # by the keepalives.
                    continue
                self._armed = None
                self.fired_on = conn
                self.fired += 1
                with contextlib.suppress(Exception):
                    s = socket.socket(fileno=os.dup(conn.raw.pgconn.socket))
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    finally:
                        s.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)


def _unacknowledged(conn: PgConnection) -> bool:
    """Does the connection's socket hold data the server has not acknowledged? (Linux
    ``TCP_INFO``'s ``tcpi_unacked``; False for a Unix socket or when it cannot be read.)
    The loop's statement was sent when it began, so after the deadline this means the
    path to the server is silent."""
    try:
        s = socket.socket(fileno=os.dup(conn.raw.pgconn.socket))
    except Exception:  # noqa: BLE001 - closed meanwhile
        return False
    try:
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return len(info) >= 28 and struct.unpack_from("I", info, 24)[0] > 0
    except OSError:
        return False
    finally:
        s.close()


class _Channel:
    """One connection and what goes with it (the loop's, or the threads')."""

    def __init__(self, loop: bool) -> None:
        self.loop = loop
        self.lock = threading.RLock()
        self.depth = 0
        self.conn: PgConnection | None = None
        self.had = False
        """It has had a connection (the loop's is then only re-made by the prober)."""


class PgDatabase(Database, schemes=("postgresql://", "postgres://")):
    """The shared PostgreSQL store (see the module doc: a connection for the event
    loop, one for threads, readers on demand; a breaker and a prober).

    psycopg is imported when one is opened, so a SQLite node never loads it."""

    dialect = "postgresql"

    def __init__(self, path: Any, *, checkpoint_interval: float = 1.0,  # noqa: ARG002
                 loop_deadline: float = LOOP_DEADLINE) -> None:
        import psycopg

        self.Error = psycopg.Error
        self.DatabaseError = psycopg.DatabaseError
        self.IntegrityError = psycopg.IntegrityError
        self.OperationalError = psycopg.OperationalError
        self.url = str(path)
        self.path = self._where()
        """The URL without user or password (for logs)."""
        self.breaker = Breaker(probe_max=PROBE_MAX)
        self.on_reachable: list[Any] = []
        """Called (from the prober thread) when the store answers again."""
        self.last_error = ""
        self._state = threading.Lock()
        self._watchdog = _Watchdog(loop_deadline)
        self._loop_ch = _Channel(loop=True)
        self._thread_ch = _Channel(loop=False)
        self._closing = threading.Event()
        self._probe_wake = threading.Event()
        self._prober: threading.Thread | None = None
        ch = self._channel()
        with ch.lock:
            conn = self._ensure()
            # IF NOT EXISTS races between nodes starting together: under the lock.
            self._migrate_lock(conn)
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " component TEXT NOT NULL, version INTEGER NOT NULL,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                    " PRIMARY KEY (component, version))")
            finally:
                self._migrate_unlock(conn)

    # -- connection ----------------------------------------------------------
    def _channel(self) -> _Channel:
        return self._loop_ch if _on_loop() else self._thread_ch

    @property
    def reachable(self) -> bool:
        """False while the breaker is open (the store taken as away)."""
        return self.breaker.allow()

    def _unavailable(self) -> Exception:
        return self.OperationalError(
            f"store unreachable: {self.breaker.reason or 'connection lost'} (waiting for"
            f" the prober to reach {self.path}; last error: {self.last_error})")

    def _ensure(self) -> PgConnection:
        """The calling side's connection (the loop's or the threads'). While the breaker
        is open it raises at once; the loop's is re-made by the prober only."""
        ch = self._channel()
        c = ch.conn
        if not self.breaker.allow():
            raise self._unavailable()
        if c is not None and not c.dead:
            return c
        if c is not None:
            ch.conn = None
            with contextlib.suppress(Exception):
                c.close()
            if ch.loop:  # found dead between statements: the prober re-makes it
                self._open("connection lost", "the connection was found closed")
                raise self._unavailable()
        if ch.loop and ch.had:
            self._open("connection lost", "the loop's connection is gone")
            raise self._unavailable()
        try:
            c = _connect(self.url, self, loop=ch.loop)
        except self.Error as exc:
            self._open("cannot connect", str(exc))
            raise
        ch.conn, ch.had = c, True
        return c

    @property
    def _conn(self) -> PgConnection:  # type: ignore[override]
        return self._ensure()

    def _failed(self, conn: PgConnection, exc: BaseException) -> None:
        """A statement on ``conn`` failed: a connection-level failure opens the breaker."""
        fired = self._watchdog.fired_on is conn
        if not (fired or conn.raw.closed or conn.raw.broken):
            return  # an SQL error, a constraint, a statement timeout: not the path
        why = (f"no answer from the store in {self._watchdog.deadline:g} s (request not"
               " acknowledged)" if fired
               else "connection lost")
        self._open(why, str(exc))

    def _open(self, reason: str, error: str) -> None:
        with self._state:
            self.last_error = error
            opened = self.breaker.failed(reason, time.time())
            if opened is None:
                return
            if self._prober is None and not self._closing.is_set():
                self._prober = threading.Thread(target=self._probe_loop, name="store-prober",
                                                daemon=True)
                self._prober.start()
        log.error("store.unreachable", reason=reason, error=error, database=self.path,
                  note="writes wait in the spool; reads fail at once; a prober thread"
                       " tries the store")
        self._probe_wake.set()

    def _probe_loop(self) -> None:
        """The prober thread: while the breaker is open, try the store with back-off;
        when it answers, hand the connection to the loop and close the breaker."""
        while not self._closing.is_set():
            with self._state:
                due = self.breaker.next_probe()
            if due is None:
                self._probe_wake.wait(1.0)
                self._probe_wake.clear()
                continue
            delay = due - time.time()
            if delay > 0:
                self._closing.wait(min(delay, 1.0))
                continue
            with self._state:
                if not self.breaker.probe_due(time.time()):
                    continue
            try:
                conn = _connect(self.url, self, loop=True, timeout=PROBE_CONNECT_TIMEOUT)
                conn.raw.execute("SELECT 1")
            except Exception as exc:  # noqa: BLE001 - still away: try again later
                with self._state:
                    self.last_error = str(exc)
                    self.breaker.probe_failed(time.time())
                continue
            if self._closing.is_set():  # closed while connecting: nothing to hand over
                with contextlib.suppress(Exception):
                    conn.close()
                return
            ch = self._loop_ch
            with ch.lock:  # the loop holds it only for bounded statements
                old, ch.conn, ch.had = ch.conn, conn, True
            tch = self._thread_ch
            # The threads' connection dates from before the outage: its socket may be
            # dead without knowing it yet. The threads re-connect on next use.
            if tch.lock.acquire(timeout=0.1):
                try:
                    stale, tch.conn = tch.conn, None
                finally:
                    tch.lock.release()
                if stale is not None:
                    with contextlib.suppress(Exception):
                        stale.close()
            if old is not None:
                with contextlib.suppress(Exception):
                    old.close()
            with self._state:
                closed = self.breaker.probe_succeeded(time.time())
            log.warning("store.reachable", database=self.path,
                        after_s=round(closed.at - closed.since, 3), probes=closed.probes)
            for callback in list(self.on_reachable):
                try:
                    callback()
                except Exception:  # noqa: BLE001 - a listener's bug is not the store's
                    log.exception("store.on_reachable_failed")

    # -- schema --------------------------------------------------------------
    def migrate(self, component: str, migrations: Sequence[str], *,
                postgresql: Sequence[str] | None = None) -> int:
        if postgresql is None:
            raise SchemaMismatch(f"component {component!r} has no PostgreSQL migrations: "
                                 "it cannot use a PostgreSQL store yet")
        applied = 0
        with self._channel().lock:
            conn = self._ensure()
            self._migrate_lock(conn)
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
                self._migrate_unlock(conn)
        return applied

    @staticmethod
    def _migrate_lock(conn: PgConnection) -> None:
        """Take the migrations' advisory lock, waiting as long as another node's
        migrations take: the loop's ``lock_timeout`` is lifted for the session until
        :meth:`_migrate_unlock` (start-up, and DDL waits for locks too)."""
        if conn.loop:
            conn.execute("SET lock_timeout = 0")
        conn.execute("SELECT pg_advisory_lock(?)", (MIGRATE_LOCK,))

    def _migrate_unlock(self, conn: PgConnection) -> None:
        with contextlib.suppress(self.Error):
            conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATE_LOCK,))
        if conn.loop:
            with contextlib.suppress(self.Error):
                conn.execute("RESET lock_timeout")

    def _where(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(self.url)
        return f"postgresql://{info.get('host', '')}:{info.get('port', '5432')}/{info.get('dbname', '')}"

    # -- writing -------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        ch = self._channel()
        with ch.lock:
            if ch.depth:
                ch.depth += 1
                try:
                    yield ch.conn
                finally:
                    ch.depth -= 1
                return
            conn = self._ensure()
            conn.execute("BEGIN")
            ch.depth = 1
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._rollback_on(conn)
                raise
            finally:
                ch.depth = 0

    def _rollback_on(self, c: PgConnection) -> None:
        if not c.dead and c.in_transaction:
            with contextlib.suppress(self.Error):
                c.execute("ROLLBACK")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        with self.transaction() as conn:
            return conn.execute(sql, params)

    # -- reading -------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        with self._channel().lock:
            return self._ensure().execute(sql, params).fetchall()  # type: ignore[no-any-return]

    def query_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        with self._channel().lock:
            return self._ensure().execute(sql, params).fetchone()

    def connect_reader(self) -> PgConnection:  # type: ignore[override]
        """A separate autocommit connection (sees committed rows only); refused at once
        while the breaker is open."""
        if not self.breaker.allow():
            raise self._unavailable()
        return _connect(self.url)

    def checkpoint(self) -> None:
        """Nothing to do: the server owns its checkpoints."""

    def close(self) -> None:
        self._closing.set()
        self._probe_wake.set()
        self._watchdog.close()
        for ch in (self._loop_ch, self._thread_ch):
            with ch.lock:
                if ch.conn is not None:
                    with contextlib.suppress(Exception):
                        ch.conn.close()
                    ch.conn = None
        if self._prober is not None:
            # Short: a prober in the middle of a connect on a cut path (up to
            # CONNECT_TIMEOUT) is a daemon thread and drops what it gets (above).
            self._prober.join(0.5)


def is_url(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))
