"""The service's side of the desk: :class:`console.backend.DeskBackend` over the live service.

Reads come from the router's snapshot (live state) and the store (history); actions go
through the router (decisions) and the engine (telephony), exactly as telephony events
do, so the desk can never put the system in a state the router would not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import callevents as ev
from console.backend import (
    THRIVE_KEYS,
    Conflict,
    DeskError,
    Invalid,
    NotFound,
    Pending,
    desk_state_name,
)
from controlroom.figures import ROLLING, line_figures, midnight
from controlroom.node import Node
from routing import RoutingError
from store import calls as calls_table
from store import drafts as drafts_table
from telephony.numbers import normalise

if TYPE_CHECKING:
    from controlroom.consult import Consults
    from controlroom.dialout import Dialouts
    from controlroom.monitor import Monitors


class DeskNode(Node, Protocol):
    """The node as the desk uses it: :class:`~controlroom.node.Node` and the parts that
    place legs for a handler (monitor, consult, call-back dial-out)."""

    @property
    def monitors(self) -> Monitors: ...
    @property
    def consults(self) -> Consults: ...
    @property
    def dialouts(self) -> Dialouts: ...


SL_DEFINITION = ("Service level = calls answered within the target / (calls answered + calls "
                 "abandoned after the target). Calls still waiting count neither way; "
                 "callers who hung up within the target (short abandons) are shown apart.")


LEADER_WAIT = 2.0
"""With the global queue, how long (s) a desk operation waits for the routing leader's
answer (normally milliseconds away; a takeover waits up to 2 s for the nodes' resyncs)
before the desk says it is pending (202) rather than done."""


def _sl(sl: dict[str, Any]) -> dict[str, Any]:
    return {"sl": sl.get("service_level"), "answered": sl.get("answered", 0),
            "answered_within": sl.get("answered_within", 0),
            "abandoned": sl.get("abandoned", 0),
            "abandoned_within": sl.get("abandoned_within", 0),
            "abandoned_after": sl.get("abandoned_after", 0), "offered": sl.get("offered", 0)}


def _retrieve(fut: asyncio.Future[None]) -> None:
    """A late answer nobody awaits any more: its refusal is logged, not left unretrieved."""
    if not fut.cancelled() and fut.exception() is not None:
        import structlog

        structlog.get_logger("controlroom.desk").info("desk.late_refusal",
                                                      why=str(fut.exception()))


def graded_complete(thrive: dict[str, str], grade: str) -> bool:
    """A grading that satisfies ``grading_required``: a grade and every THRIVE field."""
    return bool(grade) and all((thrive.get(k) or "").strip() for k in THRIVE_KEYS)


def location_view(text: str | None, detail: dict[str, Any] | None,
                  map_url: str) -> dict[str, Any] | None:
    """What the desk shows of a caller's location: the text, the uncertainty (metres) and
    method, the shape, and the force's map link filled in from ``map_url``."""
    if not text and not detail:
        return None
    d = detail or {}
    geo = sorted((g for g in d.get("geodetic") or [] if "lat" in g),
                 key=lambda g: "radius" not in g)
    civic = (d.get("civic") or [None])[0]
    out: dict[str, Any] = {"text": text or "", "by": d.get("by"), "parsed": bool(d.get("parsed")),
                           "error": d.get("error"), "uncertainty_m": d.get("accuracy"),
                           "method": None, "shape": None, "lat": None, "lon": None,
                           "address": None, "map_url": None, "source": None}
    if geo:
        g = geo[0]
        out.update(method=g.get("method"), shape=g.get("shape"), lat=g["lat"], lon=g["lon"])
        if out["uncertainty_m"] is None and g.get("uom") == "m" and "radius" in g:
            out["uncertainty_m"] = g["radius"]
    if civic:
        street = " ".join(x for x in (civic.get("HNO"), civic.get("RD")) if x)
        out["address"] = ", ".join(x for x in (street, civic.get("A3"), civic.get("PC")) if x)
        out["method"] = out["method"] or civic.get("method")
    # a line's fixed location (config LineLocation.detail): a one-line address
    out["address"] = out["address"] or d.get("address")
    out["method"] = out["method"] or d.get("method")
    out["source"] = d.get("source") or ("call" if d else None)
    if map_url:
        q = urllib.parse.quote
        if out["lat"] is not None and "{lat}" in map_url:
            out["map_url"] = (map_url.replace("{lat}", q(f"{out['lat']:.6f}"))
                              .replace("{lon}", q(f"{out['lon']:.6f}"))
                              .replace("{radius}", q(f"{out['uncertainty_m'] or 0:g}"))
                              .replace("{address}", q(out["address"] or "")))
        elif out["address"] and "{address}" in map_url:
            out["map_url"] = (map_url.replace("{address}", q(out["address"]))
                              .replace("{lat}", "").replace("{lon}", "")
                              .replace("{radius}", ""))
    return out


class ServiceDesk:
    """DeskBackend implemented over a running :class:`Service`."""

    def __init__(self, service: DeskNode) -> None:
        self.s = service
        drafts_table.migrate(service.db)

    # Drafts live in the store (store/drafts.py) so a restart or another node of the
    # cluster finds them; while the store will not take writes (disk full, PostgreSQL
    # away) they are kept in this node's memory instead, never dropped.
    def _draft(self, call_id: str) -> dict[str, Any] | None:
        mem = self.s.grading_drafts.get(call_id)
        if mem is not None:
            return mem
        try:
            return drafts_table.get(self.s.db, call_id)
        except self.s.db.Error:
            return None

    def _handler_drafts(self, handler_id: str) -> list[dict[str, Any]]:
        try:
            stored = {d["call_id"]: d for d in drafts_table.of_handler(self.s.db, handler_id)}
        except self.s.db.Error:
            stored = {}
        for cid, d in self.s.grading_drafts.items():
            if d.get("handler_id") == handler_id:
                stored[cid] = {**d, "call_id": cid}
        return sorted(stored.values(), key=lambda d: d.get("at") or 0.0)

    # ------------------------------------------------------------------ read side
    async def snapshot(self) -> dict[str, Any]:
        s = self.s
        now = time.time()
        rsnap = s.router.snapshot(now)
        lines_out = []
        since = midnight(now)
        gq = getattr(s, "global_queue", None)
        # the room's figures with the global queue (the leader's snapshot), else this node's
        room = (gq.snapshot.get("figures") if gq is not None else None) or {}
        figs = (room if all(ln.name in room for ln in s.settings.lines)
                else {**line_figures(s.router, now), **room})
        for line in s.settings.lines:
            waiting: list[dict[str, Any]] = []
            for c in sorted((c for c in s.calls.values()
                             if c.line == line.name and c.state in ("queued", "offered")),
                            key=lambda c: (s.router.position(c.call_id) or 10**9, c.arrived_at)):
                waiting.append({"call_id": c.call_id, "caller": c.caller,
                                "wait": round(now - c.arrived_at, 1),
                                "position": s.router.position(c.call_id),
                                "priority": c.priority, "state": c.state,
                                "estimated_wait": s.router.estimated_wait(c.call_id, now)})
            sl, rolling = figs[line.name]["today"], figs[line.name]["rolling"]
            offered = sl.get("offered", 0)
            lines_out.append({
                "name": line.name, "priority": line.priority, "threshold": line.answer_threshold,
                "wrapup_extend_max": s.router.lines[line.name].wrapup_extend_max,
                "waiting": waiting,
                "longest_wait": max((w["wait"] for w in waiting), default=0.0),
                "offered_today": offered, "answered_today": sl.get("answered", 0),
                "answered_in_threshold_today": sl.get("answered_within", 0),
                "abandoned_today": sl.get("abandoned", 0),
                "short_abandoned_today": sl.get("abandoned_within", 0),
                "sl_today": sl.get("service_level"),
                "abandon_rate": (sl.get("abandoned", 0) / offered) if offered else None,
                "today": _sl(sl), "rolling": _sl(rolling),
            })
        handlers_out = []
        for hid, h in rsnap.get("handlers", {}).items():
            cfg = s.handlers.get(hid)
            handlers_out.append({
                "handler_id": hid, "name": cfg.name if cfg else hid,
                "state": desk_state_name(h.get("state")), "reason": h.get("reason") or "",
                "since": h.get("since"), "call_id": h.get("call_id"),
                "skills": h.get("skills") or (s._skills(cfg) if cfg else {}),
                "after_call": h.get("after_call"), "grading_due": h.get("grading_due"),
            })
        return {"at": now, "lines": lines_out, "handlers": handlers_out,
                "draining": s._draining, "callbacks": await self.callbacks(),
                "rolling_seconds": ROLLING, "since_midnight": since,
                "sl_definition": SL_DEFINITION, "monitors": s.monitors.view()}

    def _handler(self, handler_id: str) -> dict[str, Any]:
        h = self.s.router.handler_info(handler_id)
        if h is not None:
            return h
        raise NotFound(f"no handler {handler_id!r}")

    def _card(self, call_id: str) -> dict[str, Any] | None:
        s = self.s
        live = s.calls.get(call_id)
        history = True
        try:
            row = s.db.query_one("SELECT * FROM calls WHERE call_id=?", (call_id,))
        except s.db.Error:
            # The store is away (a cut: the read fails at once): pop what the service
            # knows, with no history; a wrap-up card of a call that is over waits.
            row, history = None, False
        if row is None and live is None:
            return None
        if row is not None:
            d = calls_table.to_dict(row)
        else:
            # The database is not taking writes and the call's row waits in the spool
            # (store/spool.py): pop what the service knows; history still comes from
            # the calls already on disk.
            assert live is not None  # both None returned above
            d = {"line": live.line, "priority": live.priority, "caller": live.caller,
                 "display_name": "", "location": None, "flags": list(live.flags),
                 "arrived_at": live.arrived_at, "answered_at": live.first_answered_at,
                 "incident_number": live.incident_number, "grade": None}
        return {
            "call_id": call_id, "line": d["line"], "priority": d["priority"],
            "caller": d["caller"], "display_name": d["display_name"], "line_type": None,
            "location": d["location"],
            "location_accuracy": (d.get("location_detail") or {}).get("accuracy"),
            "caller_normalised": d.get("caller_normalised") or "",
            "location_detail": d.get("location_detail"),
            "flags": d["flags"] or [], "arrived_at": d["arrived_at"],
            "answered_at": d["answered_at"], "held": bool(live and live.on_hold),
            "incident_number": d["incident_number"], "grade": d["grade"],
            "queue_history": [{"at": at, "event": "queued", "position": pos}
                              for at, pos in (live.positions if live else [])],
            "previous_calls": self._previous_or_none(d["caller"], call_id,
                                                     d.get("caller_normalised"))
            if history else None,
            "transcript": list(s.live_transcripts.get(call_id, [])),
            "location_view": location_view(d["location"], d.get("location_detail"),
                                           s.settings.web.map_url),
            "draft": self._draft(call_id),
            "graded": bool(d.get("grade")),
        }

    def _previous_or_none(self, number: str, call_id: str,
                          normalised: str | None) -> list[dict[str, Any]] | None:
        """The screen-pop's earlier calls; None (not known now) while the store is away."""
        try:
            return self._previous(number, 10, exclude=call_id, normalised=normalised)
        except self.s.db.Error:
            return None

    async def handler_view(self, handler_id: str) -> dict[str, Any]:
        s = self.s
        h = self._handler(handler_id)
        cfg = s.handlers.get(handler_id)
        now = time.time()
        try:
            rows = s.db.query(
                "SELECT COUNT(*) n, COALESCE(SUM(talk),0) talk FROM calls "
                "WHERE handler_id=? AND arrived_at>=? AND answered_at IS NOT NULL",
                (handler_id, midnight(now)))
            n, talk = rows[0]["n"], rows[0]["talk"]
        except s.db.Error:  # the store away: today's figures are not known now
            n, talk = 0, 0.0
        offer = call = wrap = None
        for c in s.calls.values():
            if c.handler_id == handler_id and c.state == "offered":
                offer = self._card(c.call_id)
            elif c.handler_id == handler_id and c.state == "connected":
                call = self._card(c.call_id)
        wrap_id = s.wrapup_calls.get(handler_id)
        due = h.get("grading_due")
        if wrap_id and desk_state_name(h.get("state")) == "wrapup":
            wrap = self._card(wrap_id)
        elif due:
            wrap = self._card(due)   # on a break with a grading still due: keep it in view
        for card in (offer, call, wrap):   # another handler's typing is not mine to send
            if card and card["draft"] and card["draft"].get("handler_id") != handler_id:
                card["draft"] = None
        wline = s.lines.get((wrap or {}).get("line") or (call or {}).get("line") or "")
        return {"at": now, "handler_id": handler_id, "name": cfg.name if cfg else handler_id,
                "state": desk_state_name(h.get("state")), "reason": h.get("reason") or "",
                "since": h.get("since"), "skills": h.get("skills") or {},
                "today": {"calls": n, "talk": talk, "avg_talk": (talk / n) if n else 0.0,
                          "rejected": s.rejected_today.get(handler_id, 0)},
                "offer": offer, "call": call, "wrapup": wrap,
                "wrapup_deadline": h.get("wrapup_deadline"),
                "wrapup_extended": h.get("wrapup_extended") or 0.0,
                "wrapup_extend_max": (s.router.lines[wline.name].wrapup_extend_max
                                      if wline is not None else 0.0),
                "grading_required": bool(getattr(wline, "grading_required", False)),
                "grading_due": due, "after_call": h.get("after_call"),
                "consult_numbers": sorted(s.settings.consult_numbers),
                "drafts": self._drafts(handler_id, {(c or {}).get("call_id")
                                                    for c in (offer, call, wrap)})}

    def _drafts(self, handler_id: str, shown: set[Any]) -> list[dict[str, Any]]:
        """Gradings this handler typed and has not saved, for calls no longer on screen
        (the wrap-up ran out): they stay with their call until saved."""
        out = []
        for d in self._handler_drafts(handler_id):
            cid = d["call_id"]
            if cid in shown:
                continue
            row = self.s.db.query_one("SELECT caller, line FROM calls WHERE call_id=?", (cid,))
            out.append({"call_id": cid, "caller": row["caller"] if row else "",
                        "line": row["line"] if row else "", "at": d.get("at"),
                        "draft": {k: d.get(k) for k in ("thrive", "grade", "notes")}})
        return out

    # ------------------------------------------------------------------ handler actions
    async def set_handler_state(self, handler_id: str, state: str, reason: str = "",
                                by: str | None = None) -> None:
        """``by``: the supervisor acting (may end a wrap-up whose grading is due: logged).
        A handler on a call asking for not ready is not ready after the call; asking for
        available then withdraws that request."""
        s = self.s
        h = self._handler(handler_id)
        now = time.time()
        on_call = h.get("state") == "on_call"
        try:
            if on_call and state == "not_ready":
                actions = await self._decide("not_ready_after_call", handler_id, now,
                                             reason=reason or "not ready")
            elif on_call and state == "available" and h.get("after_call") is not None:
                actions = await self._decide("not_ready_after_call", handler_id, now,
                                             reason=None)
            elif state == "available":
                actions = await self._decide(
                    "set_available", handler_id, now,
                    reason=f"set by {by}: {reason}" if by else "", force=by is not None)
            elif state == "not_ready":
                actions = await self._decide("set_not_ready", handler_id, now,
                                             reason=reason or "not ready")
            elif state == "logged_out":
                actions = await self._decide("handler_logout", handler_id, now,
                                             reason=reason or "logout")
            else:
                raise Invalid(f"state must be available, not_ready or logged_out, got {state!r}")
        except Exception as exc:
            if isinstance(exc, DeskError):
                raise
            raise Conflict(str(exc)) from None
        s._apply(actions)

    async def _decide(self, method: str, *args: Any, then: Callable[[], None] | None = None,
                      **kwargs: Any) -> list[Any]:
        """One routing decision a desk operation asks for: the router's ``method``.

        One node: the router's actions at once (its refusal raised as it comes). Global
        queue: sent to the routing leader with a request id (``controlroom.asks``) and its
        answer awaited, ``LEADER_WAIT`` s at most; its refusal is raised as the same
        ``RoutingError`` one node raises, ``then`` (the node's own part) runs when it is
        applied, and no answer in time raises :class:`Pending` (the request stays open:
        ``then`` still runs if the leader applies it later). The leader's actions come
        through the bus: returns []."""
        s = self.s
        gq = getattr(s, "global_queue", None)
        if gq is None:
            actions: list[Any] = getattr(s.router, method)(*args, **kwargs)
            if then is not None:
                then()
            return actions
        req, fut = gq.asks.open(then)
        gq.send("call", {"method": method, "args": list(args), "kwargs": kwargs, "req": req})
        try:
            await asyncio.wait_for(asyncio.shield(fut), LEADER_WAIT)
        except TimeoutError:
            fut.add_done_callback(_retrieve)
            raise Pending(f"pending: sent to the routing leader, no answer within "
                          f"{LEADER_WAIT:g} s (it is applied or refused when the leader "
                          f"reads it)") from None
        return []

    def _offered(self, handler_id: str, call_id: str) -> Any:
        call = self.s.calls.get(call_id)
        if call is None:
            raise NotFound(f"no live call {call_id!r}")
        if call.handler_id != handler_id or call.state != "offered":
            raise Conflict("this call is no longer ringing on your phone")
        return call

    async def accept_offer(self, handler_id: str, call_id: str) -> None:
        self._offered(handler_id, call_id)
        self.s._fanout({"type": "call.accepted_on_screen", "call_id": call_id,
                        "handler_id": handler_id, "at": time.time()})

    async def reject_offer(self, handler_id: str, call_id: str, reason: str = "") -> None:
        s = self.s
        call = self._offered(handler_id, call_id)
        leg_id = call.leg_id
        call.leg_id, call.handler_id, call.state = None, None, "queued"
        if leg_id:
            s.engine.cancel_offer(leg_id)
        s.rejected_today[handler_id] = s.rejected_today.get(handler_id, 0) + 1
        now = time.time()
        s._record(ev.CallOfferFailed(call_id=call_id, at=now, line=call.line,
                                     handler_id=handler_id, reason="rejected"))
        s._apply(s.router.offer_failed(call_id, handler_id, now, reason="rejected",
                                       note=reason.strip()[:200]))

    def _connected(self, call_id: str) -> Any:
        call = self.s.calls.get(call_id)
        if call is None:
            raise NotFound(f"no live call {call_id!r}")
        if call.state != "connected":
            raise Conflict(f"call is {call.state}, not connected")
        return call

    async def hold(self, call_id: str, on: bool) -> None:
        call = self._connected(call_id)
        self.s.engine.hold(call_id, on)
        call.on_hold = on
        if not on:
            self.s.monitors.reapply(call_id)
        self.s._fanout({"type": "call.hold", "call_id": call_id, "on_hold": on,
                        "by": "handler", "at": time.time()})

    async def transfer(self, call_id: str, *, to_line: str | None = None,
                       to_handler: str | None = None, confirm: bool = False) -> None:
        s = self.s
        if (to_line is None) == (to_handler is None):
            raise Invalid("give exactly one of to_line or to_handler")
        if to_line is not None and to_line not in s.lines:
            raise Invalid(f"unknown line {to_line!r}")
        if to_handler is not None and to_handler not in s.handlers:
            raise Invalid(f"unknown handler {to_handler!r}")
        call = self._connected(call_id)
        if to_line is not None and s.lines[to_line].priority > call.priority and not confirm:
            raise Conflict(f"this is a line {call.line} call: moving it to the {to_line} queue "
                           f"needs confirming (it keeps its priority there)")
        if getattr(s, "global_queue", None) is None:
            try:
                s.transfer(call, to_line=to_line, to_handler=to_handler)
            except RoutingError as exc:  # refused before anything moved
                raise Conflict(str(exc)) from None
            return

        def here() -> None:
            # the leader moved it: unbridge here, before its next offer of this call
            live = s.calls.get(call_id)
            if live is not None and live is call and live.state == "connected":
                s.transfer(live, to_line=to_line, to_handler=to_handler, decided=[])

        now = time.time()
        try:
            if to_line is not None:
                await self._decide("transfer_to_line", call_id, to_line, now, head=True,
                                   then=here)
            else:
                await self._decide("transfer_to_handler", call_id, to_handler, now, then=here)
        except RoutingError as exc:
            raise Conflict(str(exc)) from None

    async def consult(self, call_id: str, handler_id: str, step: str,
                      agency: str = "") -> dict[str, Any]:
        """Consult another agency on my call: ``call`` (with ``agency``: the caller is held
        and hears the prompt, the agency's number rings), then ``conference``,
        ``transfer``, ``consult`` or ``return``. See controlroom.consult."""
        from controlroom.consult import ConsultError

        s = self.s
        if call_id not in s.calls:
            raise NotFound(f"no live call {call_id!r}")
        try:
            c = (s.consults.start(call_id, handler_id, agency) if step == "call"
                 else s.consults.step(call_id, handler_id, step))
        except ConsultError as exc:
            raise Conflict(str(exc)) from None
        return {"call_id": call_id, "agency": c.agency, "step": c.step}

    def consult_numbers(self) -> list[str]:
        return sorted(self.s.settings.consult_numbers)

    async def end_call(self, call_id: str) -> None:
        call = self._connected(call_id)
        call.ended_by, call.end_reason = "handler", "ended from the desk"
        self.s.engine.hangup(call_id, "ended from the desk")

    async def wrapup(self, call_id: str, handler_id: str, thrive: dict[str, str],
                     grade: str, notes: str) -> None:
        s = self.s
        row = s.db.query_one("SELECT line, handler_id FROM calls WHERE call_id=?", (call_id,))
        if row is None:
            raise NotFound(f"no call {call_id!r}")
        if row["handler_id"] != handler_id:
            raise Conflict("this call was not answered by you")
        unknown = set(thrive) - set(THRIVE_KEYS)
        if unknown:
            raise Invalid(f"unknown THRIVE field {sorted(unknown)[0]!r}")
        if not grade and not notes.strip() and not any(v.strip() for v in thrive.values()):
            raise Invalid("nothing to save: the grading is empty")
        line = s.lines.get(row["line"])
        if getattr(line, "grading_required", False) and not graded_complete(thrive, grade):
            raise Invalid("this line needs a grade and every THRIVE field")
        now = time.time()
        s._record(ev.CallWrapUp(call_id=call_id, at=now, handler_id=handler_id, thrive=thrive,
                                grade=grade, notes=notes),
                  lambda conn: calls_table.update(conn, call_id, thrive=thrive,
                                                  grade=grade or None, notes=notes),
                  line=row["line"])
        s.grading_drafts.pop(call_id, None)
        try:
            drafts_table.delete(s.db, call_id)
        except s.db.Error:
            pass   # the row is dropped on the next saved grading or draft of this call
        if graded_complete(thrive, grade):
            s._apply(s.router.graded(handler_id, call_id, now))

    async def save_draft(self, call_id: str, handler_id: str, draft: dict[str, Any]) -> None:
        """Keep what the handler is typing with the call it belongs to (until saved)."""
        s, now = self.s, time.time()
        try:
            drafts_table.save(s.db, call_id, handler_id, draft, now)
        except s.db.Error:
            s.grading_drafts[call_id] = {**{k: draft[k] for k in drafts_table.FIELDS
                                            if k in draft}, "handler_id": handler_id, "at": now}
        else:
            s.grading_drafts.pop(call_id, None)

    async def set_wrapup_limit(self, line: str, seconds: float, by: str) -> None:
        if line not in self.s.lines:
            raise NotFound(f"no line {line!r}")
        try:
            actions = await self._decide("set_wrapup_limit", line, time.time(),
                                         seconds=seconds, by=by)
        except DeskError:
            raise
        except Exception as exc:
            raise Invalid(str(exc)) from None
        self.s._apply(actions)

    async def extend_wrapup(self, handler_id: str, seconds: float) -> None:
        self._handler(handler_id)
        try:
            actions = await self._decide("extend_wrapup", handler_id, time.time(),
                                         seconds=seconds)
        except DeskError:
            raise
        except Exception as exc:
            raise Conflict(str(exc)) from None
        self.s._apply(actions)

    async def end_wrapup(self, handler_id: str) -> None:
        s = self.s
        self._handler(handler_id)
        try:
            actions = await self._decide("end_wrapup", handler_id, time.time())
        except DeskError:
            raise
        except Exception as exc:
            raise Conflict(str(exc)) from None
        s._apply(actions)

    # ------------------------------------------------------------------ call-backs
    async def callbacks(self) -> list[dict[str, Any]]:
        # The router's order (first abandon) is kept: taking one never moves a row.
        out = []
        for cb in self.s.router.callbacks():
            d = dataclasses.asdict(cb)
            d["state"] = {"pending": "open"}.get(d["state"], d["state"])
            d["abandoned_at"] = d.pop("at")
            d["last_at"] = cb.last_at
            d["taken_by"] = d.get("handler_id")
            out.append(d)
        return out

    async def _cb_call(self, method: str, cb_id: str, *args: Any, **kw: Any) -> None:
        try:
            actions = await self._decide(method, cb_id, *args, **kw)
        except DeskError:
            raise
        except Exception as exc:
            if "unknown call-back" in str(exc):
                raise NotFound(f"no call-back {cb_id!r}") from None
            raise Conflict(str(exc)) from None
        self.s._apply(actions or [])
        self.s._fanout({"type": "call.callback_changed", "call_id": "", "cb_id": cb_id,
                        "at": time.time()})

    async def release_callback(self, cb_id: str, by: str | None) -> None:
        await self._cb_call("release_callback", cb_id, time.time(), by=by)

    async def take_callback(self, cb_id: str, handler_id: str) -> None:
        await self._cb_call("take_callback", cb_id, handler_id, time.time())

    async def dial_callback(self, cb_id: str, handler_id: str) -> str:
        """Click-to-dial a call-back this handler took (controlroom.dialout); returns the
        new call's id."""
        from controlroom.dialout import DialError

        try:
            return self.s.dialouts.dial(cb_id, handler_id)
        except DialError as exc:
            if "no call-back" in str(exc):
                raise NotFound(str(exc)) from None
            raise Conflict(str(exc)) from None

    async def complete_callback(self, cb_id: str, outcome: str, by: str | None = None) -> None:
        """``by``: the handler closing it (must have taken it); None: a supervisor."""
        if not outcome.strip():
            raise Invalid("an outcome is required")
        await self._cb_call("complete_callback", cb_id, time.time(), outcome=outcome, by=by)

    # ------------------------------------------------------------------ supervisor
    async def reprioritise(self, call_id: str, priority: float) -> None:
        s = self.s
        if call_id not in s.calls:
            raise NotFound(f"no live call {call_id!r}")
        try:
            actions = await self._decide("reprioritise", call_id, time.time(),
                                         priority=priority)
        except DeskError:
            raise
        except Exception as exc:
            raise Conflict(str(exc)) from None
        s._apply(actions)

    async def monitor(self, call_id: str, supervisor: str, mode: str,
                      phone: str = "") -> dict[str, Any]:
        """Listen to, whisper to or barge into a connected call (``mode`` "stop" ends it):
        the supervisor's phone (``phone``, else that of the handler entry with their user
        name) rings into the call. See controlroom.monitor."""
        from controlroom.monitor import MonitorError

        s = self.s
        if call_id not in s.calls:
            raise NotFound(f"no live call {call_id!r}")
        try:
            if mode == "stop":
                s.monitors.stop(call_id, supervisor)
                return {"state": "stopping"}
            if not phone:
                cfg = next((h for h in s.settings.handlers
                            if supervisor in (h.id, h.user)), None)
                if cfg is None:
                    raise Invalid(f"no phone known for {supervisor!r}: give one")
                phone = cfg.phone
            return s.monitors.start(call_id, supervisor, phone, mode).view()
        except MonitorError as exc:
            raise Conflict(str(exc)) from None

    async def set_skills(self, handler_id: str, skills: dict[str, int]) -> None:
        self._handler(handler_id)
        for k, v in skills.items():
            if not isinstance(v, int) or not 1 <= v <= 10:
                raise Invalid(f"proficiency of {k!r} must be an integer 1..10")
        try:
            actions = await self._decide("set_skills", handler_id, time.time(), skills=skills)
        except DeskError:
            raise
        except Exception as exc:
            raise Conflict(str(exc)) from None
        self.s._apply(actions)

    # ------------------------------------------------------------------ auditor
    async def call_detail(self, call_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._call_detail, call_id)

    def _call_detail(self, call_id: str) -> dict[str, Any]:
        from transcription import get_transcript

        s = self.s
        conn = s.db.connect_reader()
        try:
            row = conn.execute("SELECT * FROM calls WHERE call_id=?", (call_id,)).fetchone()
            if row is None:
                raise NotFound(f"no call {call_id!r}")
            call = calls_table.to_dict(row)
            timeline = [{"at": r["at"], "event": r["event"], "handler_id": r["handler_id"],
                         "data": json.loads(r["data"]) if r["data"] else {}}
                        for r in conn.execute(
                            "SELECT at, event, handler_id, data FROM queue_log "
                            "WHERE call_id=? ORDER BY id", (call_id,))]
        finally:
            conn.close()
        transcript = get_transcript(getattr(s, "transcripts_db", s.db), call_id)
        segments = (transcript or {}).get("segments", [])
        rec = None
        if call.get("recording_path"):
            rec = {"recording_id": Path(call["recording_path"]).stem,
                   "sha256": call["recording_sha256"], "duration": call["recording_duration"]}
        return {"call": call, "timeline": timeline, "transcript": segments, "recording": rec}

    def _previous(self, number: str, limit: int, *, exclude: str | None = None,
                  normalised: str | None = None) -> list[dict[str, Any]]:
        """Earlier calls from this caller: the same number as given, or the same E.164
        form (``+447700900123`` and ``07700900123`` are one caller)."""
        if not number:
            return []
        norm = normalised or normalise(number, country_code=self.s.settings.sip.country_code)
        if not norm and not any(ch.isdigit() for ch in number):
            return []  # withheld ("anonymous"): other withheld callers are not this one
        rows = self.s.db.query(
            "SELECT call_id, arrived_at, line, state, incident_number, grade, handler_id, flags "
            "FROM calls WHERE (caller=? OR (?<>'' AND caller_normalised=?)) AND call_id != ? "
            "ORDER BY arrived_at DESC LIMIT ?",
            (number, norm, norm, exclude or "", limit))
        return [{"call_id": r["call_id"], "arrived_at": r["arrived_at"], "line": r["line"],
                 "outcome": r["state"], "incident_number": r["incident_number"],
                 "grade": r["grade"], "handler_id": r["handler_id"],
                 "markers": json.loads(r["flags"] or "[]")} for r in rows]

    async def previous_calls(self, number: str, limit: int = 10) -> list[dict[str, Any]]:
        return self._previous(number, limit)

    async def search(self, query: str, **filters: Any) -> list[dict[str, Any]]:
        from transcription import TranscriptSearch

        def run() -> list[dict[str, Any]]:
            hits = TranscriptSearch(getattr(self.s, "transcripts_db", self.s.db)).search(
                query, line=filters.get("line"), caller=filters.get("number"),
                handler_id=filters.get("handler"), since=filters.get("date_from"),
                until=filters.get("date_to"), incident=filters.get("incident"),
                limit=int(filters.get("limit") or 20), before=filters.get("before"))
            out = []
            for h in hits:
                d = h if isinstance(h, dict) else dict(vars(h))
                out.append(d)
            # the hits, saying how far back the search looked (SearchResult.coverage())
            return type(hits)(out, **hits.coverage_fields()) if hasattr(hits, "coverage_fields") else out

        try:
            return await asyncio.to_thread(run)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    async def recording_file(self, call_id: str) -> tuple[Path, str]:
        row = self.s.db.query_one(
            "SELECT recording_path, recording_sha256 FROM calls WHERE call_id=?", (call_id,))
        if row is None:
            raise NotFound(f"no call {call_id!r}")
        if not row["recording_path"]:
            raise NotFound("this call has no sealed recording yet")
        return Path(row["recording_path"]), row["recording_sha256"]

    # ------------------------------------------------------------------ live
    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        # After an overflow the queue yields {"type": "resync"}: the console refetches.
        async with self.s.subscription() as q:
            while (item := await q.get()) is not None:
                yield item
