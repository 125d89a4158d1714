"""Final-transcription jobs taken by several workers at once, each under a lease.

Theory of operation
-------------------
The queue is ``transcription_jobs`` (:mod:`transcription.store`). Any number of
takers (the service's job thread, ``controlroom worker`` processes on other machines,
``retranscribe``) claim jobs from it:

* a claim marks the job ``running`` with the taker's id (``worker``) and a lease
  (``lease_until`` = now + ``lease`` seconds) in one transaction: on PostgreSQL
  ``SELECT ... FOR UPDATE SKIP LOCKED`` (takers never wait for one another, never take
  the same job); on SQLite the ``BEGIN IMMEDIATE`` write lock serialises claims;
* the taker renews its lease (:func:`heartbeat`) while it transcribes (a thread, every
  lease/3), so a long recording keeps its job;
* a taker that dies (``kill -9``, a lost machine) stops renewing: once the lease has run
  out the job is claimable again and the next taker takes it (``attempts`` counts it);
* :func:`finish` only touches a job still held by the same taker, so a taker whose
  lease ran out (a long pause) cannot overwrite what the new holder records.

:func:`recover` (at a service's start) requeues only ``running`` jobs without a live
lease: jobs left by the previous run of the process, never a live worker's.

The lease columns are a component of their own (``transcription_workers``), added to
the table on both stores.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from store.db import Database

from .store import MAX_ATTEMPTS

COMPONENT = "transcription_workers"
MIGRATIONS = [
    """
    ALTER TABLE transcription_jobs ADD COLUMN worker TEXT;
    ALTER TABLE transcription_jobs ADD COLUMN lease_until REAL;
    """,
]
PG_MIGRATIONS = [
    """
    ALTER TABLE transcription_jobs ADD COLUMN worker TEXT;
    ALTER TABLE transcription_jobs ADD COLUMN lease_until DOUBLE PRECISION;
    """,
]

LEASE = 60.0
"""Default seconds a claim holds a job without a heartbeat."""


def migrate(db: Database) -> None:
    """The lease columns (after :func:`transcription.store.migrate`)."""
    db.migrate(COMPONENT, MIGRATIONS, postgresql=PG_MIGRATIONS)


def worker_id(kind: str = "worker") -> str:
    """``host:pid:kind``: who holds a job (shown in ``transcription_jobs.worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}:{kind}"


def claim(db: Database, worker: str, *, lease: float = LEASE, node: str | None = None,
          now: float | None = None) -> tuple[str, str] | None:
    """Take the next job, most urgent then oldest: a queued one, or a running one whose
    lease has run out (its taker died). ``node``: only jobs of calls recorded by this
    node (``calls.node``: a node's recordings are on its own disk). Returns
    (call_id, recording_path) or None."""
    now = time.time() if now is None else now
    lock = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgresql" else ""
    mine = "" if node is None else " AND call_id IN (SELECT call_id FROM calls WHERE node = ?)"
    with db.transaction() as conn:
        row = conn.execute(
            "SELECT call_id, recording_path FROM transcription_jobs"
            f" WHERE (state='queued' OR (state='running' AND coalesce(lease_until, 0) < ?)){mine}"
            f" ORDER BY priority, enqueued_at LIMIT 1{lock}",
            (now,) if node is None else (now, node)).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE transcription_jobs SET state='running', attempts=attempts+1,"
                     " started_at=?, worker=?, lease_until=? WHERE call_id=?",
                     (now, worker, now + lease, row[0]))
        return row[0], row[1]


def heartbeat(db: Database, worker: str, call_ids: list[str] | tuple[str, ...], *,
              lease: float = LEASE) -> int:
    """Renew the lease of these jobs held by ``worker``; returns how many it still holds."""
    if not call_ids:
        return 0
    with db.transaction() as conn:
        return int(conn.execute(
            "UPDATE transcription_jobs SET lease_until=? WHERE worker=? AND state='running'"
            f" AND call_id IN ({','.join('?' * len(call_ids))})",
            (time.time() + lease, worker, *call_ids)).rowcount)


def finish(db: Database, call_id: str, worker: str, *, error: str | None = None,
           permanent: bool = False, requeue: bool = False) -> bool:
    """Mark the job done, failed (permanent, or after MAX_ATTEMPTS) or back to queued
    (``requeue``: stopped, the attempt does not count). False when ``worker`` no longer
    holds it (its lease ran out and another taker has it)."""
    held = "call_id=? AND worker=? AND state='running'"
    with db.transaction() as conn:
        if requeue:
            cur = conn.execute(
                "UPDATE transcription_jobs SET state='queued', worker=NULL, lease_until=NULL,"
                f" attempts=CASE WHEN attempts > 0 THEN attempts-1 ELSE 0 END WHERE {held}",
                (call_id, worker))
        elif error is None:
            cur = conn.execute(
                "UPDATE transcription_jobs SET state='done', error=NULL, finished_at=?,"
                f" lease_until=NULL WHERE {held}", (time.time(), call_id, worker))
        else:
            cur = conn.execute(
                "UPDATE transcription_jobs SET error=?, finished_at=?, lease_until=NULL,"
                " state=CASE WHEN ? OR attempts >= ? THEN 'failed' ELSE 'queued' END"
                f" WHERE {held}", (error, time.time(), bool(permanent), MAX_ATTEMPTS,
                                  call_id, worker))
        return bool(cur.rowcount)


def recover(db: Database, *, now: float | None = None) -> int:
    """Requeue ``running`` jobs whose lease has run out (or that never had one: an older
    version's claim): their taker stopped or died. Live workers' jobs are left alone."""
    now = time.time() if now is None else now
    with db.transaction() as conn:
        return int(conn.execute(
            "UPDATE transcription_jobs SET state='queued', worker=NULL, lease_until=NULL"
            " WHERE state='running' AND coalesce(lease_until, 0) < ?", (now,)).rowcount)


def counts(db: Database) -> dict[str, int]:
    """Jobs per state (for operators and tests)."""
    return {r[0]: int(r[1]) for r in db.query(
        "SELECT state, count(*) FROM transcription_jobs GROUP BY state")}


class Heartbeat:
    """Renews ``worker``'s leases of the jobs in :attr:`held` every lease/3 seconds, in
    its own thread, until :meth:`stop`. It shares the store's writer connection: the
    recogniser holds no transaction while it decodes, so a beat never waits long."""

    def __init__(self, db: Database, worker: str, *, lease: float = LEASE) -> None:
        self._db = db
        self.worker = worker
        self.lease = lease
        self.held: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="transcription-heartbeat",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            ids = tuple(self.held)
            if not ids:
                continue
            try:
                heartbeat(self._db, self.worker, ids, lease=self.lease)
            except Exception:  # noqa: BLE001 - the store is away: the next beat retries
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

