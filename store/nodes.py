"""The ``nodes`` table: which nodes are running on this store, with a heartbeat.

Theory of operation: a node registers its id at start (:func:`register`) and beats
every few seconds (:func:`heartbeat`). Each run of a node has its own ``instance``
(random), so a second process configured with the same id is told apart from a restart
of the first: it is refused (:class:`NodeIdInUse`) while the row's heartbeat is fresh
(younger than ``stale_after``), and takes the row over once the first has stopped
(:func:`unregister`), its heartbeat went stale (it was killed), or its pid on this same
host no longer exists (a restart after ``kill -9`` does not wait for the heartbeat). The check and the
take-over are one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement, so two
nodes starting together with one id cannot both win, on SQLite or PostgreSQL.

A node whose heartbeat finds the row taken by another instance (it was stalled past
``stale_after`` and a twin started) learns it from :func:`heartbeat` returning False.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

COMPONENT = "nodes"

MIGRATIONS = [
    # SQLite and PostgreSQL alike (DOUBLE PRECISION is a REAL in SQLite)
    """
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        stopped_at DOUBLE PRECISION
    );
    """,
]
PG_MIGRATIONS = MIGRATIONS


class NodeIdInUse(RuntimeError):
    """Another running node has this node id."""


def migrate(db: Any) -> None:
    db.migrate(COMPONENT, MIGRATIONS, postgresql=PG_MIGRATIONS)


def new_instance() -> str:
    return os.urandom(8).hex()


def register(db: Any, node_id: str, instance: str, *, stale_after: float,
             now: float | None = None) -> None:
    """Claim ``node_id`` for this run, or raise :class:`NodeIdInUse` naming the other."""
    now = time.time() if now is None else now
    host, pid = socket.gethostname(), os.getpid()
    with db.transaction() as conn:
        won = conn.execute(
            "INSERT INTO nodes(node_id, instance, host, pid, started_at, heartbeat_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(node_id) DO UPDATE SET instance=excluded.instance,"
            " host=excluded.host, pid=excluded.pid, started_at=excluded.started_at,"
            " heartbeat_at=excluded.heartbeat_at, stopped_at=NULL"
            " WHERE nodes.instance = excluded.instance OR nodes.stopped_at IS NOT NULL"
            " OR nodes.heartbeat_at < ?"
            " RETURNING node_id",
            (node_id, instance, host, pid, now, now, now - stale_after)).fetchone()
        if won is not None:
            return
        other = conn.execute("SELECT host, pid, heartbeat_at, instance FROM nodes"
                             " WHERE node_id=?", (node_id,)).fetchone()
        if other[0] == host and not _alive(int(other[1])):
            # The same machine's last run of this node is gone (killed: a restart after
            # kill -9 must not wait for its heartbeat to go stale). Take over its row
            # unless another starter took it meanwhile.
            took = conn.execute(
                "UPDATE nodes SET instance=?, pid=?, started_at=?, heartbeat_at=?,"
                " stopped_at=NULL WHERE node_id=? AND instance=?",
                (instance, pid, now, now, node_id, other[3]))
            if took.rowcount:
                return
    raise NodeIdInUse(
        f"node id {node_id!r} is already running (host {other[0]}, pid {other[1]}, "
        f"heartbeat {max(0.0, now - other[2]):.1f} s ago): two nodes must not share an id; "
        "give this one its own cluster.node_id (or stop the other). It may take over "
        f"{stale_after:g} s after the other's last heartbeat")


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def heartbeat(db: Any, node_id: str, instance: str, *, now: float | None = None) -> bool:
    """Beat; False when the row now belongs to another instance (this node lost its id)."""
    now = time.time() if now is None else now
    with db.transaction() as conn:
        cur = conn.execute("UPDATE nodes SET heartbeat_at=? WHERE node_id=? AND instance=?",
                           (now, node_id, instance))
        return bool(cur.rowcount)


def unregister(db: Any, node_id: str, instance: str, *, now: float | None = None) -> None:
    """Mark this run stopped, so the id is free at once."""
    now = time.time() if now is None else now
    db.execute("UPDATE nodes SET stopped_at=? WHERE node_id=? AND instance=?",
               (now, node_id, instance))


def running(db: Any, *, stale_after: float, now: float | None = None) -> list[dict[str, Any]]:
    """Nodes with a fresh heartbeat (for health pages and the cluster engineer's queue)."""
    now = time.time() if now is None else now
    return [dict(r) for r in db.query(
        "SELECT node_id, host, pid, started_at, heartbeat_at FROM nodes"
        " WHERE stopped_at IS NULL AND heartbeat_at >= ? ORDER BY node_id",
        (now - stale_after,))]
