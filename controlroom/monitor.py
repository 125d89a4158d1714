"""Supervisor listen, whisper and barge on live calls: the service's side.

A supervisor asks (console API) to listen to, whisper to or barge into a connected call.
The engine rings the supervisor's phone like a handler's (a leg of the call through the
proxy); when it answers, the engine mixes the audio (:mod:`telephony.engine.monitor`).
Changing the mode on an answered leg takes effect at once; stopping hangs the leg up.

Every step is in the queue log of the call (``MONITOR`` with the mode, ``MONITOR_END``),
so the auditor's timeline shows who listened, whispered or barged and when; the API
also writes the access log (a consultation under DPA 2018 s.62). The wallboard shows
the monitors running now (``snapshot()["monitors"]``, ``call.monitor`` on the live feed).
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

MODES = ("listen", "whisper", "barge")
RING_TIMEOUT = 30.0
"""Seconds the supervisor's phone rings before the monitor is given up."""


class MonitorError(Exception):
    """A monitor request that cannot be carried out (the message says why)."""


@dataclass
class Monitor:
    leg_id: str
    call_id: str
    supervisor: str
    phone: str
    mode: str
    state: str = "ringing"   # ringing | on
    since: float = 0.0

    def view(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "supervisor": self.supervisor, "mode": self.mode,
                "state": self.state, "since": self.since, "leg_id": self.leg_id,
                "phone": self.phone}


class Monitors:
    """The supervisor legs of the service's live calls, by leg id."""

    def __init__(self, service: Node) -> None:
        self.s = service
        self.by_leg: dict[str, Monitor] = {}

    def find(self, call_id: str, supervisor: str) -> Monitor | None:
        return next((m for m in self.by_leg.values()
                     if m.call_id == call_id and m.supervisor == supervisor), None)

    def view(self) -> list[dict[str, Any]]:
        return [m.view() for m in self.by_leg.values()]

    def start(self, call_id: str, supervisor: str, phone: str, mode: str) -> Monitor:
        """Ring the supervisor's phone into the call in ``mode`` (or change the mode of
        their monitor already running)."""
        if mode not in MODES:
            raise MonitorError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        call = self.s.calls.get(call_id)
        if call is None or call.state != "connected" or not call.handler_id:
            raise MonitorError("only a connected call can be monitored")
        m = self.find(call_id, supervisor)
        if m is not None:
            m.mode = mode
            if m.state == "on":
                self._apply(m)
            return m
        try:
            leg_id = self.s.engine.offer(call_id, phone, timeout=RING_TIMEOUT,
                                         caller_display=f"monitor {call.line}")
        except Exception as exc:
            raise MonitorError(f"cannot ring {phone}: {exc}") from None
        m = Monitor(leg_id, call_id, supervisor, phone, mode, since=time.time())
        self.by_leg[leg_id] = m
        self._changed(m, "ringing")
        return m

    def stop(self, call_id: str, supervisor: str) -> None:
        m = self.find(call_id, supervisor)
        if m is None:
            raise MonitorError("you are not monitoring this call")
        self.s.engine.cancel_offer(m.leg_id)   # CANCEL or BYE; LegFailed/LegEnded follow

    def reapply(self, call_id: str) -> None:
        """After the handler resumes from hold (a plain bridge again): mix as before."""
        for m in list(self.by_leg.values()):
            if m.call_id == call_id and m.state == "on":
                self._apply(m)

    # ------------------------------------------------------------------ engine events
    def owns(self, e: tel.TelephonyEvent) -> bool:
        return getattr(e, "leg_id", None) in self.by_leg

    def on_event(self, e: tel.TelephonyEvent) -> None:
        m = self.by_leg[e.leg_id]  # type: ignore[attr-defined]
        if isinstance(e, tel.LegAnswered):
            m.state, m.since = "on", e.at
            self._apply(m)
        elif isinstance(e, (tel.LegFailed, tel.LegEnded)):
            del self.by_leg[m.leg_id]
            at = self.s.engine.end_monitor(m.call_id) if m.state == "on" else None
            self._changed(m, "ended", reason=getattr(e, "reason", "") or getattr(e, "by", ""),
                          **({"recording_at": at} if at is not None else {}))

    def _apply(self, m: Monitor) -> None:
        try:
            at = self.s.engine.monitor(m.call_id, m.leg_id, m.mode)
        except Exception as exc:  # the call went on hold or ended meanwhile
            log.info("monitor not applied", call_id=m.call_id, why=str(exc))
            return
        # Where in the recording the mode began: a whisper (not in the audio: the caller
        # never heard it) is marked in the record by these offsets.
        self._changed(m, "on", **({"recording_at": at} if at is not None else {}))

    def _changed(self, m: Monitor, state: str, **extra: Any) -> None:
        from routing import QueueLogEntry

        call = self.s.calls.get(m.call_id)
        now = time.time()
        event = {"ringing": "MONITOR_RING", "on": "MONITOR", "ended": "MONITOR_END"}[state]
        data = {"mode": m.mode, "phone": m.phone,
                "handler": call.handler_id if call else None, **extra}
        self.s._log_entries([QueueLogEntry(now, m.call_id, call.line if call else "",
                                           m.supervisor, event, data)])
        log.info("call.monitor", call_id=m.call_id, supervisor=m.supervisor, mode=m.mode,
                 state=state)
        self.s._fanout({"type": "call.monitor", "call_id": m.call_id,
                        "supervisor": m.supervisor, "mode": m.mode, "state": state, "at": now})
