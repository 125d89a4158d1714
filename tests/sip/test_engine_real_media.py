"""The engine with the real telephony.media layer on loopback: RTP flows, bridge, WAV sealed."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import wave
from pathlib import Path

from config.telephony import SipSettings
from telephony import api
from telephony.engine import Engine
from telephony.sip.sdp import parse_sdp

from .peer import Peer, in_dialog, sdp_offer
from .rigs import LINES, Rig, _reply


class RtpPeer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)


async def _rtp_socket():
    loop = asyncio.get_running_loop()
    proto = RtpPeer()
    tr, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    return tr, proto, tr.get_extra_info("sockname")[1]


def _packet(seq: int, pt: int = 8, byte: int = 0xD5) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, 0x1234) + bytes([byte]) * 160


class _Loopback:
    """The engine on loopback with a caller and a handler peer, each with an RTP socket."""

    async def open(self, tmp_path: Path, rtp_min: int) -> _Loopback:
        self.events: list = []
        self.engine = Engine(settings=SipSettings(port=0, rtp_port_min=rtp_min,
                                                  rtp_port_max=rtp_min + 99),
                             lines=LINES, recordings_dir=tmp_path, on_event=self.events.append)
        await self.engine.start()
        self.caller, self.handler = await Peer().open(), await Peer().open()
        self.c_tr, self.c_rtp, self.c_port = await _rtp_socket()
        self.h_tr, self.h_rtp, self.h_port = await _rtp_socket()
        self.rig = Rig(self.engine, self.events, self.caller)
        return self

    async def answer(self) -> None:
        """The caller's INVITE answered: ``ok`` (the 200), ``our`` (our RTP port), ``call_id``."""
        self.ok, _ = await self.rig.answered_call(body=sdp_offer(port=self.c_port))
        self.our = parse_sdp(self.ok.body).media[0].port
        self.call_id = self.rig.of(api.CallArrived)[0].call_id

    async def bridge(self) -> None:
        """Offer to the handler, who answers with PCMU; bridge. Sets ``leg_port``."""
        leg_id = self.engine.offer(self.call_id, f"sip:h1@127.0.0.1:{self.handler.port}",
                                   timeout=5)
        inv = await self.handler.expect_request("INVITE")
        self.leg_port = parse_sdp(inv.body).media[0].port
        _reply(self.handler, inv, 200, body=sdp_offer(port=self.h_port, codecs="0 101").encode())
        await self.handler.expect_request("ACK")
        await self.rig.wait_for(api.LegAnswered)
        self.engine.bridge(self.call_id, leg_id)

    def send_both(self, i: int) -> None:
        self.c_tr.sendto(_packet(i), ("127.0.0.1", self.our))
        self.h_tr.sendto(_packet(i, pt=0, byte=0xFF), ("127.0.0.1", self.leg_port))

    async def caller_hangs_up(self) -> None:
        self.caller.send(in_dialog("BYE", self.caller, self.engine.sip_port, self.ok, cseq=2),
                         self.engine.sip_port)
        await self.caller.expect_status(200)
        bye = await self.handler.expect_request("BYE")
        _reply(self.handler, bye, 200)

    async def close(self) -> None:
        self.c_tr.close()
        self.h_tr.close()
        self.caller.close()
        self.handler.close()
        await self.engine.stop(bye_grace=0)


async def test_real_media_call_bridge_and_recording(tmp_path: Path) -> None:
    """Caller and handler exchange RTP through the bridge; the WAV is sealed with its sha256."""
    lb = await _Loopback().open(tmp_path, 31000)
    try:
        await lb.answer()
        for i in range(10):
            lb.c_tr.sendto(_packet(i), ("127.0.0.1", lb.our))
            await asyncio.sleep(0.02)
        assert len(lb.c_rtp.received) >= 5  # the queue tone reaches the caller
        await lb.bridge()
        h_before = len(lb.h_rtp.received)
        for i in range(10, 30):
            lb.send_both(i)
            await asyncio.sleep(0.02)
        got = lb.h_rtp.received[h_before:]
        assert len(got) >= 10 and all(p[1] & 0x7F == 0 for p in got)  # PCMU to the handler
        assert lb.engine.stats.rtp_packets_in >= 40
        await lb.caller_hangs_up()
        sealed = await lb.rig.wait_for(api.RecordingSealed)
        info = sealed[0]
        assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
        with wave.open(str(info.path)) as w:
            assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
            assert abs(w.getnframes() / 8000 - info.duration) < 0.001
        assert 0.4 < info.duration < 3.0
    finally:
        await lb.close()


