"""The routing-leader lease of a cluster on PostgreSQL (issue 14, one global queue).

Theory of operation. One node at a time is the *routing leader*. It holds a
session-level advisory lock (``pg_try_advisory_lock(LOCK_KEY)``) on a connection of its
own; every other node tries to take it every ``poll`` s. The lock lives as long as the
holder's session: when the leader's process dies (``kill -9``) the kernel closes its
socket, the server ends the session at once and the next try by another node wins
(measured: well under 1 s). When the leader is cut off the network nothing is closed, so
both ends are set to find out quickly:

* the server side (per-session settings of the lease connection): TCP keepalives after
  1 s idle, every 1 s, 3 probes, and ``tcp_user_timeout`` ``release_after`` ms: the server
  ends the cut leader's session, releasing the lock, ~``release_after`` after the cut;
* the leader side: libpq keepalives and ``tcp_user_timeout`` on its connection, and a
  check every ``poll`` s (``SELECT`` under a ``statement_timeout``); a leader that has
  not confirmed its lock for ``step_down_after`` s (< ``release_after``) stops leading
  before the server can hand the lock to another node.

Each win increments ``term`` in the one-row table ``routing_lease`` (holder, since).
Writes a leader makes as leader carry its term and are fenced with :func:`fenced`
(``SELECT ... FOR SHARE`` of the lease row in the writer's transaction, raising
:class:`LeaseLost` when the term moved on), a backstop should the timing margin above
ever fail (a stalled leader process).

The lock is not all a cut leader leaves behind (issue 14, measured): cut while one of its
fenced write transactions is open on its *other* connection, its session there stays
"idle in transaction" holding the share lock on the lease row, with none of the lease
session's server-side settings (default keepalives: 2 h; unacknowledged data: TCP
retransmits ~15 min, or until the cut heals and the next retransmission draws a reset,
hence the 26 s seen). The new holder of the advisory lock then cannot write its term
(its ``UPDATE`` waits on that row). Two bounds, neither a server-wide setting (a cut
node's other sessions must stay open: the leader reads them as "cut off, may route
alone", not dead):

* :func:`fenced` sets ``idle_in_transaction_session_timeout`` (``FENCE_IDLE_S``) for the
  rest of the writer's transaction: the server ends such a session that long after its
  last statement;
* a winner whose ``UPDATE`` of the lease row waits longer than ``lock_timeout`` (``poll``)
  ends the sessions holding locks on that row (``pg_terminate_backend``): while it holds
  the advisory lock they can only be writers of an ended term. The role needs to be the
  sessions' own or a member of ``pg_signal_backend``.

Run ``python -m store.lease URL NODE_ID`` to watch one contender (prints one JSON line
per change: ``{"node":..,"leader":true,"term":N,"at":T,"evicted":E}``): tests use it as a process to
``kill -9`` or cut.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

COMPONENT = "routing_lease"
LOCK_KEY = 0x726F75746572  # "router": the cluster's one routing lock. Not the
# migrations' key (store.pg.MIGRATE_LOCK, "control"): the leader holds this one for its
# whole term, and every Database() takes that one to open.
MIGRATIONS = [
    """
    CREATE TABLE routing_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        term BIGINT NOT NULL,
        holder TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL
    );
    INSERT INTO routing_lease(id, term, holder, since) VALUES (1, 0, '', 0);
    """,
]


FENCE_IDLE_S = 3.0
"""A fenced write transaction whose client says nothing for this long is ended by the
server (``idle_in_transaction_session_timeout``): a leader cut mid-transaction must not
keep the lease row share-locked (= ``Lease`` default ``release_after``)."""
HOLDER_MODES = ("RowShareLock", "RowExclusiveLock")
"""Table locks on ``routing_lease`` taken by :func:`fenced` (``FOR SHARE``) or a term's
``UPDATE``: sessions holding them block a new term."""


class LeaseLost(RuntimeError):
    """This node's term is over: another node leads now."""


def migrate(db: Any) -> None:
    db.migrate(COMPONENT, MIGRATIONS, postgresql=MIGRATIONS)


def fenced(conn: Any, term: int) -> None:
    """Inside a write transaction of the leader: raise :class:`LeaseLost` unless ``term``
    is still the current one (the row is share-locked until the transaction ends, so a
    new leader's term cannot start in between)."""
    # set_config(.., true): for this transaction only; one round trip with the check.
    # No parameters: callers pass psycopg connections (%s) and store.pg's (?) alike.
    row = conn.execute("SELECT term, set_config('idle_in_transaction_session_timeout',"
                       f" '{int(FENCE_IDLE_S * 1000)}', true) FROM routing_lease"
                       " WHERE id = 1 FOR SHARE").fetchone()
    if row is None or int(row[0]) != term:
        raise LeaseLost(f"term {term} is over (now {row[0] if row else '?'})")


