"""RFC 4733 telephone-events (DTMF digits): receive and send, sans-IO.

Payload (4 bytes): ``event`` (0-9 digits, 10 '*', 11 '#', 12-15 'A'-'D'), ``E`` end bit,
``R`` reserved, 6-bit ``volume`` (-dBm0), 16-bit ``duration`` in timestamp units. All
packets of one event share its RTP timestamp (the event start); the sender repeats the
final (end) packet three times for robustness.

Receive: an event is identified by its timestamp. It is reported once, when its first
end packet arrives; further packets with that timestamp are duplicates. If the end
packets were all lost, the event is reported when a later event (new timestamp) starts,
or via :meth:`DtmfReceiver.expire` when no packet came for a while.

Send: :class:`DtmfSender` yields one packet per tick (start with marker, updates, then
the same end packet three times); the stream pauses audio while it runs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import RtpError

__all__ = ["DIGITS", "DtmfEvent", "DtmfReceiver", "DtmfSender", "digit_to_event",
           "parse_event"]

DIGITS = "0123456789*#ABCD"
_EVT = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    """Event code of a DTMF digit; ValueError for anything else."""
    d = digit.upper() if len(digit) == 1 else ""
    if not d or d not in DIGITS:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return DIGITS.index(d)


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One decoded telephone-event payload."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF digit, or None for other events (flash, tones)."""
        return DIGITS[self.event] if self.event < 16 else None


def parse_event(payload: bytes) -> DtmfEvent:
    """Decode a telephone-event payload (first 4 bytes); RtpError if too short."""
    if len(payload) < 4:
        raise RtpError(f"telephone-event payload too short: {len(payload)} bytes < 4")
    ev, flags, duration = _EVT.unpack_from(payload)
    return DtmfEvent(event=ev, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


def build_event(event: int, *, end: bool, volume: int, duration: int) -> bytes:
    """Encode a telephone-event payload."""
    return _EVT.pack(event, (0x80 if end else 0) | (volume & 0x3F), min(duration, 0xFFFF))


class DtmfReceiver:
    """Turns a stream's telephone-event packets into one digit per key press."""

    def __init__(self) -> None:
        self._current_ts: int | None = None
        self._current_digit: str | None = None
        self._reported: set[int] = set()
        self._reported_order: list[int] = []
        self._idle = 0

    def feed(self, timestamp: int, payload: bytes) -> list[str]:
        """Feed one packet's payload; returns digits now complete (usually [] or [d])."""
        ev = parse_event(payload)
        self._idle = 0
        out: list[str] = []
        if timestamp in self._reported:
            return out  # redundant end packet or late retransmission of a finished event
        if timestamp != self._current_ts:
            # A new event started; if the previous one never saw its end, report it now.
            out.extend(self._finish_current())
            self._current_ts = timestamp
            self._current_digit = ev.digit
        if ev.end:
            out.extend(self._finish_current())
        return out

    def expire(self) -> list[str]:
        """Call once per tick: an event with no packet for 1 s (ends lost) is reported."""
        if self._current_ts is None:
            return []
        self._idle += 1
        return self._finish_current() if self._idle >= 50 else []

    def _finish_current(self) -> list[str]:
        ts, digit = self._current_ts, self._current_digit
        self._current_ts = self._current_digit = None
        if ts is None:
            return []
        self._reported.add(ts)
        self._reported_order.append(ts)
        if len(self._reported_order) > 64:
            self._reported.discard(self._reported_order.pop(0))
        return [digit] if digit is not None else []


class DtmfSender:
    """Packets of one digit, one per tick: ``(marker, payload, timestamp)``."""

    def __init__(self, digit: str, *, timestamp: int, duration_ms: int = 160,
                 frame_samples: int = 160, volume: int = 10) -> None:
        """``timestamp`` is the RTP timestamp of the event start (the stream's current ts)."""
        self.event = digit_to_event(digit)
        self.timestamp = timestamp & 0xFFFFFFFF
        self._total = max(frame_samples, int(duration_ms) * 8)
        self._frame = frame_samples
        self._volume = volume
        self._elapsed = 0
        self._ends_sent = 0

    @property
    def done(self) -> bool:
        """All packets (including the three end packets) have been produced."""
        return self._ends_sent >= 3

    def next_packet(self) -> tuple[bool, bytes]:
        """``(marker, payload)`` for this tick; call only while not ``done``."""
        if self._elapsed < self._total:
            self._elapsed = min(self._total, self._elapsed + self._frame)
            marker = self._elapsed <= self._frame
            end = self._elapsed >= self._total
        else:
            marker, end = False, True
        if end:
            self._ends_sent += 1
        return marker, build_event(self.event, end=end, volume=self._volume,
                                   duration=self._elapsed)
