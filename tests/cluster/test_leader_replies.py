"""The global queue's answers to desks, salvaged call-backs and room-wide figures (issue 14).

Pure parts first (``controlroom.asks``, ``Router.add_callbacks``, the proxy's refusal, the
desk's wait), then the leader on a real PostgreSQL without SIP, a node played by the test
through the bus tables (as in ``test_leader.py``): a desk operation sent with a request id
is answered to its node (the refusal word for word as one router gives it, ahead of any
action), a survivor's call-back rows join the leader's list at once, and the snapshot the
leader publishes carries the room's figures and overflow refusal.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from harness.postgres import available as postgres_available
from tests.cluster.test_leader import (  # noqa: F401 - the fixtures are used by name
    FakeNode,
    _beat,
    _leading,
    _migrate,
    server,
    url,
)


def _settings(store: str, node: str, *, max_queue: int = 0) -> Any:
    """As ``test_leader._settings``; ``max_queue``: the 101 line's, refusing past it."""
    from config import Settings
    from config.loader import build

    return build(Settings, {
        "cluster": {"node_id": node, "global_queue": True},
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0, "skill": "999",
                   "callback_on_abandon": True},
                  {"name": "101", "numbers": ["101"], "priority": 1, "skill": "101",
                   "max_queue": max_queue, "overflow": "busy" if max_queue else "queue"}],
        "handlers": [{"id": h, "phone": f"sip:{h}@x", "skills": ["999", "101"]}
                     for h in ("h1", "h2")],
        "routing": {"offer_timeout": 30.0},
        "storage": {"url": store, "heartbeat_interval": 0.5}})


def _router() -> Any:
    from routing import Router

    s = _settings("postgresql://unused/x", "n1")
    return Router.from_settings(s.lines, s.routing)


# -- pure ---------------------------------------------------------------------------------

async def test_asks_runs_the_nodes_part_before_resolving_and_raises_a_refusal() -> None:
    """An applied answer runs ``then`` and resolves None; a refusal raises the router's
    message with its state and event; an answer nobody asked for is ignored."""
    from controlroom.asks import Asks
    from routing import RoutingError
    from store.routing_bus import Reply

    asks = Asks("n1")
    ran: list[str] = []
    req, fut = asks.open(lambda: ran.append("here"))
    asks.answer(Reply(req))
    assert ran == ["here"] and fut.result() is None and len(asks) == 0
    req2, fut2 = asks.open(lambda: ran.append("never"))
    asks.answer(Reply(req2, "handler 'h1' is on_call: cannot 'ready'", "on_call", "ready"))
    with pytest.raises(RoutingError, match="^handler 'h1' is on_call: cannot 'ready'$") as e:
        fut2.result()
    assert (e.value.state, e.value.event, ran) == ("on_call", "ready", ["here"])
    asks.answer(Reply("n9-x-1"))  # not ours: nothing happens
    req3, req4 = asks.open()[0], asks.open()[0]
    assert req3 != req4 and req3.startswith("n1-") and Asks("n1").open()[0] != req3


def test_a_reply_travels_the_bus_as_an_action() -> None:
    """Reply encodes and decodes like the router's actions (one row per node)."""
    from store import routing_bus as bus

    r = bus.Reply("n1-ab-3", "unknown call-back 'cb9'")
    assert bus.decode_action(json.loads(bus.dumps(bus.encode_action(r)))) == r


def test_add_callbacks_reads_a_survivors_rows_once() -> None:
    """A survivor's CALLBACK_ADD rows join the list as a restore would read them; the
    same rows again (a takeover's restore read them first) add nothing."""
    from routing import QueueLogEntry

    now = time.time()
    scratch = _router()
    scratch._cb_seq = 10**12
    rows = scratch.adopt([QueueLogEntry(now - 9, "n2-c1", "999", "", "ENTER",
                                        {"caller": "07700900123"})], now, reason="n2 died")
    leader = _router()
    assert leader.add_callbacks(rows, now) == 1
    [cb] = leader.callbacks()
    assert (cb.call_id, cb.line, cb.caller, cb.state) == ("n2-c1", "999", "07700900123",
                                                          "pending")
    assert cb.cb_id == rows[1].data["cb_id"]
    assert leader.add_callbacks(rows, now) == 0 and len(leader.callbacks()) == 1
    assert leader.complete_callback(cb.cb_id, now, outcome="reached")  # a supervisor
    assert leader.callbacks() == []


def test_the_proxy_refuses_by_the_rooms_figures() -> None:
    """Before answering, a node refuses a 101 by the leader's snapshot (the room's queue),
    not by its own empty router; with no snapshot yet it admits (the leader decides)."""
    from controlroom.leader import RouterProxy

    gq = SimpleNamespace(snapshot={"figures": {"101": {"refuse": "queue-full"},
                                               "999": {"refuse": None}}}, fallback=None)
    proxy = RouterProxy(gq, shadow=_router())  # type: ignore[arg-type]
    assert proxy.would_refuse("101") == "queue-full"
    assert proxy.would_refuse("999") is None
    gq.snapshot = {}
    assert proxy.would_refuse("101") is None


