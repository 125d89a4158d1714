"""Issue 12 defect 2: RTP only from the address the SDP names. Strangers flooding a live
999 call's media port (one already waiting there when the 200 OK leaves) are not heard
nor recorded; a line behind NAT latches once, to the signalling host, logged."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from config.schema import LineSettings
from harness import scenarios, speech
from harness.sipp import Sipp
from telephony.api import CallArrived, CallEnded, LegAnswered, RecordingSealed
from telephony.sip.sdp import parse_sdp

from .conftest import EngineRig, lines
from .rawsip import Msg, RawUac

pytestmark = [pytest.mark.realparts, pytest.mark.faults]

CALLER_TEXT = "Police emergency. Someone is breaking into the shop on Station Road."
PRIVATE = ("192.0.2.10", 4000)  # what a NATed SBC's SDP names: never where its RTP comes from


@pytest.fixture
def engine_lines() -> list[LineSettings]:
    """999 as usual; 101 comes from an SBC behind NAT."""
    base = lines()
    return [base[0], LineSettings(name="101", numbers=["101"], priority=1,
                                  trusted_sources=["127.0.0.1"], nat=True)]


def _udp(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s


def _frames_anywhere(sent: np.ndarray, recorded: np.ndarray) -> int:
    """How many of ``sent``'s non-silent 20 ms frames occur bit-exactly anywhere in ``recorded``."""
    hay = recorded.tobytes()
    frames = [sent[i:i + 160] for i in range(0, len(sent) - 159, 160)]
    return sum(1 for f in frames if np.abs(f.astype(np.int32)).max() > 8 and f.tobytes() in hay)


async def test_strangers_flooding_a_999_call_are_not_recorded(rig: EngineRig, clip_dir: Path) -> None:
    """A stranger on the SBC's host (with the caller's SSRC) and one on another host flood the
    caller's and the handler leg's media ports, their first packets waiting there before our
    SDP even leaves: none of their audio reaches either channel of the recording,
    every packet is counted as foreign, caller and handler are recorded bit-exactly."""
    caller_clip = speech.speech_clip(CALLER_TEXT, "PCMA", clip_dir / "src-caller.pcap",
                                     lead_ms=500, pad_ms=200)
    handler_clip = speech.tone_clip(523.0, 2.0, "PCMA", clip_dir / "src-handler.pcap",
                                    lead_ms=1000)
    evil = speech.tone_clip(2750.0, caller_clip.duration, "PCMA", clip_dir / "src-evil.pcap",
                            amplitude=12000, ssrc=0x1234ABCD)  # the caller clip's SSRC
    phone = Sipp(scenarios.handler(user="h1", codecs=("PCMA",), ring_ms=200,
                                   pcap=handler_clip.pcap), name="h1")
    caller = Sipp(scenarios.caller(dialled="999", pcap=caller_clip.pcap,
                                   talk_ms=int(caller_clip.duration * 1000) + 800),
                  target=rig.kamailio.addr, name="caller")
    strangers = [_udp("127.0.0.1"), _udp("127.0.0.2")]
    sent = 0
    targets: list[tuple[str, int]] = []
    media = rig.engine._media
    allocate = media.allocate

    def allocate_with_a_stale_stream_waiting() -> object:
        """Each new port (caller's, then the leg's) already has stranger packets waiting in
        it before our SDP leaves: they are the first to arrive, always."""
        nonlocal sent
        stream = allocate()
        targets.append(("127.0.0.1", stream.local_port))
        for s in strangers:
            s.sendto(evil.packets[0].to_bytes(), targets[-1])
            sent += 1
        return stream

    async def flood() -> None:  # 2 strangers x 50 packets/s at each port, for the call
        nonlocal sent
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, p in enumerate(evil.packets[1:], 1):
            for t in list(targets):
                for s in strangers:
                    s.sendto(p.to_bytes(), t)
                    sent += 1
            await asyncio.sleep(max(0.0, start + 0.02 * i - loop.time()))

    media.allocate = allocate_with_a_stale_stream_waiting
    flooding = None
    try:
        await rig.phone(phone, "h1")
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        flooding = asyncio.create_task(flood())
        leg = rig.engine.offer(arrived.call_id, rig.aor("h1"), timeout=10)
        await rig.wait(LegAnswered, leg_id=leg)
        rig.engine.bridge(arrived.call_id, leg)
        await flooding
        assert await rig.finish(caller) == 0, caller.diagnostics()
        ended = await rig.wait(CallEnded, call_id=arrived.call_id)
        sealed = await rig.wait(RecordingSealed, call_id=arrived.call_id)
        assert await rig.finish(phone, 10) == 0, phone.diagnostics()
    finally:
        if flooding is not None:
            flooding.cancel()
        del media.allocate
        for s in strangers:
            s.close()
        await asyncio.to_thread(caller.stop)
        await asyncio.to_thread(phone.stop)
    assert ended.by == "caller"
    rec, _, _ = speech.read_wav(sealed.path)
    left, right = rec[:, 0], rec[:, 1]
    n, found, _ = speech.frames_in_order(caller_clip.sent, left)
    assert found == n, f"caller speech: {found}/{n} frames bit-exact in the recording"
    n, found, _ = speech.frames_in_order(handler_clip.sent, right)
    assert found == n, f"handler tone: {found}/{n} frames bit-exact in the recording"
    assert _frames_anywhere(evil.sent, left) == 0, "a stranger's audio reached the caller channel"
    assert _frames_anywhere(evil.sent, right) == 0, "a stranger's audio reached the handler channel"
    stats = rig.engine.stats
    assert stats.rtp_foreign >= sent > 600, (stats, sent)
    assert stats.rtp_nat_latched == 0


