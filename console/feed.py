"""A bounded live inbox that never silently stops: overflow turns into a resync.

Theory of operation: every live subscriber (the console's subscription to the service,
and each page's WebSocket) reads from its own :class:`LiveQueue`. The producer never
waits and memory stays bounded: when a subscriber has ``maxsize`` items it has not taken
(a burst of calls, a slow page), its whole backlog is dropped and the queue is marked
*needs resync*. Items offered while the mark is set are dropped too, because the
consumer's next :meth:`LiveQueue.get` returns one ``{"type": "resync"}`` item, on which
it fetches the current full state (the snapshot is taken after every dropped item, so
it covers them) and then carries on streaming what comes next. Nothing is lost from the
operator's point of view, and the subscriber is never dropped.

Coalescing: an item with a coalescing key (e.g. every wallboard snapshot shares one)
replaces a queued item with the same key instead of taking another place, so a slow
consumer gets only the newest of them and they never fill the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

RESYNC_TYPE = "resync"
"""``type`` of the item a consumer gets after an overflow: fetch the full state again."""

Item = dict[str, Any]


def _no_key(item: Item) -> Hashable | None:
    return None


def snapshot_key(item: Item) -> Hashable | None:
    """Coalesce wallboard snapshots: each is a trigger for the newest state, one queued
    is enough."""
    return "wallboard.snapshot" if item.get("type") == "wallboard.snapshot" else None


class LiveQueue:
    """One subscriber's bounded inbox (single consumer, loop thread only).

    Args:
        maxsize: items held before an overflow (>= 1).
        key: coalescing key of an item, or None for items that each keep their place.
        on_overflow: called once per overflow (metrics, logs).
    """

    def __init__(self, maxsize: int, *, key: Callable[[Item], Hashable | None] = _no_key,
                 on_overflow: Callable[[], None] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._key = key
        self._on_overflow = on_overflow
        self._items: deque[tuple[Hashable | None, Item | None]] = deque()
        self._latest: dict[Hashable, Item] = {}
        self._resync = False
        self._closed = False
        self._wake = asyncio.Event()
        self.overflows = 0
        """Times the backlog was dropped for a resync."""
        self.peak = 0
        """Most items ever held at once."""

    def qsize(self) -> int:
        return len(self._items)

    @property
    def needs_resync(self) -> bool:
        return self._resync

    def put(self, item: Item) -> None:
        """Offer an item; never blocks, never raises. Dropped while a resync is pending."""
        if self._resync or self._closed:
            return
        k = self._key(item)
        if k is not None and k in self._latest:
            self._latest[k] = item          # coalesced: keeps the earlier place
            return
        if len(self._items) >= self.maxsize:
            self.resync()
            return
        if k is not None:
            self._latest[k] = item
            self._items.append((k, None))
        else:
            self._items.append((None, item))
        self.peak = max(self.peak, len(self._items))
        self._wake.set()

    def resync(self) -> None:
        """Drop the backlog; the consumer's next item is a resync."""
        self._items.clear()
        self._latest.clear()
        if not self._resync:
            self.overflows += 1
            self._resync = True
            if self._on_overflow is not None:
                self._on_overflow()
        self._wake.set()

    def close(self) -> None:
        """No more items; :meth:`get` returns None once the backlog is taken."""
        self._closed = True
        self._wake.set()

    def get_nowait(self) -> Item | None:
        """The next item, ``{"type": "resync"}`` after an overflow; None if there is none."""
        if self._resync:
            self._resync = False
            return {"type": RESYNC_TYPE}
        if not self._items:
            return None
        k, item = self._items.popleft()
        if k is not None:
            item = self._latest.pop(k)
        return item

    async def get(self) -> Item | None:
        """Wait for the next item; None once closed and empty."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()
