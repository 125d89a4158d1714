"""What we may send to a source we do not know: never more than one small answer.

Theory of operation. UDP carries no proof of the source address, so anything we send
to an unknown source may land on a victim whose address was spoofed. A UAS that
answers such a request through a full server transaction reflects and amplifies: an
INVITE refused with 403 is retransmitted until an ACK that never comes (eleven copies
over 32 s), and every retransmission of the INVITE gets the 403 again.

So requests from an address that is not trusted (no line's trusted source, registrar or
the outbound proxy; the engine says which) and that belong to no dialog or transaction
of ours never reach the transaction layer. Per the ``policy``:

- ``drop``: nothing is sent.
- ``reject``: one stateless answer (403, or 400 naming a parse fault), no 100 Trying,
  no body, no Server header, never larger than the request (else nothing), never
  retransmitted; the same request again (a retransmission: same source, branch and
  CSeq within ``MEMO_SECONDS``) gets nothing; and at most ``rate`` answers a second per
  source address after a burst of ``burst``, ``TOTAL_RATE`` a second over all sources
  (a spoofer rotating addresses cannot multiply the allowance).

:class:`SourceGuard` is pure: it is fed ``now`` and returns a verdict that is also the
counter to bump. Memory is bounded (``MAX_SOURCES`` buckets, ``MAX_MEMO`` requests).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Addr = tuple[str, int]
Policy = Literal["reject", "drop"]

MEMO_SECONDS = 32.0
"""How long an answered request is remembered (64*T1: a UAC's retransmissions end)."""
MAX_MEMO = 8192
MAX_SOURCES = 4096
TOTAL_RATE = 20.0
"""Answers per second to all untrusted sources together."""
TOTAL_BURST = 40.0

ANSWER = "untrusted_answered"
"""Verdict: send the one answer."""
DROPPED = "untrusted_dropped"
"""Verdict: policy ``drop``."""
REPEAT = "untrusted_repeat_dropped"
"""Verdict: this request was answered already (a retransmission or a replay)."""
LIMITED = "untrusted_rate_limited"
"""Verdict: over the per-source or total rate."""


@dataclass
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; :meth:`take` spends one."""

    rate: float
    burst: float
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> bool:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SourceGuard:
    """Decides whether an out-of-dialog request from ``addr`` may be answered at all."""

    def __init__(self, *, policy: Policy = "reject", rate: float = 1.0, burst: int = 5,
                 trusted: Callable[[str], bool] = lambda ip: True) -> None:
        if policy not in ("reject", "drop"):
            raise ValueError(f"untrusted policy must be 'reject' or 'drop', got {policy!r}")
        self.policy: Policy = policy
        self.rate = rate
        self.burst = burst
        self._trusted = trusted
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._total: TokenBucket | None = None
        self._memo: OrderedDict[tuple[object, ...], float] = OrderedDict()

    def trusted(self, ip: str) -> bool:
        """Is ``ip`` a source we deal with normally (a line's, the registrar, the proxy)?"""
        return self._trusted(ip)

    def verdict(self, addr: Addr, request_key: tuple[object, ...], now: float) -> str:
        """One of :data:`ANSWER`, :data:`DROPPED`, :data:`REPEAT`, :data:`LIMITED` for a
        request from the untrusted ``addr``; ``request_key`` identifies the request
        (branch, CSeq...) so that its retransmissions are recognised."""
        if self.policy == "drop":
            return DROPPED
        memo = self._memo
        while memo:
            until = next(iter(memo.values()))
            if until > now and len(memo) <= MAX_MEMO:
                break
            memo.popitem(last=False)
        full_key = (addr, *request_key)
        if full_key in memo:
            return REPEAT
        bucket = self._sources.get(addr[0])
        if bucket is None:
            bucket = self._sources[addr[0]] = TokenBucket.full(self.rate, self.burst, now)
            if len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(addr[0])
        if self._total is None:
            self._total = TokenBucket.full(TOTAL_RATE, TOTAL_BURST, now)
        # the total is only spent when the source still has allowance
        if not bucket.take(now) or not self._total.take(now):
            return LIMITED
        memo[full_key] = now + MEMO_SECONDS
        return ANSWER