async def test_sdp_with_a_host_name_is_488_not_a_crash(tmp_path: Path) -> None:
    """An offer whose c= line names a host (resolving it would block the loop) is refused
    with 488, and the engine keeps answering calls afterwards."""
    from .peer import invite

    events: list = []
    engine = Engine(settings=SipSettings(port=0, rtp_port_min=32000, rtp_port_max=32099),
                    lines=LINES, recordings_dir=tmp_path, on_event=events.append)
    await engine.start()
    caller = await Peer().open()
    try:
        text, _, _ = invite(caller, engine.sip_port, number="999",
                            body=sdp_offer(port=40000, addr="media.example.net"))
        caller.send(text, engine.sip_port)
        resp = await caller.expect_status(488)
        assert "unusable media description" in resp.reason
        assert not [e for e in events if isinstance(e, api.CallArrived)]
        rig = Rig(engine, events, caller)
        ok, _ = await rig.answered_call(body=sdp_offer(port=40002))
        assert ok.status == 200
    finally:
        caller.close()
        await engine.stop()


async def test_missing_queue_prompt_is_a_start_up_error(tmp_path: Path) -> None:
    """A line whose queue prompt WAV does not exist stops the engine at start-up, naming the line."""
    import dataclasses

    import pytest

    from telephony.errors import EngineError

    lines = [dataclasses.replace(LINES[0], queue_prompt=str(tmp_path / "nope.wav")), *LINES[1:]]
    engine = Engine(settings=SipSettings(port=0, rtp_port_min=32100, rtp_port_max=32199),
                    lines=lines, recordings_dir=tmp_path, on_event=lambda e: None)
    with pytest.raises(EngineError, match=rf"lines\[{LINES[0].name}\].queue_prompt: "):
        await engine.start()


PER_CALL_TYPES = {"_Call", "_Leg", "Session", "Dialog", "RtpStream", "JitterBuffer", "Recording",
                  "ServerTransaction", "ClientTransaction", "Request", "Response"}


async def test_a_finished_call_leaves_no_reference_cycles(tmp_path: Path, monkeypatch) -> None:
    """Everything a bridged, recorded call allocated is freed by reference counting when
    the call is over, not left for the cyclic garbage collector: at 30 new calls/s a cycle
    per call made full collections walk (and RSS hold) every call of the last minutes, and
    such a collection stopped the event loop for 40-130 ms (bench/sip_load.py)."""
    import collections
    import gc

    import telephony.engine.base

    monkeypatch.setattr(telephony.engine.base, "UNLINK_AFTER", 0.3)  # production: 40 s
    lb = await _Loopback().open(tmp_path, 32200)
    engine = lb.engine

    def census() -> collections.Counter[str]:
        return collections.Counter(n for n in map(lambda o: type(o).__name__, gc.get_objects())
                                   if n in PER_CALL_TYPES)

    gc.collect()
    before = census()
    gc.disable()
    try:
        await lb.answer()
        await lb.bridge()
        for i in range(10):
            lb.send_both(i)
            await asyncio.sleep(0.02)
        await lb.caller_hangs_up()
        await lb.rig.wait_for(api.RecordingSealed)
        await asyncio.sleep(0.5)  # past UNLINK_AFTER
        # The finished transactions linger for their absorb timers (RFC 3261 17.2: 32 s);
        # let them expire now rather than wait.
        ua = engine._ua
        ua.handle_timers(engine._now() + 40)
        engine._pump()
        assert not engine._calls and not engine._legs and not engine._streams
        del lb.ok, lb.rig  # the test's own references to the call's messages and events
        lb.events.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage} & PER_CALL_TYPES)
        assert left == [], f"reference cycles keep per-call objects alive: {left}"
        gc.garbage.clear()
        alive = census() - before
        assert not alive, f"per-call objects still referenced after the call: {dict(alive)}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        await lb.close()
