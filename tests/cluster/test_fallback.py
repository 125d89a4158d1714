"""A node routing alone while the store is away (``controlroom.fallback``), pure: no
network, no sleeping. The router is built from the node's calls and the handlers whose
desk is on it; only those are offered calls, strict priority holds, other desks'
handlers and room operations are refused with a message, and the hand-back reports the
desks' states."""

from __future__ import annotations

from typing import Any

import pytest

from routing import Offer, QueueLogEntry, RoutingError

pytestmark = [pytest.mark.cluster]

T = 1_800_000_000.0


def _settings() -> Any:
    from config import Settings
    from config.loader import build

    return build(Settings, {
        "cluster": {"node_id": "n1", "global_queue": True},
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0, "skill": "999",
                   "callback_on_abandon": True, "wrapup": 1.0},
                  {"name": "101", "numbers": ["101"], "priority": 1, "skill": "101",
                   "wrapup": 1.0}],
        "handlers": [{"id": h, "phone": f"sip:{h}@x", "skills": ["999", "101"]}
                     for h in ("h1", "h2", "h3", "h4", "x1")],
        "routing": {"offer_timeout": 30.0},
        "storage": {"url": "postgresql://unused/x", "heartbeat_interval": 0.5}})


def _call(cid: str, line: str, at: float, state: str = "queued",
          handler: str | None = None) -> dict[str, Any]:
    return {"call_id": cid, "line": line, "caller": "0770", "arrived_at": at,
            "state": state, "handler_id": handler}


SKILLS = {"999": 5, "101": 5}


def _build(calls: list[dict[str, Any]], handlers: dict[str, dict[str, Any]],
           desks: set[str]) -> Any:
    from controlroom.fallback import LocalRouting

    s = _settings()
    return LocalRouting.build(s.lines, s.routing, calls=calls, handlers=handlers,
                              desks=desks, now=T)


def test_only_this_nodes_desks_are_offered_and_the_999_goes_first() -> None:
    """A 101 waiting longer and a 999: the free desk handler gets the 999; a handler of
    another desk (available in the room) gets nothing; the ringing call stays with its
    desk handler, the talking one with the other desk's handler."""
    from routing.model import CallState, HandlerState

    calls = [_call("n1-c1", "101", T - 30), _call("n1-c2", "999", T - 5),
             _call("n1-c3", "999", T - 60, "connected", "x1"),
             _call("n1-c4", "101", T - 40, "offered", "h1")]
    handlers: dict[str, dict[str, Any]] = {"h1": {"state": "offered", "skills": SKILLS, "desk": "n1"},
                "h2": {"state": "available", "skills": SKILLS, "idle_since": T - 20},
                "h4": {"state": "available", "skills": SKILLS, "idle_since": T - 90}}
    fb, first = _build(calls, handlers, {"h1", "h2"})
    offers = [(a.call_id, a.handler_id) for a in first if isinstance(a, Offer)]
    assert offers == [("n1-c2", "h2")]
    assert [e.event for e in first if isinstance(e, QueueLogEntry)] == ["OFFER"]
    r = fb.router
    assert r.calls["n1-c4"].state is CallState.OFFERED and r.calls["n1-c4"].handler_id == "h1"
    assert r.calls["n1-c3"].state is CallState.CONNECTED
    assert r.handlers["x1"].skills == {} and "h4" not in r.handlers
    assert r.calls["n1-c1"].state is CallState.QUEUED
    # x1's call ends: after wrap-up x1 is free in this router, yet offered nothing
    out = fb.call("call_ended", ["n1-c3", T + 1], {})
    out += fb.router.tick(T + 5)
    assert not [a for a in out if isinstance(a, Offer)]
    assert r.handlers["x1"].state is HandlerState.AVAILABLE
    # h1 answers and ends; after wrap-up h1 takes the waiting 101
    fb.call("offer_answered", ["n1-c4", "h1", T + 2], {})
    fb.call("call_ended", ["n1-c4", T + 3], {})
    out = fb.router.tick(T + 4.5)
    assert [(a.call_id, a.handler_id) for a in out if isinstance(a, Offer)] == [
        ("n1-c1", "h1")]


