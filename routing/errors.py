"""Errors raised by the routing core.

Every error says what was asked and why it cannot be done, e.g.
``handler 'h1' is on_call: cannot 'logout'`` or ``unknown line '102'``; tests assert the
messages. The service turns them into a refusal on the desk (HTTP 409/404), never a crash.
"""

from __future__ import annotations


class RoutingError(Exception):
    """A request the router refuses: unknown call/handler/line or an illegal state move."""

    def __init__(self, message: str, *, state: str | None = None, event: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.state = state
        """The state the call or handler was in (for illegal moves)."""
        self.event = event
        """The event that was refused (for illegal moves)."""
