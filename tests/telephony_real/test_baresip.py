"""baresip (a real softphone) as the handler phone, registered through Kamailio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from harness import scenarios, speech
from harness.baresip import Baresip
from harness.sipp import RtpCapture, Sipp
from telephony.api import CallArrived, CallEnded, LegAnswered, LegEnded, RecordingSealed

from .conftest import EngineRig, sha256_file

pytestmark = pytest.mark.realparts


async def test_baresip_handler_call_recorded_bit_exactly(rig: EngineRig, clip_dir: Path) -> None:
    """baresip auto-answers the offered leg; after bridging, the recording's left channel holds the
    caller's speech and its right channel what baresip sent, both bit-exact; the caller's BYE
    ends baresip's leg too."""
    caller_clip = speech.speech_clip("Hello, I want to report a burglary at my neighbour's house.",
                                     "PCMA", clip_dir / "bs-caller.pcap", lead_ms=1500)
    tone = speech.tone_clip(660.0, 2.0, "PCMA", clip_dir / "bs-tone.pcap", lead_ms=1000)
    wav = speech.write_wav(rig.tmp / "handler.wav",
                           np.concatenate([tone.pcm, np.zeros(8000 * 30, dtype=np.int16)]))
    phone = Baresip(user="h7", registrar=rig.kamailio.addr, domain=rig.kamailio.domain,
                    audio=wav, codecs="PCMA")
    caller = Sipp(scenarios.caller(dialled="999", pcap=caller_clip.pcap,
                                   talk_ms=int(caller_clip.duration * 1000) + 800),
                  target=rig.kamailio.addr, name="caller")
    await asyncio.to_thread(phone.start)
    cap = await asyncio.to_thread(RtpCapture(list(range(phone.rtp_min, phone.rtp_max + 1))).start)
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        leg = rig.engine.offer(arrived.call_id, rig.aor("h7"), timeout=10)
        await rig.wait(LegAnswered, leg_id=leg)
        rig.engine.bridge(arrived.call_id, leg)
        assert await rig.finish(caller) == 0, caller.diagnostics()
        assert (await rig.wait(CallEnded, call_id=arrived.call_id)).by == "caller"
        assert (await rig.wait(LegEnded, leg_id=leg)).by == "caller"  # we BYE the leg because the caller left
        sealed = await rig.wait(RecordingSealed, call_id=arrived.call_id)
        await asyncio.sleep(0.3)
    finally:
        await asyncio.to_thread(caller.stop)
        await asyncio.to_thread(cap.stop)
        log = phone.log_text()
        await asyncio.to_thread(phone.stop)
    assert "Call established" in log and "terminated" in log, log
    assert sha256_file(sealed.path) == sealed.sha256
    rec, channels, _ = speech.read_wav(sealed.path)
    assert channels == 2
    sent, found, _ = speech.frames_in_order(caller_clip.sent, rec[:, 0])
    assert found == sent, f"{found}/{sent} caller frames bit-exact"
    sent_by_phone = [c.rtp for c in cap.packets()
                     if phone.rtp_min <= c.src[1] <= phone.rtp_max and c.rtp.pt == 8]
    assert len(sent_by_phone) > 100
    sent = speech.decode(b"".join(p.payload for p in sorted(sent_by_phone, key=lambda p: p.seq)),
                         "PCMA")
    # The tone part of what baresip sent (its own G.711 encoder) is bit-exact in the right channel.
    nz = np.flatnonzero(np.abs(sent.astype(np.int32)) > 8)
    tone_sent = sent[nz[0]:nz[0] + 8000 * 2 - 400]
    sent, found, _ = speech.frames_in_order(tone_sent, rec[:, 1])
    assert found == sent, f"{found}/{sent} handler frames bit-exact"
    # (baresip's own G.711 encoder is not the ITU reference: ~1 % of samples land one
    # quantisation step away, so the comparison is against what it actually sent.)
