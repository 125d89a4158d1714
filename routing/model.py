"""Lines, calls and handlers, with their state machines.

Theory of operation (h11 ``_state.py`` style): a handler and a call each have a state
from an Enum; the only legal moves are the entries of ``HANDLER_TRANSITIONS`` and
``CALL_TRANSITIONS`` (``(state, event) -> new state``). :func:`handler_move` and
:func:`call_move` look the move up and raise :class:`RoutingError` naming the state and
the event when it is not there. The router is the only writer of these objects.

Handler life::

    logged_out --login--> not_ready --ready--> available --offer--> offered
    offered --answer--> on_call --end/transfer--> wrap_up --wrapup_end/ready--> available
    offered --offer_failed--> not_ready ("missed call", "rejected", ...) or available
    offered --offer_cancelled--> available (caller hung up while ringing)
    on_call/wrap_up --not_ready_after--> (same): wrap-up then ends in not_ready, not available
    wrap_up with grading due: the timer does not end it; ready is refused until graded

Call life::

    queued --offer--> offered --answer--> connected --end--> completed
    offered --offer_failed--> queued (back in its OLD place)
    connected --transfer--> queued (another line's queue or a named handler)
    queued/offered --abandon--> abandoned;   (arrival) --reject--> rejected
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .errors import RoutingError

DEFAULT_AGEING_CAP = 0.9
"""Most a call's priority may improve by ageing, in class units. Below 1 so an aged call
never reaches the next more urgent class; the router also orders by class first, so this
cap only shapes ordering *within* a class and what the wallboard shows."""


@dataclass(frozen=True, slots=True)
class LineSpec:
    """One inbound line as the router sees it (built from ``config.LineSettings``)."""

    name: str
    priority: int
    """Priority class; 0 is most urgent. Every waiting call of a lower class goes first."""
    skill: str
    """Skill a handler needs to be offered this line's calls."""
    answer_threshold: float = 10.0
    """Service-level threshold (s)."""
    wrapup: float = 10.0
    """Wrap-up seconds after each call on this line."""
    max_queue: int = 0
    """Most calls waiting on this line (0: unlimited)."""
    overflow: str = "queue"
    """``queue`` (keep queuing, announce) or ``busy`` (486; never for priority 0)."""
    ageing_per_minute: float = 0.0
    """Priority uplift (class units) per minute waited, capped at the router's ageing_cap."""
    callback_on_abandon: bool = False
    """Abandoned calls go on the call-back list."""
    grading_required: bool = False
    """A handler who ended a call on this line stays in wrap-up (not offered calls, not
    made available by the wrap-up timer) until its grading is saved (:meth:`Router.graded`)."""
    wrapup_extend_max: float = 120.0
    """Most seconds a handler may add to one wrap-up (:meth:`Router.extend_wrapup`)."""

    def validate(self) -> None:
        if not self.name:
            raise RoutingError("line name must not be empty")
        if self.priority < 0:
            raise RoutingError(f"line {self.name!r}: priority must be >= 0, got {self.priority}")
        if self.overflow not in ("queue", "busy"):
            raise RoutingError(f"line {self.name!r}: overflow must be 'queue' or 'busy', "
                               f"got {self.overflow!r}")
        if self.answer_threshold <= 0 or self.wrapup < 0 or self.max_queue < 0 \
                or self.ageing_per_minute < 0 or self.wrapup_extend_max < 0:
            raise RoutingError(f"line {self.name!r}: answer_threshold must be > 0 and "
                               "wrapup, max_queue, ageing_per_minute >= 0")

    @classmethod
    def from_settings(cls, line: Any) -> LineSpec:
        """From a ``config.LineSettings``."""
        return cls(name=line.name, priority=line.priority, skill=line.required_skill,
                   answer_threshold=line.answer_threshold, wrapup=line.wrapup,
                   max_queue=line.max_queue, overflow=line.overflow,
                   ageing_per_minute=line.ageing_per_minute,
                   callback_on_abandon=line.callback_on_abandon,
                   grading_required=getattr(line, "grading_required", False),
                   wrapup_extend_max=getattr(line, "wrapup_extend_max", 120.0))