def test_a_desk_handler_busy_on_another_nodes_call_is_kept_not_ready() -> None:
    """Last seen talking on a call this node does not hold: not offered (this node
    cannot hear that call end); handed back free (that call's node says if it goes on)."""
    fb, first = _build([_call("n1-c1", "999", T - 1)],
                       {"h3": {"state": "on_call", "skills": SKILLS, "call_id": "n2-c9"}},
                       {"h3"})
    assert first == []
    assert fb.router.handlers["h3"].state.value == "not_ready"
    assert fb.hand_back()["h3"]["state"] == "available"


def test_room_operations_and_other_desks_are_refused_with_a_reason() -> None:
    """What only the leader may do, or a handler whose desk is elsewhere: a
    RoutingError that says why (the desk shows it as a 409)."""
    fb, _ = _build([_call("n1-c1", "999", T - 1)],
                   {"h1": {"state": "not_ready", "skills": SKILLS}}, {"h1"})
    with pytest.raises(RoutingError, match="desk is not on this node"):
        fb.call("set_available", ["h4", T], {})
    with pytest.raises(RoutingError, match="desk is not on this node"):
        fb.call("transfer_to_handler", ["n1-c1", "h4", T], {})
    with pytest.raises(RoutingError, match="not while the store is away"):
        fb.call("take_callback", ["cb1", "h1", T], {})
    assert fb.call("call_ended", ["n1-c9", T], {}) == []  # never held here: nothing
    out = fb.call("set_available", ["h1", T], {})  # its own desk: routed here
    assert [(a.call_id, a.handler_id) for a in out if isinstance(a, Offer)] == [
        ("n1-c1", "h1")]


def test_the_hand_back_reports_each_desks_state_and_its_call() -> None:
    """Ringing, not ready with its reason, free with its idle time."""
    fb, first = _build([_call("n1-c1", "999", T - 1)],
                       {"h1": {"state": "available", "skills": SKILLS, "idle_since": T - 9},
                        "h2": {"state": "available", "skills": SKILLS, "idle_since": T - 1}},
                       {"h1", "h2"})
    assert [(a.call_id, a.handler_id) for a in first if isinstance(a, Offer)] == [
        ("n1-c1", "h1")]  # longest idle
    fb.call("set_not_ready", ["h2", T + 1], {"reason": "break"})
    back = fb.hand_back()
    assert (back["h1"]["state"], back["h1"]["call_id"]) == ("offered", "n1-c1")
    assert (back["h2"]["state"], back["h2"]["reason"]) == ("not_ready", "break")
    assert back["h1"]["skills"] == SKILLS


def test_a_desk_made_not_ready_by_a_failed_offer_is_handed_back_free() -> None:
    """An offer that failed while alone (a node cut off from the phones too: unreachable)
    leaves the handler not ready here; the room gets them back free. Not ready by their
    own desk stays not ready."""
    fb, first = _build([_call("n1-c1", "999", T - 1)],
                       {"h1": {"state": "available", "skills": SKILLS, "idle_since": T - 9},
                        "h2": {"state": "available", "skills": SKILLS, "idle_since": T - 1}},
                       {"h1", "h2"})
    assert [a.handler_id for a in first if isinstance(a, Offer)] == ["h1"]
    fb.call("offer_failed", ["n1-c1", "h1", T + 1], {"reason": "unreachable"})
    fb.call("set_not_ready", ["h2", T + 2], {"reason": "break"})
    assert fb.router.handlers["h1"].state.value == "not_ready"
    back = fb.hand_back()
    assert back["h1"]["state"] == "available"
    assert (back["h2"]["state"], back["h2"]["reason"]) == ("not_ready", "break")


def test_a_desk_the_leader_put_away_for_this_node_is_offered_its_calls() -> None:
    """The leader keeps a cut-off node's desks not ready (``DESK_AWAY``) so that only that
    node offers them calls; if the node read that state just before the cut, it still
    counts them free (offered its call, handed back free), while one last seen ringing on
    another node's call stays ``FOREIGN_BUSY`` (that call's end is not heard here)."""
    from controlroom.fallback import DESK_AWAY, FOREIGN_BUSY
    from routing.model import HandlerState

    fb, first = _build([_call("n1-c1", "999", T - 3)], {
        "h1": {"state": "not_ready", "reason": DESK_AWAY, "skills": SKILLS,
               "idle_since": None},
        "h2": {"state": "offered", "reason": "", "call_id": "n2-c9", "skills": SKILLS,
               "idle_since": None}}, {"h1", "h2"})
    assert [(a.call_id, a.handler_id) for a in first if isinstance(a, Offer)] == [
        ("n1-c1", "h1")]
    h2 = fb.router.handlers["h2"]
    assert (h2.state, h2.reason) == (HandlerState.NOT_READY, FOREIGN_BUSY)
    fb.call("offer_failed", ["n1-c1", "h1", T + 1], {"reason": "no-answer"})
    back = fb.hand_back()
    assert back["h1"]["state"] == "available"  # not the room's fault: handed back free
    assert back["h2"]["state"] == "available"


