"""RTCP reports (RFC 3550 section 6): build/parse, reception report math, exchange between streams."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from telephony.media import Codec, MediaEngine, RtpError, rtcp, rtp

from .test_session import free_even_range, wait_for


def test_sr_round_trip_with_block_and_cname() -> None:
    """An SR with one report block and SDES parses back to the same fields."""
    block = rtcp.ReportBlock(ssrc=7, fraction_lost=64, cumulative_lost=-3, highest_seq=70000,
                             jitter=12, lsr=0x12345678, dlsr=65536)
    data = rtcp.build_report(ssrc=9, cname="cr-test", wall=1_700_000_000.5, rtp_ts=1234,
                             packets=50, octets=8000, block=block)
    assert len(data) % 4 == 0
    [r] = rtcp.parse(data)
    assert (r.kind, r.ssrc, r.blocks) == (rtcp.SR, 9, (block,))
    assert r.ntp_mid32 == rtcp.ntp_mid32(1_700_000_000.5)
    assert data[1] == rtcp.SR and b"cr-test" in data


def test_rr_and_bye() -> None:
    """Without sending, the report is an RR; BYE is a compound that parses as an empty RR."""
    [r] = rtcp.parse(rtcp.build_report(ssrc=1, cname="x", wall=0.0, rtp_ts=None, packets=0,
                                       octets=0, block=None))
    assert (r.kind, r.ntp_mid32, r.blocks) == (rtcp.RR, None, ())
    [r] = rtcp.parse(rtcp.build_bye(5, "x"))
    assert (r.kind, r.ssrc) == (rtcp.RR, 5)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\xc9\x00", "RTCP packet too short: 3 bytes < 8"),
        (b"\x40\xc9\x00\x01" + bytes(4), "unsupported RTCP version 1"),
        (b"\x80\xc9\x00\x05" + bytes(4), "RTCP length 5 words exceeds packet"),
        (b"\x81\xc9\x00\x01" + bytes(4), "RTCP RR with 1 blocks truncated"),
    ],
)
def test_malformed_rtcp(data: bytes, reason: str) -> None:
    """Malformed compounds raise RtpError with an exact reason."""
    with pytest.raises(RtpError) as e:
        rtcp.parse(data)
    assert e.value.reason == reason


def test_reception_report_fraction_since_last_report() -> None:
    """Fraction lost covers only the interval since the previous report (1/256 units)."""
    st = rtp.ReceptionStats()
    for seq in range(0, 100, 2):  # half lost: 0, 2, 4 ... 98
        st.update(1, seq, 160 * seq, 0.02 * seq)
    b1 = st.report_block(lsr=0, dlsr=0)
    assert b1 is not None and b1.fraction_lost == (49 << 8) // 99 and b1.cumulative_lost == 49
    for seq in range(99, 150):
        st.update(1, seq, 160 * seq, 0.02 * seq)
    b2 = st.report_block(lsr=0, dlsr=0)
    assert b2 is not None and b2.fraction_lost == 0 and b2.highest_seq == 149 and b2.cumulative_lost == 49
    assert rtp.ReceptionStats().report_block(lsr=0, dlsr=0) is None


async def test_streams_exchange_reports_and_measure_rtt(tmp_path: Path) -> None:
    """Two streams send SR+RR to each other's RTCP port; each learns RTT and the far end's view."""
    lo, hi = free_even_range(2)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path)
    eng.rtcp_interval = 0.1
    await eng.start()
    try:
        a, b = eng.allocate(), eng.allocate()
        a.configure(remote=("127.0.0.1", b.local_port), codec=Codec.PCMA, dtmf_pt=None)
        b.configure(remote=("127.0.0.1", a.local_port), codec=Codec.PCMU, dtmf_pt=None)
        a.play("tone")
        b.play("tone")
        await wait_for(lambda: a.stats.rtt_ms is not None and b.stats.rtt_ms is not None, limit=10)
        for s in (a, b):
            st = s.stats
            assert st.rtcp_in >= 1 and st.rtcp_out >= 1
            assert 0.0 <= st.rtt_ms < 1000.0  # loopback, only the tick granularity
            assert st.far_lost == 0 and st.far_fraction_lost == 0.0
        b.close()  # sends a BYE to a's RTCP port
        a_port = a.local_port
        a.close()
        assert eng.free_ports == 2
        # both RTCP ports are free again
        for port in (a_port + 1, b.local_port + 1):
            t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t.bind(("127.0.0.1", port))
            t.close()
    finally:
        await eng.stop()


async def test_rtcp_from_another_host_is_ignored(tmp_path: Path) -> None:
    """Reports from an address other than our RTP peer's host are counted as bad, not used."""
    lo, hi = free_even_range(1)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path)
    s = eng.allocate()
    s.configure(remote=("127.0.0.2", 4000), codec=Codec.PCMA, dtmf_pt=None)
    block = rtcp.ReportBlock(ssrc=s._ssrc, fraction_lost=255, cumulative_lost=99, highest_seq=1,
                             jitter=0, lsr=0, dlsr=0)
    data = rtcp.build_report(ssrc=3, cname="evil", wall=0.0, rtp_ts=None, packets=0, octets=0,
                             block=block)
    s.rtcp_received(data, ("127.0.0.3", 4001), 1.0)
    assert s.stats.far_lost is None
    s.rtcp_received(data, ("127.0.0.2", 4001), 1.0)
    assert s.stats.far_lost == 99 and s.stats.far_fraction_lost == pytest.approx(255 / 256)
    s.rtcp_received(b"\x80\x00", ("127.0.0.2", 4001), 1.0)
    assert s._rtcp_bad == 2
    s.close()
