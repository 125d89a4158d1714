"""What the desk needs from the service: the :class:`DeskBackend` protocol.

The console (``console/app.py``) is a thin web adapter: it authenticates, checks roles,
writes the access log and renders pages. Every call-handling decision is made by the
service, which implements this protocol (and :class:`tests.console.fake.FakeBackend` for tests
and standalone demos). All methods are coroutines so the service may do database work
in a thread.

Errors: raise :class:`NotFound` (HTTP 404), :class:`Conflict` (409: e.g. the call is no
longer ringing) or :class:`Invalid` (400) with a message meant for the operator. Any
other exception is a bug and becomes a 500.

Shapes (JSON-able dicts; extra keys are allowed and ignored by the pages):

``snapshot()`` -- the wallboard::

    {"at": epoch,
     "lines": [{"name": "999", "priority": 0, "threshold": 10.0,
                "waiting": [{"call_id", "caller", "wait", "position", "priority",
                             "estimated_wait"}],
                "longest_wait": 12.3,          # seconds, 0 when none waiting
                "offered_today", "answered_today", "answered_in_threshold_today",
                "abandoned_today": int,
                "sl_today": 0.93 | None,       # answered within threshold / offered
                "abandon_rate": 0.02 | None}],
     "handlers": [{"handler_id", "name", "state", "reason", "since", "call_id",
                   "skills": {"999": 5, "101": 3}}]}

Handler states: ``available``, ``not_ready``, ``ringing``, ``on_call``, ``wrapup``,
``logged_out``.

``handler_view(handler_id)`` -- the desk::

    {"at": epoch, "handler_id", "name", "state", "reason", "since", "skills": {...},
     "today": {"calls": int, "talk": seconds, "avg_talk": seconds, "rejected": int},
     "offer": CallCard | None,     # ringing on this handler's phone
     "call": CallCard | None,      # connected (``held``: bool)
     "wrapup": CallCard | None}    # ended, awaiting the handler's grading

    CallCard = {"call_id", "line", "priority", "caller", "display_name", "line_type",
                "location": str | None, "location_accuracy": metres | None,
                "caller_normalised": "+447700900123" | "",   # E.164; "" withheld/short
                "location_detail": {"by", "uri", "parsed", "error", "geodetic": [...],
                                    "civic": [...], "accuracy"} | None,  # as the CAD's
                "flags": ["silent", "dtmf55", ...], "arrived_at", "answered_at",
                "held": bool, "incident_number", "grade",
                "queue_history": [{"at", "event", "position"}],
                "previous_calls": [PreviousCall, ...] | None,  # None: store away
                "transcript": [{"channel", "text", "start", "end", "final"}]}
    PreviousCall = {"call_id", "arrived_at", "line", "outcome", "incident_number",
                    "grade", "handler_id", "markers": [str]}

``callbacks()`` -- ``[{"cb_id", "call_id", "caller", "line", "abandoned_at", "wait",
"state": "open"|"taken", "taken_by", "outcome", "attempts": [{"call_id", "at", "wait"}],
"last_at"}]``, in a stable order (first abandon), one entry per caller.

``call_detail(call_id)`` -- the auditor::

    {"call": {calls-table row (store/calls.py) as a dict},
     "timeline": [{"at", "event", "handler_id", "data": {...}}],   # queue log
     "transcript": [{"channel", "start", "end", "text", "confidence"}],
     "recording": {"recording_id", "sha256", "duration"} | None}

``search(query, **filters)`` -- filters: ``number``, ``line``, ``handler``,
``date_from``/``date_to`` (epoch seconds), ``incident``, ``limit``. Returns hits
``{"call_id", "snippet", "offset", "channel", "line", "caller", "arrived_at",
"handler_id", "incident_number"}``; ``snippet`` is the segment text HTML-escaped
(``html.escape``) with ``<mark>``/``</mark>`` around the matched words. The page never
parses it as HTML: it splits on the two tags, decodes the escapes and inserts text
nodes. ``offset`` is seconds into the recording.

``subscribe()`` yields, in order, dicts of three kinds, each with a ``type``:
``DomainEvent.as_dict()`` (``call.*``), ``{"type": "handler.state", "handler_id",
"state", "reason", "at"}`` and ``{"type": "wallboard.snapshot", ...}``. A
``wallboard.snapshot`` item is a trigger: the console then calls :meth:`snapshot` once
and sends that to every wallboard (so its content may be anything). Push one when the
queue or a handler changes, and every few seconds.
A ``{"type": "resync"}`` item says the backend dropped items this subscriber could not
take in time (bounded memory, :mod:`console.feed`): the console then sends every page
its full current state again and carries on.
The iterator ends when the backend shuts down; a consumer that stops iterating must
``aclose()`` it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

HANDLER_STATES = ("available", "not_ready", "ringing", "on_call", "wrapup", "logged_out")
"""Every state a handler can be shown in."""

_ROUTER_STATE_NAMES = {"offered": "ringing", "wrap_up": "wrapup"}


def desk_state_name(state: Any) -> str:
    """The desk's name (:data:`HANDLER_STATES`) for a router handler state (a
    ``routing.HandlerState`` or its value)."""
    s = str(getattr(state, "value", state))
    return _ROUTER_STATE_NAMES.get(s, s)

SETTABLE_STATES = ("available", "not_ready", "logged_out")
"""States a person may put a handler in (the others follow from calls)."""

THRIVE_KEYS = ("threat", "harm", "risk", "investigation", "vulnerability", "engagement")
"""The THRIVE assessment fields of a wrap-up."""


class DeskError(Exception):
    """A request the backend refuses; ``status`` is the HTTP status it maps to."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(DeskError):
    """The request is malformed or not allowed in principle (400)."""

    status = 400