def test_a_999_abandoned_alone_is_on_this_nodes_list_and_handed_to_the_leader() -> None:
    """Routing alone, a 999 caller hangs up while waiting: the local router puts them on
    its own call-back list, and the entry's CALLBACK_ADD row (caller, line, wait, time)
    is kept for the leader; a 101 abandoned is not."""
    fb, _ = _build([_call("n1-c1", "999", T - 4), _call("n1-c2", "101", T - 3)], {}, set())
    fb.call("call_abandoned", ["n1-c1", T + 6], {})
    fb.call("call_abandoned", ["n1-c2", T + 7], {})
    [cb] = fb.router.callbacks()
    assert (cb.call_id, cb.line, cb.caller) == ("n1-c1", "999", "0770")
    [row] = fb.callback_rows()
    assert (row["event"], row["call_id"], row["line"], row["at"]) == (
        "CALLBACK_ADD", "n1-c1", "999", T + 6)
    assert row["data"]["cb_id"] == cb.cb_id and row["data"]["caller"] == "0770"
    assert row["data"]["wait"] == pytest.approx(10.0)
    assert int(cb.cb_id[2:]) > 10**12  # not the leader's cb1, cb2...


def test_a_999_abandoned_in_the_inputs_dropped_on_going_alone_gets_its_call_back() -> None:
    """The abandon the leader never heard (dropped on going alone): ABANDON with its
    call-back and the CALLBACK_ADD row a router writes; the same caller again is a
    repeat of that entry; a 101 gets the ABANDON alone."""
    fb, _ = _build([], {}, set())
    rows = fb.abandoned_unsent("n1-c7", "999", caller="07700900123", key=None,
                               arrived=T - 5, at=T - 2)
    gone = rows.pop()
    assert (type(gone).__name__, gone.call_id, gone.callback) == ("Abandoned", "n1-c7", True)
    assert gone.callback_id == rows[1].data["cb_id"] and gone.wait == pytest.approx(3.0)
    assert [(r.event, r.call_id, r.line, r.at) for r in rows] == [
        ("ABANDON", "n1-c7", "999", T - 2), ("CALLBACK_ADD", "n1-c7", "999", T - 2)]
    assert rows[0].data["callback"] is True and rows[0].data["wait"] == pytest.approx(3.0)
    add = rows[1].data
    assert (add["caller"], add["key"], add["repeat"]) == ("07700900123", "07700900123", False)
    assert add["wait"] == pytest.approx(3.0)
    again = fb.abandoned_unsent("n1-c8", "999", caller="07700900123", key=None,
                                arrived=T - 1, at=T)
    assert again[1].data["cb_id"] == add["cb_id"] and again[1].data["repeat"] is True
    [cb] = fb.router.callbacks()
    assert [a["call_id"] for a in cb.attempts] == ["n1-c7", "n1-c8"]
    assert [r["call_id"] for r in fb.callback_rows()] == ["n1-c7", "n1-c8"]
    only = fb.abandoned_unsent("n1-c9", "101", caller="1", key=None, arrived=T - 5, at=T)
    assert [(r.event, r.data["callback"]) for r in only[:1]] == [("ABANDON", False)]
    assert only[1].callback is False and only[1].callback_id is None


def _node(fb_settings: Any) -> Any:
    """A ``GlobalQueue`` without its threads or store: what the fallback uses."""
    import threading
    from collections import deque
    from types import SimpleNamespace

    from controlroom.leader import GlobalQueue, RouterProxy

    applied: list[Any] = []
    gq = GlobalQueue.__new__(GlobalQueue)
    gq.s = SimpleNamespace(settings=fb_settings, calls={}, _apply=applied.extend)
    gq.node, gq.term, gq.snapshot, gq.contact_at = "n1", 3, {}, 0.0
    gq._out, gq._out_ready, gq._gen = deque(), threading.Condition(), 0
    gq.ending, gq.handlers_known, gq.fallback = {}, {}, None
    gq.proxy = RouterProxy(gq, shadow=None)
    gq.applied_rows = applied  # type: ignore[attr-defined]
    return gq


