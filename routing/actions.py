"""What the router asks the service to do, and what it records.

Every :class:`Router` method returns a list of these frozen dataclasses, in the order
they must be applied. The service maps them to telephony commands (``Offer`` rings a
phone, ``CancelOffer`` stops it, ``Reject`` answers 486), domain events
(``callevents``) and persistence (``QueueLogEntry`` rows via ``store.queuelog``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Action:
    """Base of everything the router returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Offer(Action):
    """Ring this handler's phone for this call and pop it on their screen."""

    call_id: str
    handler_id: str
    line: str
    wait: float = 0.0
    """Seconds the call has waited in this queue leg so far."""
    deadline: float = 0.0
    """When the offer times out (ring-no-answer) unless answered."""
    transfer: bool = False
    """True when this is a directed transfer to this handler."""


@dataclass(frozen=True, slots=True)
class CancelOffer(Action):
    """Stop ringing: ``no-answer`` (timeout), ``caller-gone``, ``handler-logout``, ``handler-not-ready``."""

    call_id: str
    handler_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reject(Action):
    """Refuse the call (overflow ``busy``): answer with ``status`` (486). Never for priority 0."""

    call_id: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Queued(Action):
    """The call waits (on arrival, after a failed offer, after a transfer to a queue)."""

    call_id: str
    line: str
    position: int
    """1-based: calls that will be offered before this one, plus one."""
    estimated_wait: float | None
    """Seconds; None when nobody with the skill is staffed."""
    overflow: str | None = None
    """``queue-full`` / ``no-handlers`` when the line overflowed but keeps queuing (announce)."""
    priority: float = 0.0
    """Effective priority now (class minus ageing uplift); lower is more urgent."""


@dataclass(frozen=True, slots=True)
class Connected(Action):
    """The handler answered: bridge caller and handler."""

    call_id: str
    handler_id: str
    wait: float
    """Seconds from entering this queue leg to answer."""


@dataclass(frozen=True, slots=True)
class Abandoned(Action):
    """The caller hung up before being answered."""

    call_id: str
    line: str
    wait: float
    position: int
    """Position when the caller hung up; 0 when the call was ringing a handler."""
    callback: bool
    """True when the call was put on the call-back list."""
    callback_id: str | None = None


@dataclass(frozen=True, slots=True)
class Completed(Action):
    """A connected call is over (the caller or the handler hung up)."""

    call_id: str
    handler_id: str
    line: str
    talk: float


@dataclass(frozen=True, slots=True)
class HandlerChanged(Action):
    """A handler changed state (for the desk and wallboard)."""

    handler_id: str
    state: str
    reason: str = ""
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueLogEntry(Action):
    """One row of the queue log (Asterisk ``queue_log`` in spirit).

    Events: ENTER, OFFER, RINGNOANSWER, OFFERFAIL, RINGCANCELED, REJECTED, CONNECT,
    ABANDON, COMPLETE, TRANSFER, REPRIORITISE, STATE (handler), CALLBACK_ADD,
    CALLBACK_TAKE, CALLBACK_DONE. ``routing.stats.replay`` rebuilds the service level
    from these rows alone.
    """

    at: float
    call_id: str
    line: str
    handler_id: str
    event: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Callback:
    """An abandoned call to ring back (999 lines with ``callback_on_abandon``)."""

    cb_id: str
    call_id: str
    line: str
    caller: str
    at: float
    """When the caller first hung up (the list is ordered by this; it never changes)."""
    wait: float
    state: str = "pending"
    """``pending`` then ``taken`` (a handler is calling back; ``released`` makes it pending
    again) then ``done`` (removed)."""
    handler_id: str | None = None
    taken_at: float | None = None
    outcome: str | None = None
    key: str = ""
    """The caller as one person (E.164 when known): one entry per key, each abandoned call
    from it an attempt. Empty (withheld): never merged."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every abandoned call from this caller: ``{"call_id", "at", "wait"}``, oldest first."""

    @property
    def last_at(self) -> float:
        return self.attempts[-1]["at"] if self.attempts else self.at

    def as_dict(self) -> dict[str, Any]:
        return {"cb_id": self.cb_id, "call_id": self.call_id, "line": self.line,
                "caller": self.caller, "at": self.at, "wait": self.wait, "state": self.state,
                "handler_id": self.handler_id, "taken_at": self.taken_at,
                "outcome": self.outcome, "attempts": [dict(a) for a in self.attempts],
                "last_at": self.last_at}
