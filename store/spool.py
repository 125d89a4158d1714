"""Writes that wait when the disk will not take them: a bounded, ordered spool.

Theory of operation ("life before paperwork"): the service decides and acts first
(answer, queue, offer, bridge) and records afterwards. Each record is one *write unit*:
a function that writes a call's row, its domain event's outbox message and its queue-log
entries on the connection it is given, inside one transaction. :meth:`SpooledWriter.write`
commits the unit at once when it can. When SQLite says the storage failed (disk full,
read-only file system, I/O error; see :func:`classify`) the unit is kept, in order, in a
bounded in-memory spool and the writer is *degraded*:

- every later unit goes behind the spool, never ahead of it, so each call's outbox rows
  (and their per-call ``seq``) are committed in the order the service decided them, and
  the CAD publisher, which publishes in commit order, keeps each call's order;
- :meth:`SpooledWriter.flush` (driven by :meth:`SpooledWriter.run`, retrying with
  back-off from ``retry_min`` to ``retry_max`` seconds) commits the spool in order, in
  batches of at most ``batch`` units and ``batch_seconds`` per transaction (one
  savepoint per unit), until it is empty; the first storage error stops it and
  everything not committed stays spooled. When the spool is empty the writer has
  *recovered*;
- the spool holds at most ``max_pending`` units. A unit that arrives when it is full is
  lost: counted (:attr:`SpooledWriter.lost`) and logged (``storage.write_lost`` with the
  call id and what the unit recorded), never silently dropped. Everything that fitted is
  written when the storage returns. The spool is memory: a process that stops while
  degraded loses it, and :meth:`SpooledWriter.close` logs and counts that loss too.

A unit that fails with an error that is *not* a storage fault (a constraint, a bug) is
logged (``storage.write_failed``) and dropped on its own, as a single failed statement
would have been; it never stops the call path and never blocks the spool behind it.

The writer emits :class:`StorageFaulted`, :class:`StorageRecovered` and
:class:`WritesLost` to ``on_event`` and logs the alarms ``storage.fault`` (once, on
entry) and ``storage.recovered`` (once, when the spool is empty again). All methods run
on the event loop (the writer connection's lock keeps threads that write out).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .db import Database

log = structlog.get_logger("store.spool")

WriteFn = Callable[[sqlite3.Connection], object]

# SQLite primary result codes that mean "the storage will not take writes now".
_STORAGE_CODES = {
    13: "disk full",           # SQLITE_FULL
    8: "read-only",            # SQLITE_READONLY
    10: "I/O error",           # SQLITE_IOERR (and its extended codes)
    14: "cannot open",         # SQLITE_CANTOPEN
    5: "busy",                 # SQLITE_BUSY: another process holds the lock too long
}
_STORAGE_TEXT = (
    ("database or disk is full", "disk full"),
    ("readonly database", "read-only"),
    ("disk i/o error", "I/O error"),
    ("unable to open database", "cannot open"),
    ("database is locked", "busy"),
)


def classify(exc: BaseException, *, path: str | None = None) -> str | None:
    """The storage fault ``exc`` reports (``"disk full"``, ``"read-only file system"``,
    ``"I/O error"``...), or None when it is not a storage fault (a bug, a constraint).

    With ``path`` (the database file) an I/O or read-only error is checked against the
    file system: one the kernel made read-only (``errors=remount-ro``) is named
    ``"read-only file system"`` rather than the I/O error SQLite reports for it.
    """
    reason: str | None = None
    pg = _classify_pg(exc)
    if pg is not None:
        return pg
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            reason = _STORAGE_CODES.get(code & 0xFF)
        if reason is None:
            text = str(exc).lower()
            reason = next((r for t, r in _STORAGE_TEXT if t in text), None)
    elif isinstance(exc, OSError):
        reason = "disk full" if exc.errno == 28 else "I/O error"
    if (reason in ("read-only", "I/O error", "cannot open") and path and path != ":memory:"
            and "://" not in path):
        return _probe(Path(path).parent) or reason
    return reason


# PostgreSQL SQLSTATEs (and classes, by their first two characters) that mean "the
# store will not take writes now": the node spools and retries, as for a full disk.
_PG_STATES = {"53100": "disk full", "58030": "I/O error", "25006": "read-only",
              "57014": "busy", "55P03": "busy", "40001": "busy", "40P01": "busy"}
_PG_CLASSES = {"08": "database unreachable", "57": "database unavailable",
               "53": "server out of resources", "58": "I/O error"}


def _classify_pg(exc: BaseException) -> str | None:
    """PostgreSQL's storage faults: a restart or crash of the server (connection lost,
    shutting down, starting up), a full disk, a read-only standby, a lock or statement
    timeout. Constraint violations and SQL errors are not."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - SQLite-only install
        return None
    if not isinstance(exc, psycopg.Error):
        return None
    state = getattr(exc, "sqlstate", None)
    if state:
        return _PG_STATES.get(state) or _PG_CLASSES.get(state[:2])
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return "database unreachable"  # no SQLSTATE: the connection itself failed
    return None


