"""Who a stream hears: the SDP address only, NAT latching once, one SSRC at a time; and the
port pool (random choice, released ports rest). Packets are fed with explicit ``now``."""

from __future__ import annotations

import asyncio
import random
import socket
import wave
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from telephony.media import Codec, MediaEngine, g711, rtp
from telephony.media.ports import PortPool

from .test_session import free_even_range

SDP = ("192.0.2.10", 4000)  # what the far end's SDP names (TEST-NET: never sent from)


def pkt(seq: int, ssrc: int = 0x1111, byte: int = 0x55, pt: int = 8) -> bytes:
    return rtp.build(pt, seq, 160 * seq, ssrc, bytes([byte]) * 160)


@pytest.fixture
async def engine(tmp_path: Path):
    lo, hi = free_even_range(8)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path)
    yield eng  # clock not started: the tests feed datagram_received themselves
    await eng.stop()


async def test_only_the_sdp_address_and_port_is_heard(engine: MediaEngine) -> None:
    """Same host other port, other host, and anything before the SDP: dropped and counted."""
    s = engine.allocate()
    s.datagram_received(pkt(1), SDP, 1.0)  # no SDP yet: nobody is heard
    s.configure(remote=SDP, codec=Codec.PCMA, dtmf_pt=None)
    s.datagram_received(pkt(2), (SDP[0], SDP[1] + 2), 1.02)
    s.datagram_received(pkt(3), ("192.0.2.11", SDP[1]), 1.04)
    assert (s.stats.foreign, s.stats.packets_in) == (3, 0)
    s.datagram_received(pkt(4), SDP, 1.06)
    assert (s.stats.foreign, s.stats.packets_in, s.send_addr) == (3, 1, SDP)
    s.configure(remote=("0.0.0.0", 4000), codec=Codec.PCMA, dtmf_pt=None)  # RFC 2543 hold
    s.datagram_received(pkt(5), SDP, 1.08)  # hold music from the same address is still heard
    assert s.stats.packets_in == 2 and s.send_addr is None


async def test_nat_latch_only_from_signalling_host_only_first_packet(engine: MediaEngine) -> None:
    """A NAT line's first valid packet from the signalling host (other port) latches there,
    logged; another host never latches, a second port of the same host is then dropped."""
    s = engine.allocate()
    s.allow_latch("198.51.100.7", tag="c1")
    s.configure(remote=SDP, codec=Codec.PCMA, dtmf_pt=None)
    nat = ("198.51.100.7", 31000)
    with capture_logs() as logs:
        s.datagram_received(pkt(1), ("203.0.113.9", 31000), 1.0)  # a stranger: not the signalling host
        s.datagram_received(b"\x80\x08garbage", nat, 1.01)  # not RTP: must not latch
        assert s.send_addr == SDP and s.stats.latched == 0
        s.datagram_received(pkt(2), nat, 1.02)
        s.datagram_received(pkt(3), ("198.51.100.7", 31002), 1.04)  # window closed
        s.datagram_received(pkt(4), SDP, 1.06)  # the private SDP address is no longer it
        s.datagram_received(pkt(5), nat, 1.08)
    assert s.send_addr == nat and s.stats.latched == 1
    assert (s.stats.packets_in, s.stats.foreign, s.stats.malformed) == (2, 3, 1)
    latched = [e for e in logs if e["event"] == "rtp.nat_latched"]
    assert latched == [{"event": "rtp.nat_latched", "log_level": "info", "port": s.local_port,
                        "call_id": "c1", "sdp": "192.0.2.10:4000", "source": "198.51.100.7:31000"}]
    # a re-INVITE naming a new address opens the window again, for one packet
    s.configure(remote=("192.0.2.20", 5000), codec=Codec.PCMA, dtmf_pt=None)
    s.datagram_received(pkt(6, ssrc=0x2222), ("198.51.100.7", 32000), 2.0)
    assert s.send_addr == ("198.51.100.7", 32000) and s.stats.packets_in == 3


async def test_no_latching_on_a_line_not_behind_nat(engine: MediaEngine) -> None:
    """Without allow_latch, even the first packet from another port of the SDP host is dropped."""
    s = engine.allocate()
    s.configure(remote=SDP, codec=Codec.PCMA, dtmf_pt=None)
    s.datagram_received(pkt(1), (SDP[0], 31000), 1.0)
    assert (s.stats.foreign, s.stats.packets_in, s.stats.latched, s.send_addr) == (1, 0, 0, SDP)


async def test_a_second_ssrc_is_dropped_while_the_first_flows(engine: MediaEngine) -> None:
    """Interleaved SSRC from the right address: dropped and counted; after the current SSRC
    went silent ssrc_switch_after s (an SBC restart), the new one is taken; after a
    configure (re-INVITE) a new SSRC is taken at once."""
    s = engine.allocate()
    s.configure(remote=SDP, codec=Codec.PCMA, dtmf_pt=None)
    t = 1.0
    for k in range(10):
        s.datagram_received(pkt(k, ssrc=0xAAAA), SDP, t)
        s.datagram_received(pkt(500 + k, ssrc=0xBBBB, byte=0x77), SDP, t + 0.005)
        t += 0.02
    assert (s.stats.packets_in, s.stats.ssrc_dropped) == (10, 10)
    # the caller's SBC restarts: the old SSRC stops, a new one starts 0.6 s later
    with capture_logs() as logs:
        s.datagram_received(pkt(900, ssrc=0xCCCC), SDP, t + 0.6)
    assert (s.stats.packets_in, s.stats.ssrc_dropped) == (11, 10)
    assert [e["event"] for e in logs] == ["rtp.ssrc_changed"]
    s.datagram_received(pkt(11, ssrc=0xAAAA), SDP, t + 0.62)  # the old one is now the stranger
    assert s.stats.ssrc_dropped == 11
    s.configure(remote=SDP, codec=Codec.PCMA, dtmf_pt=None)  # re-INVITE
    s.datagram_received(pkt(1, ssrc=0xDDDD), SDP, t + 0.64)
    assert (s.stats.packets_in, s.stats.ssrc_dropped) == (12, 11)


