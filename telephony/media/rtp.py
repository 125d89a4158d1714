"""RTP packets (RFC 3550 section 5.1): parse and build, plus receive statistics.

Sans-IO: bytes in, :class:`RtpPacket` out, and back. ``parse`` raises :class:`RtpError`
with an exact reason for anything malformed; the socket adapter counts and drops those,
so a bad datagram never escapes the protocol.

Fixed header::

     0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |           synchronization source (SSRC) identifier            |
    |            contributing source (CSRC) identifiers             |  CC x 32 bits
    | profile-specific ext id       |   length in 32-bit words      |  if X
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import RtpError
from .rtcp import ReportBlock

__all__ = ["RtpPacket", "ReceptionStats", "build", "parse"]

_HDR = struct.Struct("!BBHII")
_EXT = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet."""

    payload_type: int
    """7-bit payload type (0 PCMU, 8 PCMA, dynamic 96-127 e.g. telephone-event)."""
    sequence: int
    """16-bit sequence number."""
    timestamp: int
    """32-bit RTP timestamp (8 kHz clock for G.711 and telephone-event)."""
    ssrc: int
    """32-bit synchronisation source."""
    payload: bytes
    """Payload with any padding removed."""
    marker: bool = False
    """Marker bit (first packet of a talkspurt; first packet of a DTMF event)."""
    csrc: tuple[int, ...] = ()
    """Contributing sources (at most 15)."""
    extension: tuple[int, bytes] | None = None
    """Header extension ``(profile id, data)``; data length is a multiple of 4."""
    padding: int = 0
    """Padding bytes that were present (parse) or are to be added (build)."""


def parse(data: bytes) -> RtpPacket:
    """Parse one datagram; raise :class:`RtpError` with the reason if it is not valid RTP."""
    n = len(data)
    if n < 12:
        raise RtpError(f"packet too short: {n} bytes < 12")
    b0, b1, seq, ts, ssrc = _HDR.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtpError(f"unsupported RTP version {b0 >> 6}")
    cc = b0 & 0x0F
    offset = 12 + 4 * cc
    if offset > n:
        raise RtpError(f"CSRC list ({cc} entries) exceeds packet length {n}")
    csrc = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
    extension = None
    if b0 & 0x10:
        if offset + 4 > n:
            raise RtpError("header extension truncated")
        profile, words = _EXT.unpack_from(data, offset)
        end = offset + 4 + 4 * words
        if end > n:
            raise RtpError(f"header extension length {words} words exceeds packet")
        extension = (profile, bytes(data[offset + 4:end]))
        offset = end
    end = n
    padding = 0
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0:
            raise RtpError("padding bit set but padding length is 0")
        if offset + padding > n:
            raise RtpError(f"padding length {padding} exceeds payload")
        end = n - padding
    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=bytes(data[offset:end]),
        marker=bool(b1 & 0x80),
        csrc=tuple(csrc),
        extension=extension,
        padding=padding,
    )


def build(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
    csrc: tuple[int, ...] = (),
    extension: tuple[int, bytes] | None = None,
    padding: int = 0,
) -> bytes:
    """Serialise an RTP packet; raise ``ValueError`` for out-of-range fields."""
    if not 0 <= payload_type <= 127:
        raise ValueError(f"payload type {payload_type} out of range 0..127")
    if len(csrc) > 15:
        raise ValueError(f"too many CSRCs: {len(csrc)} > 15")
    if not 0 <= padding <= 255:
        raise ValueError(f"padding {padding} out of range 0..255")
    b0 = 0x80 | len(csrc)
    parts = []
    if extension is not None:
        b0 |= 0x10
        profile, ext = extension
        if len(ext) % 4:
            raise ValueError("extension data length must be a multiple of 4")
        parts.append(_EXT.pack(profile, len(ext) // 4) + ext)
    if padding:
        b0 |= 0x20
    header = _HDR.pack(b0, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF,
                       timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)
    if csrc:
        header += struct.pack(f"!{len(csrc)}I", *csrc)
    pad = (bytes(padding - 1) + bytes([padding])) if padding else b""
    return header + b"".join(parts) + payload + pad


def build_fast(payload_type: int, sequence: int, timestamp: int, ssrc: int,
               payload: bytes, marker: bool) -> bytes:
    """The send path's minimal header (no CSRC/extension/padding), no range checks."""
    return _HDR.pack(0x80, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF,
                     timestamp & 0xFFFFFFFF, ssrc) + payload


class ReceptionStats:
    """RFC 3550 A.1/A.8 receive statistics for one source: extended seq, loss, jitter.

    Fed every valid packet of the stream (audio and telephone-event alike, since they
    share the sequence space). ``arrival`` is in seconds; jitter is kept in timestamp
    units and reported in ms.
    """

    __slots__ = ("ssrc", "base_seq", "max_seq", "cycles", "received", "_transit", "_jitter",
                 "clock_rate", "_lost_before", "_expected_prior", "_received_prior")

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self._transit: float | None = None
        self._jitter = 0.0
        self._lost_before = 0
        self._expected_prior = 0
        self._received_prior = 0

    def reset(self, ssrc: int, seq: int) -> None:
        """Start counting a new source (loss of the previous one is kept in ``lost``)."""
        if self.ssrc is not None:
            self._lost_before += max(0, self.expected - self.received)
        self.ssrc = ssrc
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 0
        self._transit = None
        self._expected_prior = self._received_prior = 0

    def update(self, ssrc: int, seq: int, timestamp: int, arrival: float) -> None:
        """Account for one packet (after duplicate detection is not required: RFC counts all)."""
        if ssrc != self.ssrc:
            self.reset(ssrc, seq)
        max_seq = self.max_seq
        delta = (seq - max_seq) & 0xFFFF
        if 0 < delta < 0x8000:
            if seq < max_seq:
                self.cycles += 0x10000
            self.max_seq = seq
        self.received += 1
        transit = arrival * self.clock_rate - timestamp
        prev = self._transit
        self._transit = transit
        if prev is not None:
            d = transit - prev
            if d < 0:
                d = -d
            # ts wrap shows as a 2**32 jump in transit: ignore that sample
            if d < 0x7FFFFFFF:
                self._jitter += (d - self._jitter) * 0.0625  # (/ 16, exactly)

    @property
    def expected(self) -> int:
        """Packets expected from the extended sequence range."""
        if self.ssrc is None:
            return 0
        return self.cycles + self.max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost over all sources so far (duplicates never make it negative)."""
        return self._lost_before + max(0, self.expected - self.received)

    @property
    def jitter_ms(self) -> float:
        """Interarrival jitter estimate in milliseconds."""
        return 1000.0 * self._jitter / self.clock_rate

    def report_block(self, *, lsr: int, dlsr: int) -> ReportBlock | None:
        """RFC 3550 A.3 reception report about the current source (None before any packet);
        fraction lost is counted since the previous call."""
        if self.ssrc is None:
            return None
        expected, received = self.expected, self.received
        exp_int = expected - self._expected_prior
        rec_int = received - self._received_prior
        self._expected_prior, self._received_prior = expected, received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        return ReportBlock(ssrc=self.ssrc, fraction_lost=fraction,
                           cumulative_lost=expected - received,
                           highest_seq=self.cycles + self.max_seq, jitter=int(self._jitter),
                           lsr=lsr, dlsr=dlsr)
