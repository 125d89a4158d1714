"""The RTP port pool: random choice, and a rest for ports just released.

Sans-IO: the pool is fed ``now`` and hands out numbers; :class:`~telephony.media.session.
MediaEngine` binds the sockets.

Why random and why a rest: a port handed out in sequence, or handed out again the moment
its call ended, is a port a stranger can guess and a port a stale stream still aims at (a
far end that has not processed the BYE yet, an SBC that kept sending after our restart).
Choosing at random among the free ports makes the next call's port unguessable, and a
released port rests ``quarantine`` seconds before it can be chosen again, so audio still
in flight for the old call finds a closed port instead of the new call's socket. After a
crash the rest is forgotten; random choice over the whole pool plus the streams' source
filtering (only the SDP's address is heard) covers that case.

A 999 call must never be refused because ports are resting: when no free port is left,
the port that has rested longest is taken early and counted (``reused_early``).
"""

from __future__ import annotations

import random
from collections import deque

__all__ = ["PortPool"]


class PortPool:
    """Even ports in ``[first, last]``: ``take`` one at random, ``release`` it to rest."""

    def __init__(self, first: int, last: int, *, quarantine: float = 30.0,
                 rng: random.Random | None = None) -> None:
        """``first`` must be even; ``rng`` defaults to the OS's (``random.SystemRandom``),
        tests pass a seeded ``random.Random``."""
        if first & 1:
            raise ValueError(f"first port must be even, got {first}")
        if quarantine < 0:
            raise ValueError(f"quarantine must be >= 0, got {quarantine}")
        self.quarantine = quarantine
        """Seconds a released port rests before it can be chosen again."""
        self._rng = rng or random.SystemRandom()
        self._free: list[int] = list(range(first, last + 1, 2))
        self._resting: deque[tuple[float, int]] = deque()  # (released at, port), oldest first
        self.reused_early = 0
        """Ports taken before their rest was over because no other port was free."""

    def __len__(self) -> int:
        """Ports that ``take`` can hand out (free plus resting)."""
        return len(self._free) + len(self._resting)

    @property
    def resting(self) -> int:
        """Ports released less than ``quarantine`` s ago (as of the last ``take``)."""
        return len(self._resting)

    def take(self, now: float) -> int | None:
        """A random free port, else the longest-resting one, else None (pool exhausted)."""
        resting, free = self._resting, self._free
        while resting and now - resting[0][0] >= self.quarantine:
            free.append(resting.popleft()[1])
        if free:
            i = self._rng.randrange(len(free))
            port = free[i]
            free[i] = free[-1]  # swap-remove: O(1), order does not matter
            free.pop()
            return port
        if resting:
            self.reused_early += 1
            return resting.popleft()[1]
        return None

    def release(self, port: int, now: float) -> None:
        """Give a port back; it rests ``quarantine`` s (also for a port found busy on bind)."""
        self._resting.append((now, port))
