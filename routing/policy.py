"""Distribution policies: which available handler gets the next call.

A policy is an object with ``name`` and ``key(handler, skill)``; the smallest key wins.
The :class:`AvailablePool` keeps one heap per skill of the available handlers holding
that skill, keyed by the policy, so picking a handler is O(log n) whatever the number of
handlers. Heaps are invalidated lazily: an entry is live only while the handler is still
available with the same ``version`` (bumped on every handler change).
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol

from .errors import RoutingError
from .model import Handler, HandlerState


class Policy(Protocol):
    name: str

    def key(self, handler: Handler, skill: str) -> tuple[Any, ...]:
        """Sort key among available handlers with ``skill``; smallest is offered first."""
        ...


class LongestIdle:
    """The handler available the longest gets the call (then the most proficient)."""

    name = "longest-idle"

    def key(self, handler: Handler, skill: str) -> tuple[Any, ...]:
        return (handler.idle_since, -handler.skills.get(skill, 0), handler.handler_id)


class LeastCalls:
    """The handler who answered the fewest calls since login (then longest idle)."""

    name = "least-calls"

    def key(self, handler: Handler, skill: str) -> tuple[Any, ...]:
        return (handler.calls, handler.idle_since, -handler.skills.get(skill, 0),
                handler.handler_id)


POLICIES: dict[str, type[LongestIdle] | type[LeastCalls]] = {
    LongestIdle.name: LongestIdle, LeastCalls.name: LeastCalls}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise RoutingError(f"unknown strategy {name!r}; expected one of "
                           f"{', '.join(sorted(POLICIES))}") from None


class AvailablePool:
    """Available handlers per skill, in policy order."""

    def __init__(self, policy: Policy, handlers: dict[str, Handler]) -> None:
        self.policy = policy
        self._handlers = handlers
        self._heaps: dict[str, list[tuple[tuple[Any, ...], str, int]]] = {}
        self.count: dict[str, int] = {}
        """Available handlers per skill (exact, not counting stale heap entries)."""

    def add(self, h: Handler) -> None:
        """``h`` just became available (call after its version was bumped)."""
        for skill in h.skills:
            heap = self._heaps.setdefault(skill, [])
            heapq.heappush(heap, (self.policy.key(h, skill), h.handler_id, h.version))
            n = self.count[skill] = self.count.get(skill, 0) + 1
            if len(heap) > 2 * n + 64:
                self._compact(skill)

    def discard(self, h: Handler, skills: dict[str, int] | None = None) -> None:
        """``h`` is no longer available (its entries go stale through the version bump)."""
        for skill in (h.skills if skills is None else skills):
            self.count[skill] -= 1

    def _live(self, entry: tuple[tuple[Any, ...], str, int], skill: str) -> bool:
        h = self._handlers.get(entry[1])
        return (h is not None and h.version == entry[2] and h.state is HandlerState.AVAILABLE
                and skill in h.skills)

    def _compact(self, skill: str) -> None:
        heap = [e for e in self._heaps[skill] if self._live(e, skill)]
        heapq.heapify(heap)
        self._heaps[skill] = heap

    def peek(self, skill: str) -> Handler | None:
        """The handler the policy would give the next ``skill`` call to, if any."""
        if not self.count.get(skill):
            return None
        heap = self._heaps[skill]
        while heap:
            if self._live(heap[0], skill):
                return self._handlers[heap[0][1]]
            heapq.heappop(heap)
        return None
