"""The routing leader on a real PostgreSQL, without SIP (``controlroom.leader``).

Two :class:`LeaderThread` s contend for the lease; a node is played by the test through
the bus tables (``store.routing_bus``): it sends inputs, reads the leader's actions and
answers a new term with its resync. Checked: strict priority and one offer per handler
from the one router; a takeover rebuilds the talking call with its handler (no second
offer to them), queues the waiting call, and logs the end the old leader never read.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.postgres import Postgres
from harness.postgres import available as postgres_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed")]


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def url(server: Postgres, request: pytest.FixtureRequest) -> str:
    """A fresh database per test."""
    return server.database(request.node.name[5:40].replace("_", ""))


def _settings(url: str, node: str, **cluster: Any) -> Any:
    from config import Settings
    from config.loader import build

    return build(Settings, {
        "cluster": {"node_id": node, "global_queue": True, **cluster},
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0, "skill": "999",
                   "callback_on_abandon": True},
                  {"name": "101", "numbers": ["101"], "priority": 1, "skill": "101"}],
        "handlers": [{"id": h, "phone": f"sip:{h}@x", "skills": ["999", "101"]}
                     for h in ("h1", "h2")],
        "routing": {"offer_timeout": 30.0},
        "storage": {"url": url, "heartbeat_interval": 0.5}})


class FakeNode:
    """A node as the bus sees it: inputs out, the leader's rows in, a resync per term."""

    def __init__(self, url: str, node: str) -> None:
        from controlroom.leader import BUS_IN_APP, _connect
        from store import routing_bus as bus

        self.bus, self.node = bus, node
        self.conn = _connect(url, BUS_IN_APP + node)  # its session: alive, not dead
        self.last = 0
        self.actions: list[dict[str, Any]] = []
        self.calls: dict[str, dict[str, Any]] = {}
        self.resync_extra: dict[str, Any] = {}
        """Merged into its resyncs (a hand-back after routing alone: ``fallback``...)."""

    def send(self, method: str, *args: Any, req: str = "", **kwargs: Any) -> None:
        data: dict[str, Any] = {"method": method, "args": list(args), "kwargs": kwargs}
        if req:
            data["req"] = req
        self.bus.send(self.conn, self.node, [("call", data, time.time())])

    def poll(self) -> None:
        for _id, term, data in self.bus.outputs_after(self.conn, self.node, self.last):
            self.last = _id
            if data.get("kind") == "term":
                self.bus.send(self.conn, self.node, [("resync", {
                    "term": term, "calls": list(self.calls.values()),
                    **self.resync_extra}, time.time())])
            else:
                self.actions += data["actions"]

    def wait_for(self, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            got = [a for a in self.actions if pred(a)]
            if got:
                return got
            time.sleep(0.02)
        raise AssertionError(f"not seen; actions: {self.actions}")


def _beat(url: str, node: str, every: float = 0.2, *,
          unregister: bool = True) -> threading.Event:
    """Register ``node`` and beat for it until the returned event is set (then it is
    unregistered, or with ``unregister=False`` just falls silent: a dead node)."""
    from store import nodes
    from store.db import Database

    db = Database(url)
    nodes.migrate(db)
    instance = nodes.new_instance()
    nodes.register(db, node, instance, stale_after=1.0)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            nodes.heartbeat(db, node, instance)
        if unregister:
            nodes.unregister(db, node, instance)
        db.close()

    threading.Thread(target=run, daemon=True).start()
    return stop


def _migrate(url: str) -> Any:
    from store import calls as calls_table
    from store import lease, nodes, queuelog
    from store import routing_bus as bus
    from store.db import Database

    db = Database(url)
    for comp, mig, pgm in ((queuelog.COMPONENT, queuelog.MIGRATIONS, queuelog.PG_MIGRATIONS),
                           (calls_table.COMPONENT, calls_table.MIGRATIONS,
                            calls_table.PG_MIGRATIONS),
                           (calls_table.NODE_COMPONENT, calls_table.NODE_MIGRATIONS,
                            calls_table.NODE_MIGRATIONS)):
        db.migrate(comp, mig, postgresql=pgm)
    nodes.migrate(db)
    bus.migrate(db)
    lease.migrate(db)
    return db


def _log(url: str) -> list[tuple[str, str, str]]:
    from harness.cluster import store_query

    return [(r["event"], r["call_id"], r["handler_id"]) for r in store_query(
        url, "SELECT event, call_id, handler_id FROM queue_log ORDER BY id")]


@contextlib.contextmanager
def _leading(url: str, leader_id: str, node_id: str, **leader_attrs: Any) -> Iterator[FakeNode]:
    """A migrated store, ``node_id`` beating, the leader ``leader_id`` running (attributes
    from ``leader_attrs`` set before it starts) and a :class:`FakeNode` for ``node_id``;
    all stopped after."""
    from controlroom.leader import LeaderThread

    _migrate(url).close()
    beat = _beat(url, node_id)
    stop = threading.Event()
    leader = LeaderThread(_settings(url, leader_id), url, leader_id, stop, poll=0.05)
    for name, value in leader_attrs.items():
        setattr(leader, name, value)
    leader.start()
    try:
        yield FakeNode(url, node_id)
    finally:
        beat.set()
        stop.set()
        leader.join(5)


class _Takeover:
    """A migrated store, ``n2`` beating, leader ``n1`` running and a :class:`FakeNode`
    for ``n2``; :meth:`stop_first` stops ``n1`` (its lease released, as a kill -9 closes
    its session) and :meth:`start_second` starts ``n3``. Everything stops on exit."""

    def __init__(self, url: str) -> None:
        from controlroom.leader import LeaderThread

        self.url = url
        _migrate(url).close()
        self.beating = _beat(url, "n2")
        self.stops = threading.Event(), threading.Event()
        self.leaders = [LeaderThread(_settings(url, "n1"), url, "n1", self.stops[0],
                                     poll=0.05)]
        self.leaders[0].start()

    def stop_first(self) -> None:
        self.stops[0].set()
        self.leaders[0].join(5)

    def start_second(self) -> None:
        from controlroom.leader import LeaderThread

        second = LeaderThread(_settings(self.url, "n3"), self.url, "n3", self.stops[1],
                              poll=0.05)
        self.leaders.append(second)
        second.start()

    def __enter__(self) -> FakeNode:
        try:
            return FakeNode(self.url, "n2")
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        self.beating.set()
        for stop in self.stops:
            stop.set()
        for leader in self.leaders:
            leader.join(5)


def test_one_router_keeps_priority_and_a_takeover_rebuilds_from_the_nodes(url: str) -> None:
    from harness.cluster import store_query

    room = _Takeover(url)
    with room as node:
        t = time.time()
        node.send("handler_login", "h1", t, skills={"999": 5, "101": 5})
        node.send("handler_login", "h2", t, skills={"999": 5, "101": 5})
        node.send("call_arrived", "n2-c1", "101", t + 0.01, caller="1")
        node.send("call_arrived", "n2-c2", "999", t + 0.02, caller="2")
        node.send("set_available", "h1", t + 0.03)
        offer = node.wait_for(lambda a: a["type"] == "Offer")[0]
        assert (offer["call_id"], offer["handler_id"]) == ("n2-c2", "h1")  # the 999 first
        node.calls = {"n2-c1": {"call_id": "n2-c1", "line": "101", "caller": "1",
                                "arrived_at": t + 0.01, "state": "queued", "handler_id": None},
                      "n2-c2": {"call_id": "n2-c2", "line": "999", "caller": "2",
                                "arrived_at": t + 0.02, "state": "connected",
                                "handler_id": "h1"}}
        node.send("offer_answered", "n2-c2", "h1", time.time())
        node.wait_for(lambda a: a["type"] == "Connected")
        time.sleep(0.3)  # the leader's state row written
        # The first leader stops (its lease released: as a kill -9 closes its session);
        # the call ends before anyone reads that input.
        room.stop_first()
        node.calls["n2-c2"]["state"] = "connected"  # as it was when its end was sent
        node.send("call_ended", "n2-c2", time.time())
        room.start_second()
        node.wait_for(lambda a: a["type"] == "Completed" and a["call_id"] == "n2-c2")
        assert store_query(url, "SELECT term, holder FROM routing_lease")[0]["holder"] == "n3"
        node.actions.clear()
        node.send("set_available", "h2", time.time())
        offer = node.wait_for(lambda a: a["type"] == "Offer")[0]
        assert (offer["call_id"], offer["handler_id"]) in (("n2-c1", "h2"), ("n2-c1", "h1"))
        log = _log(url)
        # h1 was offered once, answered, and its call's end is on the record
        assert [e for e in log if e[0] in ("OFFER", "CONNECT", "COMPLETE")
                and e[1] == "n2-c2"] == [("OFFER", "n2-c2", "h1"), ("CONNECT", "n2-c2", "h1"),
                                         ("COMPLETE", "n2-c2", "h1")]
        assert [e for e in log if e[0] == "OFFER" and e[1] == "n2-c1"] == [
            ("OFFER", "n2-c1", offer["handler_id"])]
        assert [e for e in log if e[0] == "ENTER"] == [("ENTER", "n2-c1", ""),
                                                       ("ENTER", "n2-c2", "")]


def test_a_silent_nodes_waiting_calls_are_parked_and_come_back_when_it_beats(
        url: str) -> None:
    """A node whose heartbeat stops (dead, or cut off from the store) has its waiting
    call taken out of the queue: a handler who becomes free is not offered it (the offer
    would ring no phone) but another node's call; when the node beats again it is asked
    to resync and its call waits again, in its place."""
    from controlroom.leader import LeaderThread, stale_after
    from store import routing_bus as bus

    _migrate(url).close()
    quiet, live = _beat(url, "q1", unregister=False), _beat(url, "l1")
    stop = threading.Event()
    leader = LeaderThread(_settings(url, "n9"), url, "n9", stop, poll=0.05)
    leader.start()
    q, l1 = FakeNode(url, "q1"), FakeNode(url, "l1")
    q.last = l1.last = bus.last_output(q.conn)
    try:
        t = time.time()
        l1.send("handler_login", "h7", t, skills={"999": 5, "101": 5})
        q.send("call_arrived", "q1-c1", "999", t, caller="1")
        q.calls = {"q1-c1": {"call_id": "q1-c1", "line": "999", "caller": "1",
                             "arrived_at": t, "state": "queued", "handler_id": None}}
        l1.send("call_arrived", "l1-c1", "999", t + 1, caller="2")
        time.sleep(0.5)
        quiet.set()  # q1 falls silent, as a node killed
        time.sleep(stale_after(_settings(url, "n9")) + 0.8)
        l1.send("set_available", "h7", time.time())
        offer = l1.wait_for(lambda a: a["type"] == "Offer")[0]
        assert offer["call_id"] == "l1-c1"  # not the older 999 of the silent node
        q.poll()
        assert not [a for a in q.actions if a["type"] == "Offer"]
        # q1 beats again: asked to resync, its call waits again (first in line)
        quiet2 = _beat(url, "q1")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
                e[0] == "resync" for e in _inputs(url, "q1")):
            q.poll()
            time.sleep(0.05)
        assert any(e[0] == "resync" for e in _inputs(url, "q1"))
        l1.send("offer_answered", "l1-c1", "h7", time.time())
        l1.send("call_ended", "l1-c1", time.time())
        l1.send("end_wrapup", "h7", time.time())
        got = q.wait_for(lambda a: a["type"] == "Offer")
        assert got[0]["call_id"] == "q1-c1"
        quiet2.set()
    finally:
        live.set()
        stop.set()
        leader.join(5)


