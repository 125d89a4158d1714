"""Service level per line, live and rebuilt from the queue log.

Definitions (per line, over events whose time is in ``[since, until)``; None: unbounded):

- ``offered``: queue legs that entered the line (ENTER; a transfer into a line is a new leg,
  as in Asterisk). ``rejected`` (overflow busy) are counted apart and are not offered.
- ``answered``: CONNECTs; ``answered_within``: those with wait <= the line's threshold.
- ``abandoned``: callers who hung up while queued or ringing (ABANDON);
  ``abandoned_within`` (short abandons, wait <= threshold) and ``abandoned_after``.
- ``service_level`` = answered_within / (answered + abandoned_after): only calls that
  reached an outcome count; a call still waiting counts neither way, and a short abandon
  is reported apart (DOMAIN.md "SL"); None when nothing counts yet.
  ``abandon_rate`` = abandoned / offered; None with nothing offered.
- ``average_wait`` / ``p90_wait``: over answered legs (p90 by nearest rank); None if none.
- ``waiting`` / ``longest_wait``: legs not yet answered or abandoned and the longest
  current wait at ``now`` (independent of ``since``).

The router keeps :class:`LineRecords` as it decides; :func:`replay` builds the same records
from nothing but :class:`QueueLogEntry` rows (waits recomputed from ENTER/CONNECT times,
threshold from the ENTER row), so equality of the two checks that the log is complete.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .actions import QueueLogEntry


@dataclass(frozen=True, slots=True)
class ServiceLevel:
    """Service figures for one line over an interval."""

    line: str
    threshold: float
    offered: int = 0
    answered: int = 0
    answered_within: int = 0
    abandoned: int = 0
    abandoned_within: int = 0
    """Short abandons: the caller hung up within the threshold (not in the SL)."""
    abandoned_after: int = 0
    rejected: int = 0
    service_level: float | None = None
    abandon_rate: float | None = None
    average_wait: float | None = None
    p90_wait: float | None = None
    waiting: int = 0
    longest_wait: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class LineRecords:
    """Timestamped facts of one line, appended in time order."""

    line: str
    threshold: float
    enters: list[float] = field(default_factory=list)
    answer_at: list[float] = field(default_factory=list)
    answer_wait: list[float] = field(default_factory=list)
    abandons: list[float] = field(default_factory=list)
    abandon_wait: list[float] = field(default_factory=list)
    rejects: list[float] = field(default_factory=list)

    def forget_before(self, t: float) -> None:
        """Drop facts older than ``t`` (bounded memory on a 24/7 service)."""
        for name in ("enters", "rejects"):
            lst = getattr(self, name)
            del lst[:bisect.bisect_left(lst, t)]
        for at, waits in ((self.answer_at, self.answer_wait),
                          (self.abandons, self.abandon_wait)):
            k = bisect.bisect_left(at, t)
            del at[:k]
            del waits[:k]

    def compute(self, *, since: float | None, now: float | None,
                open_entered: Collection[float] | OpenLegs = (),
                until: float | None = None) -> ServiceLevel:
        def span(lst: list[float]) -> tuple[int, int]:
            lo = 0 if since is None else bisect.bisect_left(lst, since)
            hi = len(lst) if until is None else bisect.bisect_left(lst, until)
            return lo, max(lo, hi)

        def count(lst: list[float]) -> int:
            lo, hi = span(lst)
            return hi - lo

        lo, hi = span(self.answer_at)
        waits = self.answer_wait[lo:hi]
        offered = count(self.enters)
        alo, ahi = span(self.abandons)
        abandoned = ahi - alo
        short = sum(1 for w in self.abandon_wait[alo:ahi] if w <= self.threshold)
        within = sum(1 for w in waits if w <= self.threshold)
        outcomes = len(waits) + abandoned - short
        oldest = (open_entered.oldest() if isinstance(open_entered, OpenLegs)
                  else min(open_entered, default=None))
        longest = now - oldest if oldest is not None and now is not None else None
        p90 = None
        if waits:
            s = sorted(waits)
            p90 = s[max(0, math.ceil(0.9 * len(s)) - 1)]
        return ServiceLevel(
            line=self.line, threshold=self.threshold, offered=offered, answered=len(waits),
            answered_within=within, abandoned=abandoned, abandoned_within=short,
            abandoned_after=abandoned - short, rejected=count(self.rejects),
            service_level=(within / outcomes) if outcomes else None,
            abandon_rate=(abandoned / offered) if offered else None,
            average_wait=(sum(waits) / len(waits)) if waits else None,
            p90_wait=p90, waiting=len(open_entered), longest_wait=longest)


class OpenLegs:
    """Queue legs of one line not yet answered or abandoned: call id -> entry time.

    The service level asks for the count and the oldest entry on every wallboard
    snapshot; both are O(1) amortised here (a min-heap with lazy deletion), so the cost
    of a snapshot does not grow with the backlog.
    """

    __slots__ = ("_at", "_heap")

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, call_id: str, at: float) -> None:
        self._at[call_id] = at
        heapq.heappush(self._heap, (at, call_id))

    def remove(self, call_id: str) -> None:
        del self._at[call_id]
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._at):
            self._heap = [(t, c) for c, t in self._at.items()]  # drop stale entries
            heapq.heapify(self._heap)

    def oldest(self) -> float | None:
        heap, at = self._heap, self._at
        while heap and at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # removed (or re-entered at another time)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._at


def _insert(lst: list[float], t: float) -> None:
    # time normally only moves forward; insort keeps bisect valid if it does not
    if not lst or lst[-1] <= t:
        lst.append(t)
    else:
        bisect.insort(lst, t)


def record_enter(r: LineRecords, at: float) -> None:
    _insert(r.enters, at)


def record_answer(r: LineRecords, at: float, wait: float) -> None:
    if not r.answer_at or r.answer_at[-1] <= at:
        r.answer_at.append(at)
        r.answer_wait.append(wait)
    else:
        i = bisect.bisect_right(r.answer_at, at)
        r.answer_at.insert(i, at)
        r.answer_wait.insert(i, wait)


def record_abandon(r: LineRecords, at: float, wait: float) -> None:
    if not r.abandons or r.abandons[-1] <= at:
        r.abandons.append(at)
        r.abandon_wait.append(wait)
    else:
        i = bisect.bisect_right(r.abandons, at)
        r.abandons.insert(i, at)
        r.abandon_wait.insert(i, wait)


def record_reject(r: LineRecords, at: float) -> None:
    _insert(r.rejects, at)


def rebuild(entries: Iterable[QueueLogEntry]) -> tuple[dict[str, LineRecords],
                                                      dict[str, tuple[str, float]]]:
    """Per-line records from queue-log rows (in log order), and the legs still open
    (call id -> (line, leg start)): entered but neither answered nor abandoned."""
    records: dict[str, LineRecords] = {}
    open_legs: dict[str, tuple[str, float]] = {}

    def rec(line: str, data: dict[str, Any]) -> LineRecords:
        r = records.get(line)
        if r is None:
            r = records[line] = LineRecords(line, float(data.get("threshold", 0.0)))
        elif "threshold" in data:
            r.threshold = float(data["threshold"])
        return r

    for e in entries:
        if e.event == "ENTER":
            record_enter(rec(e.line, e.data), e.at)
            open_legs[e.call_id] = (e.line, e.at)
        elif e.event == "CONNECT":
            leg = open_legs.pop(e.call_id, None)
            if leg is not None:
                record_answer(rec(leg[0], {}), e.at, e.at - leg[1])
        elif e.event == "ABANDON":
            leg = open_legs.pop(e.call_id, None)
            if leg is not None:
                record_abandon(rec(leg[0], {}), e.at, e.at - leg[1])
        elif e.event == "REJECTED":
            record_reject(rec(e.line, e.data), e.at)
    return records, open_legs


def replay(entries: Iterable[QueueLogEntry], *, now: float | None = None,
           since: float | None = None, until: float | None = None) -> dict[str, ServiceLevel]:
    """Rebuild every line's service level from queue-log rows (in log order)."""
    records, open_legs = rebuild(entries)
    out: dict[str, ServiceLevel] = {}
    for name, r in records.items():
        opened = [at for (ln, at) in open_legs.values() if ln == name]
        out[name] = r.compute(since=since, until=until, now=now, open_entered=opened)
    return out
