"""What the service keeps in memory about a call in progress (:class:`LiveCall`): below
the service and the parts that place calls for it (:mod:`controlroom.dialout`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from telephony import api as tel


@dataclass
class LiveCall:
    """What the service keeps in memory about a call that is not over."""

    call_id: str
    line: str
    priority: int
    caller: str
    arrived_at: float
    state: str = "queued"  # queued | offered | connected | ended
    handler_id: str | None = None
    leg_id: str | None = None
    answered_at: float | None = None
    first_answered_at: float | None = None
    """First answer by any handler (a transfer starts a new leg; the call stays answered)."""
    talk_before: float = 0.0
    """Talk time with handlers before a transfer."""
    ended_by: str | None = None
    end_reason: str | None = None
    flags: list[str] = field(default_factory=list)
    incident_number: str | None = None
    position: int | None = None
    positions: list[tuple[float, int]] = field(default_factory=list)
    recording: tel.RecordingSealed | None = None
    end_event: tel.CallEnded | None = None
    on_hold: bool = False
