"""RFC 4733 telephone-event send and receive."""

from __future__ import annotations

import pytest

from telephony.media import dtmf
from telephony.media.errors import RtpError


def packets(digit: str, ts: int, ms: int = 160) -> list[tuple[bool, bytes]]:
    s = dtmf.DtmfSender(digit, timestamp=ts, duration_ms=ms)
    out = []
    while not s.done:
        out.append(s.next_packet())
    return out


def test_sender_packet_sequence() -> None:
    """Start with marker, updates every 20 ms, then three identical end packets."""
    pk = packets("#", 1000, 160)
    evs = [dtmf.parse_event(p) for _, p in pk]
    assert [m for m, _ in pk] == [True] + [False] * 9
    assert [e.duration for e in evs] == [160, 320, 480, 640, 800, 960, 1120, 1280, 1280, 1280]
    assert [e.end for e in evs] == [False] * 7 + [True] * 3
    assert {e.event for e in evs} == {11} and {e.digit for e in evs} == {"#"}
    assert pk[-1] == pk[-2] == pk[-3]


def test_round_trip_one_digit_per_press() -> None:
    """A receiver fed a sender's packets reports each digit exactly once, at its end."""
    rx = dtmf.DtmfReceiver()
    got = []
    for i, d in enumerate("55*A"):
        for _, payload in packets(d, 10_000 + 4000 * i):
            got += rx.feed(10_000 + 4000 * i, payload)
    assert got == ["5", "5", "*", "A"]


def test_duplicates_and_lost_end_packets() -> None:
    """Repeated end packets are ignored; an event whose ends were lost is reported when the next starts."""
    rx = dtmf.DtmfReceiver()
    pk1 = packets("1", 100)
    pk2 = packets("2", 2000)
    out = []
    for _, p in pk1[:5]:  # no end packet at all
        out += rx.feed(100, p)
    assert out == []
    for _, p in pk2 + pk2[-3:]:  # extra retransmitted ends
        out += rx.feed(2000, p)
    assert out == ["1", "2"]
    for _, p in pk1:  # late duplicates of event 1 after it was reported
        out += rx.feed(100, p)
    assert out == ["1", "2"]


def test_expire_reports_unfinished_event() -> None:
    """An event without end packets is reported after 1 s (50 ticks) of nothing."""
    rx = dtmf.DtmfReceiver()
    rx.feed(0, packets("9", 0)[0][1])
    assert sum((rx.expire() for _ in range(49)), []) == []
    assert rx.expire() == ["9"]
    assert rx.expire() == []


def test_bad_input() -> None:
    """Short payloads raise RtpError; non-digits raise ValueError; events >15 give no digit."""
    with pytest.raises(RtpError, match="telephone-event payload too short: 3 bytes < 4"):
        dtmf.parse_event(b"\x01\x80\x00")
    with pytest.raises(ValueError, match="not a DTMF digit: 'E'"):
        dtmf.digit_to_event("E")
    rx = dtmf.DtmfReceiver()
    assert rx.feed(5, dtmf.build_event(16, end=True, volume=10, duration=800)) == []  # flash
    assert dtmf.digit_to_event("d") == 15