def _inputs(url: str, node: str) -> list[tuple[str, str]]:
    from harness.cluster import store_query

    return [(r["kind"], r["data"]) for r in store_query(
        url, "SELECT kind, data FROM routing_inputs WHERE node = %s ORDER BY id", (node,))]


def test_desk_reads_on_a_node_come_from_the_leaders_snapshot() -> None:
    """The proxy's reads: call-backs, a call's position and estimated wait, a handler."""
    from types import SimpleNamespace

    from controlroom.leader import RouterProxy

    snap = {"handlers": {"h1": {"state": "available"}},
            "lines": {"999": {"waiting": [{"call_id": "n1-c1", "position": 2,
                                           "estimated_wait": 12.5}]}},
            "callbacks": [{"cb_id": "cb1", "call_id": "n1-c0", "line": "999", "caller": "1",
                           "at": 5.0, "wait": 3.0, "state": "pending", "handler_id": None,
                           "taken_at": None, "outcome": None,
                           "attempts": [{"call_id": "n1-c0", "at": 5.0, "wait": 3.0}],
                           "last_at": 5.0}]}
    proxy = RouterProxy(SimpleNamespace(snapshot=snap, fallback=None), shadow=None)  # type: ignore[arg-type]
    assert proxy.position("n1-c1") == 2 and proxy.estimated_wait("n1-c1", 0.0) == 12.5
    assert proxy.position("n1-c9") is None
    assert proxy.handler_info("h1") == {"state": "available"}
    [cb] = proxy.callbacks()
    assert (cb.cb_id, cb.call_id, cb.state, cb.last_at) == ("cb1", "n1-c0", "pending", 5.0)


