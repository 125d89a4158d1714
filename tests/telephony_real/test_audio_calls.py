"""Bridged calls through Kamailio with real audio: what was sent is what was recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from harness import scenarios, speech
from harness.sipp import RtpCapture, Sipp
from telephony.api import CallArrived, CallEnded, LegAnswered, LegEnded, RecordingSealed

from .conftest import EngineRig, sha256_file

pytestmark = pytest.mark.realparts

CALLER_TEXT = "Police emergency. A man is trying to break into the house next door. Please hurry."


def _decoded(packets: list[speech.CapturedRtp], codec: str) -> np.ndarray:
    audio = [c.rtp for c in packets if c.rtp.pt == speech.CODEC_PT[codec]]
    audio.sort(key=lambda p: p.seq)  # loopback keeps order; sorting only guards the check
    return speech.decode(b"".join(p.payload for p in audio), codec)


@pytest.mark.parametrize("codec", ["PCMA", "PCMU"])
async def test_bridged_call_is_recorded_and_relayed_bit_exactly(
        rig: EngineRig, clip_dir: Path, codec: str) -> None:
    """Caller speech and handler tone appear bit-exact in the sealed stereo recording (caller left,
    handler right) and in each other's received RTP; SHA-256 and duration match the call."""
    caller_clip = speech.speech_clip(CALLER_TEXT, codec, clip_dir / f"caller-{codec}.pcap",
                                     lead_ms=1500, pad_ms=200)
    handler_clip = speech.tone_clip(523.0, 2.0, codec, clip_dir / f"handler-{codec}.pcap",
                                    lead_ms=1000)
    phone = Sipp(scenarios.handler(user="h1", codecs=(codec,), ring_ms=200,
                                   pcap=handler_clip.pcap), name="h1")
    caller = Sipp(scenarios.caller(dialled="999", codecs=(codec,), pcap=caller_clip.pcap,
                                   talk_ms=int(caller_clip.duration * 1000) + 800),
                  target=rig.kamailio.addr, name="caller")
    await rig.phone(phone, "h1")
    cap = await asyncio.to_thread(RtpCapture([phone.media_port, caller.media_port]).start)
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        assert (arrived.line, arrived.dialled, arrived.caller, arrived.codec) == \
            ("999", "999", "07700900123", codec)
        leg = rig.engine.offer(arrived.call_id, rig.aor("h1"), timeout=10)
        await rig.wait(LegAnswered, leg_id=leg)
        rig.engine.bridge(arrived.call_id, leg)
        assert await rig.finish(caller) == 0, caller.diagnostics()
        ended = await rig.wait(CallEnded, call_id=arrived.call_id)
        assert ended.by == "caller"
        await rig.wait(LegEnded, leg_id=leg)
        assert await rig.finish(phone, 10) == 0, phone.diagnostics()
        sealed = await rig.wait(RecordingSealed, call_id=arrived.call_id)
    finally:
        await asyncio.to_thread(caller.stop)
        await asyncio.to_thread(phone.stop)
        await asyncio.to_thread(cap.stop)

    assert sha256_file(sealed.path) == sealed.sha256
    assert sealed.path.stat().st_size == sealed.bytes
    rec, channels, rate = speech.read_wav(sealed.path)
    assert (channels, rate) == (2, 8000)
    assert abs(sealed.duration - len(rec) / 8000) < 1e-6
    assert abs(sealed.duration - (ended.at - arrived.at)) < 0.3, (sealed, arrived, ended)
    left, right = rec[:, 0], rec[:, 1]
    sent, found, shifts = speech.frames_in_order(caller_clip.sent, left)
    assert found == sent, f"caller speech: {found}/{sent} frames bit-exact in the left channel ({shifts} shifts)"
    # Nothing of the handler may leak into the caller channel and vice versa.
    sent, found, shifts = speech.frames_in_order(handler_clip.sent, right)
    assert found == sent, f"handler tone: {found}/{sent} frames bit-exact in the right channel ({shifts} shifts)"
    assert speech.find_alignment(handler_clip.sent, left) is None

    got = cap.packets()
    to_phone = [c for c in got if c.dst[1] == phone.media_port]
    to_caller = [c for c in got if c.dst[1] == caller.media_port]
    sent, found, _ = speech.frames_in_order(caller_clip.sent, _decoded(to_phone, codec))
    assert found == sent, f"the handler heard {found}/{sent} caller frames bit-exactly"
    sent, found, _ = speech.frames_in_order(handler_clip.sent, _decoded(to_caller, codec))
    assert found == sent, f"the caller heard {found}/{sent} handler frames bit-exactly"
    # Media flowed for the whole bridged call (timing figures live in bench/sip_load.py).
    assert len(to_phone) >= len(caller_clip.packets) - 75


async def test_media_layer_g711_matches_reference() -> None:
    """The engine's G.711 decoder agrees with the harness reference on all 256 codes of both laws."""
    every = bytes(range(256))
    for codec in ("PCMA", "PCMU"):
        theirs = speech.decode_via_media(every, codec)
        assert theirs is not None
        assert np.array_equal(theirs, speech.decode(every, codec)), codec
