"""A circuit breaker for a store reached over the network (pure: fed ``now``, no I/O).

Theory of operation: while the store answers the breaker is ``CLOSED`` and every caller
may use it. The first connection-level failure (a reset, a statement with no answer
within its deadline, a connect that fails) *opens* it: from then on callers are told at
once that the store is away (:meth:`Breaker.allow` is False) and never touch the
network, so a silent cut costs the event loop one bounded wait, not one per write. Only
the prober (a thread of the adapter, :class:`store.pg.PgDatabase`) tries the store:
when :meth:`Breaker.probe_due` says so it moves the breaker to ``PROBING``, tries, and
reports :meth:`Breaker.probe_succeeded` (``CLOSED`` again) or :meth:`Breaker.probe_failed`
(``OPEN``, next probe after a back-off doubling from ``probe_min`` to ``probe_max``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    CLOSED = "closed"
    """The store answers: use it."""
    OPEN = "open"
    """The store is away: fail at once; the prober tries it when a probe is due."""
    PROBING = "probing"
    """The prober is trying the store; callers still fail at once."""


class Event(enum.Enum):
    FAILED = "failed"
    PROBE = "probe"
    PROBE_FAILED = "probe_failed"
    PROBE_SUCCEEDED = "probe_succeeded"


_TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.CLOSED, Event.FAILED): State.OPEN,
    (State.OPEN, Event.FAILED): State.OPEN,
    (State.PROBING, Event.FAILED): State.PROBING,
    (State.OPEN, Event.PROBE): State.PROBING,
    (State.PROBING, Event.PROBE_FAILED): State.OPEN,
    (State.PROBING, Event.PROBE_SUCCEEDED): State.CLOSED,
}


class BreakerError(RuntimeError):
    """An event the breaker's state does not allow (a bug in its adapter)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"breaker: {event.value!r} not allowed in state {state.value!r}")
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True)
class Opened:
    """The breaker opened: the store is taken as away."""

    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Closed:
    """A probe reached the store: the breaker is closed again."""

    since: float
    """When it opened."""
    at: float
    probes: int
    """Probes tried while it was open (the last one succeeded)."""


class Breaker:
    """Open on the first failure, closed by a successful probe (see the module doc)."""

    def __init__(self, *, probe_min: float = 0.25, probe_max: float = 2.0) -> None:
        if not 0 < probe_min <= probe_max:
            raise ValueError(f"need 0 < probe_min <= probe_max, got {probe_min}, {probe_max}")
        self.probe_min = probe_min
        self.probe_max = probe_max
        self.state = State.CLOSED
        self.reason = ""
        """Why it opened ('' while closed)."""
        self.since: float | None = None
        """When it opened (None while closed)."""
        self.opened = 0
        """Times it opened since start."""
        self.probes = 0
        """Probes tried during the current opening."""
        self._backoff = probe_min
        self._next_probe = 0.0

    def _move(self, event: Event) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise BreakerError(self.state, event) from None

    def allow(self) -> bool:
        """May a caller use the store now? (Only while closed.)"""
        return self.state is State.CLOSED

    def failed(self, reason: str, now: float) -> Opened | None:
        """A connection-level failure. Returns :class:`Opened` when this opened it."""
        was = self.state
        self._move(Event.FAILED)
        if was is not State.CLOSED:
            return None
        self.reason, self.since, self.opened, self.probes = reason, now, self.opened + 1, 0
        self._backoff = self.probe_min
        self._next_probe = now  # the first probe at once: a reset may be a restart
        return Opened(reason, now)

    def next_probe(self) -> float | None:
        """When the prober should next try (None: no probe wanted now)."""
        return self._next_probe if self.state is State.OPEN else None

    def probe_due(self, now: float) -> bool:
        """True (and ``PROBING``) when a probe is due: the caller must then report
        :meth:`probe_failed` or :meth:`probe_succeeded`."""
        if self.state is not State.OPEN or now < self._next_probe:
            return False
        self._move(Event.PROBE)
        self.probes += 1
        return True

    def probe_failed(self, now: float) -> None:
        self._move(Event.PROBE_FAILED)
        self._next_probe = now + self._backoff
        self._backoff = min(self._backoff * 2, self.probe_max)

    def probe_succeeded(self, now: float) -> Closed:
        self._move(Event.PROBE_SUCCEEDED)
        closed = Closed(since=self.since if self.since is not None else now, at=now,
                        probes=self.probes)
        self.reason, self.since = "", None
        return closed


__all__ = ["Breaker", "BreakerError", "Closed", "Event", "Opened", "State"]