async def test_dropped_packets_never_reach_the_jitter_buffer(engine: MediaEngine) -> None:
    """What the recording reads (the jitter buffer) holds only the accepted source's payload."""
    s = engine.allocate()
    s.configure(remote=SDP, codec=Codec.PCMA, dtmf_pt=None)
    for k in range(4):
        s.datagram_received(pkt(k), SDP, 1.0 + 0.02 * k)
        s.datagram_received(pkt(100 + k, byte=0x33), ("192.0.2.99", 4000), 1.0 + 0.02 * k)
        s.datagram_received(pkt(200 + k, ssrc=0x9999, byte=0x33), SDP, 1.0 + 0.02 * k)
    payloads = set()
    for _ in range(8):
        s._jb.pull()
        if s._jb.last_raw is not None:
            payloads.add(s._jb.last_raw[1])
    assert payloads == {bytes([0x55]) * 160}


def test_port_pool_is_random_and_rests_released_ports() -> None:
    """Ports come in no predictable order; a released port is not handed out while others
    are free, only early (counted) when none is, and freely after its rest."""
    pool = PortPool(20000, 20999, quarantine=30.0, rng=random.Random(7))
    taken = [pool.take(0.0) for _ in range(20)]
    assert all(p is not None and p % 2 == 0 and 20000 <= p <= 20999 for p in taken)
    assert len(set(taken)) == 20
    steps = {(b - a) for a, b in zip(taken, taken[1:], strict=False)}  # type: ignore[operator]
    assert len(steps) > 10  # not a sequence (nor a constant stride)
    pool = PortPool(20000, 20007, quarantine=30.0, rng=random.Random(1))  # 4 ports
    a = pool.take(0.0)
    assert a is not None
    pool.release(a, 1.0)
    others = [pool.take(2.0) for _ in range(3)]
    assert a not in others and None not in others and pool.reused_early == 0
    assert pool.take(3.0) == a and pool.reused_early == 1  # nothing else left: early, counted
    assert pool.take(3.0) is None  # exhausted
    for p in [a, *others]:
        pool.release(p, 10.0)  # type: ignore[arg-type]
    assert len(pool) == 4 and pool.resting == 4
    assert pool.take(40.0) is not None and pool.resting == 0 and pool.reused_early == 1


async def test_engine_does_not_hand_a_just_closed_port_to_the_next_call(tmp_path: Path) -> None:
    """MediaEngine.allocate: ports are not sequential, and a port just closed is not reused
    while another is free; after the quarantine it is free again."""
    lo, hi = free_even_range(16)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path,
                      port_quarantine=0.3)
    try:
        streams = [eng.allocate() for _ in range(8)]
        ports = [s.local_port for s in streams]
        assert ports != list(range(lo + (lo & 1), lo + (lo & 1) + 16, 2))  # not in sequence
        closed = streams.pop(0)
        closed.close()
        more = [eng.allocate() for _ in range(8)]  # the other 8 free ports
        assert closed.local_port not in {s.local_port for s in more}
        assert eng.ports_reused_early == 0
        await asyncio.sleep(0.35)
        last = eng.allocate()  # the only port left, rested
        assert last.local_port == closed.local_port and eng.ports_reused_early == 0
    finally:
        await eng.stop()


async def test_after_a_restart_a_stale_stream_on_the_very_same_port_is_not_heard(tmp_path: Path) -> None:
    """A restart forgets which ports rest: even when the new engine hands an old call's very
    port to a new call (a one-port pool forces it), the old call's stream, still arriving,
    is neither heard nor recorded; the new caller is."""
    lo, _ = free_even_range(1)
    stale = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stale.bind(("127.0.0.1", 0))
    caller.bind(("127.0.0.1", 0))
    try:
        old = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=lo + 1, recordings_dir=tmp_path)
        await old.start()
        s1 = old.allocate()
        s1.configure(remote=stale.getsockname(), codec=Codec.PCMA, dtmf_pt=None)
        stale.sendto(pkt(1, byte=0x33), ("127.0.0.1", s1.local_port))
        for _ in range(100):
            if s1.stats.packets_in:
                break
            await asyncio.sleep(0.01)
        assert s1.stats.packets_in == 1  # the old call heard its caller
        await old.stop()  # the process is gone; the far end keeps sending
        new = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=lo + 1, recordings_dir=tmp_path)
        await new.start()
        try:
            s2 = new.allocate()
            assert s2.local_port == s1.local_port
            s2.configure(remote=caller.getsockname(), codec=Codec.PCMA, dtmf_pt=None)
            rec = new.create_recording("c-after-restart")
            rec.attach_caller(s2)
            dst = ("127.0.0.1", s2.local_port)
            for k in range(25):
                stale.sendto(pkt(2 + k, byte=0x33), dst)
                caller.sendto(pkt(k, ssrc=0x2222, byte=0x55), dst)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            s2.close()
            info = await rec.seal_async()
        finally:
            await new.stop()
        assert (s2.stats.foreign, s2.stats.packets_in) == (25, 25)
        with wave.open(str(info.path)) as w:
            left = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[0::2]
        heard = set(np.unique(left).tolist())
        assert int(g711.alaw_decode(b"\x55")[0]) in heard
        assert int(g711.alaw_decode(b"\x33")[0]) not in heard
    finally:
        stale.close()
        caller.close()
