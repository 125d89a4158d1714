"""Consult, conference and transfer to another agency (ambulance, fire, coastguard, a
neighbouring force) or a colleague: a second leg of the call, rung through the proxy
like a handler's (:meth:`LegsMixin.offer`), mixed by the media engine.

=============  ==========================  ======================  =====================
step           caller hears                handler hears           agency hears
=============  ==========================  ======================  =====================
consult        the hold prompt             agency                  handler
conference     handler + agency            caller + agency         caller + handler
transfer       agency                      (leg hung up)           caller
return         handler                     caller                  (leg hung up by the
                                                                   service)
=============  ==========================  ======================  =====================

The caller is never left with silence: while the agency rings and during the consult
they hear the line's prompt. After a transfer the agency takes the recording's right
channel (the call stays recorded to its end).
"""

from __future__ import annotations

from telephony.errors import EngineError

from .base import EngineBase
from .state import _play

STEPS = ("consult", "conference", "transfer", "return")


class ConsultMixin(EngineBase):
    """A third party's leg on a connected call."""

    def consult_hold(self, call_id: str) -> None:
        """The caller hears the hold prompt while the agency rings; the handler silence."""
        call = self._call(call_id)
        handler = call.bridged
        if handler is None:
            raise EngineError(f"call {call_id!r} has no handler connected")
        self._media.unbridge(call.stream)
        _play(call.stream, call.prompt)
        _play(handler.stream, "silence")
        call.held_by_handler = True

    def consult(self, call_id: str, leg_id: str, step: str) -> None:
        """Set who hears whom for ``step`` (table above); ``leg_id``: the answered agency leg."""
        if step not in STEPS:
            raise EngineError(f"consult step must be one of {', '.join(STEPS)}, got {step!r}")
        call = self._call(call_id)
        leg = call.legs.get(leg_id)
        handler = call.bridged
        if handler is None or handler is leg:
            raise EngineError(f"call {call_id!r} has no handler connected")
        media = self._media
        caller, h = call.stream, handler.stream
        if step == "return":
            media.bridge(caller, h)
            call.held_by_handler = False
            call.log.info("call.consult", leg_id=leg_id, step=step)
            return
        if leg is None or leg.state != "answered":
            raise EngineError(f"leg {leg_id!r} of {call_id!r} has not answered")
        a = leg.stream
        if step == "consult":
            media.unbridge(caller)
            _play(caller, call.prompt)
            media.bridge(h, a)
            call.held_by_handler = True
        elif step == "conference":
            media.bridge(caller, h)
            media.mix(caller, [h, a])
            media.mix(h, [caller, a])
            media.mix(a, [caller, h])
            call.held_by_handler = False
        else:  # transfer: the agency takes the handler's place, the handler's leg goes
            media.bridge(caller, a)
            call.recording.attach_handler(a)
            call.bridged = leg
            call.held_by_handler = False
            self._drop_leg(handler, by="system")
            self._pump()
        call.log.info("call.consult", leg_id=leg_id, step=step)
