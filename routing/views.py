"""The router's read side and call-back list (mixed into :class:`routing.router.Router`).

Positions, estimated waits, snapshot for the desk and wallboard, service level, and
the call-back list of abandoned calls. Reads never change routing state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .actions import Action, Callback
from .errors import RoutingError
from .model import Call, CallState, Handler, HandlerState, LineSpec
from .policy import AvailablePool
from .queue import CallQueue, effective
from .stats import LineRecords, OpenLegs, ServiceLevel


class RouterViews:
    """Read side of the router; see Router (which owns every attribute below)."""

    lines: dict[str, LineSpec]
    calls: dict[str, Call]
    handlers: dict[str, Handler]
    queue: CallQueue
    pool: AvailablePool
    ageing_cap: float
    default_handle_time: float
    _direct: dict[str, list[Call]]
    _staffed: dict[str, int]
    _handle_times: dict[str, deque[float]]
    _records: dict[str, LineRecords]
    _open: dict[str, OpenLegs]
    _callbacks: dict[str, Callback]
    _now: float

    if TYPE_CHECKING:
        def _clock(self, now: float) -> float: ...
        def _line(self, name: str) -> LineSpec: ...
        def _handler(self, handler_id: str) -> Handler: ...
        @staticmethod
        def _log(out: list[Action], now: float, call_id: str, line: str, handler_id: str,
                 event: str, **data: Any) -> None: ...

    # -- positions and estimates (also used when announcing Queued) -----------
    def _position(self, call: Call) -> int | None:
        if call.state is CallState.OFFERED:
            return 0
        if call.state is not CallState.QUEUED:
            return None
        if call.target is not None:
            return self._direct[call.target].index(call) + 1
        return self.queue.position(call, self._now)

    def _aht(self, line: str) -> float:
        samples = self._handle_times[line]
        return sum(samples) / len(samples) if samples else self.default_handle_time

    def _estimate(self, call: Call, position: int | None = None) -> float | None:
        """Seconds until offered: calls ahead beyond the free handlers, times the line's
        moving-average handle time, shared by the handlers staffing the skill."""
        if call.state is CallState.OFFERED:
            return 0.0
        if call.state is not CallState.QUEUED or call.target is not None:
            return None
        skill = self.lines[call.line].skill
        staffed = self._staffed.get(skill, 0)
        if staffed <= 0:
            return None
        p = position if position is not None else self._position(call) or 1
        ahead = max(0, p - self.pool.count.get(skill, 0))
        return ahead * self._aht(call.line) / staffed

    def position(self, call_id: str) -> int | None:
        """1-based place among calls competing for the same handlers; 0 while ringing;
        None when connected or unknown."""
        call = self.calls.get(call_id)
        return None if call is None else self._position(call)

    def estimated_wait(self, call_id: str, now: float) -> float | None:
        """Estimated seconds until this call is offered; None if unknown."""
        self._clock(now)
        call = self.calls.get(call_id)
        return None if call is None else self._estimate(call)

    # -- figures --------------------------------------------------------------
    def service_level(self, line: str, now: float, *, since: float | None = None,
                      until: float | None = None) -> ServiceLevel:
        """Live service level of ``line`` over ``[since, until)`` (default: everything
        retained); ``waiting``/``longest_wait`` are always as of ``now``. See routing.stats."""
        now = self._clock(now)
        self._line(line)
        return self._records[line].compute(since=since, until=until, now=now,
                                           open_entered=self._open[line])

    def snapshot(self, now: float, *, limit: int | None = 100) -> dict[str, Any]:
        """Everything the desk and wallboard show, JSON-able.

        Per line: up to ``limit`` queued calls in offer order (None: all; the cost is
        O(limit x buckets) plus one pass over live calls), ``waiting_count`` (all queued),
        every ringing or directed call, and the service level.
        """
        now = self._clock(now)
        waiting: dict[str, list[dict[str, Any]]] = {n: [] for n in self.lines}
        for skill in self.queue.skills():
            lines_of_skill = [n for n, spec in self.lines.items() if spec.skill == skill]
            left = {n: limit for n in lines_of_skill}
            for pos, call in enumerate(self.queue.ordered(skill, now), start=1):
                if limit is not None:
                    if left[call.line] == 0:
                        if not any(left.values()):
                            break
                        continue
                    left[call.line] = (left[call.line] or 0) - 1
                waiting[call.line].append(self._call_view(call, now, pos))
        # ringing and directed calls: bounded by the number of handlers
        for h in self.handlers.values():
            if h.state is HandlerState.OFFERED and h.call_id is not None:
                call = self.calls[h.call_id]
                waiting[call.line].append(self._call_view(call, now, 0))
        for lst in self._direct.values():
            for call in lst:
                waiting[call.line].append(self._call_view(call, now, self._position(call)))
        lines = {}
        for name, spec in self.lines.items():
            sl = self._records[name].compute(since=None, now=now,
                                             open_entered=self._open[name])
            lines[name] = {
                "priority": spec.priority, "skill": spec.skill,
                "waiting_count": self.queue.per_line[name],
                "waiting": waiting[name],
                "service_level": sl.as_dict(),
                "estimated_handle_time": self._aht(name),
            }
        handlers = {h.handler_id: self._handler_view(h) for h in self.handlers.values()}
        return {"at": now, "lines": lines, "handlers": handlers,
                "callbacks": [cb.as_dict() for cb in self.callbacks()]}

    def handler_info(self, handler_id: str) -> dict[str, Any] | None:
        """One handler as in :meth:`snapshot` (cheap; None if never logged in)."""
        h = self.handlers.get(handler_id)
        return None if h is None else self._handler_view(h)

    @staticmethod
    def _handler_view(h: Handler) -> dict[str, Any]:
        return {"state": h.state.value, "reason": h.reason, "since": h.since,
                "call_id": h.call_id, "skills": dict(h.skills), "calls": h.calls,
                "idle_since": h.idle_since if h.state is HandlerState.AVAILABLE else None,
                "wrapup_deadline": h.wrapup_deadline, "wrapup_extended": h.wrapup_extended,
                "after_call": h.after_call, "grading_due": h.grading_due}

    def _call_view(self, call: Call, now: float, position: int | None) -> dict[str, Any]:
        spec = self.lines[call.line]
        return {"call_id": call.call_id, "caller": call.caller, "state": call.state.value,
                "position": position, "wait": now - call.entered,
                "priority": effective(call, spec, now, self.ageing_cap),
                "class": call.klass, "estimated_wait": self._estimate(call, position),
                "handler_id": call.handler_id, "target": call.target}

    # -- call-backs -----------------------------------------------------------
    # One entry per caller (``Call.caller_key``): a caller who abandons again while on
    # the list adds an attempt to their entry. The list is ordered by first abandon, which
    # never changes, so taking or releasing an entry never moves a row under the cursor.
    # Take, release and close are the owner's (or, with ``by=None``, a supervisor's).
    _cb_seq: int

    def callbacks(self) -> list[Callback]:
        """Open call-backs (pending and taken), oldest first abandon first (copies)."""
        return [replace(cb, attempts=[dict(a) for a in cb.attempts])
                for cb in sorted(self._callbacks.values(), key=lambda c: (c.at, c.cb_id))]

    def _callback_for(self, call: Call, now: float, wait: float) -> tuple[Callback, bool]:
        """The caller's open entry with this abandon added, or a new one; True if repeated."""
        attempt = {"call_id": call.call_id, "at": now, "wait": wait}
        if call.caller_key:
            for cb in self._callbacks.values():
                if cb.key == call.caller_key:
                    cb.attempts.append(attempt)
                    return cb, True
        self._cb_seq += 1
        cb = Callback(f"cb{self._cb_seq}", call.call_id, call.line, call.caller, now, wait,
                      key=call.caller_key, attempts=[attempt])
        self._callbacks[cb.cb_id] = cb
        return cb, False

    def _callback(self, cb_id: str) -> Callback:
        cb = self._callbacks.get(cb_id)
        if cb is None:
            raise RoutingError(f"unknown call-back {cb_id!r}")
        return cb

    @staticmethod
    def _owned(cb: Callback, by: str | None, event: str) -> None:
        if by is None:
            return   # a supervisor
        if cb.state != "taken":
            raise RoutingError(f"call-back {cb.cb_id!r} is {cb.state}: take it before you "
                               f"{event} it", state=cb.state, event=event)
        if cb.handler_id != by:
            raise RoutingError(f"call-back {cb.cb_id!r} is taken by {cb.handler_id!r}, "
                               f"not {by!r}", state=cb.state, event=event)

    def take_callback(self, cb_id: str, handler_id: str, now: float) -> list[Action]:
        """A handler takes a pending call-back (they will ring the caller)."""
        now = self._clock(now)
        cb = self._callback(cb_id)
        h = self._handler(handler_id)
        if h.state is HandlerState.LOGGED_OUT:
            raise RoutingError(f"handler {handler_id!r} is logged_out: cannot take a call-back",
                               state=h.state.value, event="take_callback")
        if cb.state != "pending":
            raise RoutingError(f"call-back {cb_id!r} is {cb.state} by {cb.handler_id!r}",
                               state=cb.state, event="take_callback")
        cb.state, cb.handler_id, cb.taken_at = "taken", handler_id, now
        out: list[Action] = []
        self._log(out, now, cb.call_id, cb.line, handler_id, "CALLBACK_TAKE", cb_id=cb_id)
        return out

    def release_callback(self, cb_id: str, now: float, *, by: str | None) -> list[Action]:
        """Give a taken call-back back to the list (its place is unchanged). ``by``: the
        handler releasing it (must own it), or None for a supervisor."""
        now = self._clock(now)
        cb = self._callback(cb_id)
        if cb.state != "taken":
            raise RoutingError(f"call-back {cb_id!r} is {cb.state}: nothing to release",
                               state=cb.state, event="release")
        self._owned(cb, by, "release")
        out: list[Action] = []
        self._log(out, now, cb.call_id, cb.line, cb.handler_id or "", "CALLBACK_RELEASE",
                  cb_id=cb_id, by=by or "supervisor")
        cb.state, cb.handler_id, cb.taken_at = "pending", None, None
        return out

    def complete_callback(self, cb_id: str, now: float, *, outcome: str,
                          by: str | None = None) -> list[Action]:
        """The call-back is done (``outcome`` e.g. ``reached``, ``no-reply``); removed.
        ``by``: the handler closing it (must have taken it), or None for a supervisor."""
        now = self._clock(now)
        cb = self._callback(cb_id)
        if not isinstance(outcome, str) or not outcome:
            raise RoutingError("outcome must be a non-empty string")
        self._owned(cb, by, "close")
        del self._callbacks[cb_id]
        cb.state, cb.outcome = "done", outcome
        out: list[Action] = []
        self._log(out, now, cb.call_id, cb.line, cb.handler_id or "", "CALLBACK_DONE",
                  cb_id=cb_id, outcome=outcome, by=by or "supervisor")
        return out
