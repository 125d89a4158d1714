"""The waiting calls, indexed so each routing decision is O(buckets + log n).

Calls wait in *buckets*, one per (line, class, base priority). A line's calls normally
all sit in one bucket; a supervisor's re-prioritisation moves a call to another bucket
of the same line. Inside a bucket the order is the call's ``seq`` (FIFO; a call whose
offer failed is re-inserted with its old ``seq``, i.e. in its OLD place; a transfer "to
the head" gets a ``seq`` below every other). A bucket is a sorted Python list of seqs
plus a dict: ``bisect`` insertion/removal moves at most a few kB of pointers, which at
10,000 calls is a few microseconds, and it gives positions by bisection.

Ordering between buckets that need the same skill (see :func:`order_key`):

1. class first (0 most urgent): a call of a more urgent class always goes first. Ageing
   can never cross a class because the class is compared before anything else; the
   ageing cap (< 1) only keeps the *displayed* effective priority inside the class;
2. then effective priority = base - min(ageing_per_minute * minutes since arrival, cap);
3. then arrival time, then seq.

Within one bucket, base and ageing rate are shared, so the oldest call also has the best
effective priority and the bucket head is its best call; comparing bucket heads is
therefore enough to find the best call for a skill.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator

from .model import Call, LineSpec


def effective(call: Call, line: LineSpec, now: float, cap: float) -> float:
    """Priority after ageing (lower is more urgent)."""
    if line.ageing_per_minute <= 0.0:
        return call.base
    uplift = line.ageing_per_minute * max(0.0, now - call.arrived) / 60.0
    return call.base - min(uplift, cap)


def order_key(call: Call, line: LineSpec, now: float, cap: float) -> tuple[int, float, float, int]:
    """Sort key of a waiting call among calls needing the same skill (smaller first)."""
    return (call.klass, effective(call, line, now, cap), call.arrived, call.seq)


class Bucket:
    """The calls of one (line, class, base) in FIFO (seq) order."""

    __slots__ = ("line", "klass", "base", "seqs", "calls")

    def __init__(self, line: LineSpec, klass: int, base: float) -> None:
        self.line = line
        self.klass = klass
        self.base = base
        self.seqs: list[int] = []
        self.calls: dict[int, Call] = {}

    def __len__(self) -> int:
        return len(self.seqs)

    def insert(self, call: Call) -> None:
        bisect.insort(self.seqs, call.seq)
        self.calls[call.seq] = call

    def remove(self, call: Call) -> None:
        i = bisect.bisect_left(self.seqs, call.seq)
        if i == len(self.seqs) or self.seqs[i] != call.seq:
            raise KeyError(call.call_id)
        del self.seqs[i]
        del self.calls[call.seq]

    def head(self) -> Call | None:
        return self.calls[self.seqs[0]] if self.seqs else None

    def index(self, call: Call) -> int:
        return bisect.bisect_left(self.seqs, call.seq)

    def count_before(self, key: tuple[int, float, float, int], now: float, cap: float) -> int:
        """How many calls here sort before ``key`` (bisection: keys rise along the bucket)."""
        lo, hi = 0, len(self.seqs)
        while lo < hi:
            mid = (lo + hi) // 2
            if order_key(self.calls[self.seqs[mid]], self.line, now, cap) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def __iter__(self) -> Iterator[Call]:
        return (self.calls[s] for s in self.seqs)


class CallQueue:
    """All waiting (undirected) calls, by skill then bucket."""

    def __init__(self, lines: dict[str, LineSpec], cap: float) -> None:
        self.lines = lines
        self.cap = cap
        self._buckets: dict[tuple[str, int, float], Bucket] = {}
        self._by_skill: dict[str, list[Bucket]] = {}
        """Buckets needing each skill, sorted by (class, base, line name)."""
        self.per_line: dict[str, int] = {name: 0 for name in lines}
        self.per_skill: dict[str, int] = {}
        self._where: dict[str, Bucket] = {}
        for line in lines.values():
            self._bucket(line, line.priority, float(line.priority))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._where

    def _bucket(self, line: LineSpec, klass: int, base: float) -> Bucket:
        key = (line.name, klass, base)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = Bucket(line, klass, base)
            lst = self._by_skill.setdefault(line.skill, [])
            lst.append(b)
            lst.sort(key=lambda x: (x.klass, x.base, x.line.name))
        return b

    def add(self, call: Call) -> None:
        line = self.lines[call.line]
        self._bucket(line, call.klass, call.base).insert(call)
        self._where[call.call_id] = self._buckets[(line.name, call.klass, call.base)]
        self.per_line[line.name] += 1
        self.per_skill[line.skill] = self.per_skill.get(line.skill, 0) + 1

    def remove(self, call: Call) -> None:
        b = self._where.pop(call.call_id)
        b.remove(call)
        self.per_line[b.line.name] -= 1
        self.per_skill[b.line.skill] -= 1
        if not b.seqs and (b.klass, b.base) != (b.line.priority, float(b.line.priority)):
            # a bucket made by a re-prioritisation: drop it when empty so the per-skill
            # list stays as short as the number of lines
            del self._buckets[(b.line.name, b.klass, b.base)]
            self._by_skill[b.line.skill].remove(b)

    def skills_waiting(self) -> list[str]:
        return [s for s, n in self.per_skill.items() if n > 0]

    def best(self, skill: str, now: float) -> tuple[tuple[int, float, float, int], Call] | None:
        """The call to offer next to a handler with ``skill``, and its order key."""
        best: tuple[tuple[int, float, float, int], Call] | None = None
        for b in self._by_skill.get(skill, ()):
            if best is not None and b.klass > best[0][0]:
                break       # buckets are sorted by class: nothing further can win
            head = b.head()
            if head is None:
                continue
            key = order_key(head, b.line, now, self.cap)
            if best is None or key < best[0]:
                best = (key, head)
        return best

    def position(self, call: Call, now: float) -> int:
        """1-based position among the waiting calls needing the same skill."""
        mine = self._where[call.call_id]
        key = order_key(call, mine.line, now, self.cap)
        ahead = 0
        for b in self._by_skill[mine.line.skill]:
            if b.klass > call.klass:
                break
            if b is mine:
                ahead += b.index(call)
            elif b.klass < call.klass:
                ahead += len(b)
            elif b.seqs:
                ahead += b.count_before(key, now, self.cap)
        return ahead + 1

    def skills(self) -> list[str]:
        return list(self._by_skill)

    def ordered(self, skill: str, now: float) -> Iterator[Call]:
        """Waiting calls needing ``skill`` in offer order (lazy merge of the buckets)."""
        cap = self.cap
        streams = [((order_key(c, b.line, now, cap), c) for c in b)
                   for b in self._by_skill.get(skill, ()) if b.seqs]
        # keys end with the unique seq, so the merge never compares two Call objects
        for _key, call in heapq.merge(*streams, key=lambda kc: kc[0]):
            yield call

    def waiting(self, line: str) -> Iterator[Call]:
        """Every waiting call of ``line`` (bucket by bucket, FIFO inside each)."""
        for (name, _k, _b), b in self._buckets.items():
            if name == line:
                yield from b