class Lease:
    """One node's contention for the routing lease (call :meth:`tick` every ``poll`` s)."""

    def __init__(self, url: str, node_id: str, *, poll: float = 0.2,
                 release_after: float = 3.0, step_down_after: float = 1.5) -> None:
        if not 0 < poll < step_down_after < release_after:
            raise ValueError("need 0 < poll < step_down_after < release_after")
        self.url, self.node_id = url, node_id
        self.poll, self.release_after, self.step_down_after = (
            poll, release_after, step_down_after)
        self.term: int | None = None
        """The term this node leads in; None when it does not lead."""
        self._conn: Any = None
        self._confirmed = 0.0
        self.evicted = 0
        """Sessions of ended terms this node ended to write its own (see the module doc)."""

    @property
    def leader(self) -> bool:
        return self.term is not None

    def _connect(self) -> Any:
        import psycopg

        ms = int(self.release_after * 1000)
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self.release_after)),
            keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2,
            tcp_user_timeout=int(self.step_down_after * 1000))
        for setting, value in (("tcp_keepalives_idle", 1), ("tcp_keepalives_interval", 1),
                               ("tcp_keepalives_count", 2), ("tcp_user_timeout", ms),
                               ("statement_timeout", int(self.step_down_after * 1000)),
                               ("lock_timeout", max(50, int(self.poll * 1000)))):
            conn.execute(f"SET {setting} = {value}")
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a dead connection
                pass
        self._conn = None

    def tick(self, now: float | None = None) -> bool:
        """Confirm or try to take the lease; True while this node leads. Never raises:
        a store it cannot reach makes it a follower (after ``step_down_after`` if it led)."""
        now = time.time() if now is None else now
        try:
            if self._conn is None:
                self._conn = self._connect()
            if self.term is not None:
                # The lock is ours while our session lives: a round trip proves it.
                self._conn.execute("SELECT 1").fetchone()
                self._confirmed = now
                return True
            got = self._conn.execute("SELECT pg_try_advisory_lock(%s)",
                                     (LOCK_KEY,)).fetchone()[0]
            if got:
                self.term, self._confirmed = self._new_term(now), now
            return self.term is not None
        except Exception:  # noqa: BLE001 - the store or the network is away
            self._drop()
            if self.term is not None and time.time() - self._confirmed < self.step_down_after:
                return True  # not yet: a blip must not cost the lease
            self.term = None
            return False

    def _new_term(self, now: float) -> int:
        """Holding the advisory lock: write the next term. A session still holding the
        lease row (an ended term's writer, e.g. of a leader cut mid-transaction) is ended
        after ``lock_timeout``, then the write is tried once more."""
        import psycopg

        sql = ("UPDATE routing_lease SET term = term + 1, holder = %s, since = %s"
               " WHERE id = 1 RETURNING term")
        for attempt in (1, 2):
            try:
                return int(self._conn.execute(sql, (self.node_id, now)).fetchone()[0])
            except psycopg.errors.LockNotAvailable:
                if attempt == 2:
                    raise
                self.evicted += self._end_holders()
        raise AssertionError("unreachable")

    def _end_holders(self) -> int:
        rows = self._conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_locks"
            " WHERE relation = 'routing_lease'::regclass AND granted AND mode = ANY(%s)"
            " AND pid <> pg_backend_pid()", (list(HOLDER_MODES),)).fetchall()
        return sum(1 for _, ended in rows if ended)

    def check(self) -> bool:
        """While leading: whether the last confirmation is recent enough to act on."""
        return self.term is not None and time.time() - self._confirmed < self.step_down_after

    def release(self) -> None:
        """Give the lease up at once (a node stopping)."""
        if self._conn is not None and self.term is not None:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except Exception:  # noqa: BLE001
                pass
        self.term = None
        self._drop()


def main(argv: list[str]) -> int:
    """``python -m store.lease URL NODE_ID [POLL]``: contend forever, print each change."""
    from store.db import Database

    url, node = argv[0], argv[1]
    poll = float(argv[2]) if len(argv) > 2 else 0.2
    db = Database(url)
    migrate(db)
    db.close()
    lease = Lease(url, node, poll=poll)
    was: int | None = None
    while True:
        lease.tick()
        if lease.term != was:
            was = lease.term
            print(json.dumps({"node": node, "leader": was is not None, "term": was,
                              "at": time.time(), "evicted": lease.evicted}), flush=True)
        time.sleep(poll)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