class NotFound(DeskError):
    """No such call, handler or call-back (404)."""

    status = 404


class Conflict(DeskError):
    """The thing exists but is not in a state that allows this (409)."""

    status = 409


class Pending(DeskError):
    """Sent on but not decided yet (202, ``{"pending": true, "error": ...}``): with the
    global queue the routing leader did not answer in time (``controlroom.desk``). Not a
    success: the operation is applied or refused when the leader reads it."""

    status = 202


@runtime_checkable
class DeskBackend(Protocol):
    """The operations the desk, wallboard and auditor pages need from the service."""

    # -- wallboard / desk read side -----------------------------------------
    async def snapshot(self) -> dict[str, Any]:
        """The wallboard: lines, waiting calls, today's SL and abandon rate, handlers."""

    async def handler_view(self, handler_id: str) -> dict[str, Any]:
        """One handler's desk: state, today's figures, current offer / call / wrap-up."""

    # -- handler actions -----------------------------------------------------
    async def set_handler_state(self, handler_id: str, state: str, reason: str = "",
                                by: str | None = None) -> None:
        """Put a handler ``available``, ``not_ready`` (with reason) or ``logged_out``. On a
        call, ``not_ready`` means not ready after it (``available`` withdraws that).
        ``by``: the supervisor who did it (logged; may end a wrap-up whose grading is due)."""

    async def accept_offer(self, handler_id: str, call_id: str) -> None:
        """Acknowledge the ringing call on screen (the phone still connects the audio)."""

    async def reject_offer(self, handler_id: str, call_id: str, reason: str = "") -> None:
        """Decline the ringing call; it goes back to its place in the queue and the handler
        is not ready (``rejected: <reason>``) until they say they are ready."""

    async def hold(self, call_id: str, on: bool) -> None:
        """Put the connected call on hold (``on``) or take it off hold."""

    async def transfer(self, call_id: str, *, to_line: str | None = None,
                       to_handler: str | None = None, confirm: bool = False) -> None:
        """Move the connected call to a line's queue or to a named handler (exactly one).

        Moving a call to a less urgent line's queue (a 999 to 101) raises Conflict unless
        ``confirm``: the desk warns first. The call keeps its priority either way."""

    async def end_call(self, call_id: str) -> None:
        """Hang up the connected call from the desk; the handler goes to wrap-up."""

    async def wrapup(self, call_id: str, handler_id: str, thrive: dict[str, str],
                     grade: str, notes: str) -> None:
        """Record the handler's grading of the call (emits ``call.wrapup``)."""

    async def save_draft(self, call_id: str, handler_id: str, draft: dict[str, Any]) -> None:
        """Keep the grading being typed with its call (``draft`` on the call card)."""

    async def set_wrapup_limit(self, line: str, seconds: float, by: str) -> None:
        """A supervisor sets the most seconds a handler may add to a wrap-up on ``line``."""

    async def extend_wrapup(self, handler_id: str, seconds: float) -> None:
        """Add time to the handler's wrap-up, within the line's limit (409 beyond it)."""

    async def end_wrapup(self, handler_id: str) -> None:
        """Finish wrap-up early: the handler becomes available for the next call."""

    # -- call-backs (abandoned 999) ------------------------------------------
    async def callbacks(self) -> list[dict[str, Any]]:
        """The call-back list, open ones first."""

    async def take_callback(self, cb_id: str, handler_id: str) -> None:
        """A handler takes a call-back (it leaves the open list)."""

    async def release_callback(self, cb_id: str, by: str | None) -> None:
        """Give a taken call-back back (``by``: its owner; None: a supervisor)."""

    async def complete_callback(self, cb_id: str, outcome: str, by: str | None = None) -> None:
        """Close a call-back with its outcome (e.g. "no reply", "spoke - no police need");
        ``by``: the handler who took it (others get 409); None: a supervisor."""

    # -- supervisor ----------------------------------------------------------
    async def reprioritise(self, call_id: str, priority: float) -> None:
        """Change a waiting call's priority (lower is more urgent)."""

    async def set_skills(self, handler_id: str, skills: dict[str, int]) -> None:
        """Replace a handler's skills (name -> proficiency 1..10)."""

    # -- auditor -------------------------------------------------------------
    async def call_detail(self, call_id: str) -> dict[str, Any]:
        """Metadata, queue-event timeline, transcript segments and recording info."""

    async def previous_calls(self, number: str, limit: int = 10) -> list[dict[str, Any]]:
        """Earlier calls from ``number``, newest first (``PreviousCall`` shape)."""

    async def search(self, query: str, **filters: Any) -> list[dict[str, Any]]:
        """Transcript search hits with ``<mark>``-highlighted snippets."""

    async def recording_file(self, call_id: str) -> tuple[Path, str]:
        """The sealed recording's path and the SHA-256 recorded when it was sealed."""

    # -- live ----------------------------------------------------------------
    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Live push: domain events, handler state changes and wallboard snapshots."""
