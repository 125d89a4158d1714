"""Call routing core: priority queue, handler states, distribution, statistics.

Pure logic (no I/O, no clock, no sleeping); the contract is /work/notes/routing_api.md.

How the service drives it::

    router = Router.from_settings(settings.lines, settings.routing)
    actions = router.call_arrived(call_id, "999", time.time(), caller="07700900123")
    for a in actions:                 # in order
        match a:
            case QueueLogEntry():  queuelog.append(conn, a)      # same transaction
            case Offer():          ring a.handler_id's phone for a.call_id
            case CancelOffer():    stop ringing (a.reason: no-answer, caller-gone, ...)
            case Reject():         answer the INVITE with a.status (486)
            case Queued():         CallQueued event / announcement (a.overflow set: full)
            case Connected():      bridge; CallAnswered event
            case Abandoned() | Completed() | HandlerChanged():  events / desk push
    # after EVERY call into the router, re-arm one timer:
    deadline = router.next_deadline()  # None: no timer; else call router.tick(now) then

Feed back what telephony reports: ``offer_answered`` (handler picked up),
``offer_failed(reason='no-answer'|'rejected'|'busy'|'unreachable'|'error')``,
``call_abandoned`` (caller hung up before answer), ``call_ended`` (after answer).
Anything refused raises :class:`RoutingError` (message names the state and the event);
the router's state is unchanged when it raises.
"""

from .actions import (
    Abandoned,
    Action,
    Callback,
    CancelOffer,
    Completed,
    Connected,
    HandlerChanged,
    Offer,
    Queued,
    QueueLogEntry,
    Reject,
)
from .errors import RoutingError
from .model import CALL_TRANSITIONS, HANDLER_TRANSITIONS, CallState, HandlerState, LineSpec
from .policy import LeastCalls, LongestIdle, Policy
from .router import Router
from .stats import ServiceLevel, replay

__all__ = [
    "Abandoned", "Action", "CALL_TRANSITIONS", "Callback", "CallState", "CancelOffer",
    "Completed", "Connected", "HANDLER_TRANSITIONS", "HandlerChanged", "HandlerState",
    "LeastCalls", "LineSpec", "LongestIdle", "Offer", "Policy", "QueueLogEntry", "Queued",
    "Reject", "Router", "RoutingError", "ServiceLevel", "replay",
]
