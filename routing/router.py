"""The routing core: queue, offers, handlers, wrap-up, transfers, call-backs, statistics.

Theory of operation: :class:`Router` is a sans-I/O state machine (STYLE.md §1). Every
method takes ``now`` (epoch seconds from the caller) and returns the list of actions the
service must apply, in order (``routing.actions``). Nothing here sleeps, reads a clock or
does I/O. Timers (ring-no-answer, wrap-up end) are due at :meth:`Router.next_deadline`;
the service calls :meth:`Router.tick` then.

Decisions: after every event the router runs :meth:`_dispatch`, which repeatedly takes
the single most urgent waiting call that some available handler can take (class first,
then ageing, then arrival; see ``routing.queue``) and offers it to the handler the policy
prefers for that call's skill. It stops when no waiting call has an available handler
with its skill. Hence: a call of a less urgent class is never offered while a more urgent
one waits for a handler who could take it, and every call is offered to at most one
handler at a time (a handler holds at most one offer or call: ``Handler.call_id``).

Failure semantics: an offer that fails (ring-no-answer timeout, rejected, busy,
unreachable) puts the call back in its OLD place (same ``seq``) and offers it again at
once if someone else can take it. A stale ``offer_failed`` (the router already cancelled
that offer) is ignored and returns ``[]``; a stale ``offer_answered`` raises
:class:`RoutingError` so the service hangs up the handler's leg.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

from .actions import (
    Abandoned,
    Action,
    Callback,
    CancelOffer,
    Completed,
    Connected,
    HandlerChanged,
    Offer,
    Queued,
    QueueLogEntry,
    Reject,
)
from .errors import RoutingError
from .model import (
    DEFAULT_AGEING_CAP,
    TERMINAL,
    Call,
    CallState,
    Handler,
    HandlerState,
    LineSpec,
    call_move,
    check_skills,
    handler_move,
)
from .policy import AvailablePool, make_policy
from .queue import CallQueue, effective, order_key
from .restore import RouterRestore
from .stats import (
    LineRecords,
    OpenLegs,
    record_abandon,
    record_answer,
    record_enter,
    record_reject,
)
from .transfers import RouterTransfers
from .views import RouterViews

HS = HandlerState
CS = CallState
STAFFED = frozenset({HS.AVAILABLE, HS.OFFERED, HS.ON_CALL, HS.WRAP_UP})
"""States in which a handler counts as staffing their skills (estimated wait)."""
OFFER_FAIL_REASONS = ("no-answer", "rejected", "busy", "unreachable", "cancelled", "error")
"""Why an offer failed: the values of ``telephony.api.LegFailed.reason``."""
_ENDED_MEMORY = 100_000
"""Terminal call ids remembered to refuse a reused id with a clear error."""


class Router(RouterTransfers, RouterViews, RouterRestore):
    """Priority ACD for the control room. See the module docstring and routing_api.md."""

    def __init__(self, *, lines: list[LineSpec], offer_timeout: float = 15.0,
                 strategy: str = "longest-idle", rona_not_ready: bool = True,
                 ageing_cap: float = DEFAULT_AGEING_CAP, default_handle_time: float = 180.0,
                 handle_time_samples: int = 20, stats_retention: float = 7 * 86400.0,
                 transfer_timeout: float = 60.0) -> None:
        if not lines:
            raise RoutingError("at least one line is required")
        self.lines: dict[str, LineSpec] = {}
        for line in lines:
            line.validate()
            if line.name in self.lines:
                raise RoutingError(f"duplicate line {line.name!r}")
            self.lines[line.name] = line
        if not 0.0 <= ageing_cap < 1.0:
            raise RoutingError(f"ageing_cap must be in [0, 1), got {ageing_cap}")
        if offer_timeout <= 0 or transfer_timeout <= 0:
            raise RoutingError(f"offer_timeout and transfer_timeout must be positive, got "
                               f"{offer_timeout} and {transfer_timeout}")
        self.offer_timeout = offer_timeout
        self.rona_not_ready = rona_not_ready
        self.ageing_cap = ageing_cap
        self.default_handle_time = default_handle_time
        self.stats_retention = stats_retention
        self.transfer_timeout = transfer_timeout
        """A directed transfer not yet offered after this long joins its line's queue."""
        self.policy = make_policy(strategy)
        self.calls: dict[str, Call] = {}
        """Live calls (queued, offered, connected)."""
        self.handlers: dict[str, Handler] = {}
        self.queue = CallQueue(self.lines, ageing_cap)
        self.pool = AvailablePool(self.policy, self.handlers)
        self._direct: dict[str, list[Call]] = {}
        """Directed transfers waiting for a named handler, by handler, in (class, seq) order."""
        self._seq = 0
        self._head_seq = 0
        self._timers: list[tuple[float, int, str, str, str]] = []
        self._timer_seq = 0
        self._ended: OrderedDict[str, CallState] = OrderedDict()
        self._records = {n: LineRecords(n, s.answer_threshold) for n, s in self.lines.items()}
        self._open: dict[str, OpenLegs] = {n: OpenLegs() for n in self.lines}
        """Unanswered legs (queued or ringing) per line: call id -> leg start."""
        self._handle_times = {n: deque[float](maxlen=handle_time_samples) for n in self.lines}
        self._logged_in: dict[str, int] = {}
        self._staffed: dict[str, int] = {}
        self._callbacks: dict[str, Callback] = {}
        self._cb_seq = 0
        self._now = 0.0

    @classmethod
    def from_settings(cls, lines: list[Any], routing: Any, **kw: Any) -> Router:
        """From ``config.Settings.lines`` and ``config.Settings.routing``."""
        return cls(lines=[LineSpec.from_settings(x) for x in lines],
                   offer_timeout=routing.offer_timeout, strategy=routing.strategy,
                   rona_not_ready=routing.rona_not_ready, **kw)

    # ------------------------------------------------------------------ helpers
    def _clock(self, now: float) -> float:
        if not isinstance(now, (int, float)) or not math.isfinite(now):
            raise RoutingError(f"now must be a finite number, got {now!r}")
        self._now = float(now)
        return self._now

    def _line(self, name: str) -> LineSpec:
        try:
            return self.lines[name]
        except (KeyError, TypeError):
            raise RoutingError(f"unknown line {name!r}") from None

    def _call(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            ended = self._ended.get(call_id)
            if ended is not None:
                raise RoutingError(f"call {call_id!r} is already {ended.value}",
                                   state=ended.value)
            raise RoutingError(f"unknown call {call_id!r}")
        return call

    def _handler(self, handler_id: str) -> Handler:
        h = self.handlers.get(handler_id)
        if h is None:
            raise RoutingError(f"unknown handler {handler_id!r}")
        return h

    @staticmethod
    def _log(out: list[Action], now: float, call_id: str, line: str, handler_id: str,
             event: str, **data: Any) -> None:
        out.append(QueueLogEntry(now, call_id, line, handler_id, event, data))

    def _timer(self, deadline: float, kind: str, ident: str, token: str) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, kind, ident, token))

    def _finish(self, call: Call, state: CallState) -> None:
        assert state in TERMINAL
        call.state = state
        del self.calls[call.call_id]
        self._ended[call.call_id] = state
        if len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    # ------------------------------------------------------------ handler state
    def _hset(self, h: Handler, new: HandlerState, now: float, out: list[Action], *,
              reason: str = "", call_id: str | None = None) -> None:
        """Every handler state change goes through here (counts, pool, log, action)."""
        old = h.state
        if old is HS.AVAILABLE:
            self.pool.discard(h)
        if (old in STAFFED) != (new in STAFFED):
            d = 1 if new in STAFFED else -1
            for s in h.skills:
                self._staffed[s] = self._staffed.get(s, 0) + d
        if (old is HS.LOGGED_OUT) != (new is HS.LOGGED_OUT):
            d = -1 if new is HS.LOGGED_OUT else 1
            for s in h.skills:
                self._logged_in[s] = self._logged_in.get(s, 0) + d
        h.version += 1
        h.state, h.reason, h.since = new, reason, now
        if new is HS.AVAILABLE:
            if old is not HS.AVAILABLE:
                h.idle_since = now
            self.pool.add(h)
        cid = call_id if call_id is not None else h.call_id
        self._log(out, now, cid or "", "", h.handler_id, "STATE", state=new.value,
                  reason=reason, **{"from": old.value})
        out.append(HandlerChanged(h.handler_id, new.value, reason, cid))

    def _leave_wrapup(self, h: Handler, now: float) -> None:
        """Record the handle time (talk + wrap-up) of the call just finished."""
        if h.handle_start is not None and h.handle_line is not None:
            self._handle_times[h.handle_line].append(now - h.handle_start)
        h.handle_start = h.handle_line = None
        h.wrapup_deadline = None
        h.wrapup_extended = 0.0

    def _start_wrapup(self, h: Handler, event: str, line: LineSpec, call_id: str,
                      now: float, out: list[Action]) -> None:
        handler_move(h.handler_id, h.state, event)
        h.call_id = None
        h.wrapup_extended = 0.0
        graded = h.graded_call == call_id
        h.graded_call = None
        h.grading_due = call_id if (line.grading_required and event == "end"
                                    and not graded) else None
        h.wrapup_line = line.name
        self._hset(h, HS.WRAP_UP, now, out, reason="", call_id=call_id)
        if line.wrapup <= 0 and h.grading_due is None:
            self._end_wrapup_now(h, now, out)
        elif line.wrapup > 0:
            h.wrapup_deadline = now + line.wrapup
            self._timer(h.wrapup_deadline, "wrapup", h.handler_id, "")

    def _end_wrapup_now(self, h: Handler, now: float, out: list[Action]) -> None:
        """Wrap-up is over: available, or not ready if the handler asked during the call."""
        self._leave_wrapup(h, now)
        if h.after_call is not None:
            reason, h.after_call = h.after_call, None
            self._hset(h, HS.NOT_READY, now, out, reason=reason)
        else:
            self._hset(h, HS.AVAILABLE, now, out)

    def _check_graded(self, h: Handler, force: bool) -> None:
        if h.grading_due is not None and not force:
            raise RoutingError(f"handler {h.handler_id!r} must save the grading of call "
                               f"{h.grading_due!r} first", state=h.state.value, event="ready")

    # ------------------------------------------------------------ queue moves
    def _enqueue(self, call: Call, now: float, out: list[Action], *,
                 overflow: str | None = None) -> None:
        """Put a QUEUED call in its place (line bucket or named handler) and announce it."""
        if call.target is not None:
            lst = self._direct.setdefault(call.target, [])
            lst.append(call)
            lst.sort(key=lambda c: (c.klass, c.seq))
        else:
            self.queue.add(call)
        line = self.lines[call.line]
        out.append(Queued(call.call_id, call.line, self._position(call) or 1,
                          self._estimate(call), overflow,
                          effective(call, line, now, self.ageing_cap)))

    def _unqueue(self, call: Call, *, position: bool = True) -> int:
        """Take a QUEUED call out of its place; returns the position it had (if asked)."""
        pos = (self._position(call) or 0) if position else 0
        if call.target is not None:
            lst = self._direct[call.target]
            lst.remove(call)
            if not lst:
                del self._direct[call.target]
        else:
            self.queue.remove(call)
        return pos

    def _offer(self, call: Call, h: Handler, now: float, out: list[Action]) -> None:
        directed = call.target is not None
        self._unqueue(call, position=False)
        call.state = call_move(call.call_id, call.state, "offer")
        handler_move(h.handler_id, h.state, "offer")
        call.handler_id = h.handler_id
        call.offer_deadline = now + self.offer_timeout
        h.call_id = call.call_id
        self._timer(call.offer_deadline, "offer", call.call_id, h.handler_id)
        wait = now - call.entered
        self._log(out, now, call.call_id, call.line, h.handler_id, "OFFER", wait=wait,
                  deadline=call.offer_deadline, transfer=directed)
        out.append(Offer(call.call_id, h.handler_id, call.line, wait, call.offer_deadline,
                         directed))
        self._hset(h, HS.OFFERED, now, out)

    def _detach_offer(self, call: Call, h: Handler) -> None:
        """The offer is over without answer; the caller then re-queues the call in its OLD
        place (its seq is unchanged) once the handler's new state is set."""
        call.state = call_move(call.call_id, call.state, "offer_failed")
        call.handler_id = None
        call.offer_deadline = None
        h.call_id = None
        # a directed transfer the target did not take goes to its line's queue, so the
        # caller is not left waiting on one handler who is not answering
        call.target = None

    def _alternative(self, call: Call) -> Handler | None:
        """The available handler the policy prefers for ``call`` other than the one it
        excludes (a linear scan: only transferred calls with an exclusion get here)."""
        skill = self.lines[call.line].skill
        hs = [h for h in self.handlers.values()
              if h.state is HS.AVAILABLE and skill in h.skills and h.handler_id != call.excluded]
        return min(hs, key=lambda h: (self.policy.key(h, skill), h.handler_id), default=None)

    def _dispatch(self, now: float, out: list[Action]) -> None:
        """Offer waiting calls to available handlers, most urgent call first.

        A call whose best handler is the one it excludes goes to the next handler the
        policy prefers; with none free it is set aside for this round (it keeps its place)
        so the calls behind it are not held up."""
        parked: list[Call] = []
        try:
            self._dispatch_round(now, out, parked)
        finally:
            for c in parked:
                self.queue.add(c)

    def _dispatch_round(self, now: float, out: list[Action], parked: list[Call]) -> None:
        cap = self.ageing_cap
        while True:
            best: tuple[Any, Call, Handler] | None = None
            for skill in self.queue.skills_waiting():
                h = self.pool.peek(skill)
                if h is None:
                    continue
                found = self.queue.best(skill, now)
                if found is None:
                    continue
                k = found[0]
                key = (k[0], 1, k[1], k[2], k[3])
                if best is None or key < best[0]:
                    best = (key, found[1], h)
            for hid, lst in self._direct.items():
                h = self.handlers[hid]
                if h.state is not HS.AVAILABLE:
                    continue
                c = lst[0]
                k = order_key(c, self.lines[c.line], now, cap)
                key = (k[0], 0, k[1], k[2], k[3])   # directed wins ties within its class
                if best is None or key < best[0]:
                    best = (key, c, h)
            if best is None:
                return
            call, h = best[1], best[2]
            # an exclusion steers only calls taken from the queue: a directed call names
            # its handler on purpose (and is not in the queue to be set aside)
            directed = best[0][1] == 0
            if (not directed and call.excluded is not None
                    and call.excluded == h.handler_id):
                alt = self._alternative(call)
                if alt is None:
                    self.queue.remove(call)
                    parked.append(call)
                    continue
                h = alt
            self._offer(call, h, now, out)

    # -------------------------------------------------------------------- calls
    def call_arrived(self, call_id: str, line: str, now: float, *,
                     caller: str = "", caller_key: str | None = None) -> list[Action]:
        """A call entered ``line``: Queued (+ Offer when someone can take it) or Reject.

        ``caller_key`` names the caller as one person for the call-back list (the service
        passes the E.164 form); default: ``caller`` when it holds a digit, else "" (a
        withheld caller is never merged with another)."""
        now = self._clock(now)
        if not isinstance(call_id, str) or not call_id:
            raise RoutingError(f"call_id must be a non-empty string, got {call_id!r}")
        if call_id in self.calls or call_id in self._ended:
            raise RoutingError(f"call {call_id!r} already exists")
        spec = self._line(line)
        out: list[Action] = []
        overflow = self._overflow(spec)
        if overflow is not None and spec.overflow == "busy" and spec.priority != 0:
            # 486 for a 101 caller; a priority-0 (999) call is never turned away
            out.extend(self.refused(call_id, line, now, caller=caller, reason=overflow))
            out.append(Reject(call_id, 486, overflow))
            return out
        self._seq += 1
        if caller_key is None:
            caller_key = caller if any(ch.isdigit() for ch in caller) else ""
        call = Call(call_id=call_id, line=line, caller=caller, arrived=now, entered=now,
                    seq=self._seq, klass=spec.priority, base=float(spec.priority),
                    caller_key=caller_key)
        self.calls[call_id] = call
        self._log(out, now, call_id, line, "", "ENTER", priority=spec.priority, caller=caller,
                  threshold=spec.answer_threshold, overflow=overflow, caller_key=caller_key)
        record_enter(self._records[line], now)
        self._open[line].add(call_id, now)
        self._enqueue(call, now, out, overflow=overflow)
        self._dispatch(now, out)
        return out

    def _overflow(self, spec: LineSpec) -> str | None:
        if spec.max_queue and self.queue.per_line[spec.name] >= spec.max_queue:
            return "queue-full"
        if not self._logged_in.get(spec.skill):
            return "no-handlers"
        return None

    def would_refuse(self, line: str) -> str | None:
        """Why a new call on ``line`` would be refused now (``queue-full``/``no-handlers``
        with ``overflow = "busy"``), or None. Pure: lets the telephony side answer 486
        before it answers the call; never refuses a priority-0 (999) line."""
        spec = self._line(line)
        overflow = self._overflow(spec)
        if overflow is not None and spec.overflow == "busy" and spec.priority != 0:
            return overflow
        return None

    def refused(self, call_id: str, line: str, now: float, *, caller: str = "",
                reason: str) -> list[Action]:
        """Record a call refused with 486 before it was answered (counts as offered and
        rejected on the line, and is written to the queue log)."""
        now = self._clock(now)
        spec = self._line(line)
        out: list[Action] = []
        self._log(out, now, call_id, line, "", "REJECTED", status=486, reason=reason,
                  threshold=spec.answer_threshold, caller=caller)
        record_reject(self._records[line], now)
        self._ended[call_id] = CS.REJECTED
        return out

    def call_abandoned(self, call_id: str, now: float) -> list[Action]:
        """The caller hung up while queued or ringing a handler."""
        now = self._clock(now)
        call = self._call(call_id)
        was = call.state
        call_move(call_id, was, "abandon")
        out: list[Action] = []
        position = 0
        if was is CS.QUEUED:
            position = self._unqueue(call)
        else:
            h = self.handlers[call.handler_id or ""]
            out.append(CancelOffer(call_id, h.handler_id, "caller-gone"))
            self._log(out, now, call_id, call.line, h.handler_id, "RINGCANCELED",
                      reason="caller-gone")
            handler_move(h.handler_id, h.state, "offer_cancelled")
            h.call_id = None
            self._hset(h, HS.AVAILABLE, now, out)
        spec = self.lines[call.line]
        wait = now - call.entered
        cb_id = None
        repeat = False
        if spec.callback_on_abandon:
            cb, repeat = self._callback_for(call, now, wait)
            cb_id = cb.cb_id
        self._log(out, now, call_id, call.line, "", "ABANDON", wait=wait, position=position,
                  callback=cb_id is not None)
        if cb_id is not None:
            self._log(out, now, call_id, call.line, "", "CALLBACK_ADD", cb_id=cb_id,
                      caller=call.caller, wait=wait, key=call.caller_key, repeat=repeat)
        record_abandon(self._records[call.line], now, wait)
        self._open[call.line].remove(call_id)
        out.append(Abandoned(call_id, call.line, wait, position, cb_id is not None, cb_id))
        self._finish(call, CS.ABANDONED)
        self._dispatch(now, out)
        return out

    def offer_answered(self, call_id: str, handler_id: str, now: float) -> list[Action]:
        """The handler picked up: Connected."""
        now = self._clock(now)
        call = self._call(call_id)
        h = self._handler(handler_id)
        if call.state is CS.OFFERED and call.handler_id != handler_id:
            raise RoutingError(f"call {call_id!r} is offered to {call.handler_id!r}, "
                               f"not {handler_id!r}", state=call.state.value, event="answer")
        call.state = call_move(call_id, call.state, "answer")
        handler_move(handler_id, h.state, "answer")
        out: list[Action] = []
        wait = now - call.entered
        call.connected_at = now
        call.offer_deadline = None
        call.excluded = None
        h.calls += 1
        h.handle_start, h.handle_line = now, call.line
        self._log(out, now, call_id, call.line, handler_id, "CONNECT", wait=wait)
        record_answer(self._records[call.line], now, wait)
        self._open[call.line].remove(call_id)
        out.append(Connected(call_id, handler_id, wait))
        self._hset(h, HS.ON_CALL, now, out)
        return out

    def offer_failed(self, call_id: str, handler_id: str, now: float, *,
                     reason: str, note: str = "") -> list[Action]:
        """The offer ended without answer; the call goes back to its old place.

        ``no-answer``: handler not ready "missed call" (or available if not
        ``rona_not_ready``); ``cancelled`` (we withdrew it; the handler did nothing):
        available; ``rejected``/``busy``/``unreachable``/``error``: handler not ready with
        that reason (a declining or broken phone is not offered the
        next call until the handler says they are ready again); ``note`` (why the handler
        rejected) is added to that reason: ``rejected: phone fault``.
        """
        now = self._clock(now)
        if reason not in OFFER_FAIL_REASONS:
            raise RoutingError(f"unknown offer failure reason {reason!r}; expected one of "
                               f"{', '.join(OFFER_FAIL_REASONS)}")
        call = self.calls.get(call_id)
        if call is None or call.state is not CS.OFFERED or call.handler_id != handler_id:
            if call is None and call_id not in self._ended:
                raise RoutingError(f"unknown call {call_id!r}")
            return []      # stale: that offer was already cancelled or answered
        out: list[Action] = []
        self._fail_offer(call, now, reason, out, cancel=False, note=note)
        self._dispatch(now, out)
        return out

    def _fail_offer(self, call: Call, now: float, reason: str, out: list[Action], *,
                    cancel: bool, note: str = "") -> None:
        h = self.handlers[call.handler_id or ""]
        if cancel:
            out.append(CancelOffer(call.call_id, h.handler_id, reason))
        self._log(out, now, call.call_id, call.line, h.handler_id,
                  "RINGNOANSWER" if reason == "no-answer" else "OFFERFAIL", reason=reason,
                  **({"note": note} if note else {}))
        handler_move(h.handler_id, h.state, "offer_failed")
        self._detach_offer(call, h)
        if reason == "no-answer":
            if self.rona_not_ready:
                self._hset(h, HS.NOT_READY, now, out, reason="missed call", call_id=call.call_id)
            else:
                self._hset(h, HS.AVAILABLE, now, out, call_id=call.call_id)
        elif reason == "cancelled":
            # We withdrew the offer (the handler did nothing): back to available.
            self._hset(h, HS.AVAILABLE, now, out, call_id=call.call_id)
        else:
            why = f"{reason}: {note}" if note else reason
            self._hset(h, HS.NOT_READY, now, out, reason=why, call_id=call.call_id)
        self._enqueue(call, now, out)

    def call_ended(self, call_id: str, now: float) -> list[Action]:
        """A connected call is over: Completed; the handler goes to wrap-up."""
        now = self._clock(now)
        call = self._call(call_id)
        call_move(call_id, call.state, "end")
        h = self.handlers[call.handler_id or ""]
        out: list[Action] = []
        talk = now - (call.connected_at or now)
        self._log(out, now, call_id, call.line, h.handler_id, "COMPLETE", talk=talk)
        out.append(Completed(call_id, h.handler_id, call.line, talk))
        self._finish(call, CS.COMPLETED)
        self._start_wrapup(h, "end", self.lines[call.line], call_id, now, out)
        self._dispatch(now, out)
        return out

    # ------------------------------------------------------------------ handlers
    def handler_login(self, handler_id: str, now: float, *,
                      skills: dict[str, int]) -> list[Action]:
        """Log a handler in (not ready, reason "login"); they take calls after set_available."""
        now = self._clock(now)
        if not isinstance(handler_id, str) or not handler_id:
            raise RoutingError(f"handler_id must be a non-empty string, got {handler_id!r}")
        skills = check_skills(skills)
        h = self.handlers.get(handler_id)
        if h is None:
            h = self.handlers[handler_id] = Handler(handler_id)
        handler_move(handler_id, h.state, "login")
        h.skills, h.calls = skills, 0
        out: list[Action] = []
        self._hset(h, HS.NOT_READY, now, out, reason="login")
        return out

    def _cancel_held_offer(self, h: Handler, now: float, reason: str,
                           out: list[Action]) -> Call:
        """Stop the offer ``h`` holds; the caller re-queues the returned call."""
        call = self.calls[h.call_id or ""]
        out.append(CancelOffer(call.call_id, h.handler_id, reason))
        self._log(out, now, call.call_id, call.line, h.handler_id, "RINGCANCELED",
                  reason=reason)
        self._detach_offer(call, h)
        return call

    def handler_logout(self, handler_id: str, now: float, *,
                       reason: str = "logout") -> list[Action]:
        """Log out (not while on a call). A ringing offer is cancelled and the call requeued;
        directed transfers waiting for this handler go to their line's queue. ``reason``
        is logged (a supervisor's, with their name)."""
        now = self._clock(now)
        h = self._handler(handler_id)
        handler_move(handler_id, h.state, "logout")
        h.after_call = h.grading_due = None
        out: list[Action] = []
        held = None
        if h.state is HS.OFFERED:
            held = self._cancel_held_offer(h, now, "handler-logout", out)
        if h.state is HS.WRAP_UP:
            self._leave_wrapup(h, now)
        self._hset(h, HS.LOGGED_OUT, now, out, reason=reason or "logout")
        if held is not None:
            self._enqueue(held, now, out)
        for call in list(self._direct.get(handler_id, ())):
            self._undirect(call, now, "target-logged-out", out)
        self._dispatch(now, out)
        return out

    def set_available(self, handler_id: str, now: float, *, reason: str = "",
                      force: bool = False) -> list[Action]:
        """Ready for calls (from not ready, or ending wrap-up early). Idempotent if available.

        Refused while a grading is due (``LineSpec.grading_required``) unless ``force`` (a
        supervisor, whose ``reason`` is logged); a pending not-ready-after-call is dropped."""
        now = self._clock(now)
        h = self._handler(handler_id)
        handler_move(handler_id, h.state, "ready")
        out: list[Action] = []
        if h.state is HS.AVAILABLE:
            return out
        self._check_graded(h, force)
        if force and h.grading_due is not None:
            self._log(out, now, h.grading_due, "", handler_id, "GRADING_WAIVED", reason=reason)
        h.grading_due = None
        h.after_call = None
        if h.state is HS.WRAP_UP:
            self._leave_wrapup(h, now)
        self._hset(h, HS.AVAILABLE, now, out, reason=reason)
        self._dispatch(now, out)
        return out

    def not_ready_after_call(self, handler_id: str, now: float, *,
                             reason: str | None) -> list[Action]:
        """During a call (or wrap-up): go not ready with ``reason`` when wrap-up ends
        instead of available; ``None`` withdraws the request. The handler's state does not
        change now; :class:`HandlerChanged` re-announces it so the desks redraw."""
        now = self._clock(now)
        h = self._handler(handler_id)
        handler_move(handler_id, h.state, "not_ready_after")
        h.after_call = None if reason is None else (str(reason) or "not ready")
        out: list[Action] = []
        self._log(out, now, h.call_id or "", "", handler_id, "STATE_REQUEST",
                  after_call=h.after_call)
        out.append(HandlerChanged(handler_id, h.state.value, h.reason, h.call_id))
        return out

    def graded(self, handler_id: str, call_id: str, now: float) -> list[Action]:
        """The handler saved a complete grading of ``call_id`` (during the call or in its
        wrap-up). A wrap-up that ran out while waiting for it ends now."""
        now = self._clock(now)
        h = self._handler(handler_id)
        out: list[Action] = []
        if h.state is HS.ON_CALL and h.call_id == call_id:
            h.graded_call = call_id
        if h.grading_due != call_id:
            return out
        h.grading_due = None
        self._log(out, now, call_id, "", handler_id, "GRADED")
        if h.state is HS.WRAP_UP and h.wrapup_deadline is None:
            handler_move(handler_id, h.state, "wrapup_end")
            self._end_wrapup_now(h, now, out)
            self._dispatch(now, out)
        else:
            out.append(HandlerChanged(handler_id, h.state.value, h.reason, call_id))
        return out

    def set_wrapup_limit(self, line: str, now: float, *, seconds: float,
                         by: str = "") -> list[Action]:
        """A supervisor sets how many seconds a handler may add to a wrap-up on ``line``
        (applies to extensions asked from now on; logged)."""
        now = self._clock(now)
        spec = self._line(line)
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds)
                and 0 <= seconds <= 3600):
            raise RoutingError(f"wrap-up limit must be 0-3600 s, got {seconds!r}")
        self.lines[line] = replace(spec, wrapup_extend_max=float(seconds))
        out: list[Action] = []
        self._log(out, now, "", line, "", "WRAPUP_LIMIT", seconds=float(seconds), by=by)
        return out

    def extend_wrapup(self, handler_id: str, now: float, *, seconds: float) -> list[Action]:
        """Add ``seconds`` to the current wrap-up, at most the line's ``wrapup_extend_max``
        in all (the rest is refused with the figure)."""
        now = self._clock(now)
        h = self._handler(handler_id)
        handler_move(handler_id, h.state, "extend")
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise RoutingError(f"seconds must be a positive number, got {seconds!r}")
        spec = self.lines.get(h.wrapup_line or "")
        limit = spec.wrapup_extend_max if spec is not None else 0.0
        left = limit - h.wrapup_extended
        if seconds > left + 1e-9:
            raise RoutingError(f"wrap-up can be extended by {max(0.0, left):.0f} s more "
                               f"(limit {limit:.0f} s)", state=h.state.value, event="extend")
        out: list[Action] = []
        h.wrapup_extended += seconds
        base = h.wrapup_deadline if h.wrapup_deadline is not None else now
        h.wrapup_deadline = max(base, now) + seconds
        self._timer(h.wrapup_deadline, "wrapup", h.handler_id, "")
        self._log(out, now, "", "", handler_id, "WRAPUP_EXTEND", seconds=seconds,
                  deadline=h.wrapup_deadline)
        out.append(HandlerChanged(handler_id, h.state.value, h.reason, None))
        return out

    def set_not_ready(self, handler_id: str, now: float, *, reason: str) -> list[Action]:
        """Not ready (break, training...). A ringing offer is cancelled, the call requeued.
        Refused on a call: that is :meth:`not_ready_after_call`. A grading still due stays
        due."""
        now = self._clock(now)
        h = self._handler(handler_id)
        handler_move(handler_id, h.state, "not_ready")
        h.after_call = None
        out: list[Action] = []
        held = None
        if h.state is HS.OFFERED:
            held = self._cancel_held_offer(h, now, "handler-not-ready", out)
        if h.state is HS.WRAP_UP:
            self._leave_wrapup(h, now)
        self._hset(h, HS.NOT_READY, now, out, reason=str(reason))
        if held is not None:
            self._enqueue(held, now, out)
        self._dispatch(now, out)
        return out

    def end_wrapup(self, handler_id: str, now: float) -> list[Action]:
        """The handler finished wrap-up early: available (or not ready, if they asked
        during the call). Refused while the grading of the call is due."""
        now = self._clock(now)
        h = self._handler(handler_id)
        handler_move(handler_id, h.state, "wrapup_end")
        self._check_graded(h, False)
        out: list[Action] = []
        self._end_wrapup_now(h, now, out)
        self._dispatch(now, out)
        return out

    def set_skills(self, handler_id: str, now: float, *,
                   skills: dict[str, int]) -> list[Action]:
        """Replace a handler's skills (any state); takes effect for the next offer."""
        now = self._clock(now)
        h = self._handler(handler_id)
        skills = check_skills(skills)
        out: list[Action] = []
        available = h.state is HS.AVAILABLE
        if available:
            self.pool.discard(h)
        for counts, on in ((self._staffed, h.state in STAFFED),
                           (self._logged_in, h.state is not HS.LOGGED_OUT)):
            if on:
                for s in h.skills:
                    counts[s] -= 1
                for s in skills:
                    counts[s] = counts.get(s, 0) + 1
        h.skills = skills
        h.version += 1
        if available:
            self.pool.add(h)
        self._log(out, now, h.call_id or "", "", handler_id, "SKILLS", skills=dict(skills))
        self._dispatch(now, out)
        return out

    # ---------------------------------------------------------------------- time
    def tick(self, now: float) -> list[Action]:
        """Fire due timers: offer timeouts (CancelOffer + requeue in old place + RONA),
        wrap-up ends, directed transfers waited out (to the line's queue); then offer whatever can be offered (ageing is applied at decision
        time, so it needs no timer)."""
        now = self._clock(now)
        out: list[Action] = []
        while self._timers and self._timers[0][0] <= now:
            deadline, _, kind, ident, token = heapq.heappop(self._timers)
            if kind == "offer":
                call = self.calls.get(ident)
                if (call is not None and call.state is CS.OFFERED
                        and call.handler_id == token and call.offer_deadline == deadline):
                    self._fail_offer(call, now, "no-answer", out, cancel=True)
            elif kind == "direct":
                call = self.calls.get(ident)
                if self._direct_live(call, deadline, token):
                    assert call is not None
                    self._undirect(call, now, "transfer-timeout", out)
            else:
                h = self.handlers.get(ident)
                if h is not None and h.state is HS.WRAP_UP and h.wrapup_deadline == deadline:
                    if h.grading_due is not None:
                        # Never lose the grading: the handler stays in wrap-up (offered
                        # nothing) until it is saved or a supervisor intervenes.
                        h.wrapup_deadline = None
                        self._hset(h, HS.WRAP_UP, now, out, reason="grading required",
                                   call_id=h.grading_due)
                        continue
                    handler_move(ident, h.state, "wrapup_end")
                    self._end_wrapup_now(h, now, out)
        horizon = now - self.stats_retention
        for r in self._records.values():
            if r.enters and r.enters[0] < horizon:
                r.forget_before(horizon)
        self._dispatch(now, out)
        return out

    def _direct_live(self, call: Call | None, deadline: float, target: str) -> bool:
        return (call is not None and call.state is CS.QUEUED and call.target == target
                and call.entered + self.transfer_timeout == deadline)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next be called (None: no timer pending)."""
        while self._timers:
            deadline, _, kind, ident, token = self._timers[0]
            if kind == "offer":
                call = self.calls.get(ident)
                live = (call is not None and call.state is CS.OFFERED
                        and call.handler_id == token and call.offer_deadline == deadline)
            elif kind == "direct":
                live = self._direct_live(self.calls.get(ident), deadline, token)
            else:
                h = self.handlers.get(ident)
                live = h is not None and h.state is HS.WRAP_UP and h.wrapup_deadline == deadline
            if live:
                return deadline
            heapq.heappop(self._timers)
        return None