def _probe(folder: Path) -> str | None:
    """What the file system itself says to a new file next to the database: SQLite
    reports EROFS and ENOSPC on its open files as a plain I/O error, and a kernel that
    made ext4 read-only after an error (``errors=remount-ro``) does not always show it
    in ``statvfs``."""
    probe = folder / f".controlroom-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        return {errno.EROFS: "read-only file system", errno.ENOSPC: "disk full",
                errno.EDQUOT: "disk full"}.get(exc.errno or 0)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


@dataclass(frozen=True, slots=True, eq=False)
class Pending:
    """One write unit waiting in the spool."""

    write: WriteFn
    """Writes the unit on the connection it is given (inside the writer's transaction)."""
    call_id: str
    """The call it records ('' for none): named in the loss log."""
    what: str
    """What it records, e.g. ``call.answered`` or ``queue_log``: named in the loss log."""
    at: float
    """When the service decided it (epoch s)."""


@dataclass(frozen=True, slots=True)
class StorageFaulted:
    """The database stopped taking writes; units are being spooled."""

    reason: str
    """``disk full``, ``read-only file system``, ``I/O error``..."""
    error: str
    """SQLite's message."""
    at: float


@dataclass(frozen=True, slots=True)
class StorageRecovered:
    """The spool has been written: the database takes writes again."""

    reason: str
    """The fault that ended."""
    since: float
    """When the fault began."""
    at: float
    flushed: int
    """Units written from the spool during this fault."""
    lost: int
    """Units lost (spool full) during this fault."""


@dataclass(frozen=True, slots=True)
class WritesLost:
    """A unit could not be spooled (spool full) and is lost."""

    call_id: str
    what: str
    at: float
    lost_total: int


StorageEvent = StorageFaulted | StorageRecovered | WritesLost


