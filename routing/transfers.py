"""Transfers and re-prioritisation (mixed into :class:`routing.router.Router`).

A connected call can be moved to a line's queue (at its head by default: a 101 that is
really an emergency goes first in the 999 queue) or to a named handler (offered to them
when they are available, else to the line's queue after ``transfer_timeout``). A
supervisor can re-prioritise a waiting or ringing call. Each move is a new queue leg
(ENTER) in the statistics, as in Asterisk.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .actions import Action
from .errors import RoutingError
from .model import Call, CallState, Handler, HandlerState, LineSpec, call_move
from .stats import LineRecords, OpenLegs, record_enter

CS = CallState
HS = HandlerState


class RouterTransfers:
    """Transfers and re-prioritisation; see Router (which owns every attribute below)."""

    lines: dict[str, LineSpec]
    calls: dict[str, Call]
    handlers: dict[str, Handler]
    transfer_timeout: float
    _records: dict[str, LineRecords]
    _open: dict[str, OpenLegs]
    _seq: int
    _head_seq: int

    if TYPE_CHECKING:
        def _clock(self, now: float) -> float: ...
        def _line(self, name: str) -> LineSpec: ...
        def _call(self, call_id: str) -> Call: ...
        def _handler(self, handler_id: str) -> Handler: ...
        def _timer(self, deadline: float, kind: str, ident: str, token: str) -> None: ...
        def _enqueue(self, call: Call, now: float, out: list[Action], *,
                     overflow: str | None = None) -> None: ...
        def _unqueue(self, call: Call, *, position: bool = True) -> int: ...
        def _dispatch(self, now: float, out: list[Action]) -> None: ...
        def _start_wrapup(self, h: Handler, event: str, line: LineSpec, call_id: str,
                          now: float, out: list[Action]) -> None: ...
        @staticmethod
        def _log(out: list[Action], now: float, call_id: str, line: str, handler_id: str,
                 event: str, **data: Any) -> None: ...

    def _transfer_out(self, call: Call, now: float, out: list[Action], **data: Any) -> None:
        call_move(call.call_id, call.state, "transfer")
        h = self.handlers[call.handler_id or ""]
        talk = now - (call.connected_at or now)
        self._log(out, now, call.call_id, call.line, h.handler_id, "TRANSFER", talk=talk,
                  **data)
        old_line = self.lines[call.line]
        call.handler_id = None
        call.connected_at = None
        self._start_wrapup(h, "transfer", old_line, call.call_id, now, out)

    def _new_leg(self, call: Call, now: float, out: list[Action], **data: Any) -> None:
        spec = self.lines[call.line]
        call.state = CS.QUEUED
        call.entered = now
        self._log(out, now, call.call_id, call.line, "", "ENTER", priority=call.klass,
                  caller=call.caller, threshold=spec.answer_threshold, transfer=True, **data)
        record_enter(self._records[call.line], now)
        self._open[call.line].add(call.call_id, now)
        if call.target is not None:
            self._timer(now + self.transfer_timeout, "direct", call.call_id, call.target)
        self._enqueue(call, now, out)
        self._dispatch(now, out)

    def transfer_to_line(self, call_id: str, line: str, now: float, *,
                         head: bool = True) -> list[Action]:
        """Move a connected call to ``line``'s queue (at its head by default).

        E.g. a 101 call that is really an emergency goes to the 999 queue, first in line.
        The call takes the new line's class; its ageing still counts from first arrival.
        A transfer is never rejected for overflow (the caller is already with us).
        A call never loses urgency by a transfer: a 999 moved to the 101 queue keeps its
        class (0), so it is answered before every 101 call. The transferring handler is
        excluded from this queue leg (never offered the call again until it is answered).
        """
        now = self._clock(now)
        call = self._call(call_id)
        spec = self._line(line)
        call_move(call_id, call.state, "transfer")
        out: list[Action] = []
        from_handler = call.handler_id
        # A call never loses urgency by a transfer: a 999 moved to the 101 queue keeps
        # its class (it goes before every 101 call) and its origin line in the records.
        keep = min(call.klass, spec.priority)
        self._transfer_out(call, now, out, to_line=line, head=head,
                           **({"kept_priority": keep} if keep < spec.priority else {}))
        call.line = line
        call.klass, call.base, call.reprioritised = keep, float(keep), False
        # a call that reached this handler by a directed transfer goes to the line's
        # queue now, not back to that handler's own list
        call.target = None
        call.excluded = from_handler
        if head:
            self._head_seq -= 1
            call.seq = self._head_seq
        else:
            self._seq += 1
            call.seq = self._seq
        self._new_leg(call, now, out, head=head)
        return out

    def transfer_to_handler(self, call_id: str, handler_id: str, now: float) -> list[Action]:
        """Move a connected call to a named handler: offered to them when available.

        Directed calls wait in the handler's own list and are offered before queue calls
        of the same class (not before a more urgent class). If that offer fails, the
        handler logs out, or ``transfer_timeout`` passes first, the call goes to its
        line's queue (at its place by its original seq).
        """
        now = self._clock(now)
        call = self._call(call_id)
        target = self._handler(handler_id)
        call_move(call_id, call.state, "transfer")
        if handler_id == call.handler_id:
            raise RoutingError(f"call {call_id!r} is already with handler {handler_id!r}")
        if target.state is HS.LOGGED_OUT:
            raise RoutingError(f"handler {handler_id!r} is logged_out: cannot take a transfer",
                               state=target.state.value, event="transfer")
        out: list[Action] = []
        self._transfer_out(call, now, out, to_handler=handler_id)
        call.target = handler_id
        call.excluded = None
        self._new_leg(call, now, out, to_handler=handler_id)
        return out

    def reprioritise(self, call_id: str, now: float, *, priority: float) -> list[Action]:
        """Supervisor: set a waiting call's priority (class = floor), effective at once.

        ``priority`` 0.0 makes the call class 0 (it competes with 999 calls); 1.5 keeps it
        in class 1 behind 1.0 calls. The call keeps its FIFO seq inside its new bucket.
        """
        now = self._clock(now)
        call = self._call(call_id)
        if isinstance(priority, bool) or not isinstance(priority, (int, float)) \
                or not math.isfinite(priority) or priority < 0:
            raise RoutingError(f"priority must be a finite number >= 0, got {priority!r}")
        call_move(call_id, call.state, "reprioritise")
        out: list[Action] = []
        old = call.base
        queued = call.state is CS.QUEUED
        if queued:
            self._unqueue(call)
        call.klass, call.base, call.reprioritised = int(math.floor(priority)), float(priority), True
        self._log(out, now, call_id, call.line, call.handler_id or "", "REPRIORITISE",
                  to=float(priority), **{"from": old})
        if queued:
            self._enqueue(call, now, out)
            self._dispatch(now, out)
        return out

    def _undirect(self, call: Call, now: float, reason: str, out: list[Action]) -> None:
        """A directed transfer gives up on its handler and joins its line's queue."""
        self._unqueue(call)
        call_move(call.call_id, call.state, "requeue")
        target, call.target = call.target, None
        self._log(out, now, call.call_id, call.line, target or "", "REQUEUE", reason=reason)
        self._enqueue(call, now, out)

