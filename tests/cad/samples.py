"""Sample domain events: one of every type that goes to the CAD, for one call."""

from __future__ import annotations

import callevents as ev

T0 = 1_795_449_600.0  # 2026-11-23T16:00:00Z
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def one_of_each(call_id: str = "c0ffee", line: str = "999") -> list[ev.DomainEvent]:
    """Every CAD event type, in a plausible lifecycle order."""
    return [
        ev.CallArrived(call_id=call_id, at=T0, line=line, priority=0, caller="+447700900123",
                       display_name="J Smith", dialled="999",
                       location="<gml:pos>52.4862 -1.8904</gml:pos>", sip_call_id="a84b4c76e66710",
                       caller_normalised="+447700900123"),
        ev.CallQueued(call_id=call_id, at=T0 + 0.1, line=line, position=2, estimated_wait=8.5,
                      priority=0.0),
        ev.CallOffered(call_id=call_id, at=T0 + 4.0, line=line, handler_id="h1", wait=4.0),
        ev.CallOfferFailed(call_id=call_id, at=T0 + 19.0, line=line, handler_id="h1",
                           reason="ring-no-answer"),
        ev.CallAnswered(call_id=call_id, at=T0 + 21.25, line=line, handler_id="h2", wait=21.25),
        ev.CallFlagged(call_id=call_id, at=T0 + 22.0, flag="dtmf55", detail="55 pressed"),
        ev.CallTransferred(call_id=call_id, at=T0 + 60.0, from_handler="h2", to_line="101"),
        ev.CallEnded(call_id=call_id, at=T0 + 180.5, line=line, by="caller", reason="hangup",
                     wait=21.25, talk=159.25, total=180.5, handler_id="h2",
                     recording_id="rec-1", recording_sha256=SHA),
        ev.RecordingReady(call_id=call_id, at=T0 + 181.0, recording_id="rec-1", sha256=SHA,
                          duration=159.25, path="/var/recordings/rec-1.wav"),
        ev.TranscriptFinal(call_id=call_id, at=T0 + 200.0, text="police please my neighbour",
                           language="en", engine="vosk", model="vosk-model-small-en",
                           confidence=0.87,
                           segments=[{"channel": "caller", "start": 0.5, "end": 2.0,
                                      "text": "police please", "confidence": 0.9},
                                     {"channel": "handler", "start": 2.1, "end": 3.0,
                                      "text": "what is the address", "confidence": None}]),
        ev.CallWrapUp(call_id=call_id, at=T0 + 210.0, handler_id="h2",
                      thrive={"threat": "high", "harm": "medium", "risk": "high",
                              "investigation": "yes", "vulnerability": "elderly",
                              "engagement": "attend"},
                      grade="1", notes="Caller reports intruder next door."),
        ev.IncidentLinked(call_id=call_id, at=T0 + 215.0, incident_number="WMP-20261123-0042",
                          grade="1"),
        ev.CallAbandoned(call_id=call_id + "-2", at=T0 + 5.0, line=line, caller="+447700900999",
                         wait=5.0, position=3, callback=True),
    ]
