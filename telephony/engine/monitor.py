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

The recording keeps what the caller said (left) and what the caller heard (right): the
handler, and during a barge the supervisor too (:class:`telephony.media.mixer.Heard`),
so the evidence holds every word spoken to the caller. A whisper, which the caller never
heard, is not in the audio; :meth:`MonitorMixin.monitor` returns the recording's offset
at each change, which the service writes into the call's queue log beside the mode, so
the record marks where a whisper (or listen, or barge) began and ended.
"""

from __future__ import annotations

from typing import Literal

from telephony.errors import EngineError
from telephony.media.mixer import Heard

from .base import EngineBase
from .state import _play

MonitorMode = Literal["listen", "whisper", "barge", "off"]
MODES = ("listen", "whisper", "barge", "off")


class MonitorMixin(EngineBase):
    """Supervisor legs mixed into a connected call."""

    def monitor(self, call_id: str, leg_id: str, mode: str) -> float | None:
        """Set what the supervisor leg ``leg_id`` hears and who hears it (table above).
        Returns the recording's offset (s) at the change, None if the call has none.

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
        # The right channel is what the caller hears: the handler, plus the supervisor
        # while barging.
        call.recording.attach_handler(Heard(h, caller, sup) if mode == "barge" else h)
        call.log.info("call.monitor", leg_id=leg_id, mode=mode)
        return _offset(call.recording)

    def end_monitor(self, call_id: str) -> float | None:
        """The supervisor left: caller and handler hear each other only (if still
        bridged). Returns the recording's offset (s), None without one."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        if call.bridged is not None and not call.held_by_handler:
            self._media.bridge(call.stream, call.bridged.stream)
            call.recording.attach_handler(call.bridged.stream)
        return _offset(call.recording)


def _offset(recording: object) -> float | None:
    d = getattr(recording, "duration", None)
    return round(float(d), 3) if d is not None else None
