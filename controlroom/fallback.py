"""Routing on one node while the store is away (global queue, issue 14).

Theory of operation. With ``cluster.global_queue`` the room's one router runs in the
routing leader and talks to the nodes through PostgreSQL (``controlroom.leader``). When a
node cannot reach the store for ``leader.fallback_after`` s it stops sending routing
inputs and routes the calls it holds itself, with a :class:`LocalRouting`: a pure
:class:`routing.Router` of its own, built from what the node knows at that moment:

* the calls it holds (waiting, ringing, talking), with their handlers;
* the handlers whose **desk is on this node** (the node the leader last saw a desk
  operation for them from, published in ``routing_state``), in their last known state.
  Only they are offered calls: a desk is on one node at a time, so two nodes routing
  alone never offer one handler two calls. A handler of another node's desk that is
  ringing or talking on one of this node's calls is kept for that call only (its skills
  are emptied: it is never offered another); a desk handler last seen ringing or talking
  on another node's call is kept not ready (``FOREIGN_BUSY``) until its desk says
  otherwise.

Priority, ageing, offer timeouts and wrap-up are the pure router's, as on one node. Room
operations that only the leader can do (the call-back list, wrap-up limits, transfers to
a handler of another desk) are refused with a :class:`routing.RoutingError` naming why.

When the store is back the node hands its state back to the leader in a ``resync``
(the calls it still holds, its desk handlers' states: :meth:`LocalRouting.hand_back`),
which supersedes every input it sent before; the queue-log
rows and CAD events of the outage were spooled (``store.spool``) and are flushed then.
A 999 abandoned while alone (or whose abandon was among the inputs dropped on going
alone: :meth:`LocalRouting.abandoned_unsent`) is put on this node's own call-back list
(shown on its desks, with the leader's last list); those entries' CALLBACK_ADD rows
(:meth:`LocalRouting.callback_rows`) follow the hand-back as a ``callbacks`` input, so
they are on the leader's list at once (applied idempotently: sent twice, added once).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from routing import Abandoned, HandlerChanged, QueueLogEntry, Router, RoutingError
from routing.model import Call, HandlerState

FOREIGN_BUSY = "busy on another node's call (store away)"
"""Reason a desk handler is kept not ready in fallback: last seen on a call this node
does not hold (it cannot hear when that call ends)."""
DESK_AWAY = "desk's node cut off from the store"
"""Reason the leader keeps a handler not ready while their desk's node is stale but may
reach the phones (``controlroom.leader``): that node may be routing alone to them. Seen by
that node itself (a row read just before the cut) it means free: the leader offers them
nothing."""
DESK_METHODS = frozenset({
    "handler_login", "handler_logout", "set_available", "set_not_ready",
    "not_ready_after_call", "graded", "extend_wrapup", "end_wrapup", "set_skills",
})
"""Router methods whose first argument is a handler working at a desk."""
ROOM_ONLY = frozenset({"set_wrapup_limit", "take_callback", "release_callback",
                       "complete_callback"})
"""Room-wide operations: the leader's alone (refused while the store is away)."""
LIVE = ("queued", "offered", "connected")
ENDS = frozenset({"call_ended", "call_abandoned", "offer_failed"})