class _GQ:
    """The node's end of the bus as the desk sees it: inputs recorded, answers by hand."""

    def __init__(self, snapshot: dict[str, Any] | None = None) -> None:
        from controlroom.asks import Asks

        self.asks = Asks("n1")
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.snapshot = snapshot or {}

    def send(self, kind: str, data: dict[str, Any]) -> None:
        self.sent.append((kind, data))


def _desk(gq: Any, router: Any = None) -> Any:
    from controlroom.desk import ServiceDesk

    desk = ServiceDesk.__new__(ServiceDesk)
    applied: list[Any] = []
    handlers = {"h1": SimpleNamespace(name="Hana")}
    desk.s = SimpleNamespace(global_queue=gq, router=router, _apply=applied.extend,
                             handlers=handlers, calls={}, _fanout=lambda p: None)
    return desk


async def test_the_desk_returns_the_leaders_refusal_as_one_node_would() -> None:
    """Global queue: the operation goes with a request id; the leader's refusal is the
    same 409 message one node gives."""
    from console.backend import Conflict
    from routing import RoutingError

    one = _router()
    one.handler_login("h1", time.time(), skills={"999": 5})
    one.set_available("h1", time.time())
    one.call_arrived("c1", "999", time.time())
    one.offer_answered("c1", "h1", time.time())
    with pytest.raises(RoutingError) as single:
        one.set_available("h1", time.time())
    proxy = SimpleNamespace(handler_info=lambda h: {"state": "on_call", "after_call": None})
    gq = _GQ()
    desk = _desk(gq, proxy)
    task = asyncio.ensure_future(desk.set_handler_state("h1", "available"))
    await asyncio.sleep(0.05)
    [(kind, data)] = gq.sent
    assert (kind, data["method"], data["args"][0]) == ("call", "set_available", "h1")
    from store.routing_bus import Reply

    gq.asks.answer(Reply(data["req"], str(single.value), single.value.state,
                         single.value.event))
    with pytest.raises(Conflict) as got:
        await task
    assert got.value.message == str(single.value) == "handler 'h1' is on_call: cannot 'ready'"


