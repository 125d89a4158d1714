"""One global queue for a cluster: the routing leader runs the one router (issue 14).

Theory of operation (``cluster.global_queue`` on a PostgreSQL store)::

    node A ─┐ routing inputs (ordered rows + NOTIFY)      ┌─► node A: Offer/Cancel/...
    node B ─┼─► routing_inputs ─► LEADER: pure Router ─► routing_outputs ─┼─► node B
    node C ─┘   (call arrived/ended, offer answered/      │ (one fenced   └─► node C
                failed, desk operations)                  │  transaction with the queue log)

* Every node's ``Service.router`` is a :class:`RouterProxy`: a call that changes routing
  state (``call_arrived``, ``offer_answered``, ``set_available``...) is sent to the leader
  through the bus (``store.routing_bus``) and returns no actions; the leader's actions for
  the calls a node holds come back to it and it applies them as it always did
  (``Service._apply``): an ``Offer`` makes the node holding the caller ring the handler's
  phone through Kamailio, whichever node the handler's desk is on; the bridge stays on that
  node. Reads (wallboard snapshot) come from the snapshot the leader publishes.
* :class:`LeaderThread` contends for the lease (``store.lease``, a session advisory lock
  with a fencing term). While it leads, it reads inputs after its cursor, feeds them to
  ONE :class:`routing.Router` for the room and writes its decisions fenced with its term.
  Hence strict priority holds across nodes (one router sees every waiting call) and no
  handler holds two offers (one router holds every handler).
* Takeover (the leader died or was cut off): the new leader rebuilds the router: statistics
  and call-backs from the queue log, handlers from the last ``routing_state``, calls from a
  ``resync`` that each live node sends when it sees the new term (the calls it holds).
  It waits for every live node's resync (at most ``RESYNC_GRACE`` s), puts talking and
  ringing calls back with their handlers, queues the waiting ones by arrival, then makes
  the free handlers available longest-idle first: the most urgent call goes first.
  Inputs the old leader had not read are applied after (stale ones are refused by the
  router and ignored).
* The store away (``controlroom.fallback``): a node whose bus reader has not reached
  PostgreSQL for ``fallback_after`` s (3 s at 0.5 s heartbeats: longer than the leader
  takes to park a silent node's calls) routes the calls it holds ALONE, with a pure
  ``routing.Router`` of its own, offering them only to the handlers whose desk is on this
  node (the node of their last desk operation, which the leader publishes with the
  handlers' states: one node per handler, so two nodes routing alone never offer one
  handler two calls). It sends no routing input meanwhile (unsent ones are dropped: the
  hand-back says where they led); the queue log and CAD events go to the write spool.
  ``/healthz`` says degraded with why; ``routing.fallback`` is logged. When the store
  answers again the node asks for a term row (``back``) and answers the next one (or a
  new leader's) with a resync marked ``fallback`` (its live calls with their handlers,
  its desk handlers' states), logged ``routing.fallback_over``. That resync supersedes
  every routing input the node sent before it and the leader had not read (a call that
  ended alone must not come back as waiting); a late one (same term) replaces the node's
  calls whose state differs. Rows the leader wrote while the node was alone are not
  applied (decided without its calls).
* One node cut off from the store alone (the others, and the leader, still reach it):
  the leader sees its heartbeat stale at ``stale_after`` while its bus reader's session
  is still open on the store (a killed node's closes at once), so it may still reach
  the phones and will route alone at ``fallback_after`` (1 s later, by its own clock
  from its reader's last contact). The leader then puts that node's desks *away*
  (``_put_away``: not ready ``DESK_AWAY``, a ringing offer cancelled, a busy one not
  ready after its call; the heartbeat is re-read exactly when it goes stale), refuses
  their desk operations and holds the node's inputs until its resync: a hand-back gives
  the desks back with the states it reports, a plain resync as they were (``_release``).
  A takeover leaves out the desks of a node that did not resync but whose session is
  open; past ``salvage_after`` the node counts as dead for its desks too.

What a node's own router did alone stays on one node: SQLite stores, or ``global_queue``
false, keep the node-local router (``controlroom.service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from controlroom.fallback import DESK_AWAY, DESK_METHODS, LIVE, LocalRouting
from store import routing_bus as bus

if TYPE_CHECKING:
    from controlroom.node import Node

log = structlog.get_logger("controlroom.leader")

MUTATORS = frozenset({
    "call_arrived", "call_abandoned", "call_ended", "offer_answered", "offer_failed",
    "handler_login", "handler_logout", "set_available", "set_not_ready",
    "not_ready_after_call", "graded", "set_wrapup_limit", "extend_wrapup", "end_wrapup",
    "set_skills", "transfer_to_line", "transfer_to_handler", "reprioritise", "refused",
    "take_callback", "release_callback", "complete_callback",
})
"""Router methods that change routing state: sent to the leader."""
RESYNC_GRACE = 2.0
"""A new leader waits this long at most for every live node's resync (the previous
leader's only while its heartbeat shows it alive: see ``LeaderThread._take_over``)."""
HELD_REASON = "talking (resync)"
NODES_EVERY = 0.5
"""How often the leader reads the nodes' heartbeats."""
PRUNE_AFTER = 3600.0
"""Bus rows are kept this long (a node away longer is parked or salvaged anyway)."""


def stale_after(settings: Any) -> float:
    """A node whose heartbeat is this old has its waiting calls parked by the leader (not
    offered: its offers would ring no phone and hold a handler) until it beats again."""
    return max(2.0, 3.0 * float(settings.storage.heartbeat_interval))
SNAPSHOT_EVERY = 1.0


def fallback_after(settings: Any) -> float:
    """A node that has not reached the store for this long routes its own calls alone
    (``controlroom.fallback``): longer than the leader takes to park the node's waiting
    calls (``stale_after`` + a nodes check + a commit), so when only this node is cut off
    from the store the leader has stopped offering its calls before it starts."""
    return stale_after(settings) + NODES_EVERY + 0.5


BUS_IN_APP = "controlroom-bus-in:"
"""``application_name`` of a node's bus reader session (+ its node id): a stale node whose
session is gone from ``pg_stat_activity`` is dead (a killed process's sockets close at
once), not cut off, so it cannot be routing alone."""


def moved_window(settings: Any) -> float:
    """A desk that moved off a node this long before the leader found that node stale may
    still be that node's in what it last read (it reads the handlers every
    ``SNAPSHOT_EVERY``): it is kept away from offers with the node's own desks."""
    return stale_after(settings) + 3.0 * SNAPSHOT_EVERY


def _connect(url: str, app: str = "") -> Any:
    import psycopg

    extra: dict[str, Any] = {"application_name": app[:63]} if app else {}
    # tcp_user_timeout (ms): a statement sent on a silent path (packets dropped, no
    # reset) fails after 3 s and the thread reconnects; keepalives do not run while data
    # waits unacknowledged, so without it TCP retransmits for ~15 minutes.
    return psycopg.connect(url, autocommit=True, connect_timeout=3, keepalives=1,
                           keepalives_idle=1, keepalives_interval=1, keepalives_count=3,
                           tcp_user_timeout=3000, **extra)


# -- the node side ---------------------------------------------------------------------