def test_the_hand_back_gives_the_leader_every_999_abandoned_while_away() -> None:
    """Both gaps of a store outage, node side: a 999 that hung up before the node went
    alone (its inputs dropped) and one that hung up while alone are on the node's desks'
    list meanwhile, and follow the hand-back's resync as one ``callbacks`` input."""
    import time as _time
    from types import SimpleNamespace

    gq = _node(_settings())
    gq.snapshot = {"callbacks": [{"cb_id": "cb1", "call_id": "n2-c0", "line": "999",
                                  "caller": "1", "at": T, "wait": 3.0, "state": "pending",
                                  "handler_id": None, "taken_at": None, "outcome": None,
                                  "attempts": [], "last_at": T}]}
    now = _time.time()
    # sent while the store was away already (unsent): n1-c1 came and hung up
    gq.ending["n1-c1"] = {"call_id": "n1-c1", "line": "999", "caller": "07700900001",
                          "arrived_at": now - 2.5, "state": "queued", "handler_id": None,
                          "answered_at": None}
    gq.send("call", {"method": "call_arrived", "args": ["n1-c1", "999", now - 2.5],
                     "kwargs": {"caller": "07700900001", "caller_key": "447700900001"}})
    gq.send("call", {"method": "call_abandoned", "args": ["n1-c1", now - 1.0], "kwargs": {}})
    gq.s.calls["n1-c2"] = SimpleNamespace(call_id="n1-c2", line="999", caller="07700900002",
                                          arrived_at=now - 0.5, state="queued",
                                          handler_id=None, answered_at=None)
    gq._enter_fallback()
    assert not gq._out and gq.fallback is not None
    events = [(getattr(r, "event", type(r).__name__), r.call_id) for r in gq.applied_rows]
    assert events[:4] == [("ENTER", "n1-c1"), ("ABANDON", "n1-c1"), ("CALLBACK_ADD", "n1-c1"),
                          ("Abandoned", "n1-c1")]  # its record and CAD event, as ever
    # alone: n1-c2 hangs up (the service's call, through its router)
    gq.proxy.call_abandoned("n1-c2", now + 1.0)
    del gq.s.calls["n1-c2"]
    shown = {cb.call_id: cb for cb in gq.proxy.callbacks()}
    assert set(shown) == {"n2-c0", "n1-c1", "n1-c2"}  # the leader's, then this node's
    assert shown["n1-c1"].key == "447700900001"
    gq._hand_back(4)
    assert gq.fallback is None
    sent = [(kind, data) for kind, data, _ in gq._out]
    assert [k for k, _ in sent] == ["resync", "callbacks"]
    rows = sent[1][1]["entries"]
    assert [(r["event"], r["call_id"], r["line"], r["data"]["caller"]) for r in rows] == [
        ("CALLBACK_ADD", "n1-c1", "999", "07700900001"),
        ("CALLBACK_ADD", "n1-c2", "999", "07700900002")]
    assert rows[0]["at"] == pytest.approx(now - 1.0)
    assert rows[0]["data"]["wait"] == pytest.approx(1.5)
    assert rows[1]["data"]["wait"] == pytest.approx(1.5)
    # the leader's router reads them as a takeover's restore would, once each
    from routing import QueueLogEntry, Router

    s = _settings()
    leader = Router.from_settings(s.lines, s.routing)
    entries = [QueueLogEntry(**r) for r in rows]
    assert leader.add_callbacks(entries, now + 2) == 2
    assert leader.add_callbacks(entries, now + 3) == 0
    assert sorted(cb.call_id for cb in leader.callbacks()) == ["n1-c1", "n1-c2"]
    # the store goes away again before the writer sent them: the next hand-back has them
    gq._enter_fallback()
    assert not gq._out and gq.fallback is not None
    assert sorted(cb.call_id for cb in gq.fallback.router.callbacks()) == ["n1-c1", "n1-c2"]
    gq._hand_back(5)
    again = [data for kind, data, _ in gq._out if kind == "callbacks"]
    assert len(again) == 1 and again[0]["entries"] == rows