class NatUac(RawUac):
    """A caller whose SDP names a private address (an SBC behind NAT)."""

    def sdp(self) -> str:
        return super().sdp().replace("c=IN IP4 127.0.0.1", f"c=IN IP4 {PRIVATE[0]}")


async def _answered(rig: EngineRig, dialled: str) -> tuple[NatUac, Msg, int]:
    uac = await NatUac(("127.0.0.1", rig.engine.sip_port), dialled=dialled,
                       rtp_port=PRIVATE[1]).open()
    uac.send(uac.invite())
    for _ in range(10):
        m = await uac.recv(2.0)
        assert m is not None, "no 200 OK"
        if m.status == 200:
            break
    uac.send(uac.ack(m))
    return uac, m, parse_sdp(m.body).media[0].port


async def test_nat_line_latches_once_to_the_signalling_host(rig: EngineRig, clip_dir: Path) -> None:
    """On the line behind NAT, RTP from another host is dropped even when first; the first
    packet from the signalling host (another port than the SDP's) latches there, is logged,
    and gets our RTP back; a second port of that host afterwards is dropped. The recording
    holds the caller and nothing else."""
    voice = speech.tone_clip(440.0, 1.2, "PCMA", clip_dir / "nat-voice.pcap", ssrc=0xCA11)
    evil = speech.tone_clip(2750.0, 1.2, "PCMA", clip_dir / "nat-evil.pcap", ssrc=0xE71)
    caller_rtp, other_host, other_port = _udp("127.0.0.1"), _udp("127.0.0.2"), _udp("127.0.0.1")
    caller_addr = "{}:{}".format(*caller_rtp.getsockname())
    uac = None
    try:
        with capture_logs() as logs:
            uac, ok, port = await _answered(rig, "101")
            arrived = await rig.wait(CallArrived)
            assert arrived.line == "101"
            dst = ("127.0.0.1", port)
            for p in evil.packets[:5]:  # another host, first to arrive: never latches
                other_host.sendto(p.to_bytes(), dst)
            await asyncio.sleep(0.1)
            assert rig.engine.stats.rtp_foreign == 5 and rig.engine.stats.rtp_nat_latched == 0
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, p in enumerate(voice.packets):
                caller_rtp.sendto(p.to_bytes(), dst)
                if i >= 1:  # after the latch: the same host's other port is a stranger
                    other_port.sendto(evil.packets[i].to_bytes(), dst)
                    other_host.sendto(evil.packets[i].to_bytes(), dst)
                await asyncio.sleep(max(0.0, start + 0.02 * (i + 1) - loop.time()))
            back = 0
            while True:  # our RTP went to the latched address (symmetric)
                try:
                    caller_rtp.recvfrom(2048)
                    back += 1
                except BlockingIOError:
                    break
            uac.send(uac.bye(ok))
            await rig.wait(CallEnded, call_id=arrived.call_id)
            sealed = await rig.wait(RecordingSealed, call_id=arrived.call_id)
    finally:
        if uac is not None:
            uac.close()
        for s in (caller_rtp, other_host, other_port):
            s.close()
    assert back >= 40, back
    latched = [e for e in logs if e["event"] == "rtp.nat_latched"]
    assert len(latched) == 1 and latched[0]["call_id"] == arrived.call_id
    assert (latched[0]["sdp"], latched[0]["source"]) == (f"{PRIVATE[0]}:{PRIVATE[1]}", caller_addr)
    stats = rig.engine.stats
    assert stats.rtp_nat_latched == 1
    assert stats.rtp_foreign == 5 + 2 * (len(voice.packets) - 1), stats
    rec, _, _ = speech.read_wav(sealed.path)
    n, found, _ = speech.frames_in_order(voice.sent, rec[:, 0])
    assert found == n, f"caller: {found}/{n} frames bit-exact"
    assert _frames_anywhere(evil.sent, rec[:, 0]) == 0


async def test_line_not_behind_nat_never_latches(rig: EngineRig) -> None:
    """The same caller on 999 (not behind NAT): RTP from the signalling host on another port
    than the SDP names is dropped, every packet, and nothing latches."""
    rtp_sock = _udp("127.0.0.1")
    uac = None
    try:
        uac, ok, port = await _answered(rig, "999")
        arrived = await rig.wait(CallArrived)
        for k in range(10):
            rtp_sock.sendto(speech.RtpPacket(pt=8, seq=k, ts=160 * k, ssrc=0xCA11,
                                             payload=b"\x55" * 160).to_bytes(), ("127.0.0.1", port))
        await asyncio.sleep(0.15)
        stats = rig.engine.stats
        assert (stats.rtp_foreign, stats.rtp_packets_in, stats.rtp_nat_latched) == (10, 0, 0)
        uac.send(uac.bye(ok))
        await rig.wait(CallEnded, call_id=arrived.call_id)
    finally:
        if uac is not None:
            uac.close()
        rtp_sock.close()
