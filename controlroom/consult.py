"""Consult transfer and conference to another agency or a colleague: the service's side.

The handler picks a name from ``consult_numbers`` (config: ambulance, fire, coastguard,
neighbouring forces); the caller is put on hold (they hear the line's prompt) and the
number is rung through the proxy as a second leg of the call. Once it answers the
handler speaks to it alone (``consult``), then joins all three (``conference``), hands
the caller over (``transfer``: the handler's phone is released and the handler goes to
wrap-up, the call stays recorded until the caller or the agency hangs up) or goes back
to the caller (``return``: the agency leg is hung up). Each step is in the call's queue
log (``CONSULT``, ``CONFERENCE``, ``CONSULT_TRANSFER``, ``CONSULT_END``) and on the live
feed (``call.consult``). See :mod:`telephony.engine.consult` for who hears whom.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from telephony import api as tel

if TYPE_CHECKING:
    from controlroom.node import Node

log = structlog.get_logger(__name__)

RING_TIMEOUT = 60.0
"""Seconds an agency's number rings before the consult is given up (caller back)."""


class ConsultError(Exception):
    """A consult step that cannot be taken now (the message says why)."""


@dataclass
class Consult:
    leg_id: str
    call_id: str
    handler_id: str
    agency: str
    uri: str
    step: str = "ringing"   # ringing | consult | conference | transfer


class Consults:
    """The agency legs of live calls, by leg id."""

    def __init__(self, service: Node) -> None:
        self.s = service
        self.by_leg: dict[str, Consult] = {}

    def of_call(self, call_id: str) -> Consult | None:
        return next((c for c in self.by_leg.values() if c.call_id == call_id), None)

    def start(self, call_id: str, handler_id: str, agency: str) -> Consult:
        s = self.s
        uri = s.settings.consult_numbers.get(agency)
        if uri is None:
            raise ConsultError(f"no consult number {agency!r} (config consult_numbers)")
        call = s.calls.get(call_id)
        if call is None or call.state != "connected" or call.handler_id != handler_id:
            raise ConsultError("only your connected call can be consulted on")
        if self.of_call(call_id) is not None:
            raise ConsultError("this call already has a consult in progress")
        try:
            s.engine.consult_hold(call_id)
            leg_id = s.engine.offer(call_id, uri, timeout=RING_TIMEOUT,
                                    caller_display=f"police {call.line}")
        except Exception as exc:
            self._back(call_id)
            raise ConsultError(f"cannot call {agency}: {exc}") from None
        call.on_hold = True
        c = Consult(leg_id, call_id, handler_id, agency, uri)
        self.by_leg[leg_id] = c
        self._log(c, "CONSULT_RING")
        return c

    def step(self, call_id: str, handler_id: str, step: str) -> Consult:
        """``conference``, ``transfer``, ``consult`` (back to speaking to the agency
        alone) or ``return`` (hang the agency up, back to the caller)."""
        c = self.of_call(call_id)
        if c is None or c.handler_id != handler_id:
            raise ConsultError("no consult in progress on your call")
        if step == "return":
            self.s.engine.cancel_offer(c.leg_id)   # LegFailed/LegEnded put the caller back
            return c
        if c.step == "ringing":
            raise ConsultError(f"{c.agency} has not answered yet")
        try:
            self.s.engine.consult(call_id, c.leg_id, step)
        except Exception as exc:
            raise ConsultError(str(exc)) from None
        c.step = step
        call = self.s.calls.get(call_id)
        if call is not None:
            call.on_hold = step == "consult"
        if step == "transfer":
            self._handed_over(c)
        self._log(c, {"consult": "CONSULT", "conference": "CONFERENCE",
                      "transfer": "CONSULT_TRANSFER"}[step])
        return c

    # ------------------------------------------------------------------ engine events
    def owns(self, e: tel.TelephonyEvent) -> bool:
        return getattr(e, "leg_id", None) in self.by_leg

    def on_event(self, e: tel.TelephonyEvent) -> None:
        c = self.by_leg[e.leg_id]  # type: ignore[attr-defined]
        if isinstance(e, tel.LegAnswered):
            self.s.engine.consult(c.call_id, c.leg_id, "consult")
            c.step = "consult"
            self._log(c, "CONSULT")
        elif isinstance(e, (tel.LegFailed, tel.LegEnded)):
            del self.by_leg[c.leg_id]
            self._log(c, "CONSULT_END", reason=getattr(e, "reason", "") or getattr(e, "by", ""))
            if c.step == "transfer":
                # the agency hung up on the caller it took over: the call is over
                self.s.engine.hangup(c.call_id, f"{c.agency} hung up")
            else:
                self._back(c.call_id)

    def _back(self, call_id: str) -> None:
        """The caller is back with the handler (or, off hold, at least not alone)."""
        call = self.s.calls.get(call_id)
        try:
            self.s.engine.consult(call_id, "", "return")
        except Exception as exc:  # the call or the handler's leg is gone
            log.info("consult return not applied", call_id=call_id, why=str(exc))
            return
        if call is not None:
            call.on_hold = False

    def _handed_over(self, c: Consult) -> None:
        """The handler's part is over: wrap-up for them, the call goes on with the agency."""
        s = self.s
        call = s.calls.get(c.call_id)
        if call is None:
            return
        now = time.time()
        s.wrapup_calls[c.handler_id] = c.call_id
        call.state = "external"   # not the router's any more; recorded until it ends
        s._apply(s.router.call_ended(c.call_id, now))

    def _log(self, c: Consult, event: str, **extra: Any) -> None:
        from routing import QueueLogEntry

        call = self.s.calls.get(c.call_id)
        now = time.time()
        self.s._log_entries([QueueLogEntry(now, c.call_id, call.line if call else "",
                                           c.handler_id, event,
                                           {"agency": c.agency, "uri": c.uri, **extra})])
        log.info("call.consult", call_id=c.call_id, agency=c.agency, step=event)
        self.s._fanout({"type": "call.consult", "call_id": c.call_id, "agency": c.agency,
                        "handler_id": c.handler_id, "step": c.step, "event": event, "at": now})