class RouterProxy:
    """``Service.router`` on a node of a global-queue cluster (see the module docstring)."""

    def __init__(self, gq: GlobalQueue, shadow: Any) -> None:
        self._gq = gq
        self._shadow = shadow
        """A local router with no calls: restore's rows at start and read-only defaults."""

    def __getattr__(self, name: str) -> Any:
        if name in MUTATORS:
            def forward(*args: Any, **kwargs: Any) -> list[Any]:
                fb = self._gq.fallback
                if fb is not None:  # the store is away: decided here (fallback.py)
                    return fb.call(name, list(args), kwargs)
                if name in ("call_ended", "call_abandoned") and args:
                    self._gq.ending_sent(str(args[0]))
                data: dict[str, Any] = {"method": name, "args": list(args), "kwargs": kwargs}
                own = self._gq.handed_end(name, list(args))
                if own:  # its COMPLETE is this node's to log (after its spooled rows)
                    data["logged"] = True
                self._gq.send("call", data)
                return own
            return forward
        return getattr(self._shadow, name)

    def tick(self, now: float) -> list[Any]:
        fb = self._gq.fallback
        return fb.tick(now) if fb is not None else []  # else the leader's timers

    def next_deadline(self) -> float | None:
        fb = self._gq.fallback
        return fb.router.next_deadline() if fb is not None else None

    def adopt(self, entries: Any, now: float, *, reason: str) -> list[Any]:
        """A survivor closes a dead node's calls: the record's rows come from a scratch
        router (as on one node); the leader drops those calls from the queue."""
        from routing import Router

        s = self._gq.s.settings
        scratch = Router.from_settings(s.lines, s.routing)
        # Its call-back ids must not repeat the leader's (cb1, cb2...): they start from
        # the clock in ms; a leader's restore then numbers on from the highest.
        scratch._cb_seq = int(time.time() * 1000)
        entries = list(entries)
        out = scratch.adopt(entries, now, reason=reason)
        ids = sorted({e.call_id for e in entries})
        if ids:
            self._gq.send("drop_calls", {"call_ids": ids})
        return out

    def snapshot(self, now: float, **kw: Any) -> dict[str, Any]:
        fb = self._gq.fallback
        if fb is not None:  # the store is away: what this node routes alone
            return dict(fb.router.snapshot(now, **kw), fallback=True)
        snap = self._gq.snapshot  # the caller may add keys: a copy
        return dict(snap) if snap else self._shadow.snapshot(now, **kw)

    def handler_info(self, handler_id: str) -> dict[str, Any] | None:
        fb = self._gq.fallback
        if fb is not None and handler_id in fb.desks:
            return fb.router.handler_info(handler_id)
        return (self._gq.snapshot.get("handlers") or {}).get(handler_id)

    def would_refuse(self, line: str) -> str | None:
        """The room's overflow refusal for a new call on ``line`` (486 before answering),
        from the leader's snapshot (``figures``, at most ~2 s old: past it the leader's
        router refuses the call itself); None before a snapshot came."""
        fb = self._gq.fallback
        if fb is not None:
            return fb.router.would_refuse(line)
        return ((self._gq.snapshot.get("figures") or {}).get(line) or {}).get("refuse")

    # Reads for the desk from the leader's last published snapshot (at most ~2 s old).
    def callbacks(self) -> list[Any]:
        """The leader's list; routing alone, the entries this node made since after it
        (the leader's then, as last seen: taking one waits for the store)."""
        from routing import Callback

        out = []
        for d in self._gq.snapshot.get("callbacks") or ():
            try:
                out.append(Callback(**{k: v for k, v in d.items() if k != "last_at"}))
            except TypeError:
                continue
        fb = self._gq.fallback
        if fb is not None:
            known = {cb.cb_id for cb in out}
            out += [cb for cb in fb.router.callbacks() if cb.cb_id not in known]
        return out

    def _waiting(self, call_id: str) -> dict[str, Any] | None:
        for line in (self._gq.snapshot.get("lines") or {}).values():
            for c in line.get("waiting") or ():
                if c.get("call_id") == call_id:
                    return c
        return None

    def position(self, call_id: str) -> int | None:
        fb = self._gq.fallback
        if fb is not None:
            return fb.router.position(call_id)
        c = self._waiting(call_id)
        return (c.get("position") or None) if c else None

    def estimated_wait(self, call_id: str, now: float) -> float | None:
        fb = self._gq.fallback
        if fb is not None:
            return fb.router.estimated_wait(call_id, now)
        c = self._waiting(call_id)
        return c.get("estimated_wait") if c else None


