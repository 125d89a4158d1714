"""The routing bus of a cluster with one global queue (issue 14), on PostgreSQL.

Theory of operation. Every node sends its routing inputs (a call arrived or ended, an
offer answered or failed, a handler's desk operation) to the routing leader as rows of
``routing_inputs``, in order (one writer per node, ``BIGSERIAL`` ids), and wakes it with
``NOTIFY routing_in``. The leader (``controlroom.leader``) reads the rows after its cursor,
feeds them to the one pure :class:`routing.Router`, and writes in ONE transaction fenced
with its lease term (``store.lease.fenced``): the queue-log rows, one ``routing_outputs``
row per node holding a call it decided about (the actions as JSON; ``*`` for every node)
and ``routing_state`` (its cursor, the handlers' states, a snapshot for desks). Then
``NOTIFY routing_out``. Each node reads its rows after the last one it applied.

A leader that takes over reads the cursor and the handlers' states from
``routing_state``, writes a ``term`` row for every node, and each live node answers with a
``resync`` input listing the calls it holds (waiting, ringing, talking): the queue is
rebuilt from the nodes that still hold the calls, so a dead node's calls never re-enter.

A node that routed alone while the store was away (``controlroom.fallback``) sends
nothing meanwhile; back, it sends ``back`` (the leader answers with a ``term`` row for
it) and answers a term row with a resync marked ``fallback`` that also carries its desk
handlers' states and the call-backs it made: that resync supersedes the node's earlier
inputs still unread by the leader.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from routing import actions as routing_actions

COMPONENT = "routing_bus"
IN_CHANNEL = "routing_in"
OUT_CHANNEL = "routing_out"
EVERY_NODE = "*"
WRITE_LOCK = 0x726F75746962  # "routib": routing inputs are appended one node at a time
MIGRATIONS = [
    """
    CREATE TABLE routing_inputs (
        id BIGSERIAL PRIMARY KEY,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE routing_outputs (
        id BIGSERIAL PRIMARY KEY,
        node TEXT NOT NULL,
        term BIGINT NOT NULL,
        data TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        input_at DOUBLE PRECISION
    );
    CREATE INDEX routing_outputs_node ON routing_outputs(node, id);
    CREATE TABLE routing_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        term BIGINT NOT NULL,
        cursor BIGINT NOT NULL,
        handlers TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    INSERT INTO routing_state(id, term, cursor, handlers, snapshot, at)
        VALUES (1, 0, 0, '{}', '{}', 0);
    """,
    # the node that wrote the state: a new leader does not wait for its resync
    "ALTER TABLE routing_state ADD COLUMN holder TEXT NOT NULL DEFAULT ''",
]

_ACTIONS = {name: getattr(routing_actions, name) for name in (
    "Offer", "CancelOffer", "Reject", "Queued", "Connected", "Abandoned", "Completed",
    "HandlerChanged", "QueueLogEntry")}


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """The leader's answer to a node's desk operation sent with a request id (``req`` in
    the input): it goes to that node ahead of the operation's actions."""

    req: str
    """The request id the node sent (``controlroom.asks``)."""
    error: str = ""
    """Empty: applied; else the router's refusal, word for word (``RoutingError``)."""
    state: str | None = None
    """The refused move's state (``RoutingError.state``)."""
    event: str | None = None
    """The refused move's event (``RoutingError.event``)."""


_ACTIONS["Reply"] = Reply


class BusError(ValueError):
    """A bus row that does not decode (names the row)."""


def migrate(db: Any) -> None:
    db.migrate(COMPONENT, MIGRATIONS, postgresql=MIGRATIONS)


def encode_action(a: Any) -> dict[str, Any]:
    name = type(a).__name__
    if name not in _ACTIONS:
        raise BusError(f"not a bus action: {name}")
    return {"type": name, **dataclasses.asdict(a)}


def decode_action(d: dict[str, Any]) -> Any:
    try:
        cls = _ACTIONS[d["type"]]
        return cls(**{k: v for k, v in d.items() if k != "type"})
    except (KeyError, TypeError) as exc:
        raise BusError(f"bad action {d!r}: {exc}") from None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


# -- node side (raw psycopg connections, autocommit) ------------------------------------

WRITER_IDLE_S = 3.0
"""A writer's session idle this long inside its send (its node cut off from the store,
silently) is ended by the server, which gives the writers' turn back: else every other
node's inputs, and so the room's routing, would wait behind it until the server's TCP
noticed (hours when the session is idle)."""


def take_write_turn(conn: Any) -> None:
    """Inside a send's transaction: wait for the writers' turn (held to the commit), and
    bound how long this session may then sit idle in it (:data:`WRITER_IDLE_S`; for this
    transaction only, in the same round trip)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s), set_config("
                 "'idle_in_transaction_session_timeout', %s, true)",
                 (WRITE_LOCK, str(int(WRITER_IDLE_S * 1000))))


def send(conn: Any, node: str, items: list[tuple[str, dict[str, Any], float]]) -> None:
    """Append ``(kind, data, at)`` inputs in order, then wake the leader (one transaction)."""
    with conn.transaction():
        # Ids in commit order: BIGSERIAL hands out ids at insert, and two nodes' rows
        # committing in the other order would let the leader read past an id not yet
        # committed (and never read it). The writers take turns for this short insert.
        take_write_turn(conn)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO routing_inputs(node, kind, data, at)"
                            " VALUES (%s, %s, %s, %s)",
                            [(node, kind, dumps(data), at) for kind, data, at in items])
        conn.execute(f"NOTIFY {IN_CHANNEL}")


def last_output(conn: Any) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM routing_outputs").fetchone()[0])


def outputs_after(conn: Any, node: str, after: int,
                  limit: int = 500) -> list[tuple[int, int, dict[str, Any]]]:
    """``(id, term, data)`` rows for ``node`` (and every node) after ``after``."""
    rows = conn.execute("SELECT id, term, data FROM routing_outputs WHERE id > %s"
                        " AND node IN (%s, %s) ORDER BY id LIMIT %s",
                        (after, node, EVERY_NODE, limit)).fetchall()
    return [(int(r[0]), int(r[1]), json.loads(r[2])) for r in rows]


def published_snapshot(conn: Any) -> tuple[float, dict[str, Any]]:
    row = conn.execute("SELECT at, snapshot FROM routing_state WHERE id = 1").fetchone()
    return (float(row[0]), json.loads(row[1])) if row else (0.0, {})


def published_handlers(conn: Any) -> dict[str, dict[str, Any]]:
    """The handlers as the leader last committed them (state, skills, ``desk``: the node
    of their last desk operation): what a node routing alone starts from."""
    row = conn.execute("SELECT handlers FROM routing_state WHERE id = 1").fetchone()
    return dict(json.loads(row[0])) if row else {}


# -- leader side -------------------------------------------------------------------------

def inputs_after(conn: Any, after: int,
                 limit: int = 1000) -> list[tuple[int, str, str, dict[str, Any], float]]:
    """``(id, node, kind, data, at)`` inputs after ``after``, in order."""
    rows = conn.execute("SELECT id, node, kind, data, at FROM routing_inputs WHERE id > %s"
                        " ORDER BY id LIMIT %s", (after, limit)).fetchall()
    return [(int(r[0]), r[1], r[2], json.loads(r[3]), float(r[4])) for r in rows]


def state(conn: Any) -> dict[str, Any]:
    row = conn.execute("SELECT term, cursor, handlers, holder FROM routing_state WHERE id = 1"
                       ).fetchone()
    return {"term": int(row[0]), "cursor": int(row[1]), "handlers": json.loads(row[2]),
            "holder": row[3]}


__all__ = ["BusError", "COMPONENT", "EVERY_NODE", "IN_CHANNEL", "MIGRATIONS", "OUT_CHANNEL",
           "Reply", "decode_action", "dumps", "encode_action", "inputs_after", "last_output",
           "migrate", "outputs_after", "published_handlers", "published_snapshot", "send",
           "state"]