@dataclass
class LocalRouting:
    """The router of a node in fallback; see the module docstring."""

    router: Router
    desks: frozenset[str]
    """Handlers whose desk is on this node: the only ones offered calls."""
    foreign: frozenset[str]
    """Other desks' handlers kept for the call of this node they ring or talk on."""
    ready: frozenset[str] = frozenset()
    """Desk handlers free (or busy elsewhere) when routing alone began."""
    touched: set[str] = field(default_factory=set)
    """Desk handlers whose desk changed their state since (their word stands)."""
    added: list[QueueLogEntry] = field(default_factory=list)
    """The CALLBACK_ADD rows of the call-backs made here (for the leader's list)."""

    @classmethod
    def build(cls, lines: Any, routing: Any, *, calls: list[dict[str, Any]],
              handlers: dict[str, dict[str, Any]], desks: set[str],
              now: float) -> tuple[LocalRouting, list[Any]]:
        """The router for ``calls`` (``call_id, line, caller, arrived_at, state,
        handler_id``) and the desk handlers (``handlers[hid]``: ``state``, ``skills``,
        ``idle_since``); returns it and its first decisions (offers to free desks)."""
        r = Router.from_settings(lines, routing)
        # call-back ids of its own, not the leader's cb1, cb2...
        r._cb_seq = int(now * 1000)
        for hid in sorted(desks):
            r.handler_login(hid, now, skills=dict(handlers.get(hid, {}).get("skills") or {}))
        live = sorted((c for c in calls if c.get("state") in LIVE),
                      key=lambda c: c["arrived_at"])
        held: dict[str, str] = {}
        foreign: set[str] = set()
        # 1. ringing and talking calls back with their handler, before anyone is free
        for c in live:
            hid = c.get("handler_id") or ""
            if c["state"] == "queued" or not hid or hid in held:
                continue
            if hid not in r.handlers:
                r.handler_login(hid, now, skills={r.lines[c["line"]].skill: 1})
                foreign.add(hid)
            try:
                r.call_arrived(c["call_id"], c["line"], c["arrived_at"],
                               caller=c.get("caller", ""))
                r.set_available(hid, now, force=True)
                if r.calls[c["call_id"]].handler_id != hid:
                    raise RoutingError("not offered back to its handler")
                if c["state"] == "connected":
                    r.offer_answered(c["call_id"], hid, now)
            except RoutingError:
                continue  # left waiting (below) if it did not enter
            held[hid] = c["call_id"]
        # 2. the waiting calls in arrival order (nobody is free yet: they all queue)
        for c in live:
            if c["call_id"] in r.calls or c["state"] == "connected":
                continue  # a talking call with no handler known stays talking, unrouted
            r.call_arrived(c["call_id"], c["line"], c["arrived_at"],
                           caller=c.get("caller", ""))
        for hid in foreign:
            r.set_skills(hid, now, skills={})
        # 3. free desks, longest idle first: each takes the most urgent call
        out: list[Any] = []
        free = []
        for hid in desks - set(held):
            h = handlers.get(hid, {})
            state = h.get("state")
            if state == "not_ready" and h.get("reason") == DESK_AWAY:
                state = "available"  # put away by the leader for this node's sake
            if state in ("available", "wrap_up"):
                free.append((h.get("idle_since") or h.get("since") or 0.0, hid))
            elif state in ("offered", "on_call"):
                r.set_not_ready(hid, now, reason=FOREIGN_BUSY)
            elif state == "logged_out":
                r.handler_logout(hid, now, reason="logged out")
        for _, hid in sorted(free):
            out += r.set_available(hid, now, force=True)
        # they were free already: no state row, no desk redraw for that
        out = [a for a in out if not (isinstance(a, QueueLogEntry) and a.event == "STATE")
               and not (isinstance(a, HandlerChanged) and a.state == "available")]
        ready = frozenset(hid for hid in desks if handlers.get(hid, {}).get("state") in (
            "available", "wrap_up", "offered", "on_call") or (
                handlers.get(hid, {}).get("reason") == DESK_AWAY))
        return cls(r, frozenset(desks), frozenset(foreign), ready), out

    def call(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> list[Any]:
        """One routing input, decided here (``RoutingError`` when it is not ours to do)."""
        if method in ROOM_ONLY:
            raise RoutingError(f"{method}: not while the store is away (this node routes "
                               "only its own calls until it is back)")
        hid = (args[0] if method in DESK_METHODS
               else args[1] if method == "transfer_to_handler" else None)
        if hid is not None and hid not in self.desks:
            raise RoutingError(f"handler {hid!r}: their desk is not on this node and the "
                               "store is away; try again when it is back")
        if method in ENDS and args and args[0] not in self.router.calls:
            return []  # a call this router never held (a talking one with no handler known)
        out: list[Any] = getattr(self.router, method)(*args, **kwargs)
        if hid is not None and method in DESK_METHODS:
            self.touched.add(str(hid))
        self._keep_added(out)
        return out

    def tick(self, now: float) -> list[Any]:
        out = self.router.tick(now)
        self._keep_added(out)
        return out

    def _keep_added(self, actions: list[Any]) -> None:
        self.added += [a for a in actions
                       if isinstance(a, QueueLogEntry) and a.event == "CALLBACK_ADD"]

    def abandoned_unsent(self, call_id: str, line: str, *, caller: str, key: str | None,
                         arrived: float, at: float) -> list[Any]:
        """The ABANDON row of a call whose ``call_abandoned`` input was dropped on going
        alone (the leader never heard it), with its call-back on a call-back line: the
        entry joins this router's list (a repeat caller's entry gains the attempt) and
        its CALLBACK_ADD row is the one :meth:`Router.call_abandoned` writes. Then the
        ``Abandoned`` the leader would have answered (the call's record and CAD event)."""
        spec = self.router.lines.get(line)
        wait = max(0.0, at - arrived)
        if key is None:  # as ``Router.call_arrived`` derives it
            key = caller if any(ch.isdigit() for ch in caller) else ""
        data: dict[str, Any] = {"wait": wait, "position": 0, "callback": False,
                                "unsent": True}
        if spec is None or not spec.callback_on_abandon:
            return [QueueLogEntry(at, call_id, line, "", "ABANDON", data),
                    Abandoned(call_id, line, wait, 0, False)]
        call = Call(call_id, line, caller, arrived, arrived, 0, spec.priority,
                    float(spec.priority), caller_key=key)
        cb, repeat = self.router._callback_for(call, at, wait)
        add = QueueLogEntry(at, call_id, line, "", "CALLBACK_ADD", {
            "cb_id": cb.cb_id, "caller": caller, "wait": wait, "key": key,
            "repeat": repeat, "unsent": True})
        self.added.append(add)
        return [QueueLogEntry(at, call_id, line, "", "ABANDON", dict(data, callback=True)),
                add, Abandoned(call_id, line, wait, 0, True, cb.cb_id)]

    def carry(self, entries: Any) -> None:
        """CALLBACK_ADD rows (dicts) of an earlier time alone that no leader took yet:
        onto this router's list and into the next hand-back. A bad row is skipped."""
        rows = []
        for e in entries:
            try:
                rows.append(QueueLogEntry(**e))
            except TypeError:
                continue
        rows = [r for r in rows if r.event == "CALLBACK_ADD"]
        if rows:
            self.router.add_callbacks(rows, max(self.router._now, max(r.at for r in rows)))
            self.added += rows

    def callback_rows(self) -> list[dict[str, Any]]:
        """The CALLBACK_ADD rows of the call-backs made here, for the leader's
        ``callbacks`` input (``Router.add_callbacks``: a row it has is skipped)."""
        return [dataclasses.asdict(a) for a in self.added]

    def hand_back(self) -> dict[str, dict[str, Any]]:
        """The desk handlers' states for the leader's resync. One kept not ready for a
        call of another node is handed back free: if that call still goes on, its node's
        resync puts the handler back on it. One made not ready here by an offer that
        failed (no answer, unreachable: a node cut off from the phones too) is handed back
        free unless their desk said otherwise: the room must not lose them for this node's
        fault."""
        out: dict[str, dict[str, Any]] = {}
        for hid in sorted(self.desks):
            h = self.router.handlers.get(hid)
            if h is None:
                continue
            state = h.state.value
            if h.state is HandlerState.NOT_READY and (
                    h.reason == FOREIGN_BUSY
                    or (hid in self.ready and hid not in self.touched)):
                state = "available"
            out[hid] = {"state": state, "reason": h.reason, "since": h.since,
                        "idle_since": h.idle_since if state == "available" else None,
                        "skills": dict(h.skills), "call_id": h.call_id}
        return out


__all__ = ["DESK_AWAY", "DESK_METHODS", "FOREIGN_BUSY", "LocalRouting", "ROOM_ONLY"]
