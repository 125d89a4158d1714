"""Call routing core: priority queue, handler states, distribution, statistics.

Pure logic (no I/O, no clock): see ``routing.router`` and /work/notes/routing_api.md.
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
