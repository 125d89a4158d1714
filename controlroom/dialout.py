"""Click-to-dial a call-back: the service's side (issue 17 item 2).

A handler who has taken a call-back presses Dial: the engine calls the caller's number
through the proxy (the trunk) on the line the caller first rang, and rings the
handler's phone into the call once the caller answers (:mod:`telephony.engine.dialout`);
the two are then bridged. The call-back is a new call of its own: its row has
``linked_call_id`` (the abandoned call), it is recorded (caller left, handler right)
and transcribed like any call, and the CAD gets ``call.arrived`` (``dialled`` = the
number called), ``call.answered`` and ``call.ended``. The queue log of the new call has
``DIAL`` (with the linked call and the call-back id) and ``DIAL_CONNECT``.

While it lasts the handler is not offered queue calls (not ready, reason
``call-back``); they are available again afterwards if they were before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

import callevents as ev
from controlroom.calls import LiveCall
from store import calls as calls_table
from telephony import api as tel

if TYPE_CHECKING:
    from controlroom.node import Node

log = structlog.get_logger(__name__)

LINK_COMPONENT = "calls.link"
LINK_MIGRATIONS = [
    # 1: a call placed from a call-back names the call it answers (portable SQL)
    """
    ALTER TABLE calls ADD COLUMN linked_call_id TEXT;
    """,
]


class DialError(Exception):
    """A call-back that cannot be dialled now (the message says why)."""


@dataclass
class Dial:
    call_id: str
    cb_id: str
    linked_call_id: str
    handler_id: str
    was_available: bool


class Dialouts:
    """Outbound call-back calls in progress, by call id."""

    def __init__(self, service: Node) -> None:
        self.s = service
        self.calls: dict[str, Dial] = {}
        service.db.migrate(LINK_COMPONENT, LINK_MIGRATIONS, postgresql=LINK_MIGRATIONS)

    def dial(self, cb_id: str, handler_id: str) -> str:
        s = self.s
        cb = next((c for c in s.router.callbacks() if c.cb_id == cb_id), None)
        if cb is None:
            raise DialError(f"no call-back {cb_id!r}")
        if cb.state != "taken" or cb.handler_id != handler_id:
            raise DialError("take the call-back first: only whoever took it dials it")
        info = s.router.handler_info(handler_id) or {}
        state = str(getattr(info.get("state"), "value", info.get("state")))
        if state in ("offered", "on_call", "logged_out"):
            raise DialError(f"you are {state}: a call-back is dialled between calls")
        cfg = s.handlers.get(handler_id)
        if cfg is None:
            raise DialError(f"no phone for {handler_id!r}")
        now = time.time()
        was_available = state == "available"
        if was_available:
            s._apply(s.router.set_not_ready(handler_id, now, reason="call-back"))
        try:
            call_id = s.engine.dial_out(cb.line, cb.caller, cfg.phone)
        except Exception as exc:
            if was_available:
                s._apply(s.router.set_available(handler_id, time.time()))
            raise DialError(f"cannot dial {cb.caller}: {exc}") from None
        line = s.lines[cb.line]
        s.calls[call_id] = LiveCall(call_id=call_id, line=cb.line, priority=line.priority,
                                    caller=cb.caller, arrived_at=now, state="external",
                                    handler_id=handler_id)
        self.calls[call_id] = Dial(call_id, cb_id, cb.call_id, handler_id, was_available)
        s._record(ev.CallArrived(call_id=call_id, at=now, line=cb.line,
                                 priority=line.priority, caller=cb.caller, dialled=cb.caller,
                                 linked_call_id=cb.call_id),
                  lambda conn: calls_table.insert(
                      conn, call_id=call_id, line=cb.line, priority=line.priority,
                      caller=cb.caller, dialled=cb.caller, state="queued", arrived_at=now,
                      handler_id=handler_id, linked_call_id=cb.call_id,
                      node=s.settings.node_id))
        self._log(call_id, cb.line, handler_id, "DIAL", linked_call_id=cb.call_id,
                  cb_id=cb_id, number=cb.caller)
        return call_id

    # ------------------------------------------------------------------ engine events
    def owns(self, e: tel.TelephonyEvent) -> bool:
        return getattr(e, "call_id", None) in self.calls and isinstance(
            e, (tel.LegRinging, tel.LegAnswered, tel.LegFailed, tel.LegEnded, tel.CallEnded))

    def on_event(self, e: tel.TelephonyEvent) -> None:
        s = self.s
        d = self.calls[e.call_id]  # type: ignore[attr-defined]
        call: LiveCall | None = s.calls.get(d.call_id)
        if isinstance(e, tel.LegAnswered) and call is not None:
            s.engine.bridge(d.call_id, e.leg_id)
            call.leg_id, call.answered_at, call.first_answered_at = e.leg_id, e.at, e.at
            wait = e.at - call.arrived_at
            s._record(ev.CallAnswered(call_id=d.call_id, at=e.at, line=call.line,
                                      handler_id=d.handler_id, wait=wait),
                      lambda conn: calls_table.update(conn, d.call_id, state="connected",
                                                      answered_at=e.at, wait=wait,
                                                      handler_id=d.handler_id),
                      line=call.line)
            self._log(d.call_id, call.line, d.handler_id, "DIAL_CONNECT", wait=wait)
        elif isinstance(e, tel.LegFailed):
            s.engine.hangup(d.call_id, f"handler's phone: {e.reason}")
        elif isinstance(e, tel.LegEnded) and e.by == "handler":
            if call is not None:
                call.ended_by, call.end_reason = "handler", "handler hung up"
            s.engine.hangup(d.call_id, "handler hung up")
        elif isinstance(e, tel.CallEnded):
            del self.calls[d.call_id]
            s._call_ended(e)  # the record closes like any call's (recording, CAD)
            if d.was_available:
                info = s.router.handler_info(d.handler_id) or {}
                if str(getattr(info.get("state"), "value", info.get("state"))) == "not_ready":
                    s._apply(s.router.set_available(d.handler_id, time.time()))

    def _log(self, call_id: str, line: str, handler_id: str, event: str, **data: object) -> None:
        from routing import QueueLogEntry

        self.s._log_entries([QueueLogEntry(time.time(), call_id, line, handler_id, event,
                                           dict(data))])