def check_skills(skills: Any) -> dict[str, int]:
    """A handler's skills: non-empty names -> proficiency 1-10 (a copy)."""
    if not isinstance(skills, dict):
        raise RoutingError(f"skills must be a dict of skill -> proficiency, got {skills!r}")
    for k, v in skills.items():
        if not isinstance(k, str) or not k:
            raise RoutingError(f"skill names must be non-empty strings, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10:
            raise RoutingError(f"proficiency of skill {k!r} must be an int 1-10, got {v!r}")
    return dict(skills)


class HandlerState(enum.Enum):
    LOGGED_OUT = "logged_out"
    NOT_READY = "not_ready"
    AVAILABLE = "available"
    OFFERED = "offered"
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"


H = HandlerState
HANDLER_TRANSITIONS: dict[tuple[HandlerState, str], HandlerState] = {
    (H.LOGGED_OUT, "login"): H.NOT_READY,
    (H.NOT_READY, "ready"): H.AVAILABLE,
    (H.NOT_READY, "not_ready"): H.NOT_READY,      # change of reason
    (H.NOT_READY, "logout"): H.LOGGED_OUT,
    (H.AVAILABLE, "ready"): H.AVAILABLE,           # idempotent; keeps the idle time
    (H.AVAILABLE, "offer"): H.OFFERED,
    (H.AVAILABLE, "not_ready"): H.NOT_READY,
    (H.AVAILABLE, "logout"): H.LOGGED_OUT,
    (H.OFFERED, "answer"): H.ON_CALL,
    (H.OFFERED, "offer_failed"): H.NOT_READY,      # or AVAILABLE, see Router (rona_not_ready)
    (H.OFFERED, "offer_cancelled"): H.AVAILABLE,   # caller hung up while ringing
    (H.OFFERED, "not_ready"): H.NOT_READY,         # offer cancelled, call back in place
    (H.OFFERED, "logout"): H.LOGGED_OUT,           # offer cancelled, call back in place
    (H.ON_CALL, "end"): H.WRAP_UP,
    (H.ON_CALL, "not_ready_after"): H.ON_CALL,     # takes effect when wrap-up ends
    (H.WRAP_UP, "not_ready_after"): H.WRAP_UP,
    (H.WRAP_UP, "extend"): H.WRAP_UP,
    (H.ON_CALL, "transfer"): H.WRAP_UP,
    (H.WRAP_UP, "wrapup_end"): H.AVAILABLE,
    (H.WRAP_UP, "ready"): H.AVAILABLE,
    (H.WRAP_UP, "not_ready"): H.NOT_READY,
    (H.WRAP_UP, "logout"): H.LOGGED_OUT,
}
"""Every legal handler move. ``offer_failed`` may land in AVAILABLE instead of NOT_READY
when ``rona_not_ready`` is off or the failure is not the handler's (see Router)."""


def handler_move(handler_id: str, state: HandlerState, event: str) -> HandlerState:
    try:
        return HANDLER_TRANSITIONS[(state, event)]
    except KeyError:
        raise RoutingError(f"handler {handler_id!r} is {state.value}: cannot {event!r}",
                           state=state.value, event=event) from None


class CallState(enum.Enum):
    QUEUED = "queued"
    OFFERED = "offered"
    CONNECTED = "connected"
    COMPLETED = "completed"
    ABANDONED = "abandoned"
    REJECTED = "rejected"


C = CallState
TERMINAL = frozenset({C.COMPLETED, C.ABANDONED, C.REJECTED})
CALL_TRANSITIONS: dict[tuple[CallState, str], CallState] = {
    (C.QUEUED, "offer"): C.OFFERED,
    (C.QUEUED, "abandon"): C.ABANDONED,
    (C.QUEUED, "reprioritise"): C.QUEUED,
    (C.QUEUED, "requeue"): C.QUEUED,               # directed transfer target logged out
    (C.OFFERED, "answer"): C.CONNECTED,
    (C.OFFERED, "offer_failed"): C.QUEUED,
    (C.OFFERED, "abandon"): C.ABANDONED,
    (C.OFFERED, "reprioritise"): C.OFFERED,
    (C.CONNECTED, "end"): C.COMPLETED,
    (C.CONNECTED, "transfer"): C.QUEUED,
}


def call_move(call_id: str, state: CallState, event: str) -> CallState:
    try:
        return CALL_TRANSITIONS[(state, event)]
    except KeyError:
        raise RoutingError(f"call {call_id!r} is {state.value}: cannot {event!r}",
                           state=state.value, event=event) from None


@dataclass(slots=True, eq=False)
class Call:
    """A call the router knows (until it reaches a terminal state)."""

    call_id: str
    line: str
    caller: str
    arrived: float
    """First arrival (ageing counts from here, across transfers)."""
    entered: float
    """Start of the current queue leg (wait and service level count from here)."""
    seq: int
    """Place in its line (FIFO key); kept when an offer fails so it returns to its OLD place."""
    klass: int
    """Priority class now (the line's, or set by a supervisor)."""
    base: float
    """Priority before ageing (== klass unless a supervisor set a fractional value)."""
    state: CallState = CallState.QUEUED
    handler_id: str | None = None
    """Handler offered / connected."""
    target: str | None = None
    """Directed transfer: only this handler may be offered the call."""
    reprioritised: bool = False
    connected_at: float | None = None
    offer_deadline: float | None = None
    caller_key: str = ""
    """The caller as one person (E.164 when known) for the call-back list; "" withheld."""
    excluded: str | None = None
    """A handler never offered this queue leg: whoever transferred the call to a line's
    queue (they handed it on; getting it back would defeat the transfer)."""


@dataclass(slots=True, eq=False)
class Handler:
    """A call handler as the router sees them."""

    handler_id: str
    skills: dict[str, int] = field(default_factory=dict)
    """Skill -> proficiency (1-10, higher is better)."""
    state: HandlerState = HandlerState.LOGGED_OUT
    reason: str = ""
    since: float = 0.0
    """When the handler entered the current state."""
    idle_since: float = 0.0
    """When the handler last became available (longest-idle key)."""
    call_id: str | None = None
    """The one call offered to / connected to / wrapping up with this handler."""
    calls: int = 0
    """Calls answered since login (least-calls key)."""
    version: int = 0
    """Bumped on every change: stale entries in the availability heaps are skipped."""
    wrapup_deadline: float | None = None
    wrapup_extended: float = 0.0
    """Seconds added to the current wrap-up by the handler."""
    after_call: str | None = None
    """Not ready after this call: the reason the handler gave (None: available after)."""
    grading_due: str | None = None
    """The call whose grading must be saved before this handler may be available."""
    graded_call: str | None = None
    """The call (connected now) already graded during the call."""
    wrapup_line: str | None = None
    """Line of the call whose wrap-up this is (its extension limit)."""
    handle_start: float | None = None
    handle_line: str | None = None