def test_a_survivors_adopt_logs_the_dead_calls_and_drops_them_at_the_leader() -> None:
    """Salvage on a global-queue node: the record's rows (ABANDON, a call-back whose id
    cannot repeat the leader's cb1, cb2...) and a drop_calls input for the leader."""
    import time as _time
    from types import SimpleNamespace

    from controlroom.leader import RouterProxy
    from routing import QueueLogEntry

    sent: list[tuple[str, dict[str, Any]]] = []
    settings = _settings("postgresql://unused/x", "n1")
    gq = SimpleNamespace(s=SimpleNamespace(settings=settings), snapshot={}, fallback=None,
                         send=lambda kind, data: sent.append((kind, data)))
    proxy = RouterProxy(gq, shadow=None)  # type: ignore[arg-type]
    now = _time.time()
    rows = proxy.adopt([QueueLogEntry(now - 5, "n2-c1", "999", "", "ENTER",
                                      {"caller": "07700900123"})], now, reason="n2 died")
    events = [(r.event, r.call_id) for r in rows]
    assert events == [("ABANDON", "n2-c1"), ("CALLBACK_ADD", "n2-c1")]
    assert int(rows[1].data["cb_id"][2:]) > 10**12
    assert sent == [("drop_calls", {"call_ids": ["n2-c1"]})]


