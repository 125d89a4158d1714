"""Supervisor listen, whisper and barge on a connected call.

The supervisor's phone is rung like a handler's (:meth:`LegsMixin.offer`: a leg of the
call through the proxy); once it has answered, :meth:`MonitorMixin.monitor` sets who
hears whom with the media engine's mixes (:mod:`telephony.media.mixer`):

========  ==========================  =======================  =====================
mode      supervisor hears            handler hears            caller hears
========  ==========================  =======================  =====================
listen    caller + handler            caller                   handler
whisper   caller + handler            caller + supervisor      handler
barge     caller + handler            caller + supervisor      handler + supervisor
off       nothing (silence)           caller                   handler
========  ==========================  =======================  =====================

The recording keeps caller (left) and handler (right) as received: a whisper or barge
is not in it (the queue log says when one happened and who by).
"""

from __future__ import annotations

from typing import Literal

from telephony.errors import EngineError

from .base import EngineBase
from .state import _play

MonitorMode = Literal["listen", "whisper", "barge", "off"]
MODES = ("listen", "whisper", "barge", "off")


class MonitorMixin(EngineBase):
    """Supervisor legs mixed into a connected call."""

    def monitor(self, call_id: str, leg_id: str, mode: str) -> None:
        """Set what the supervisor leg ``leg_id`` hears and who hears it (table above).

        Raises EngineError when the leg is not an answered supervisor leg of the call or
        no handler is bridged (on hold the handler is not listening: try again later)."""
        if mode not in MODES:
            raise EngineError(f"monitor mode must be one of {', '.join(MODES)}, got {mode!r}")
        call = self._call(call_id)
        leg = call.legs.get(leg_id)
        if leg is None or leg.state != "answered" or leg is call.bridged:
            raise EngineError(f"leg {leg_id!r} of {call_id!r} is not an answered supervisor leg")
        handler = call.bridged
        if handler is None or call.held_by_handler:
            raise EngineError(f"call {call_id!r} has no handler connected (on hold?)")
        media = self._media
        caller, h, sup = call.stream, handler.stream, leg.stream
        media.bridge(caller, h)             # back to a plain call first
        if mode == "off":
            _play(sup, "silence")
        else:
            media.mix(sup, [caller, h])
        if mode in ("whisper", "barge"):
            media.mix(h, [caller, sup])
        if mode == "barge":
            media.mix(caller, [h, sup])
        call.log.info("call.monitor", leg_id=leg_id, mode=mode)

    def end_monitor(self, call_id: str) -> None:
        """The supervisor left: caller and handler hear each other only (if still bridged)."""
        call = self._calls.get(call_id)
        if call is None or call.bridged is None or call.held_by_handler:
            return
        self._media.bridge(call.stream, call.bridged.stream)
