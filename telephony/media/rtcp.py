"""RTCP (RFC 3550 section 6): sender/receiver reports, SDES CNAME, BYE - sans-IO.

What we use it for: telling the far end how its audio reaches us (loss, jitter), learning
how ours reaches it (its report block about our SSRC) and the round-trip time (from the
LSR/DLSR fields). Each stream sends a compound packet (SR or RR, then SDES CNAME) about
every 5 s (randomised 0.5-1.5x, RFC 3550 6.3.1) on the odd port next to its RTP port,
and a BYE when it closes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import RtpError

__all__ = ["ReportBlock", "RtcpReport", "build_bye", "build_report", "ntp_mid32", "parse"]

SR, RR, SDES, BYE = 200, 201, 202, 203
_NTP_EPOCH_OFFSET = 2208988800  # 1900-01-01 to 1970-01-01 in seconds
_BLOCK = struct.Struct("!IB3sIIII")


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report: how a receiver hears source ``ssrc``."""

    ssrc: int
    fraction_lost: int
    """Fraction lost since the previous report, in 1/256 units."""
    cumulative_lost: int
    highest_seq: int
    """Extended highest sequence number received."""
    jitter: int
    """Interarrival jitter in timestamp units."""
    lsr: int
    """Middle 32 bits of the NTP time of the last SR received from ``ssrc`` (0: none)."""
    dlsr: int
    """Delay since that SR, in 1/65536 s."""


@dataclass(frozen=True, slots=True)
class RtcpReport:
    """A parsed SR or RR."""

    kind: int
    """200 (SR) or 201 (RR)."""
    ssrc: int
    """Sender of the report."""
    ntp_mid32: int | None
    """SR only: middle 32 bits of its NTP timestamp (what our LSR echoes back)."""
    blocks: tuple[ReportBlock, ...]


def ntp_mid32(wall: float) -> int:
    """Middle 32 bits of the 64-bit NTP timestamp of ``wall`` (``time.time()``)."""
    secs = wall + _NTP_EPOCH_OFFSET
    return (int(secs) & 0xFFFF) << 16 | int((secs % 1.0) * 65536) & 0xFFFF


def _block(b: ReportBlock) -> bytes:
    lost = max(-(1 << 23), min((1 << 23) - 1, b.cumulative_lost)) & 0xFFFFFF
    return _BLOCK.pack(b.ssrc, b.fraction_lost & 0xFF, lost.to_bytes(3, "big"),
                       b.highest_seq & 0xFFFFFFFF, b.jitter & 0xFFFFFFFF, b.lsr & 0xFFFFFFFF,
                       b.dlsr & 0xFFFFFFFF)


def _sdes_cname(ssrc: int, cname: str) -> bytes:
    text = cname.encode()[:255]
    item = bytes([1, len(text)]) + text + b"\x00"  # CNAME item, then the end-of-list null
    item += bytes(-len(item) % 4)
    body = struct.pack("!I", ssrc) + item
    return struct.pack("!BBH", 0x81, SDES, len(body) // 4) + body


def build_report(*, ssrc: int, cname: str, wall: float, rtp_ts: int | None, packets: int,
                 octets: int, block: ReportBlock | None) -> bytes:
    """Compound SR (if ``rtp_ts`` is given: we are sending) or RR, plus SDES CNAME."""
    blocks = _block(block) if block is not None else b""
    rc = 1 if block is not None else 0
    if rtp_ts is not None:
        secs = wall + _NTP_EPOCH_OFFSET
        ntp = (int(secs) << 32) | int((secs % 1.0) * (1 << 32))
        body = struct.pack("!IQIII", ssrc, ntp, rtp_ts & 0xFFFFFFFF, packets & 0xFFFFFFFF,
                           octets & 0xFFFFFFFF) + blocks
        kind = SR
    else:
        body = struct.pack("!I", ssrc) + blocks
        kind = RR
    head = struct.pack("!BBH", 0x80 | rc, kind, len(body) // 4)
    return head + body + _sdes_cname(ssrc, cname)


def build_bye(ssrc: int, cname: str) -> bytes:
    """Compound RR (empty) + SDES + BYE, as RFC 3550 6.1 wants compounds to start with a report."""
    rr = struct.pack("!BBHI", 0x80, RR, 1, ssrc)
    return rr + _sdes_cname(ssrc, cname) + struct.pack("!BBHI", 0x81, BYE, 1, ssrc)


def parse(data: bytes) -> list[RtcpReport]:
    """The SR/RR reports in a compound packet (others skipped); RtpError if malformed."""
    out: list[RtcpReport] = []
    off, n = 0, len(data)
    if n < 8:
        raise RtpError(f"RTCP packet too short: {n} bytes < 8")
    while off < n:
        if off + 4 > n:
            raise RtpError("RTCP header truncated")
        b0, kind, words = struct.unpack_from("!BBH", data, off)
        if b0 >> 6 != 2:
            raise RtpError(f"unsupported RTCP version {b0 >> 6}")
        end = off + 4 + 4 * words
        if end > n:
            raise RtpError(f"RTCP length {words} words exceeds packet")
        count = b0 & 0x1F
        if kind in (SR, RR):
            pos = off + 4
            need = 4 + (20 if kind == SR else 0) + 24 * count
            if end - pos < need:
                raise RtpError(f"RTCP {'SR' if kind == SR else 'RR'} with {count} blocks truncated")
            (ssrc,) = struct.unpack_from("!I", data, pos)
            pos += 4
            mid = None
            if kind == SR:
                (ntp,) = struct.unpack_from("!Q", data, pos)
                mid = (ntp >> 16) & 0xFFFFFFFF
                pos += 20
            blocks = []
            for _ in range(count):
                s, frac, lost3, hi, jit, lsr, dlsr = _BLOCK.unpack_from(data, pos)
                lost = int.from_bytes(lost3, "big")
                if lost & 0x800000:
                    lost -= 1 << 24
                blocks.append(ReportBlock(s, frac, lost, hi, jit, lsr, dlsr))
                pos += 24
            out.append(RtcpReport(kind, ssrc, mid, tuple(blocks)))
        off = end
    return out