def test_a_restarted_node_tells_the_leader_it_holds_no_call(url: str) -> None:
    """A node restarted quicker than parking: its start resync drops the calls its
    previous run left in the queue, so no handler is offered a call that is gone."""
    with _leading(url, "n8", "r1") as node:
        t = time.time()
        node.send("handler_login", "h5", t, skills={"999": 5, "101": 5})
        node.send("call_arrived", "r1-c1", "999", t, caller="1")
        node.wait_for(lambda a: a["type"] == "Queued")
        # the node restarts: its first input says it holds nothing
        node.bus.send(node.conn, "r1", [("resync", {"term": 0, "start": True, "calls": []},
                                         time.time())])
        node.send("call_arrived", "r1-c2", "101", time.time(), caller="2")
        node.send("set_available", "h5", time.time())
        offer = node.wait_for(lambda a: a["type"] == "Offer")[0]
        assert offer["call_id"] == "r1-c2"  # not the gone 999


def test_the_bus_is_pruned_and_routing_goes_on(url: str) -> None:
    """Bus rows older than ``prune_after`` are deleted (inputs once read); the queue log
    keeps the record, and routing carries on."""
    from harness.cluster import store_query

    with _leading(url, "n7", "p1", prune_after=0.5) as node:
        t = time.time()
        node.send("handler_login", "h4", t, skills={"999": 5, "101": 5})
        node.send("call_arrived", "p1-c1", "999", t, caller="1")
        node.wait_for(lambda a: a["type"] == "Queued")
        time.sleep(1.6)

        def count(table: str) -> int:
            return store_query(url, f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
        assert count("routing_inputs") == 0 and count("routing_outputs") == 0
        node.send("set_available", "h4", time.time())
        assert node.wait_for(lambda a: a["type"] == "Offer")[0]["call_id"] == "p1-c1"
        assert [r["event"] for r in store_query(
            url, "SELECT event FROM queue_log WHERE call_id = 'p1-c1' AND event <> 'STATE'"
                 " ORDER BY id")] == ["ENTER", "OFFER"]


def test_a_hand_back_after_routing_alone_supersedes_the_nodes_unread_inputs(
        url: str) -> None:
    """A node routed alone while no leader could read its inputs: one it sent before (a
    call that was then answered and ended alone) must not come back as a waiting call;
    its hand-back's waiting 999 is queued, and its desk handler keeps the state it
    reports (not ready: on a break). The desk's node is published with the handlers."""
    import json

    from harness.cluster import store_query

    room = _Takeover(url)
    with room as node:
        t = time.time()
        node.send("handler_login", "h1", t, skills={"999": 5, "101": 5})
        node.send("handler_login", "h2", t, skills={"999": 5, "101": 5})
        node.send("set_not_ready", "h1", t, reason="ready soon")
        node.send("set_not_ready", "h2", t, reason="ready soon")

        def published() -> dict[str, Any]:
            return dict(json.loads(store_query(url, "SELECT handlers FROM routing_state")[0]
                                   ["handlers"]))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and published().get("h1", {}).get("desk") != "n2":
            node.poll()  # answers the first leader's term row
            time.sleep(0.05)
        assert published()["h1"]["desk"] == "n2", published()
        room.stop_first()  # the store away: no leader reads what follows
        node.send("call_arrived", "n2-c5", "101", time.time(), caller="5")  # sent, unread
        # ... then, alone, n2-c5 was answered and ended, n2-c6 (999) came and waits, and
        # h1 went on a break
        node.calls = {"n2-c6": {"call_id": "n2-c6", "line": "999", "caller": "6",
                                "arrived_at": time.time(), "state": "queued",
                                "handler_id": None}}
        node.resync_extra = {"fallback": True, "handlers": {
            "h1": {"state": "not_ready", "reason": "break", "skills": {"999": 5, "101": 5},
                   "since": time.time(), "idle_since": None, "call_id": None}}}
        room.start_second()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                e[0] == "resync" and '"fallback"' in e[1] for e in _inputs(url, "n2")):
            node.poll()
            time.sleep(0.05)
        node.resync_extra = {}
        time.sleep(0.5)  # the takeover applied it
        node.send("set_available", "h2", time.time())
        offer = node.wait_for(lambda a: a["type"] == "Offer")[0]
        assert (offer["call_id"], offer["handler_id"]) == ("n2-c6", "h2")
        time.sleep(0.5)
        node.poll()
        assert [a for a in node.actions if a.get("call_id") == "n2-c5"] == []
        assert ("ENTER", "n2-c5", "") not in _log(url)
        h1 = published()["h1"]
        assert (h1["state"], h1["desk"]) == ("not_ready", "n2"), h1


