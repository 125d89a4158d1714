"""The service's call lifecycle events: one vocabulary for router, store, CAD and desk.

Every event is a frozen dataclass. ``call_id`` ties it to a call; ``event_id`` is unique
(consumers dedupe on it); ``at`` is wall-clock epoch seconds. The per-call ``seq`` is
given when the event is written to the outbox (store), not here, so it is gap-free in
the order the service committed the call's state changes.

The CAD message schema (``cad/schema``) is derived from these classes: the message
``type`` is :attr:`DomainEvent.type` (e.g. ``call.arrived``).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class DomainEvent:
    """Base of every lifecycle event."""

    type: ClassVar[str] = "event"
    call_id: str
    """Our call id (also on the recording and in the CAD topic)."""
    at: float
    """Wall-clock time of the event (epoch seconds)."""
    event_id: str = field(default_factory=new_id)
    """Unique id, for idempotent consumers."""

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["type"] = self.type
        return d


@dataclass(frozen=True, kw_only=True)
class CallArrived(DomainEvent):
    """A call was answered on a line and is entering the queue."""

    type: ClassVar[str] = "call.arrived"
    line: str
    """Line name, e.g. ``999``."""
    priority: int
    """The line's priority class (0 most urgent)."""
    caller: str
    """Caller number exactly as presented (``+447700900123``, ``07700900123``)."""
    display_name: str = ""
    """Presented identity."""
    dialled: str = ""
    location: str | None = None
    """Location if the network sent it: a summary of a PIDF-LO that was read, else the
    Geolocation value or body as given."""
    sip_call_id: str = ""
    caller_normalised: str = ""
    """The caller number as E.164 (``+447700900123``); ``""`` when withheld or not a
    number. Previous calls match on it."""
    location_detail: dict[str, Any] | None = None
    """The location as read: ``by`` (value/reference), ``uri``, ``parsed``, ``error``,
    ``geodetic`` shapes, ``civic`` addresses, ``accuracy`` (m)."""
    linked_call_id: str | None = None
    """A call placed from a call-back (click-to-dial): the abandoned call it calls back."""


@dataclass(frozen=True, kw_only=True)
class CallQueued(DomainEvent):
    """The call is waiting (also re-sent after ring-no-answer or a transfer to a queue)."""

    type: ClassVar[str] = "call.queued"
    line: str
    position: int
    """1-based position across all waiting calls this call competes with."""
    estimated_wait: float | None = None
    """Seconds, from recent handle times and handlers available."""
    priority: float = 0.0


@dataclass(frozen=True, kw_only=True)
class CallOffered(DomainEvent):
    """The call is ringing on a handler's phone and popped on their screen."""

    type: ClassVar[str] = "call.offered"
    line: str
    handler_id: str
    wait: float
    """Seconds since arrival."""


@dataclass(frozen=True, kw_only=True)
class CallOfferFailed(DomainEvent):
    """The offer ended without connecting (ring-no-answer, rejected, busy)."""

    type: ClassVar[str] = "call.offer_failed"
    line: str
    handler_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class CallAnswered(DomainEvent):
    """A handler answered: the caller and the handler are connected."""

    type: ClassVar[str] = "call.answered"
    line: str
    handler_id: str
    wait: float
    """Seconds from arrival to answer by the handler."""


@dataclass(frozen=True, kw_only=True)
class CallTransferred(DomainEvent):
    """The handler moved the call to a line's queue or to a named handler."""

    type: ClassVar[str] = "call.transferred"
    from_handler: str
    to_line: str | None = None
    to_handler: str | None = None


@dataclass(frozen=True, kw_only=True)
class CallAbandoned(DomainEvent):
    """The caller hung up while queued or being offered."""

    type: ClassVar[str] = "call.abandoned"
    line: str
    caller: str
    wait: float
    position: int
    callback: bool
    """True when the call was put on the call-back list (999)."""


@dataclass(frozen=True, kw_only=True)
class CallFlagged(DomainEvent):
    """A flag the handler must see: ``silent`` (no speech), ``dtmf55`` (Silent Solution)."""

    type: ClassVar[str] = "call.flagged"
    flag: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class CallEnded(DomainEvent):
    """The call is over."""

    type: ClassVar[str] = "call.ended"
    line: str
    by: Literal["caller", "handler", "system"]
    reason: str
    wait: float
    """Seconds queued before answer (or before abandon)."""
    talk: float
    """Seconds connected to a handler."""
    total: float
    """Seconds from arrival to end."""
    handler_id: str | None = None
    recording_id: str | None = None
    recording_sha256: str | None = None


@dataclass(frozen=True, kw_only=True)
class RecordingReady(DomainEvent):
    """The stereo recording is sealed with its checksum."""

    type: ClassVar[str] = "call.recording"
    recording_id: str
    sha256: str
    duration: float
    path: str
    segments: tuple[dict[str, Any], ...] = ()
    """Every file when there is more than one (the recordings disk failed during the
    call): ``id``, ``path``, ``start`` (s from answer), ``duration``, ``sha256``, ``bytes``."""
    gaps: tuple[dict[str, Any], ...] = ()
    """Audio the recording lacks: ``start``, ``end`` (s from answer), ``frames_lost``,
    ``reason``."""


@dataclass(frozen=True, kw_only=True)
class TranscriptSegment(DomainEvent):
    """Live transcript: a partial (replaced by the next) or final segment of one channel.

    Live segments go to the desk; they are not sent to the CAD (the final transcript is).
    """

    type: ClassVar[str] = "call.transcript_segment"
    channel: Literal["caller", "handler"]
    text: str
    start: float
    """Seconds from answer."""
    end: float
    final: bool
    confidence: float | None = None
    words: list[dict[str, Any]] = field(default_factory=list)
    """Finals: each recognised word as ``{word, start, end, conf}`` (seconds from
    answer, confidence 0..1), so the desk can mark the uncertain ones; partials: []."""


@dataclass(frozen=True, kw_only=True)
class TranscriptFinal(DomainEvent):
    """The call's final transcript, produced from the recording."""

    type: ClassVar[str] = "call.transcript"
    text: str
    language: str
    engine: str
    model: str
    confidence: float | None
    segments: list[dict[str, Any]] = field(default_factory=list)
    """Each: channel, start, end, text, confidence."""


@dataclass(frozen=True, kw_only=True)
class CallWrapUp(DomainEvent):
    """The handler's grading after the call (THRIVE and incident grade)."""

    type: ClassVar[str] = "call.wrapup"
    handler_id: str
    thrive: dict[str, str]
    """threat, harm, risk, investigation, vulnerability, engagement."""
    grade: str = ""
    """Incident grade, e.g. ``1`` immediate .. ``4`` resolved."""
    notes: str = ""


@dataclass(frozen=True, kw_only=True)
class IncidentLinked(DomainEvent):
    """The CAD sent back an incident number (and grade) for the call."""

    type: ClassVar[str] = "call.incident"
    incident_number: str
    grade: str = ""


EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.type: cls
    for cls in (CallArrived, CallQueued, CallOffered, CallOfferFailed, CallAnswered,
                CallTransferred, CallAbandoned, CallFlagged, CallEnded, RecordingReady,
                TranscriptSegment, TranscriptFinal, CallWrapUp, IncidentLinked)
}
"""Every event type by its ``type`` string."""

CAD_EVENT_TYPES = frozenset(t for t in EVENT_TYPES if t != "call.transcript_segment")
"""Types that go to the CAD (live partial segments do not)."""