class GlobalQueue:
    """The node's end of the global queue: bus writer and reader threads, the leader."""

    def __init__(self, service: Node) -> None:
        from routing import Router

        self.s = service
        self.node = service.settings.node_id
        self.url = service.db.url if hasattr(service.db, "url") else ""
        self.proxy = RouterProxy(self, Router.from_settings(service.settings.lines,
                                                            service.settings.routing))
        self.snapshot: dict[str, Any] = {}
        self.term = 0
        """The last term this node saw (from the leader's ``term`` row)."""
        self._out: deque[tuple[str, dict[str, Any], float]] = deque()
        self._out_ready = threading.Condition()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.leader: LeaderThread | None = None
        self.applied = 0
        self.ending: dict[str, dict[str, Any]] = {}
        """Calls whose end was sent to the leader and not yet confirmed (Completed,
        Abandoned): a new leader hears them in the resync as they were, then the end."""
        from controlroom.asks import Asks

        self.asks = Asks(self.node)
        """Desk operations waiting for the leader's Reply (``controlroom.asks``)."""
        self.fallback: LocalRouting | None = None
        """While the store is away: this node's own router (``controlroom.fallback``)."""
        self.fallback_since = 0.0
        self.fallback_term = 0
        """The term known when the fallback began: a later term's row ends it."""
        self.back_cut: int | None = None
        """In fallback with the store back: the last bus row then (a term row after it
        answers this node's ``back``)."""
        self.back_sent = False
        self.back_at = 0.0
        self.hand_back_term: int | None = None
        """A term row came while routing alone: the hand-back waits (at most
        ``offer_timeout`` s) until none of this node's calls rings a handler, so no
        handler is left ringing on a call the leader then re-queues."""
        self.hand_back_at = 0.0
        self.talking_handed: set[str] = set()
        """Calls handed back talking: their COMPLETE row is logged here (``handed_end``)."""
        self.last_oid = 0
        """The last bus row handed to the loop."""
        self.contact_at = time.time()
        """The last time the bus reader reached the store."""
        self.handlers_known: dict[str, dict[str, Any]] = {}
        """The room's handlers as last published by the leader (state, skills, desk),
        states kept current by the HandlerChanged rows since."""
        self._gen = 0
        """Bumped when the fallback clears the unsent inputs (the writer's batch then in
        flight is not popped twice)."""
        bus.migrate(service.db)
        from store import lease

        lease.migrate(service.db)
        # First thing the leader hears from this run: it holds no call. Calls a previous
        # run of this node left in the queue (a restart quicker than parking) are dropped
        # there; this run's restore logged their ends.
        self.send("resync", {"term": 0, "start": True, "calls": []})

    # -- sending (any thread; order kept) -------------------------------------------
    def send(self, kind: str, data: dict[str, Any]) -> None:
        fb = self.fallback
        if fb is not None and kind == "call":
            self._decide_here(fb, data)  # routing alone: decided here, not sent
            return
        with self._out_ready:
            self._out.append((kind, data, time.time()))
            self._out_ready.notify()

    def _writer(self) -> None:
        conn = None
        while not self._stop.is_set():
            with self._out_ready:
                while not self._out and not self._stop.is_set():
                    self._out_ready.wait(0.5)
                batch = list(self._out)
            if not batch:
                continue
            gen = self._gen
            try:
                if conn is None:
                    conn = _connect(self.url)
                bus.send(conn, self.node, batch)
            except Exception as exc:  # noqa: BLE001 - the store is away: keep, retry
                log.warning("routing_bus.send_failed", error=str(exc), pending=len(batch))
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                self._stop.wait(0.2)
                continue
            with self._out_ready:
                if gen == self._gen:  # else the fallback cleared them meanwhile
                    for _ in batch:
                        self._out.popleft()
        if conn is not None:
            conn.close()

    # -- receiving ----------------------------------------------------------------------
    def _reader(self) -> None:
        conn = None
        last = -1
        snap_at = 0.0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = _connect(self.url, BUS_IN_APP + self.node)
                    conn.execute(f"LISTEN {bus.OUT_CHANNEL}")
                    if last < 0:
                        last = bus.last_output(conn)
                    if self.fallback is not None:  # back: a term row after this answers
                        self.back_cut = bus.last_output(conn)
                        self.back_at, self.back_sent = time.time(), False
                        snap_at = 0.0
                rows = bus.outputs_after(conn, self.node, last)
                self.contact_at = time.time()
                assert self._loop is not None
                for oid, term, data in rows:
                    last = oid
                    self._loop.call_soon_threadsafe(self._deliver, term, data, oid)
                now = time.time()
                if now - snap_at >= SNAPSHOT_EVERY:
                    snap_at = now
                    _, snap = bus.published_snapshot(conn)
                    if snap:
                        self.snapshot = snap
                    known = bus.published_handlers(conn)
                    self._loop.call_soon_threadsafe(self._published_handlers, known)
                self.contact_at = time.time()  # after the rows above were handed on
                if len(rows) < 500:
                    for _ in conn.notifies(timeout=0.2, stop_after=1):
                        pass
            except Exception as exc:  # noqa: BLE001 - the store is away: reconnect
                log.warning("routing_bus.read_failed", error=str(exc))
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                self._stop.wait(0.2)
        if conn is not None:
            conn.close()

    def _deliver(self, term: int, data: dict[str, Any], oid: int = 0) -> None:
        """On the loop: a row from the leader."""
        self.last_oid = max(self.last_oid, oid)
        if self.fallback is not None:
            # Routing alone: the leader's rows decided without this node's calls are
            # dropped; a new term's row, or the one answering ``back``, ends the fallback.
            if data.get("kind") == "term" and (
                    term > self.fallback_term
                    or (self.back_cut is not None and oid > self.back_cut)):
                self.term = term
                self.hand_back_term, self.hand_back_at = term, time.time()
                self._hand_back_when_quiet()
            return
        if data.get("kind") == "term":
            self.term = term
            self._resync(term)
            return
        try:
            actions = [bus.decode_action(d) for d in data.get("actions", ())]
        except bus.BusError:
            log.exception("routing_bus.bad_row")
            return
        self._known_changes(actions)
        # A Reply answers a desk operation (controlroom.asks): its node-side part runs
        # before the actions after it (e.g. a transfer's unbridge before the new offer).
        chunk: list[Any] = []
        for a in actions:
            if isinstance(a, bus.Reply):
                self.apply(chunk)
                chunk = []
                self.asks.answer(a)
            else:
                chunk.append(a)
        self.apply(chunk)

    def _call_info(self, c: Any) -> dict[str, Any]:
        return {"call_id": c.call_id, "line": c.line, "caller": c.caller,
                "arrived_at": c.arrived_at, "state": c.state, "handler_id": c.handler_id,
                "answered_at": getattr(c, "answered_at", None)}

    def ending_sent(self, call_id: str) -> None:
        c = self.s.calls.get(call_id)
        if c is not None and c.state in ("queued", "offered", "connected"):
            self.ending[call_id] = self._call_info(c)

    def apply(self, actions: list[Any]) -> None:
        """The leader's actions for this node's calls, through ``Service._apply``. An
        Offer for a call whose phone already rings (a new leader re-offering it): the same
        handler keeps ringing; another handler: the old leg is cancelled first."""
        from routing import Abandoned, CancelOffer, Completed, Connected, Offer

        s = self.s
        keep = []
        cancelled: set[str] = set()
        """Calls whose ringing leg a CancelOffer earlier in this batch ends (applied in
        order: that cancel records the failed offer for the CAD)."""
        for a in actions:
            if isinstance(a, CancelOffer):
                cancelled.add(a.call_id)
            if isinstance(a, (Abandoned, Completed)):
                self.ending.pop(a.call_id, None)
            if isinstance(a, Connected):
                call = s.calls.get(a.call_id)
                if (call is not None and call.state == "offered" and call.leg_id is not None
                        and call.leg_id not in s.legs):
                    # The handler answered and hung up before the leader's answer came
                    # (a store outage between): the caller goes back to the head of the
                    # queue rather than being bridged to nobody.
                    log.warning("routing.answered_leg_gone", call_id=a.call_id,
                                handler_id=a.handler_id)
                    call.state, call.leg_id, call.handler_id = "queued", None, None
                    self.proxy.transfer_to_line(a.call_id, call.line, time.time(),
                                                head=True)
                    continue
            if isinstance(a, Offer):
                call = s.calls.get(a.call_id)
                if call is None or call.state not in ("queued", "offered"):
                    continue  # over here; the leader hears it (call_abandoned) and frees
                    # the handler from that offer
                if call.leg_id is not None and a.call_id not in cancelled:
                    if call.handler_id == a.handler_id:
                        continue
                    old = call.leg_id
                    s.legs.pop(old, None)
                    call.leg_id, call.handler_id = None, None
                    s.engine.cancel_offer(old)
            keep.append(a)
        self.applied += len(keep)
        s._apply(keep)

    def _resync(self, term: int) -> None:
        """A new leader: tell it every call this node holds."""
        calls = [self._call_info(c) for c in self.s.calls.values()
                 if c.state in ("queued", "offered", "connected")]
        calls += self.ending.values()  # their end follows in the inputs
        self.send("resync", {"term": term, "calls": calls})
        log.info("routing.resync", term=term, calls=len(calls))

    # -- the store away: routing alone (controlroom.fallback) ---------------------------
    def _known_changes(self, actions: list[Any]) -> None:
        from routing import HandlerChanged

        for a in actions:
            if isinstance(a, HandlerChanged):
                h = self.handlers_known.setdefault(a.handler_id, {})
                h["state"], h["call_id"], h["reason"] = a.state, a.call_id, a.reason
                if a.state == "available" and h.get("idle_since") is None:
                    h["idle_since"] = time.time()
                elif a.state != "available":
                    h["idle_since"] = None

    def _published_handlers(self, handlers: dict[str, dict[str, Any]]) -> None:
        """On the loop: the handlers the leader last committed (newer than every row
        already handed on; later rows update them again)."""
        if handlers and self.fallback is None:
            self.handlers_known = {hid: dict(h) for hid, h in handlers.items()}

    def _enter_fallback(self) -> None:
        """No contact with the store for ``fallback_after``: route this node's calls here,
        offering them to the handlers whose desk is on this node."""
        s, now = self.s, time.time()
        desks = {hid for hid, h in self.handlers_known.items() if h.get("desk") == self.node}
        calls = [self._call_info(c) for c in s.calls.values() if c.state in LIVE]
        with self._out_ready:  # unsent inputs: the hand-back says where they led
            unsent = list(self._out)
            dropped = len(unsent)
            self._out.clear()
            self._gen += 1
        fb, first = LocalRouting.build(s.settings.lines, s.settings.routing, calls=calls,
                                       handlers=self.handlers_known, desks=desks, now=now)
        # ... but their queue-log rows are the record's: logged here (the leader never
        # logs them: one that reaches it later is superseded by the hand-back); a 999
        # abandoned among them joins this router's call-back list (and, at the hand-back,
        # the leader's)
        record = self._unsent_rows(unsent, fb)
        self.ending.clear()
        self.fallback, self.fallback_since, self.fallback_term = fb, now, self.term
        self.back_cut, self.back_sent, self.hand_back_term = None, False, None
        log.warning("routing.fallback", node=self.node, away_s=round(now - self.contact_at, 2),
                    desks=sorted(desks), calls=len(calls), unsent_dropped=dropped,
                    why="no contact with the store: routing this node's calls alone")
        s._apply(record + first)

    def _unsent_rows(self, unsent: list[tuple[str, dict[str, Any], float]],
                     fb: LocalRouting) -> list[Any]:
        """The queue-log rows the leader would have written for routing inputs this node
        drops on going alone (sent while the store was already away): a call's ENTER, its
        CONNECT, its COMPLETE or ABANDON (a ring or a state change is the hand-back's to
        tell); an abandoned call also gets the ``Abandoned`` the leader would have sent
        (the call's record, its CAD event), and a 999 its call-back entry on ``fb``'s list
        (:meth:`LocalRouting.abandoned_unsent`), which the hand-back gives the leader."""
        from routing import QueueLogEntry

        lines = {x.name: x for x in self.s.settings.lines}
        known = {c.call_id: self._call_info(c) for c in self.s.calls.values()}
        known.update(self.ending)
        rows: list[Any] = []
        keys: dict[str, str | None] = {}
        """Caller keys of the calls whose arrival is among them (else derived)."""
        for kind, data, _at in unsent:
            if kind == "callbacks" and isinstance(data, dict):
                # a hand-back's call-backs the store went away again before it took
                # them: the next hand-back sends them again (the leader skips a repeat)
                fb.carry(data.get("entries") or ())
                continue
            if kind != "call" or not isinstance(data, dict):
                continue
            method, args = data.get("method"), list(data.get("args") or [])
            kw = dict(data.get("kwargs") or {})
            try:
                if method == "call_arrived":
                    cid, line, at = str(args[0]), str(args[1]), float(args[2])
                    spec = lines.get(line)
                    caller = str(kw.get("caller", ""))
                    keys[cid] = kw.get("caller_key")
                    rows.append(QueueLogEntry(at, cid, line, "", "ENTER", {
                        "priority": getattr(spec, "priority", None), "caller": caller,
                        "threshold": getattr(spec, "answer_threshold", None),
                        "overflow": None, "caller_key": kw.get("caller_key", caller),
                        "unsent": True}))
                elif method == "call_abandoned":
                    cid, at = str(args[0]), float(args[1])
                    c = known.get(cid) or {}
                    rows += fb.abandoned_unsent(
                        cid, str(c.get("line") or ""), caller=str(c.get("caller") or ""),
                        key=keys.get(cid), arrived=float(c.get("arrived_at") or at), at=at)
                elif method in ("offer_answered", "call_ended"):
                    cid = str(args[0])
                    c = known.get(cid) or {}
                    if method == "offer_answered":
                        at = float(args[2])
                        rows.append(QueueLogEntry(at, cid, str(c.get("line") or ""),
                                                  str(args[1]), "CONNECT", {
                                                      "wait": at - float(c.get("arrived_at")
                                                                         or at),
                                                      "unsent": True}))
                    else:
                        at = float(args[1])
                        answered = c.get("answered_at")
                        rows.append(QueueLogEntry(at, cid, str(c.get("line") or ""),
                                                  str(c.get("handler_id") or ""), "COMPLETE", {
                                                      "talk": (at - float(answered))
                                                      if answered else None,
                                                      "unsent": True}))
            except (IndexError, TypeError, ValueError):
                continue
        return rows

    def handed_end(self, method: str, args: list[Any]) -> list[Any]:
        """The COMPLETE row of a call this node handed back talking, logged here: its
        earlier rows (routing alone) are in this node's spool, which keeps their order;
        the leader's (it may not even have the call: a held one) would come first."""
        from routing import QueueLogEntry

        if method != "call_ended" or not args or str(args[0]) not in self.talking_handed:
            return []
        cid = str(args[0])
        self.talking_handed.discard(cid)
        c = self.s.calls.get(cid)
        try:
            at = float(args[1])
        except (IndexError, TypeError, ValueError):
            at = time.time()
        answered = getattr(c, "answered_at", None)
        talk = (getattr(c, "talk_before", 0.0) or 0.0) + (at - answered if answered else 0.0)
        return [QueueLogEntry(at, cid, str(getattr(c, "line", "") or ""),
                              str(getattr(c, "handler_id", "") or ""), "COMPLETE",
                              {"talk": talk})]

    def _hand_back_when_quiet(self) -> None:
        """Hand back now if no call of this node rings a handler (or it waited long
        enough); otherwise ``_watch`` calls again."""
        from routing.model import CallState

        fb, term = self.fallback, self.hand_back_term
        if fb is None or term is None:
            self.hand_back_term = None
            return
        ringing = [c for c, call in fb.router.calls.items() if call.state is CallState.OFFERED]
        waited = time.time() - self.hand_back_at
        if ringing and waited < float(self.s.settings.routing.offer_timeout):
            return
        self.hand_back_term = None
        self._hand_back(term)

    def _hand_back(self, term: int) -> None:
        """The store is back and a leader is there: hand it this node's state (a resync
        that supersedes what this node sent before) and route through it again."""
        fb = self.fallback
        if fb is None:
            return
        now = self.contact_at = time.time()  # this row came from the store
        calls = [self._call_info(c) for c in self.s.calls.values() if c.state in LIVE]
        self.talking_handed = {c["call_id"] for c in calls if c["state"] == "connected"}
        self.fallback = None
        self.send("resync", {"term": term, "fallback": True, "calls": calls,
                             "handlers": fb.hand_back()})
        # After the resync (whose drop of a call this node lists no more would take a
        # call-back of that call off the leader's list): the call-backs made alone
        entries = fb.callback_rows()
        if entries:
            self.send("callbacks", {"entries": entries})
        log.warning("routing.fallback_over", node=self.node, term=term, calls=len(calls),
                    alone_s=round(now - self.fallback_since, 2), callbacks=len(entries))

    def _decide_here(self, fb: LocalRouting, data: dict[str, Any]) -> None:
        """A routing input while routing alone: decided by the local router; a desk
        operation (``controlroom.asks``, with ``req``) is answered at once, as the leader
        would."""
        from routing import RoutingError

        req = str(data.get("req") or "")
        try:
            actions = fb.call(str(data["method"]), list(data.get("args", [])),
                              dict(data.get("kwargs", {})))
        except (RoutingError, AttributeError, KeyError, TypeError, ValueError) as exc:
            if req:
                self.asks.answer(bus.Reply(req, str(exc) or type(exc).__name__,
                                           getattr(exc, "state", None),
                                           getattr(exc, "event", None)))
            else:
                log.info("routing.input_refused_alone", data=data, why=str(exc))
            return
        if req:
            self.asks.answer(bus.Reply(req))
        self.s._apply(actions)

    def health_reason(self) -> str | None:
        """Why ``/healthz`` says degraded (None: routing through the leader)."""
        fb = self.fallback
        if fb is None:
            return None
        if self.back_cut is not None:
            return ("routing alone: the store is back, waiting for the routing leader to "
                    "take this node's calls back")
        return (f"routing alone: no contact with the store for "
                f"{time.time() - self.contact_at:.1f} s; this node's calls are offered only "
                f"to the {len(fb.desks)} handler(s) whose desk is on it, and reconciled "
                f"with the room's queue when the store is back")

    async def _watch(self) -> None:
        """Switch to routing alone when the store is away for ``fallback_after``; once it
        is back, ask the leader for a term row (``back``) if none came within 1 s."""
        after = fallback_after(self.s.settings)
        while True:
            await asyncio.sleep(0.1)
            now = time.time()
            try:
                if self.fallback is None:
                    if now - self.contact_at >= after:
                        self._enter_fallback()
                elif self.hand_back_term is not None:
                    self._hand_back_when_quiet()
                elif self.back_cut is None and self.contact_at > self.fallback_since:
                    # the store answers again without the reader having reconnected
                    self.back_cut, self.back_at, self.back_sent = self.last_oid, now, False
                elif (self.back_cut is not None and not self.back_sent
                      and now - self.back_at >= 1.0):
                    self.back_sent = True
                    self.send("back", {"term": self.term})
            except Exception:  # noqa: BLE001 - a bug here must not stop the watch
                log.exception("routing.fallback_watch_failed")

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        threads = [threading.Thread(target=self._writer, name="routing-bus-out", daemon=True),
                   threading.Thread(target=self._reader, name="routing-bus-in", daemon=True)]
        self.leader = LeaderThread(self.s.settings, self.url, self.node, self._stop)
        threads.append(self.leader)
        for t in threads:
            t.start()
        try:
            await self._watch()  # forever (cancelled at stop)
        finally:
            self._stop.set()
            with self._out_ready:
                self._out_ready.notify_all()
            for t in threads:
                await asyncio.to_thread(t.join, 3.0)