class SpooledWriter:
    """Commits write units now, or spools them in order while the storage fails."""

    def __init__(self, db: Database, *, max_pending: int = 10_000, batch: int = 200,
                 batch_seconds: float = 0.01, retry_min: float = 0.25, retry_max: float = 5.0,
                 on_committed: Callable[[], None] | None = None,
                 on_event: Callable[[StorageEvent], None] | None = None) -> None:
        """
        :param max_pending: units the spool holds; one more is lost (counted, logged).
        :param batch: most units committed per transaction when the spool is flushed.
        :param batch_seconds: a flush stops taking more units after this long (the
            event loop carries the 20 ms media clock: a 200-unit batch took up to 100 ms
            on a loaded machine).
        :param retry_min: first retry after a fault (s); doubles up to ``retry_max``.
        :param on_committed: called after units are committed (wake the CAD publisher).
        :param on_event: receives :class:`StorageFaulted`, :class:`StorageRecovered`
            and :class:`WritesLost`; exceptions it raises are logged, never propagated.
        """
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.db = db
        self.max_pending = max_pending
        self.batch = batch
        self.batch_seconds = batch_seconds
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.on_committed = on_committed
        self.on_event = on_event
        self._spool: collections.deque[Pending] = collections.deque()
        self.fault: StorageFaulted | None = None
        """The current fault (None: healthy)."""
        self.last_error = ""
        """SQLite's message from the latest failed attempt."""
        self.lost = 0
        """Units lost since start (spool full, or still spooled at close)."""
        self.failed = 0
        """Units dropped because they failed with a non-storage error (bugs)."""
        self.faults = 0
        """Faults entered since start."""
        self.flushed = 0
        """Units written from the spool since start."""
        self._fault_flushed = 0
        self._fault_lost = 0
        self._backoff = retry_min
        self._next_retry = 0.0
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Units waiting in the spool."""
        return len(self._spool)

    @property
    def degraded(self) -> bool:
        return self.fault is not None

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest spooled unit has waited (0 when the spool is empty)."""
        return max(0.0, now - self._spool[0].at) if self._spool else 0.0

    def next_retry(self) -> float | None:
        """When :meth:`flush` should next be tried (None: nothing spooled)."""
        return self._next_retry if self._spool else None

    # ------------------------------------------------------------------ writing
    def write(self, write: WriteFn, *, call_id: str = "", what: str = "",
              now: float | None = None) -> bool:
        """Commit ``write`` now, or spool it behind the units already waiting.

        Returns True when it was committed now. Never raises for a storage fault or a
        failing unit: the caller's call handling goes on either way.
        """
        now = time.time() if now is None else now
        unit = Pending(write, call_id, what, now)
        if self._spool:
            self._enqueue(unit)
            return False
        try:
            with self.db.transaction() as conn:
                write(conn)
        except Exception as exc:  # noqa: BLE001 - sorted below; never into the call path
            reason = classify(exc, path=self.db.path)
            if reason is None:
                self._drop_failed(unit, exc)
                return False
            self._enqueue(unit)
            self._enter_fault(reason, exc, now)
            return False
        self._committed()
        return True

    def flush(self, now: float | None = None) -> int:
        """Commit up to one batch of spooled units in order; returns how many.

        Stops at the first storage error (the rest stays spooled and the next retry is
        scheduled with back-off). When the spool empties, the fault is over.
        """
        now = time.time() if now is None else now
        if not self._spool:
            return 0
        candidates = [self._spool[i] for i in range(min(self.batch, len(self._spool)))]
        units: list[Pending] = []
        failed: list[tuple[Pending, Exception]] = []
        current = candidates[0]
        started = time.perf_counter()
        try:
            with self.db.transaction() as conn:
                for unit in candidates:
                    if units and time.perf_counter() - started > self.batch_seconds:
                        break
                    current = unit
                    units.append(unit)
                    conn.execute("SAVEPOINT spool_unit")
                    try:
                        unit.write(conn)
                    except Exception as exc:  # noqa: BLE001 - sorted below
                        if classify(exc, path=self.db.path) is not None or not conn.in_transaction:
                            raise
                        conn.execute("ROLLBACK TO spool_unit")
                        failed.append((unit, exc))
                    conn.execute("RELEASE spool_unit")
        except Exception as exc:  # noqa: BLE001
            reason = classify(exc, path=self.db.path)
            if reason is None:  # not the storage: take the failing unit out on its own
                self._spool.remove(current)
                self._drop_failed(current, exc)
                return 0
            self.last_error = str(exc)
            self._next_retry = now + self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max)
            if self.fault is None:
                self._enter_fault(reason, exc, now)
            return 0
        for _ in units:
            self._spool.popleft()
        for unit, error in failed:
            self._drop_failed(unit, error)
        written = len(units) - len(failed)
        self.flushed += written
        self._fault_flushed += written
        self._committed()
        if not self._spool:
            self._recover(now)
        return written

    def retry_now(self) -> None:
        """The store says it answers again (``Database.on_reachable``): retry at once
        instead of at the end of the back-off."""
        if self._spool:
            self._backoff = self.retry_min
            self._next_retry = 0.0
            self._wake.set()

    async def run(self) -> None:
        """Retry the spool with back-off until cancelled; yields to the loop between
        batches so flushing a long spool never holds up the call path. A store that
        tells when it answers again (``on_reachable``, from its prober thread: see
        :mod:`store.pg`) has the spool retried at once then."""
        loop = asyncio.get_running_loop()
        hooks: list[Callable[[], None]] | None = getattr(self.db, "on_reachable", None)

        def reachable() -> None:  # the prober's thread: hand it to the loop
            loop.call_soon_threadsafe(self.retry_now)
        if hooks is not None:
            hooks.append(reachable)
        try:
            await self._retry()
        finally:
            if hooks is not None:
                with contextlib.suppress(ValueError):
                    hooks.remove(reachable)

    async def _retry(self) -> None:
        while True:
            due = self.next_retry()
            if due is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = due - time.time()
            if delay > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            # One batch per turn of the loop: the call path runs between batches. A
            # storage error pushes the next retry back; a dropped unit does not.
            self.flush()
            await asyncio.sleep(0)

    def close(self) -> int:
        """Try once more to write the spool; count and log what is still left (lost)."""
        while self._spool and self.flush() > 0:
            pass
        left = list(self._spool)
        self._spool.clear()
        for unit in left:
            self._lose(unit, "process stopping with the storage still failing")
        return len(left)

    # ------------------------------------------------------------------ internals
    def _enqueue(self, unit: Pending) -> None:
        if len(self._spool) >= self.max_pending:
            self._lose(unit, "spool full")
            return
        self._spool.append(unit)
        self._wake.set()

    def _lose(self, unit: Pending, why: str) -> None:
        self.lost += 1
        self._fault_lost += 1
        log.error("storage.write_lost", call_id=unit.call_id or None, what=unit.what,
                  why=why, decided_at=unit.at, lost_total=self.lost,
                  spooled=len(self._spool), reason=self.fault.reason if self.fault else None)
        self._emit(WritesLost(unit.call_id, unit.what, time.time(), self.lost))

    def _drop_failed(self, unit: Pending, exc: BaseException) -> None:
        self.failed += 1
        log.error("storage.write_failed", call_id=unit.call_id or None, what=unit.what,
                  error=repr(exc), failed_total=self.failed)

    def _enter_fault(self, reason: str, exc: BaseException, now: float) -> None:
        self.last_error = str(exc)
        if self.fault is not None:
            return
        self.fault = StorageFaulted(reason=reason, error=str(exc), at=now)
        self.faults += 1
        self._fault_flushed = self._fault_lost = 0
        self._backoff = self.retry_min
        self._next_retry = now + self._backoff
        log.error("storage.fault", reason=reason, error=str(exc), database=self.db.path,
                  spooled=len(self._spool), max_pending=self.max_pending,
                  note="calls go on; writes wait in the spool until the storage returns")
        self._wake.set()
        self._emit(self.fault)

    def _recover(self, now: float) -> None:
        fault, self.fault = self.fault, None
        self._backoff = self.retry_min
        if fault is None:
            return
        rec = StorageRecovered(reason=fault.reason, since=fault.at, at=now,
                               flushed=self._fault_flushed, lost=self._fault_lost)
        log.warning("storage.recovered", reason=fault.reason, database=self.db.path,
                    after_s=round(now - fault.at, 3), flushed=rec.flushed, lost=rec.lost)
        self._emit(rec)

    def _committed(self) -> None:
        if self.on_committed is not None:
            try:
                self.on_committed()
            except Exception:  # noqa: BLE001 - a listener's bug is not a storage fault
                log.exception("storage.on_committed_failed")

    def _emit(self, event: StorageEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001
                log.exception("storage.on_event_failed", event=type(event).__name__)


def summary(writer: SpooledWriter, now: float | None = None) -> dict[str, Any]:
    """The writer's state for ``/healthz`` and the logs."""
    now = time.time() if now is None else now
    return {"degraded": writer.degraded,
            "reason": writer.fault.reason if writer.fault else None,
            "since": writer.fault.at if writer.fault else None,
            "error": writer.last_error if writer.fault else None,
            "spooled": writer.depth, "max_spooled": writer.max_pending,
            "oldest_spooled_s": round(writer.oldest_age(now), 3),
            "lost": writer.lost, "failed": writer.failed}