async def test_no_answer_in_time_is_pending_and_is_carried_out_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The desk waits a bounded time, then says pending (202), not done; the node's part
    (here a transfer's unbridge) still runs when the leader's answer comes."""
    import controlroom.desk as desk_mod
    from console.backend import Pending
    from store.routing_bus import Reply

    monkeypatch.setattr(desk_mod, "LEADER_WAIT", 0.1)
    gq = _GQ()
    desk = _desk(gq)
    ran: list[int] = []
    t0 = time.monotonic()
    with pytest.raises(Pending, match="^pending: sent to the routing leader"):
        await desk._decide("transfer_to_line", "c1", "101", 1.0, head=True,
                           then=lambda: ran.append(1))
    assert 0.09 < time.monotonic() - t0 < 1.0 and ran == []
    gq.asks.answer(Reply(gq.sent[0][1]["req"]))
    assert ran == [1]


async def test_the_desk_shows_the_rooms_service_level_from_the_leaders_snapshot() -> None:
    """With the global queue the desk's figures are the leader's (the room's), not the
    node's own router's."""
    from controlroom.desk import line_figures

    room = _router()
    now = time.time()
    room.handler_login("h1", now, skills={"999": 5, "101": 5})
    room.set_available("h1", now)
    room.call_arrived("a-c1", "101", now)
    room.offer_answered("a-c1", "h1", now + 1)
    room.call_arrived("b-c2", "101", now + 2)
    room.call_abandoned("b-c2", now + 200)
    figs = line_figures(room, now + 201)
    assert figs["101"]["today"]["answered"] == 1 and figs["101"]["today"]["abandoned"] == 1
    node = _router()  # the node's own router: none of the room's calls
    desk = _desk(_GQ({"figures": figs}), node)
    desk.s.settings = SimpleNamespace(lines=[SimpleNamespace(name=n, priority=room.lines[n]
                                                             .priority, answer_threshold=60)
                                             for n in ("999", "101")])
    desk.s._draining = False
    desk.s.monitors = SimpleNamespace(view=lambda: [])
    snap = await desk.snapshot()
    line = next(ln for ln in snap["lines"] if ln["name"] == "101")
    assert (line["answered_today"], line["abandoned_today"], line["offered_today"]) == (
        1, 1, figs["101"]["today"]["offered"])
    assert line["today"]["answered"] == line["rolling"]["answered"] == 1


# -- the leader on a real PostgreSQL ------------------------------------------------------

pg = pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed")


def _send(node: FakeNode, method: str, *args: Any, req: str = "",
          **kwargs: Any) -> None:
    data: dict[str, Any] = {"method": method, "args": list(args), "kwargs": kwargs}
    if req:
        data["req"] = req
    node.bus.send(node.conn, node.node, [("call", data, time.time())])


@pg
@pytest.mark.cluster
@pytest.mark.realparts
def test_the_leader_answers_a_desk_operation_to_its_node(url: str) -> None:  # noqa: F811
    """A refused operation is answered with the router's message; an applied one with an
    empty error, ahead of the actions it caused (the node's part runs first)."""
    with _leading(url, "n5", "d1") as node:
        t = time.time()
        node.send("handler_login", "h1", t, skills={"999": 5, "101": 5})
        node.send("call_arrived", "d1-c1", "999", t, caller="1")
        _send(node, "set_available", "h1", time.time(), req="d1-x-1")
        got = node.wait_for(lambda a: a["type"] == "Offer")
        types = [a["type"] for a in node.actions]
        assert types.index("Reply") < types.index("Offer"), node.actions
        [ok] = [a for a in node.actions if a["type"] == "Reply"]
        assert (ok["req"], ok["error"]) == ("d1-x-1", "") and got[0]["handler_id"] == "h1"
        node.send("offer_answered", "d1-c1", "h1", time.time())
        node.wait_for(lambda a: a["type"] == "Connected")
        _send(node, "set_available", "h1", time.time(), req="d1-x-2")
        _send(node, "take_callback", "cb404", "h1", time.time(), req="d1-x-3")
        _send(node, "transfer_to_handler", "d1-c9", "h2", time.time(), req="d1-x-4")
        node.wait_for(lambda a: a["type"] == "Reply" and a["req"] == "d1-x-4")
        replies = {a["req"]: (a["error"], a["state"], a["event"]) for a in node.actions
                   if a["type"] == "Reply"}
        assert replies["d1-x-2"] == ("handler 'h1' is on_call: cannot 'ready'", "on_call",
                                     "ready")
        assert replies["d1-x-3"] == ("unknown call-back 'cb404'", None, None)
        assert replies["d1-x-4"][0] == "unknown call 'd1-c9'"


@pg
@pytest.mark.cluster
@pytest.mark.realparts
def test_salvaged_callbacks_join_the_leaders_list_and_figures_are_the_rooms(
        url: str) -> None:  # noqa: F811
    """A survivor's call-back rows sent as an input are on the leader's published list
    within its next snapshot (twice sent: once); the snapshot's figures count every
    node's calls and say queue-full when the room's 101 queue is full."""
    from controlroom.leader import LeaderThread
    from routing import QueueLogEntry
    from store import routing_bus as bus

    _migrate(url).close()
    beats = [_beat(url, "e1"), _beat(url, "e2")]
    stop = threading.Event()
    settings = _settings(url, "n6", max_queue=2)
    leader = LeaderThread(settings, url, "n6", stop, poll=0.05)
    leader.start()
    e1, e2 = FakeNode(url, "e1"), FakeNode(url, "e2")
    try:
        t = time.time()
        scratch = _router()
        scratch._cb_seq = 10**12
        rows = scratch.adopt([QueueLogEntry(t - 9, "x1-c1", "999", "", "ENTER",
                                            {"caller": "07700900123"})], t, reason="x1 died")
        entries = [{"at": r.at, "call_id": r.call_id, "line": r.line,
                    "handler_id": r.handler_id, "event": r.event, "data": r.data}
                   for r in rows if r.event == "CALLBACK_ADD"]
        e1.send("handler_login", "h1", t, skills={"999": 5, "101": 5})
        for _ in range(2):
            e1.bus.send(e1.conn, "e1", [("callbacks", {"entries": entries}, time.time())])
        e1.send("call_arrived", "e1-c1", "101", t, caller="1")
        e2.send("call_arrived", "e2-c1", "101", t + 0.1, caller="2")

        def published() -> dict[str, Any]:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                _, snap = bus.published_snapshot(e1.conn)
                if (snap.get("callbacks") and snap.get("figures", {}).get("101", {})
                        .get("refuse")):
                    return snap
                time.sleep(0.1)
            return snap
        snap = published()
        assert [(c["call_id"], c["cb_id"]) for c in snap["callbacks"]] == [
            ("x1-c1", rows[1].data["cb_id"])]
        fig = snap["figures"]["101"]
        assert fig["refuse"] == "queue-full", fig  # one call from each node: the room's
        assert fig["today"]["offered"] == 2 and fig["today"]["waiting"] == 2
        assert snap["figures"]["999"]["refuse"] is None
    finally:
        for b in beats:
            b.set()
        stop.set()
        leader.join(5)