def _handlers(url: str) -> dict[str, Any]:
    import json

    from harness.cluster import store_query

    return dict(json.loads(store_query(url, "SELECT handlers FROM routing_state")[0]
                           ["handlers"]))


def _wait(pred: Any, nodes: list[FakeNode], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in nodes:
            n.poll()
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("not seen")


@contextlib.contextmanager
def _room(url: str, **cluster: Any) -> Iterator[tuple[FakeNode, FakeNode, threading.Event,
                                                      Any]]:
    """Leader n9; node a1 (its heartbeat stops when the returned event is set: it stays
    connected, as a node cut off from the store whose session lingers) and node b1, both
    beating; h1's desk is on a1, h2's on b1."""
    from controlroom.leader import LeaderThread
    from store import routing_bus as bus

    _migrate(url).close()
    quiet, live = _beat(url, "a1", unregister=False), _beat(url, "b1")
    stop = threading.Event()
    leader = LeaderThread(_settings(url, "n9", **cluster), url, "n9", stop, poll=0.05)
    leader.start()
    a1, b1 = FakeNode(url, "a1"), FakeNode(url, "b1")
    a1.last = b1.last = bus.last_output(a1.conn)
    try:
        t = time.time()
        a1.send("handler_login", "h1", t, skills={"999": 5, "101": 5})
        b1.send("handler_login", "h2", t, skills={"999": 5, "101": 5})
        a1.send("set_not_ready", "h1", t, reason="ready soon")  # a desk operation: on a1
        b1.send("set_not_ready", "h2", t, reason="ready soon")
        _wait(lambda: _handlers(url).get("h2", {}).get("desk") == "b1", [a1, b1])
        yield a1, b1, quiet, leader
    finally:
        quiet.set()
        live.set()
        stop.set()
        leader.join(5)


def test_a_stale_nodes_desks_are_offered_nothing_until_it_hands_back(url: str) -> None:
    """A node whose heartbeat stops while its bus session is open (cut off from the
    store, perhaps still reaching the phones) may route its calls alone to its desks:
    before it can (``fallback_after`` after its last beat) the leader cancels the offer
    its desk handler rings with (another node's call, which goes back to its place and to
    a healthy desk) and offers them nothing more; a desk operation for them from another
    node is refused with why. The node's hand-back (a fallback resync) gives them back
    with the state it reports, and they take the room's calls again."""
    from controlroom.fallback import DESK_AWAY
    from controlroom.leader import fallback_after
    from harness.cluster import store_query

    with _room(url) as (a1, b1, quiet, leader):
        b1.send("set_available", "h1", time.time())  # refused? no: h1's desk moves to b1
        b1.wait_for(lambda a: a["type"] == "HandlerChanged" and a["handler_id"] == "h1")
        a1.send("set_available", "h1", time.time())  # ... and back to a1
        _wait(lambda: _handlers(url)["h1"]["desk"] == "a1", [a1, b1])
        t = time.time()
        b1.send("call_arrived", "b1-c1", "999", t, caller="1")
        b1.calls = {"b1-c1": {"call_id": "b1-c1", "line": "999", "caller": "1",
                              "arrived_at": t, "state": "queued", "handler_id": None}}
        offer = b1.wait_for(lambda a: a["type"] == "Offer")[0]
        assert offer["handler_id"] == "h1"  # ringing, through b1
        b1.actions.clear()
        quiet.set()  # a1's heartbeat stops; its session stays
        time.sleep(0.3)
        last = float(store_query(url, "SELECT heartbeat_at FROM nodes WHERE node_id='a1'")
                     [0]["heartbeat_at"])
        got = b1.wait_for(lambda a: a["type"] == "CancelOffer", timeout=8)[0]
        away_at = time.time()
        assert (got["call_id"], got["handler_id"]) == ("b1-c1", "h1")
        _wait(lambda: _handlers(url)["h1"]["state"] == "not_ready", [a1, b1])
        assert _handlers(url)["h1"]["reason"] == DESK_AWAY
        alone_at = last + fallback_after(_settings(url, "a1"))
        print(f"beat->away {away_at - last:.2f} s; node alone at {alone_at - last:.2f} s")
        assert away_at < alone_at - 0.3, (away_at - last, alone_at - last)
        # a desk operation for h1 from elsewhere is refused while a1 may route to them
        b1.send("set_available", "h1", time.time(), req="r1")
        reply = b1.wait_for(lambda a: a["type"] == "Reply")[0]
        assert "a1" in str(reply.get("error")) and "cut off" in str(reply.get("error"))
        b1.actions.clear()
        b1.send("set_available", "h2", time.time())
        offer = b1.wait_for(lambda a: a["type"] == "Offer")[0]
        assert (offer["call_id"], offer["handler_id"]) == ("b1-c1", "h2")
        b1.send("offer_answered", "b1-c1", "h2", time.time())
        b1.calls["b1-c1"].update(state="connected", handler_id="h2")
        b1.send("call_arrived", "b1-c2", "101", time.time(), caller="2")
        b1.calls["b1-c2"] = {"call_id": "b1-c2", "line": "101", "caller": "2",
                             "arrived_at": time.time(), "state": "queued",
                             "handler_id": None}
        time.sleep(1.0)
        b1.poll()
        assert not [a for a in b1.actions if a["type"] == "Offer"
                    and a["call_id"] == "b1-c2"]  # h1 is away, h2 talking
        # an input a1 sent before going alone reaches the store only now (a batch the cut
        # held in flight): it waits for a1's resync, which supersedes it
        a1.send("call_arrived", "a1-c9", "999", time.time() - 4, caller="9")
        time.sleep(0.5)
        # a1 is back from routing alone: beats, and answers the term row with its
        # hand-back (h1 free)
        a1.resync_extra = {"fallback": True, "handlers": {
            "h1": {"state": "available", "reason": "", "skills": {"999": 5, "101": 5},
                   "since": time.time(), "idle_since": time.time() - 5, "call_id": None}}}
        _back_then_h1_offered_b1_c2(url, a1, b1)
        offers = [e for e in _log(url) if e[0] == "OFFER"]
        assert offers == [("OFFER", "b1-c1", "h1"), ("OFFER", "b1-c1", "h2"),
                          ("OFFER", "b1-c2", "h1")]
        assert not [e for e in _log(url) if e[1] == "a1-c9"]  # superseded: never routed


def test_a_desk_busy_at_the_park_is_kept_away_after_its_call(url: str) -> None:
    """A desk handler talking on another node's call when their node goes stale is left
    on it; when it ends they are not made free by the wrap-up's end (their node may be
    routing to them alone); a node that beats again without having routed alone (a plain
    resync) gives them back as they were: free after the call."""
    from controlroom.fallback import DESK_AWAY

    with _room(url) as (a1, b1, quiet, leader):
        a1.send("set_available", "h1", time.time())
        t = time.time()
        b1.send("call_arrived", "b1-c1", "999", t, caller="1")
        b1.wait_for(lambda a: a["type"] == "Offer")
        b1.send("offer_answered", "b1-c1", "h1", time.time())
        b1.wait_for(lambda a: a["type"] == "Connected")
        quiet.set()
        _wait(lambda: "h1" in leader.away, [a1, b1], timeout=8)
        assert _handlers(url)["h1"]["state"] == "on_call"  # talking on: not cut
        b1.send("call_ended", "b1-c1", time.time())
        b1.send("call_arrived", "b1-c2", "999", time.time(), caller="2")
        b1.calls = {"b1-c2": {"call_id": "b1-c2", "line": "999", "caller": "2",
                              "arrived_at": time.time(), "state": "queued",
                              "handler_id": None}}
        b1.wait_for(lambda a: a["type"] == "Completed")
        assert leader.router.handlers["h1"].after_call == DESK_AWAY  # in wrap-up now
        time.sleep(_settings(url, "n9").lines[0].wrapup + 0.5)  # the wrap-up is over
        b1.poll()
        assert not [a for a in b1.actions if a["type"] == "Offer" and a["call_id"] == "b1-c2"]
        h1 = _handlers(url)["h1"]
        assert (h1["state"], h1["reason"]) == ("not_ready", DESK_AWAY), h1
        # sent while a1 was parked: applied when a1 resyncs (it never routed alone)
        a1.send("call_arrived", "a1-c3", "101", time.time(), caller="3")
        a1.calls = {"a1-c3": {"call_id": "a1-c3", "line": "101", "caller": "3",
                              "arrived_at": time.time(), "state": "queued",
                              "handler_id": None}}
        time.sleep(0.5)
        assert not [e for e in _log(url) if e[1] == "a1-c3"]
        _back_then_h1_offered_b1_c2(url, a1, b1)  # never routed alone: a plain resync
        assert not leader.away
        assert ("ENTER", "a1-c3", "") in _log(url)


def _back_then_h1_offered_b1_c2(url: str, a1: Any, b1: Any) -> None:
    """a1 beats again and answers the term row with its resync: h1, its desk handler, is
    then offered b1's waiting call b1-c2."""
    back = _beat(url, "a1")
    try:
        _wait(lambda: any(a["type"] == "Offer" and a["call_id"] == "b1-c2"
                          for a in b1.actions), [a1, b1])
        offer = [a for a in b1.actions if a["type"] == "Offer"][-1]
        assert offer["handler_id"] == "h1"
    finally:
        back.set()


def test_a_dead_nodes_desks_are_still_offered_the_rooms_calls(url: str) -> None:
    """A node killed (its store session closes with it) cannot route alone: its desk
    handlers stay in the room's queue, as before."""
    with _room(url) as (a1, b1, quiet, leader):
        a1.send("set_available", "h1", time.time())
        _wait(lambda: _handlers(url)["h1"]["state"] == "available", [a1, b1])
        quiet.set()
        a1.conn.close()  # as the kernel closes a killed process's sockets
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and "a1" not in leader.parked:
            time.sleep(0.05)
        b1.send("call_arrived", "b1-c1", "999", time.time(), caller="1")
        offer = b1.wait_for(lambda a: a["type"] == "Offer")[0]
        assert offer["handler_id"] == "h1"
        assert not leader.away


def test_a_node_silent_past_salvage_after_gives_its_desks_back(url: str) -> None:
    """A desk node silent with its session open past ``salvage_after`` (a machine powered
    off: its sessions linger on the store) counts as dead, as for its calls: its desks
    are offered the room's calls again."""
    with _room(url, salvage_after=3.0) as (a1, b1, quiet, leader):
        a1.send("set_available", "h1", time.time())
        _wait(lambda: _handlers(url)["h1"]["state"] == "available", [a1, b1])
        quiet.set()
        _wait(lambda: "h1" in leader.away, [b1], timeout=8)
        b1.send("call_arrived", "b1-c1", "999", time.time(), caller="1")
        time.sleep(0.3)
        b1.poll()
        assert not [a for a in b1.actions if a["type"] == "Offer"]
        offer = b1.wait_for(lambda a: a["type"] == "Offer", timeout=8)[0]
        assert offer["handler_id"] == "h1"
        assert not leader.away


def test_a_desk_that_just_left_a_stale_node_is_put_away_with_it(url: str) -> None:
    """A handler whose desk moved off a node in the seconds before it went stale may still
    be that node's desk in what it last read: put away with it too, and given back (as
    they were: the hand-back does not list them) when it hands back."""
    from controlroom.fallback import DESK_AWAY

    with _room(url) as (a1, b1, quiet, leader):
        a1.send("set_not_ready", "h2", time.time(), reason="moving")  # h2's desk: a1 ...
        _wait(lambda: _handlers(url)["h2"]["desk"] == "a1", [a1, b1])
        b1.send("set_available", "h2", time.time())  # ... then b1, just now
        _wait(lambda: _handlers(url)["h2"]["desk"] == "b1", [a1, b1])
        quiet.set()
        _wait(lambda: {"h1", "h2"} <= set(leader.away), [b1], timeout=8)
        assert (_handlers(url)["h2"]["state"], _handlers(url)["h2"]["reason"]) == (
            "not_ready", DESK_AWAY)
        b1.send("call_arrived", "b1-c1", "999", time.time(), caller="1")
        time.sleep(0.5)
        b1.poll()
        assert not [a for a in b1.actions if a["type"] == "Offer"]
        a1.resync_extra = {"fallback": True, "handlers": {}}
        back = _beat(url, "a1")
        try:
            _wait(lambda: any(a["type"] == "Offer" for a in b1.actions), [a1, b1])
            offer = [a for a in b1.actions if a["type"] == "Offer"][0]
            assert offer["handler_id"] == "h2"
        finally:
            back.set()


def test_the_999s_abandoned_while_a_node_routed_alone_join_the_leaders_list_at_once(
        url: str) -> None:
    """A node back from routing alone hands back (no call left: its 999 hung up while it
    was alone) and sends the call-backs it made then (the CALLBACK_ADD rows of
    ``LocalRouting``), twice: the leader's published list has the entry once, with the
    caller, line, wait and time of the abandon, and not the leader's own entry for the
    call its hand-back dropped; the waiting call is out of the queue. Before the
    hand-back, the leader had queued that 999 (its arrival was read before the outage)."""
    import json

    from harness.cluster import store_query

    def snapshot() -> dict[str, Any]:
        return dict(json.loads(store_query(url, "SELECT snapshot FROM routing_state")[0]
                               ["snapshot"]))

    def waiting() -> list[str]:
        return [c["call_id"] for line in (snapshot().get("lines") or {}).values()
                for c in line.get("waiting") or ()]

    with _leading(url, "n6", "f1") as node:
        t = time.time()
        node.send("call_arrived", "f1-c1", "999", t - 4.0, caller="07700900777")
        node.wait_for(lambda a: a["type"] == "Queued")
        _wait(lambda: waiting() == ["f1-c1"], [node])
        term = int(store_query(url, "SELECT term FROM routing_state")[0]["term"])
        at = t - 1.0
        row: dict[str, Any] = {"at": at, "call_id": "f1-c1", "line": "999", "handler_id": "",
               "event": "CALLBACK_ADD",
               "data": {"cb_id": f"cb{int(t * 1000)}", "caller": "07700900777",
                        "wait": 3.0, "key": "07700900777", "repeat": False}}
        node.bus.send(node.conn, "f1", [
            ("resync", {"term": term, "fallback": True, "calls": [], "handlers": {}},
             time.time()),
            ("callbacks", {"entries": [row]}, time.time()),
            ("callbacks", {"entries": [row]}, time.time())])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                snapshot().get("callbacks") and not waiting()):
            node.poll()
            time.sleep(0.05)
        cbs = snapshot().get("callbacks") or []
        assert [(c["cb_id"], c["call_id"], c["line"], c["caller"], c["at"], c["wait"],
                 c["state"]) for c in cbs] == [
            (row["data"]["cb_id"], "f1-c1", "999", "07700900777", at, 3.0, "pending")], cbs
        assert waiting() == []
        time.sleep(0.5)  # the second input read too: still once
        assert len(snapshot().get("callbacks") or []) == 1