# -- the leader --------------------------------------------------------------------------

class LeaderThread(threading.Thread):
    """Contends for the routing lease; while it leads, runs the room's one router."""

    def __init__(self, settings: Any, url: str, node: str, stop: threading.Event, *,
                 poll: float = 0.2) -> None:
        super().__init__(name="routing-leader", daemon=True)
        self.settings, self.url, self.node, self.stop = settings, url, node, stop
        self.poll = poll
        self.router: Any = None
        self.term: int | None = None
        self.cursor = 0
        self.call_node: dict[str, str] = {}
        self.conn: Any = None
        self._snap_at = 0.0
        self._nodes_at = 0.0
        self._term_at = 0.0
        self._pruned_at = time.time()
        self.prune_after = PRUNE_AFTER
        """Bus rows older than this (s) are deleted (inputs only once read)."""
        self.parked: set[str] = set()
        """Nodes whose heartbeat is stale: their waiting calls are out of the queue."""
        self.held: dict[str, str] = {}
        """Talking calls a late resync told of, not in the router: call -> its handler,
        kept not ready (``HELD_REASON``) until the call's end comes in."""
        self.unlogged_enter: set[str] = set()
        """Calls the last rebuild put in from the resyncs (their ENTER rows left out: the
        queue log has them if the old leader read their arrival; if it did not, that
        input comes after the rebuild, is refused as a repeat and logs its ENTER)."""
        self.cut_off: set[str] = set()
        """Stale nodes whose session is open (they may route alone): their inputs wait in
        ``deferred`` for their resync (a hand-back supersedes them: e.g. a batch the cut
        held in flight and TCP delivered after the restore)."""
        self.deferred: dict[str, list[tuple[int, str, str, dict[str, Any], float]]] = {}
        self.desk: dict[str, str] = {}
        """handler -> the node of their last desk operation (published in the handlers'
        state: a node routing alone offers its calls to its own desks only)."""
        self._wake_extra: list[str] = []
        """Nodes that said ``back``: each gets a term row (it answers with a resync)."""
        self.away: dict[str, str] = {}
        """handler -> the node whose desk they are on (or just left), found stale while
        it may still reach the phones: that node may be routing its calls alone to them
        (``controlroom.fallback``), so this router offers them nothing (not ready,
        ``DESK_AWAY``) and refuses their desk operations until that node's resync."""
        self.away_prev: dict[str, str] = {}
        """handler -> their state when put away (restored when the node resyncs without
        having routed alone)."""
        self.moved: dict[str, tuple[str, float]] = {}
        """handler -> (the node their desk left, when): see ``moved_window``."""
        self._beats: dict[str, float] = {}
        self._stale_due = float("inf")
        """When the earliest heartbeat last read goes stale: the nodes are read again
        then, not up to ``NODES_EVERY`` later."""

    def run(self) -> None:
        from store.lease import Lease

        lease = Lease(self.url, self.node, poll=self.poll)
        ticked = 0.0
        try:
            while not self.stop.is_set():
                # The lease is confirmed every poll s, not on every batch of inputs (one
                # round trip less per decision); between confirmations a leader acts only
                # while its last one is recent (Lease.check, < step_down_after).
                if self.term is None or time.time() - ticked >= self.poll:
                    lead = lease.tick()
                    ticked = time.time()
                else:
                    lead = lease.check()
                if not lead:
                    if self.term is not None:
                        log.warning("routing.leader_lost", term=self.term)
                    self._drop()
                    self.stop.wait(self.poll)
                    continue
                try:
                    if self.term != lease.term:
                        self._drop()
                        self._take_over(int(lease.term or 0))
                    self._step()
                    self._wait()
                except Exception as exc:  # noqa: BLE001 - fenced out, or the store away
                    log.warning("routing.leader_step_failed", error=str(exc))
                    self._drop()
                    lease.release()
                    self.stop.wait(self.poll)
        finally:
            lease.release()
            self._drop()

    def _drop(self) -> None:
        self.term, self.router = None, None
        self.parked = set()
        self.held = {}
        self._wake_extra = []
        self.away, self.away_prev = {}, {}
        self.cut_off, self.deferred = set(), {}
        self._stale_due = float("inf")
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None

    def _wait(self) -> None:
        deadline = self.router.next_deadline() if self.router is not None else None
        deadline = min(deadline if deadline is not None else float("inf"), self._stale_due)
        timeout = max(0.0, min(self.poll, deadline - time.time()))
        if timeout > 0:
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                pass

    # -- takeover ---------------------------------------------------------------------
    def _take_over(self, term: int) -> None:
        from routing import Router
        from store import queuelog
        from store.db import Database
        from store.lease import fenced

        started = self._term_at = time.time()
        self.conn = _connect(self.url)
        self.conn.execute(f"LISTEN {bus.IN_CHANNEL}")
        st = bus.state(self.conn)
        self.cursor = st["cursor"]
        self.term = term
        with self.conn.transaction():
            fenced(self.conn, term)
            self.conn.execute("INSERT INTO routing_outputs(node, term, data, at)"
                              " VALUES (%s, %s, %s, %s)",
                              (bus.EVERY_NODE, term, bus.dumps({"kind": "term"}),
                               time.time()))
            self.conn.execute(f"NOTIFY {bus.OUT_CHANNEL}")
        # Every live node answers with a resync; other inputs wait behind them.
        # Live: not stopped and not yet salvaged (after a store outage every heartbeat is
        # old, and every node still holds its calls). The previous leader is waited for
        # only while its heartbeat moves: killed, it never resyncs.
        hb = float(self.settings.storage.heartbeat_interval)
        sql = "SELECT node_id, heartbeat_at FROM nodes WHERE stopped_at IS NULL"
        beats0 = {r[0]: float(r[1]) for r in self.conn.execute(
            sql + " AND heartbeat_at > %s",
            (time.time() - float(self.settings.cluster.salvage_after),)).fetchall()}
        expect = set(beats0)
        prev = st["holder"] if st["holder"] not in ("", self.node) else None
        prev_check = time.time() + max(1.0, 2.0 * hb)
        recent = time.time() - (2.0 * hb + 0.5)
        if prev is not None and any(b > recent for n, b in beats0.items() if n != prev):
            # The others beat just now: the store stayed up and the previous leader lost
            # its session on its own (killed, or cut off): it will not resync.
            expect.discard(prev)
        resyncs: dict[str, list[dict[str, Any]]] = {}
        handed: dict[str, dict[str, Any]] = {}
        pending: list[tuple[int, str, str, dict[str, Any], float]] = []
        deadline = time.time() + RESYNC_GRACE
        cursor = self.cursor
        while time.time() < deadline and not expect <= set(resyncs):
            for row in bus.inputs_after(self.conn, cursor):
                cursor = row[0]
                _, node, kind, data, _at = row
                if kind == "resync" and data.get("fallback"):
                    # a node back from routing alone: its state supersedes the routing
                    # inputs it sent before (controlroom.fallback)
                    pending = [p for p in pending if not (p[1] == node and p[2] in (
                        "call", "resync", "back"))]
                if kind == "resync" and (int(data.get("term", 0)) == term
                                         or data.get("start")):
                    # a node just started holds no call: its start resync counts (it
                    # may have begun reading after this term's row)
                    resyncs[node] = list(data.get("calls", ()))
                    handed[node] = data
                else:
                    pending.append(row)
            if expect <= set(resyncs):
                break
            if prev in expect and prev not in resyncs and time.time() > prev_check:
                row = self.conn.execute(sql + " AND node_id = %s", (prev,)).fetchone()
                if row is None or float(row[1]) <= beats0.get(prev, 0.0):
                    expect.discard(prev)  # not beating: dead (or cut off)
                prev_check = float("inf")
            for _ in self.conn.notifies(timeout=0.05, stop_after=1):
                pass
        # Statistics and call-backs from the queue log (its rows are already logged),
        # leaving out calls still open in the store and calls a node holds: those come
        # back from the resyncs, and the end of one that just ended is logged when its
        # input (pending) is applied.
        router = Router.from_settings(self.settings.lines, self.settings.routing)
        held = {c["call_id"] for cs in resyncs.values() for c in cs}
        db = Database(self.url)
        try:
            live = {r["call_id"] for r in db.query(
                "SELECT call_id FROM calls WHERE ended_at IS NULL")}
            entries = [e for e in queuelog.load(db, since=time.time() - 8 * 86400)
                       if e.call_id not in live and e.call_id not in held]
        finally:
            db.close()
        router.restore(entries, time.time())
        stored = dict(st["handlers"])
        for node, data in handed.items():  # desks of nodes back from routing alone
            for hid, h in (data.get("handlers") or {}).items():
                stored[hid] = {**stored.get(hid, {}), **h, "desk": node}
        self.desk = {hid: str(h["desk"]) for hid, h in stored.items() if h.get("desk")}
        for hid, h in stored.items():
            if h.get("state") != "logged_out":
                router.handler_login(hid, time.time(), skills=h.get("skills") or {})
        self.router, self.call_node = router, {}
        # Desks of a node that did not resync but whose session is open (cut off from the
        # store, not dead) may be offered its calls by it alone: none here until it does.
        sessions = self._bus_sessions()
        away = {hid: n for hid, n in self.desk.items()
                if n not in resyncs and n in sessions and hid in router.handlers}
        out = self._rebuild(resyncs, stored, set(away))
        self.cut_off = set(away.values())
        for node in sorted(set(away.values())):
            hids = sorted(h for h, n in away.items() if n == node)
            out += self._put_away(node, hids, time.time())
            for hid in hids:
                self.away_prev[hid] = str(stored.get(hid, {}).get("state") or "")
                h = router.handlers[hid]
                if h.state.value == "not_ready" and h.reason == "login":
                    out += self._route(router.set_not_ready(hid, time.time(),
                                                            reason=DESK_AWAY))
        for row in pending:
            out += self._input(row)
        self.cursor = cursor
        self._commit(out, min((r[4] for r in pending), default=None))
        log.warning("routing.leader", term=term, node=self.node, resynced=sorted(resyncs),
                    expected=sorted(expect), calls=len(self.router.calls),
                    took=round(time.time() - started, 3))

    def _rebuild(self, resyncs: dict[str, list[dict[str, Any]]],
                 stored: dict[str, dict[str, Any]],
                 away: set[str] | None = None) -> list[tuple[str, Any]]:
        """The queue from the nodes' resyncs; returns the first decisions (kept). Handlers
        in ``away`` are made free to no call (a call ringing them waits again)."""
        from routing import RoutingError
        from routing.model import HandlerState

        r = self.router
        now = time.time()
        away = away or set()
        self.unlogged_enter = {c["call_id"] for cs in resyncs.values() for c in cs}
        calls = sorted(((n, c) for n, cs in resyncs.items() for c in cs),
                       key=lambda nc: nc[1]["arrived_at"])
        taken: set[str] = set()

        def quietly(f: Callable[[], Any]) -> bool:
            try:
                f()
                return True
            except RoutingError as exc:
                log.info("routing.rebuild_skipped", why=str(exc))
                return False

        # 1. calls with a handler (talking, ringing): put back with that handler
        for node, c in calls:
            hid = c.get("handler_id")
            if c["state"] not in ("connected", "offered") or not hid or hid in taken:
                continue
            if c["state"] == "offered" and hid in away:
                continue
            h = r.handlers.get(hid)
            if h is None or h.state is HandlerState.LOGGED_OUT:
                continue
            self.call_node[c["call_id"]] = node
            if not quietly(partial(r.call_arrived, c["call_id"], c["line"], c["arrived_at"],
                                   caller=c.get("caller", ""))):
                continue
            if not quietly(partial(r.set_available, hid, now, force=True)):
                continue
            if r.calls[c["call_id"]].handler_id != hid:
                continue  # (cannot happen: only this call waits) - left waiting
            taken.add(hid)
            if c["state"] == "connected":
                quietly(partial(r.offer_answered, c["call_id"], hid, now))
        # 2. waiting calls in arrival order (nobody is available yet: they all queue); a
        # talking call not put back with its handler keeps that handler not ready
        for node, c in calls:
            if c["call_id"] in r.calls:
                continue
            if c["state"] == "connected":
                self._hold(node, c)  # not ready: its HandlerChanged is not needed here
                continue
            self.call_node[c["call_id"]] = node
            quietly(partial(r.call_arrived, c["call_id"], c["line"], c["arrived_at"],
                            caller=c.get("caller", "")))
        # 3. free handlers, longest idle first: each takes the most urgent call
        out: list[tuple[str, Any]] = []
        free = sorted(((h.get("idle_since") or h.get("since") or 0.0, hid)
                       for hid, h in stored.items()
                       if hid not in taken and hid in r.handlers and hid not in away
                       and hid not in self.held.values()
                       and h.get("state") in ("available", "offered", "on_call", "wrap_up")))
        for _, hid in free:
            try:
                out += self._route(r.set_available(hid, time.time(), force=True))
            except RoutingError as exc:
                log.info("routing.rebuild_skipped", why=str(exc))
        return out

    # -- normal running -----------------------------------------------------------------
    def _step(self) -> None:
        rows = bus.inputs_after(self.conn, self.cursor)
        out: list[tuple[str, Any]] = []
        for row in rows:
            out += self._input(row)
            self.cursor = row[0]
        out += self._route(self.router.tick(time.time()))
        wake: list[str] = []
        if time.time() - self._nodes_at >= NODES_EVERY or time.time() >= self._stale_due:
            out += self._check_nodes(wake)
        wake += [n for n in self._wake_extra if n not in wake]
        self._wake_extra = []
        if time.time() - self._pruned_at >= min(60.0, self.prune_after):
            self._prune()
        if wake:  # nodes beating again: they resync, their waiting calls come back
            with self.conn.transaction():
                for node in wake:
                    self.conn.execute("INSERT INTO routing_outputs(node, term, data, at)"
                                      " VALUES (%s, %s, %s, %s)",
                                      (node, self.term, bus.dumps({"kind": "term"}),
                                       time.time()))
        if rows or out or wake or time.time() - self._snap_at >= SNAPSHOT_EVERY:
            self._commit(out, min((r[4] for r in rows), default=None))

    def _input(self, row: tuple[int, str, str, dict[str, Any], float]) -> list[tuple[str, Any]]:
        """One input; the router's actions, each with the node it goes to."""
        from routing import CancelOffer, Completed, QueueLogEntry, RoutingError

        _id, node, kind, data, at = row
        r = self.router
        if kind == "call" and node in self.cut_off:
            self.deferred.setdefault(node, []).append(row)
            return []
        try:
            if kind == "call":
                method, args, kwargs = data["method"], data.get("args", []), data.get("kwargs", {})
                if method not in MUTATORS:
                    raise RoutingError(f"not a routing input: {method!r}")
                if method == "call_arrived":
                    self.call_node[args[0]] = node
                if method == "handler_login":
                    h = r.handlers.get(args[0])
                    if h is not None and h.state.value != "logged_out":
                        return []  # another node's start: already logged in
                if method in DESK_METHODS and str(args[0]) in self.away:
                    raise RoutingError(
                        f"handler {args[0]!r}: their desk's node {self.away[str(args[0])]}"
                        " is cut off from the store and may be offering them its own calls;"
                        " try again when it is back")
                try:
                    acts = getattr(r, method)(*args, **kwargs)
                    if data.get("logged"):  # its node logged this end (handed_end)
                        acts = [a for a in acts if not (isinstance(a, QueueLogEntry)
                                                        and a.event == "COMPLETE")]
                    done = self._route(acts)
                    if method in DESK_METHODS and method != "handler_login":
                        self._desk_at(str(args[0]), node)
                    return self._answer(node, data) + done
                except RoutingError as exc:
                    if method == "offer_answered":  # withdrawn as the phone answered
                        return [(node, CancelOffer(args[0], args[1], "late-answer"))]
                    if method == "call_arrived" and str(args[0]) in self.unlogged_enter:
                        # the old leader never read it; the rebuild put the call in from
                        # its node's resync: its arrival goes on the record now
                        return [("", self._enter_row(args, kwargs))]
                    if method in ("call_ended", "call_abandoned"):  # confirm: nothing to do
                        log.info("routing.input_refused", node=node, method=method,
                                 why=str(exc))
                        return (self._unhold(str(args[0]))
                                + [(node, Completed(str(args[0]), "", "", 0.0))])
                    raise exc
            if kind == "drop_calls":
                return self._drop_calls(set(data.get("call_ids", ())))
            if kind == "back":  # a node back from routing alone: a term row for it
                self._wake_extra.append(node)
                return []
            if kind == "callbacks":
                return self._add_callbacks(data)
            if kind == "resync":
                return self._late_resync(node, data)
            raise RoutingError(f"unknown input kind {kind!r}")
        except (RoutingError, KeyError, TypeError, ValueError) as exc:
            log.info("routing.input_refused", node=node, kind=kind, data=data, why=str(exc))
            return self._answer(node, data, exc)

    @staticmethod
    def _answer(node: str, data: Any, exc: Exception | None = None) -> list[tuple[str, Any]]:
        """A desk operation sent with a request id is answered to its node (applied, or
        the refusal word for word: ``controlroom.asks``); other inputs get nothing."""
        req = data.get("req") if isinstance(data, dict) else None
        if not req:
            return []
        if exc is None:
            return [(node, bus.Reply(str(req)))]
        return [(node, bus.Reply(str(req), str(exc) or type(exc).__name__,
                                 getattr(exc, "state", None), getattr(exc, "event", None)))]

    def _add_callbacks(self, data: dict[str, Any]) -> list[tuple[str, Any]]:
        """A survivor's salvage put a dead node's 999 callers on the call-back list, or a
        node back from routing alone hands over the call-backs it made meanwhile (their
        CALLBACK_ADD rows, in the queue log or its spool): onto this router's list at
        once, as a takeover's restore would read them (a row it has is skipped)."""
        from routing import QueueLogEntry

        rows = [QueueLogEntry(**e) for e in data.get("entries", ())]
        added = self.router.add_callbacks(rows, time.time())
        log.info("routing.callbacks_added", rows=len(rows), added=added)
        return []

    def _desk_at(self, hid: str, node: str) -> None:
        """A desk operation for ``hid`` came from ``node``: their desk is there now."""
        old = self.desk.get(hid)
        if old and old != node:
            self.moved[hid] = (old, time.time())
        self.desk[hid] = node

    def _bus_sessions(self) -> set[str]:
        """Nodes whose bus reader has a session open on the store (``BUS_IN_APP``)."""
        rows = self.conn.execute(
            "SELECT DISTINCT application_name FROM pg_stat_activity"
            " WHERE application_name LIKE %s", (BUS_IN_APP + "%",)).fetchall()
        return {str(r[0])[len(BUS_IN_APP):] for r in rows}

    def _desks_of(self, node: str, now: float) -> list[str]:
        """The handlers ``node`` may count as its desks: there now, or just moved off it."""
        window = moved_window(self.settings)
        return sorted(hid for hid in self.router.handlers
                      if self.desk.get(hid) == node
                      or (hid in self.moved and self.moved[hid][0] == node
                          and now - self.moved[hid][1] <= window))

    def _put_away(self, node: str, hids: list[str], now: float) -> list[tuple[str, Any]]:
        """``node`` is stale but may reach the phones: it may start routing alone (at
        ``fallback_after``, later than this) and offer its calls to its desks. Offer them
        nothing meanwhile: free ones not ready (``DESK_AWAY``; a ringing offer of another
        node's call is cancelled and that call goes back to its place), busy ones not
        ready when their call and wrap-up end."""
        from routing.model import HandlerState as HS

        r, out = self.router, []
        for hid in hids:
            h = r.handlers.get(hid)
            if h is None or hid in self.away:
                continue
            self.away[hid], self.away_prev[hid] = node, h.state.value
            if h.state in (HS.ON_CALL, HS.WRAP_UP):
                out += self._route(r.not_ready_after_call(hid, now, reason=DESK_AWAY))
            elif h.state in (HS.AVAILABLE, HS.OFFERED):
                out += self._route(r.set_not_ready(hid, now, reason=DESK_AWAY))
        if hids:
            log.warning("routing.desks_away", node=node, handlers=hids,
                        why="their desk's node is cut off from the store: it may route "
                            "its calls to them alone")
        return out

    def _release(self, node: str, handed: dict[str, Any] | None) -> list[tuple[str, Any]]:
        """``node`` resynced (or stopped): its desks are offered again. A hand-back after
        routing alone (``handed``) gives their states; else each gets back what it had."""
        from routing import RoutingError
        from routing.model import HandlerState as HS

        r, now = self.router, time.time()
        hids = sorted(h for h, n in self.away.items() if n == node)
        out: list[tuple[str, Any]] = []
        free: list[tuple[float, str]] = []
        for hid in hids:
            del self.away[hid]
            prev = self.away_prev.pop(hid, "")
            h = r.handlers.get(hid)
            if h is None:
                continue
            rep: dict[str, Any] = dict((handed or {}).get(hid) or {})
            held = hid in self.held.values()
            try:
                if rep and isinstance(rep.get("skills"), dict) \
                        and dict(rep["skills"]) != h.skills:
                    out += self._route(r.set_skills(hid, now, skills=dict(rep["skills"])))
                state = rep.get("state") if rep else (
                    "available" if prev in ("available", "wrap_up", "offered", "on_call")
                    else "")
                if h.state in (HS.ON_CALL, HS.WRAP_UP):
                    # on a call of another node here: its end is heard here
                    after = (rep.get("reason") or "not ready") if state == "not_ready" \
                        else None
                    out += self._route(r.not_ready_after_call(hid, now, reason=after))
                elif h.state is HS.NOT_READY and not held and h.reason == DESK_AWAY:
                    if state in ("available", "wrap_up"):
                        idle = rep.get("idle_since") or h.idle_since or 0.0
                        free.append((float(idle), hid))
                    elif state == "not_ready":
                        out += self._route(r.set_not_ready(
                            hid, now, reason=str(rep.get("reason") or "not ready")))
                    elif state == "logged_out":
                        out += self._route(r.handler_logout(hid, now, reason="logged out"))
                    # "offered"/"on_call": ringing or talking on this node's call, which its
                    # resync put back (held) or re-queued: not ready until their desk says
            except RoutingError as exc:
                log.info("routing.release_skipped", handler=hid, why=str(exc))
        for _, hid in sorted(free):
            try:
                out += self._route(r.set_available(hid, now, force=True))
            except RoutingError as exc:
                log.info("routing.release_skipped", handler=hid, why=str(exc))
        if hids:
            log.warning("routing.desks_back", node=node, handlers=hids,
                        handed_back=handed is not None)
        return out

    def _prune(self) -> None:
        """The bus is a conveyor, not a record (the queue log is): rows older than
        ``prune_after`` go, inputs only once this leader has read them."""
        from store.lease import fenced

        self._pruned_at = now = time.time()
        with self.conn.transaction():
            fenced(self.conn, int(self.term or 0))
            self.conn.execute("DELETE FROM routing_inputs WHERE id <= %s AND at < %s",
                              (self.cursor, now - self.prune_after))
            self.conn.execute("DELETE FROM routing_outputs WHERE at < %s",
                              (now - self.prune_after,))

    def _check_nodes(self, wake: list[str]) -> list[tuple[str, Any]]:
        """Park the waiting and ringing calls of nodes whose heartbeat is stale (dead, or
        cut off from the store: an offer would reach no phone), unpark nodes beating
        again (``wake``: they are asked to resync)."""
        from routing.model import CallState

        now = time.time()
        self._nodes_at = now
        stale = stale_after(self.settings)
        if now - self._term_at < stale:
            self._stale_due = self._term_at + stale
            return []  # after a store outage every heartbeat is old: let them beat first
        limit = now - stale
        beats = {r[0]: (r[1], r[2]) for r in self.conn.execute(
            "SELECT node_id, heartbeat_at, stopped_at FROM nodes").fetchall()}
        out: list[tuple[str, Any]] = []
        watched = (set(self.call_node.values()) | set(self.desk.values())
                   | {n for n, _ in self.moved.values()}) - {""}
        sessions: set[str] | None = None
        for node in sorted(watched - self.parked):
            beat, stopped = beats.get(node, (None, None))
            if beat is None or (stopped is None and beat >= limit):
                continue
            ids = {c for c, n in self.call_node.items() if n == node
                   and c in self.router.calls
                   and self.router.calls[c].state is not CallState.CONNECTED}
            self.parked.add(node)
            if sessions is None:
                sessions = self._bus_sessions()
            alive = stopped is None and node in sessions
            log.warning("routing.node_parked", node=node, calls=len(ids),
                        heartbeat_age=round(now - float(beat), 2),
                        session=alive)
            out += self._drop_calls(ids)
            if alive:  # not dead (its session would be gone): it may route alone
                self.cut_off.add(node)
                out += self._put_away(node, self._desks_of(node, now), now)
        salvage = float(self.settings.cluster.salvage_after)
        for node in list(self.parked):
            beat, stopped = beats.get(node, (None, None))
            if stopped is not None:
                out += self._release(node, None)  # stopped: it routes nothing
            elif (beat is not None and now - float(beat) > salvage
                  and any(n == node for n in self.away.values())):
                # silent past salvage_after: the room counts it dead (a survivor closes its
                # calls), e.g. a machine powered off, whose sessions linger on the store
                log.warning("routing.desks_back_salvaged", node=node)
                out += self._release(node, None)
            if beat is not None and stopped is None and beat >= limit:
                self.parked.discard(node)
                wake.append(node)  # its resync brings its desks back (``_release``)
                log.warning("routing.node_unparked", node=node)
        self._stale_due = min((float(b) + stale for n, (b, st) in beats.items()
                               if n in watched and n not in self.parked and st is None
                               and b is not None), default=float("inf"))
        return out

    def _late_resync(self, node: str, data: dict[str, Any]) -> list[tuple[str, Any]]:
        """A node's resync after the rebuild (it answered after ``RESYNC_GRACE``, it beats
        again after being parked, or it has just started): the node knows its calls. Its
        calls here that it does not list are dropped; its waiting calls join the queue; a
        call it says is talking but that is not here is left out (its handler's state here
        may already be another's), and logged. A node back from routing alone
        (``fallback``) also replaces the calls whose state here is not the one it reports,
        and gives its desk handlers the states it reports."""
        if int(data.get("term", 0)) != self.term and not data.get("start"):
            return []  # an old term's
        release = any(n == node for n in self.away.values())
        self.cut_off.discard(node)
        waited = self.deferred.pop(node, [])
        pre: list[tuple[str, Any]] = []
        if data.get("fallback") or data.get("start"):
            if waited:  # superseded: the hand-back says where they led
                log.warning("routing.inputs_superseded", node=node, inputs=len(waited))
        else:  # it never routed alone: its inputs, in order, before its resync
            for row in waited:
                pre += self._input(row)
        listed = {c["call_id"] for c in data.get("calls", ())}
        gone = {c for c, n in self.call_node.items() if n == node and c not in listed}
        if data.get("fallback"):
            for c in data.get("calls", ()):
                here = self.router.calls.get(c["call_id"])
                if here is not None and (here.state.value != c["state"]
                                         or here.handler_id != c.get("handler_id")):
                    gone.add(c["call_id"])
        out: list[tuple[str, Any]] = pre + (self._drop_calls(gone) if gone else [])
        if gone:
            log.warning("routing.node_calls_dropped", node=node, calls=len(gone))
        for c in sorted(data.get("calls", ()), key=lambda c: c["arrived_at"]):
            if c["call_id"] in self.router.calls:
                continue
            if c["state"] == "connected":
                out += self._hold(node, c)
                continue
            self.call_node[c["call_id"]] = node
            # a call parked while its node was silent comes back: not a new arrival
            back = self.router._ended.pop(c["call_id"], None) is not None
            acts = self.router.call_arrived(c["call_id"], c["line"], c["arrived_at"],
                                            caller=c.get("caller", ""))
            if back:
                acts = [a for a in acts if getattr(a, "event", "") != "ENTER"]
            out += self._route(acts)
        if release:  # its calls are in again: now its desks (their states if it was alone)
            handed = dict(data.get("handlers") or {}) if data.get("fallback") else None
            out += self._release(node, handed)
        return out

    def _hold(self, node: str, c: dict[str, Any]) -> list[tuple[str, Any]]:
        """A talking call the router does not have (a late resync): its handler is kept
        not ready until the call ends, so they are offered nothing meanwhile."""
        from routing import RoutingError
        from routing.model import HandlerState

        hid = c.get("handler_id") or ""
        h = self.router.handlers.get(hid)
        if h is None or h.state not in (HandlerState.AVAILABLE, HandlerState.NOT_READY):
            log.warning("routing.late_resync_call_left_out", node=node, call=c,
                        handler_state=h.state.value if h else None)
            return []
        self.held[c["call_id"]] = hid
        self.call_node[c["call_id"]] = node
        try:
            return self._route(self.router.set_not_ready(hid, time.time(),
                                                         reason=HELD_REASON))
        except RoutingError as exc:
            log.warning("routing.hold_failed", why=str(exc))
            return []

    def _enter_row(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """The ENTER row of a ``call_arrived`` input (as the router writes it)."""
        from routing import QueueLogEntry

        cid, line, at = str(args[0]), str(args[1]), float(args[2])
        self.unlogged_enter.discard(cid)
        spec = self.router.lines.get(line)
        caller = str(kwargs.get("caller", ""))
        key = kwargs.get("caller_key")
        if key is None:
            key = caller if any(ch.isdigit() for ch in caller) else ""
        return QueueLogEntry(at, cid, line, "", "ENTER", {
            "priority": getattr(spec, "priority", None), "caller": caller,
            "threshold": getattr(spec, "answer_threshold", None), "overflow": None,
            "caller_key": key})

    def _unhold(self, call_id: str) -> list[tuple[str, Any]]:
        from routing.model import HandlerState

        hid = self.held.pop(call_id, "")
        h = self.router.handlers.get(hid)
        if h is None or h.state is not HandlerState.NOT_READY or h.reason != HELD_REASON:
            return []
        if hid in self.away:  # their desk's node may route to them alone: not yet
            return self._route(self.router.set_not_ready(hid, time.time(), reason=DESK_AWAY))
        return self._route(self.router.set_available(hid, time.time(), force=True))

    def _drop_calls(self, ids: set[str]) -> list[tuple[str, Any]]:
        """A survivor closed a dead node's calls on the record: out of the queue (the
        survivor logged their ends), their handlers freed for the next call."""
        from routing import QueueLogEntry
        from routing.model import CallState

        r = self.router
        out: list[Any] = []
        for cid in ids:
            call = r.calls.get(cid)
            if call is None:
                continue
            if call.state is CallState.CONNECTED:
                out += r.call_ended(cid, time.time())
            else:
                out += r.call_abandoned(cid, time.time())
            for cb_id, cb in list(r._callbacks.items()):  # the survivor's list has it
                if cb.call_id == cid:
                    del r._callbacks[cb_id]
                else:  # a repeat caller's entry: not this attempt either
                    cb.attempts = [x for x in cb.attempts if x.get("call_id") != cid]
        # Their ends are the survivor's to log (or, for a node back, they wait again);
        # a ringing handler's release is on the record here.
        kept = [a for a in out if not (isinstance(a, QueueLogEntry) and a.call_id in ids
                                       and a.event != "RINGCANCELED")]
        for cid in ids:
            self.call_node.pop(cid, None)
        res = self._route(kept)
        for cid in ids:
            if cid in self.held:
                res += self._unhold(cid)
        return res

    def _route(self, actions: list[Any]) -> list[tuple[str, Any]]:
        from routing import HandlerChanged, Offer, QueueLogEntry

        out: list[tuple[str, Any]] = []
        for a in actions:
            if isinstance(a, Offer) and a.handler_id in self.away:  # must not happen
                log.error("routing.offer_to_desk_away", call_id=a.call_id,
                          handler=a.handler_id, node=self.away[a.handler_id])
            if isinstance(a, QueueLogEntry):
                out.append(("", a))
            elif isinstance(a, HandlerChanged):
                out.append((bus.EVERY_NODE, a))
            else:
                node = self.call_node.get(getattr(a, "call_id", ""), "")
                if node:
                    out.append((node, a))
        return out

    def _published(self, now: float) -> dict[str, Any]:
        """The snapshot desks and the wallboard read, with the room's figures per line
        (today's and the last hour's service level, the overflow refusal a new call would
        get: ``controlroom.figures.line_figures``)."""
        from controlroom.figures import line_figures

        snap = self.router.snapshot(now, limit=50)
        snap["figures"] = line_figures(self.router, now)
        return snap

    def _commit(self, out: list[tuple[str, Any]], input_at: float | None) -> None:
        """Queue-log rows, each node's actions and the routing state: one transaction
        fenced with this term (a stale leader's writes roll back)."""
        from routing import QueueLogEntry
        from store.lease import fenced
        from store.queuelog import _json_safe

        now = time.time()
        per_node: dict[str, list[dict[str, Any]]] = {}
        log_rows = []
        for node, a in out:
            if isinstance(a, QueueLogEntry):
                log_rows.append((a.at, a.call_id, a.line, a.handler_id, a.event,
                                 json.dumps(_json_safe(a.data), separators=(",", ":"),
                                            default=str)))
            else:
                per_node.setdefault(node, []).append(bus.encode_action(a))
        r = self.router
        handlers = {hid: {"state": h.state.value, "reason": h.reason, "skills": dict(h.skills),
                          "since": h.since, "idle_since": h.idle_since,
                          "call_id": h.call_id, "desk": self.desk.get(hid, "")}
                    for hid, h in r.handlers.items()}
        snap = None
        if now - self._snap_at >= SNAPSHOT_EVERY:
            self._snap_at = now
            snap = bus.dumps(self._published(now))
        for c in {a.call_id for _, a in out if hasattr(a, "call_id")}:
            if c in self.call_node and c not in r.calls:
                self.call_node.pop(c, None)  # over: nothing more goes to its node
        with self.conn.transaction():
            fenced(self.conn, int(self.term or 0))
            with self.conn.cursor() as cur:
                if log_rows:
                    cur.executemany("INSERT INTO queue_log(at, call_id, line, handler_id,"
                                    " event, data) VALUES (%s, %s, %s, %s, %s, %s)", log_rows)
                if per_node:
                    cur.executemany(
                        "INSERT INTO routing_outputs(node, term, data, at, input_at)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        [(node, self.term, bus.dumps({"actions": acts}), now, input_at)
                         for node, acts in per_node.items()])
            if snap is not None:
                self.conn.execute("UPDATE routing_state SET term=%s, cursor=%s, handlers=%s,"
                                  " snapshot=%s, at=%s, holder=%s WHERE id=1",
                                  (self.term, self.cursor, bus.dumps(handlers), snap, now,
                                   self.node))
            else:
                self.conn.execute("UPDATE routing_state SET term=%s, cursor=%s, handlers=%s,"
                                  " holder=%s WHERE id=1",
                                  (self.term, self.cursor, bus.dumps(handlers), self.node))
            if per_node:
                self.conn.execute(f"NOTIFY {bus.OUT_CHANNEL}")


__all__ = ["GlobalQueue", "LeaderThread", "MUTATORS", "RESYNC_GRACE", "RouterProxy"]
