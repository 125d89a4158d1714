"""Engine state: per-call and per-leg records, SDP session state, small media helpers."""

from __future__ import annotations

import asyncio
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from config.schema import LineSettings
from telephony.api import (
    IncomingCall,
)
from telephony.sip import sdp
from telephony.sip.ua import Session

log = structlog.get_logger("telephony.engine")

Admit = Callable[[IncomingCall], "tuple[int, str] | None"]
"""Optional admission hook: None accepts, ``(status, reason)`` rejects (e.g. 486)."""

_FAIL_REASON = {486: "busy", 600: "busy", 603: "rejected", 408: "unreachable",
                480: "unreachable", 404: "unreachable", 503: "unreachable", 487: "cancelled"}


NO_RESPONSE_TIMEOUT = 4.0
"""A leg whose INVITE got no response at all (not even 100 Trying) in this many seconds
is reported ``unreachable`` (RFC 3261's 32 s Timer B is far too slow for a control room;
a proxy or phone on the LAN answers 100 Trying within milliseconds)."""


UNLINK_AFTER = 40.0
"""Seconds after a call or leg ended before the engine cuts its links to its SIP sessions.

Until then a late message (the 2xx of a leg we cancelled, a retransmitted BYE) still
reaches the ended call or leg; the UA forgets its transactions after 64*T1 = 32 s. After
it, nothing refers to the call but the session and the session only to the call, so
clearing ``session.user`` (and the call's leg table) lets reference counting free the
whole call at once: no per-call reference cycle is left for the garbage collector, whose
full collections otherwise walk every call of the last minutes (40-130 ms pauses at
30 calls/s, bench/sip_load.py) and hold their memory until then."""

OVERLOAD_WAIT = 0.25
"""Seconds a datagram may wait between reaching the host and being handled before the
engine counts itself overloaded and answers NEW non-emergency INVITEs 503 + Retry-After
at once (priority-0 lines are always served; in-dialog requests are never shed). A
caller's SIP stack retransmits an unanswered INVITE after 0.5 s: past this wait the
answer is already late, and refusing some calls quickly keeps the rest on time."""


_RINGING = ("calling", "trying", "ringing")
"""Leg states before a final response."""


class _FallbackCodec(enum.Enum):
    """Same values as ``telephony.media.Codec`` while that package is absent."""

    PCMU = 0
    PCMA = 8


def _codec_enum() -> Any:
    try:
        from telephony.media import Codec
    except ImportError:
        return _FallbackCodec
    return Codec


@dataclass(eq=False)
class _SdpState:
    """Our side of one SDP session: o= id/version and the last body we sent (RFC 3264 §8:
    the version changes only when the description does)."""

    session_id: int
    version: int = 1
    last: bytes = b""
    srtp: str = "off"
    """SRTP policy in force for this stream (``required``/``offered``/``off``), after the
    rule that keys travel only over TLS (see :meth:`EngineBase._srtp_policy`)."""
    keys: dict[str, bytes] = field(default_factory=dict)
    """Our SRTP master key per crypto suite (made once, kept across re-INVITEs)."""
    offered: list[sdp.Crypto] = field(default_factory=list)
    """The ``a=crypto`` lines of our last offer (to check the answer against)."""
    current: sdp.Srtp | None = None
    """What the last offer/answer agreed (None: plain RTP)."""

    def key(self, suite: str) -> bytes:
        """Our master key for ``suite`` (random, made on first use)."""
        key = self.keys.get(suite)
        if key is None:
            key = self.keys[suite] = secrets.token_bytes(sdp.CRYPTO_SUITES[suite])
        return key

    def crypto_offer(self) -> list[sdp.Crypto]:
        """The ``a=crypto`` lines of our next offer: the agreed one while SRTP runs, all
        of ours before (none when the policy is off)."""
        if self.srtp == "off":
            self.offered = []
        elif self.current is not None:
            c = self.current
            self.offered = [sdp.Crypto(c.tag, c.suite, c.local_key)]
        else:
            self.offered = sdp.offer_crypto(self.key)
        return self.offered

    @property
    def proto(self) -> str:
        """``RTP/SAVP`` when SRTP is required, else ``RTP/AVP`` (best-effort with keys)."""
        if self.current is not None:
            return self.current.proto
        return "RTP/SAVP" if self.srtp == "required" else "RTP/AVP"

    def encode(self, build: Callable[[int], sdp.SessionDescription]) -> bytes:
        body = build(self.version).encode()
        if self.last and _without_origin(body) != _without_origin(self.last):
            self.version += 1
            body = build(self.version).encode()
        self.last = body
        return body


def _without_origin(body: bytes) -> bytes:
    return b"\n".join(ln for ln in body.split(b"\n") if not ln.startswith(b"o="))


def _play(stream: Any, prompt: str) -> None:
    """Play a prompt; a missing/bad WAV falls back to the tone rather than failing the call."""
    try:
        stream.play(prompt)
    except Exception:  # noqa: BLE001 - MediaError, OSError...
        log.exception("media.prompt_failed", prompt=prompt)
        if prompt != "tone":
            stream.play("tone")


class _NoRecording:
    """Stands in when a recording could not be created (logged as an error)."""

    def attach_caller(self, stream: Any) -> None:
        pass

    def attach_handler(self, stream: Any) -> None:
        pass


@dataclass(eq=False)
class _Leg:
    leg_id: str
    call: _Call
    session: Session
    stream: Any
    state: str = "calling"
    """calling (INVITE sent), trying (100 received), ringing (18x), answered, ended"""
    reported: bool = False
    """A final outcome (LegFailed/LegEnded) was already emitted."""
    timer: asyncio.TimerHandle | None = None
    on_hold: bool = False
    last_signal: float = 0.0
    sdp: _SdpState = field(default_factory=lambda: _SdpState(0))
    codec: str = ""


@dataclass(eq=False)
class _Call:
    call_id: str
    line: LineSettings
    session: Session
    stream: Any
    recording: Any
    caller: str
    codec: str
    invite_at: float
    last_signal: float
    prompt: str
    log: Any
    legs: dict[str, _Leg] = field(default_factory=dict)
    bridged: _Leg | None = None
    held_by_handler: bool = False
    on_hold: bool = False
    sdp: _SdpState = field(default_factory=lambda: _SdpState(0))
    guard: asyncio.TimerHandle | None = None
    last_digit: tuple[str, float] = ("", 0.0)
    silent_flagged: bool = False
    awaiting_answer: bool = False
    """Delayed offer: our 200 carried the offer, the ACK carries the answer."""
