"""A 999 call end to end to an SRTP handler phone (issue 16 items 3 and 5): a SIPp caller
through Kamailio to the service, queued, offered to baresip registered at Kamailio with
``mediaenc=srtp-mand`` (RTP/SAVP, SDES keys), answered, bridged both ways with the audio
checked, recorded in clear with its SHA-256, published to the CAD in order; on the wire
between the service and the phone only SRTP.

Signalling here is UDP on loopback, so the service runs with the lab setting
``sip.srtp_over_plain_sip`` (logged as a warning): in production SDES keys go only over
SIP over TLS, which the engine enforces (tests/sip/test_engine_srtp.py)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest

from cad.schema import validate
from config import from_dict
from controlroom.service import Service
from harness import scenarios, speech
from harness.baresip import Baresip
from harness.kamailio import Kamailio
from harness.mosquitto import Mosquitto
from harness.ports import free_rtp_range, free_tcp_port, free_udp_port
from harness.sipp import RtpCapture, Sipp

from .audio import frames_found_in_order
from .conftest import wait_until
from .test_service_e2e import read_stereo

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

DOMAIN = "controlroom.local"
TONE_HZ = 660.0


def _tone_strength(pcm: np.ndarray, hz: float) -> float:
    """Share of the signal's energy within 20 Hz of ``hz``."""
    spec = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 8000)
    return float(spec[np.abs(freqs - hz) < 20].sum() / max(spec.sum(), 1e-9))


async def test_999_call_to_an_srtp_handler_phone(tmp_path: Path, cad_subscriber_factory) -> None:
    """Answered, queued, offered, bridged over SRTP both ways (audio checked), recorded in
    clear, published; nothing but SRTP reaches or leaves the phone's media ports."""
    clip = await asyncio.to_thread(
        speech.speech_clip, "Help, two men are fighting outside the station.", "PCMA",
        tmp_path / "caller.pcap", lead_ms=2500)
    tone = speech.tone_clip(TONE_HZ, 3.0, "PCMA", tmp_path / "tone.pcap", lead_ms=0)
    handler_wav = speech.write_wav(tmp_path / "handler.wav", np.concatenate(
        [np.zeros(8000 * 2, dtype=np.int16), tone.pcm, np.zeros(8000 * 60, dtype=np.int16)]))
    for sub in ("kamailio", "baresip", "cap", "sipp"):
        (tmp_path / sub).mkdir()
    sip_port = free_udp_port()
    rtp_lo, rtp_hi = free_rtp_range(40)
    with Mosquitto() as mosq, Kamailio({n: f"127.0.0.1:{sip_port}" for n in ("999", "101")},
                                       domain=DOMAIN, trace=False,
                                       workdir=tmp_path / "kamailio") as kam:
        data = {
            "drain_timeout": 2.0,
            "sip": {"bind": "127.0.0.1", "port": sip_port, "domain": DOMAIN,
                    "proxy": f"sip:127.0.0.1:{kam.port}", "rtp_bind": "127.0.0.1",
                    "rtp_port_min": rtp_lo, "rtp_port_max": rtp_hi,
                    "srtp_over_plain_sip": True},
            "lines": [{"name": "999", "numbers": ["999"], "priority": 0, "wrapup": 1.0,
                       "srtp": "offered", "trusted_sources": ["127.0.0.1"]},
                      {"name": "101", "numbers": ["101"], "priority": 1}],
            "handlers": [{"id": "h1", "phone": f"sip:h1@{DOMAIN}", "skills": ["999"],
                          "srtp": "required"}],
            "routing": {"offer_timeout": 10.0, "handlers_start_available": True},
            "storage": {"data_dir": str(tmp_path / "data")},
            "mqtt": {"host": "127.0.0.1", "port": mosq.port, "node": "fcr1"},
            "transcription": {"engine": "none", "live": False},
            "web": {"enabled": False, "port": free_tcp_port()},
        }
        service = Service(from_dict(data))
        await service.start()
        phone = Baresip(user="h1", registrar=kam.addr, domain=DOMAIN, audio=handler_wav,
                        codecs="PCMA", mediaenc="srtp-mand", workdir=tmp_path / "baresip")
        cap = None
        caller = None
        try:
            await asyncio.to_thread(phone.start)
            cap = await asyncio.to_thread(
                RtpCapture(list(range(phone.rtp_min, phone.rtp_max + 1)),
                           workdir=tmp_path / "cap").start)
            cad = await cad_subscriber_factory("127.0.0.1", mosq.port)
            caller = Sipp(scenarios.caller(dialled="999", pcap=clip.pcap,
                                           talk_ms=int(clip.duration * 1000) + 4500),
                          target=kam.addr, calls=1, timeout=90, name="caller",
                          workdir=tmp_path / "sipp")
            await asyncio.to_thread(caller.start)
            assert await asyncio.to_thread(caller.wait, 60) == 0, caller.diagnostics()
            await wait_until(lambda: service.db.query_one(
                "SELECT 1 FROM calls WHERE ended_at IS NOT NULL"), 15, "call ended")
            row = dict(service.db.query_one("SELECT * FROM calls"))
            call_id = row["call_id"]
            await cad.wait_for(call_id, "call.ended", 30)
            stats = service.engine.stats
            await asyncio.sleep(0.5)
        finally:
            if caller is not None:
                await asyncio.to_thread(caller.stop)
            if cap is not None:
                await asyncio.to_thread(cap.stop)
            log = phone.log_text()
            await asyncio.to_thread(phone.stop)
            await service.stop()

    assert (row["line"], row["handler_id"], row["state"]) == ("999", "h1", "completed"), row
    assert "Call established" in log, log
    assert "srtp" in log.lower(), log
    # What went over the wire to and from the phone: SRTP only (baresip takes our first
    # suite, AES-GCM: a 16-byte tag on every 160-byte A-law frame; none of the caller's
    # frames readable in a payload).
    packets = [c for c in cap.packets() if c.rtp.pt == 8]
    assert len(packets) > 200
    assert {len(c.rtp.payload) for c in packets} == {176}, {len(c.rtp.payload) for c in packets}
    frames = {clip.payload[i:i + 160] for i in range(0, len(clip.payload), 160)}
    assert not any(c.rtp.payload[:160] in frames for c in packets)
    assert stats.rtp_srtp_forged == 0 and stats.rtp_srtp_replayed == 0

    # The recording: in clear, checksummed; caller bit-exact, the phone's tone on the right.
    path = Path(row["recording_path"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["recording_sha256"]
    left, right = read_stereo(path)
    sent, found, shifts = frames_found_in_order(clip.sent, left)
    assert found == sent, f"caller: {found}/{sent} frames bit-exact ({shifts} shifts)"
    loud = np.flatnonzero(np.abs(right.astype(np.int32)) > 2000)
    assert len(loud) > 8000 * 2, "the phone's tone is not in the recording"
    segment = right[loud[0]:loud[0] + 8000 * 2]
    assert _tone_strength(segment, TONE_HZ) > 0.9

    # What the phone heard (baresip decrypted and decoded it): the caller's speech.
    decoded = [p for p in phone.dumps() if p.name.endswith("-dec.wav")]
    assert decoded, list(phone.dumps())
    heard, _, _ = speech.read_wav(decoded[0])
    ref = clip.sent[np.flatnonzero(np.abs(clip.sent.astype(np.int32)) > 500)[0]:][:8000 * 2]
    corr = np.correlate(heard.astype(np.float64), ref.astype(np.float64), mode="valid")
    norm = np.sqrt(np.sum(ref.astype(np.float64) ** 2)) * np.sqrt(
        np.convolve(heard.astype(np.float64) ** 2, np.ones(len(ref)), mode="valid"))
    assert float(np.max(corr / np.maximum(norm, 1e-9))) > 0.95

    # The CAD: every lifecycle event, valid, in order.
    msgs = cad.for_call(call_id)
    for m in msgs:
        validate(m)
    seqs = sorted({m["seq"] for m in msgs})
    assert seqs == list(range(1, len(seqs) + 1))
    types = [{m["seq"]: m["type"] for m in msgs}[s] for s in seqs]
    for earlier, later in [("call.arrived", "call.queued"), ("call.queued", "call.offered"),
                           ("call.offered", "call.answered"), ("call.answered", "call.ended"),
                           ("call.recording", "call.ended")]:
        assert types.index(earlier) < types.index(later), types


async def test_999_srtp_end_to_end_over_tls(tmp_path: Path, cad_subscriber_factory) -> None:
    """Every hop that carries SDES keys is TLS, so no lab setting: a baresip caller
    (mediaenc=srtp-mand) dials 999 over TLS to Kamailio, relayed over TLS to the service
    (lines[999].srtp = required); the handler leg goes back over TLS through Kamailio to a
    baresip handler phone registered over TLS (handlers[h1].srtp = required). Both legs
    are SRTP; the recording holds both sides in clear; the CAD gets the call in order."""
    from harness.certs import CertAuthority

    for sub in ("kamailio", "caller", "handler", "tls"):
        (tmp_path / sub).mkdir()
    ca = CertAuthority(tmp_path / "tls")
    ours, kam_cert = ca.issue("controlroom", "controlroom.local"), ca.issue("kam", "kam.local")
    h_cert, c_cert = ca.issue("handler", "h1.local"), ca.issue("caller", "caller.local")
    sip_port, tls_port = free_udp_port(), free_tcp_port()
    rtp_lo, rtp_hi = free_rtp_range(40)
    t = np.arange(8000 * 2) / 8000
    caller_tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    caller_wav = speech.write_wav(tmp_path / "caller.wav", np.concatenate(
        [np.zeros(8000 * 3, dtype=np.int16), caller_tone, np.zeros(8000 * 4, dtype=np.int16)]))
    handler_tone = (np.sin(2 * np.pi * TONE_HZ * t) * 8000).astype(np.int16)
    handler_wav = speech.write_wav(tmp_path / "handler.wav", np.concatenate(
        [np.zeros(8000 * 1, dtype=np.int16), handler_tone, np.zeros(8000 * 60, dtype=np.int16)]))
    routes = {n: f"127.0.0.1:{tls_port};transport=tls" for n in ("999", "101")}
    with Mosquitto() as mosq, Kamailio(routes, domain=DOMAIN, trace=False, tcp=True,
                                       tls=(kam_cert.cert, kam_cert.key, ca.cert),
                                       workdir=tmp_path / "kamailio") as kam:
        data = {
            "drain_timeout": 2.0,
            "sip": {"bind": "127.0.0.1", "port": sip_port, "domain": DOMAIN, "tcp": True,
                    "tls": True, "tls_port": tls_port, "tls_cert": str(ours.cert),
                    "tls_key": str(ours.key), "tls_ca": str(ca.cert),
                    "proxy": f"sip:127.0.0.1:{kam.tls_port};transport=tls",
                    "rtp_bind": "127.0.0.1", "rtp_port_min": rtp_lo, "rtp_port_max": rtp_hi},
            "lines": [{"name": "999", "numbers": ["999"], "priority": 0, "wrapup": 1.0,
                       "srtp": "required", "trusted_sources": ["127.0.0.1"]},
                      {"name": "101", "numbers": ["101"], "priority": 1}],
            "handlers": [{"id": "h1", "phone": f"sip:h1@{DOMAIN}", "skills": ["999"],
                          "srtp": "required"}],
            "routing": {"offer_timeout": 10.0, "handlers_start_available": True},
            "storage": {"data_dir": str(tmp_path / "data")},
            "mqtt": {"host": "127.0.0.1", "port": mosq.port, "node": "fcr1"},
            "transcription": {"engine": "none", "live": False},
            "web": {"enabled": False, "port": free_tcp_port()},
        }
        service = Service(from_dict(data))
        await service.start()
        handler = Baresip(user="h1", registrar=kam.addr, domain=DOMAIN, audio=handler_wav,
                          codecs="PCMA", mediaenc="srtp-mand", workdir=tmp_path / "handler",
                          tls=(h_cert.cert, h_cert.key, ca.cert), tls_port=kam.tls_port)
        caller = Baresip(user="caller", registrar=kam.addr, domain=DOMAIN, audio=caller_wav,
                         codecs="PCMA", mediaenc="srtp-mand", register=False,
                         workdir=tmp_path / "caller",
                         tls=(c_cert.cert, c_cert.key, ca.cert), tls_port=kam.tls_port)
        try:
            cad = await cad_subscriber_factory("127.0.0.1", mosq.port)
            await asyncio.to_thread(handler.start)
            await asyncio.to_thread(caller.start)
            await asyncio.to_thread(caller.dial, f"sip:999@{DOMAIN}")
            await wait_until(lambda: service.engine.stats.srtp_streams == 2, 20,
                             "caller and handler legs both on SRTP")
            await wait_until(lambda: service.db.query_one(
                "SELECT 1 FROM calls WHERE ended_at IS NOT NULL"), 40, "call ended")
            row = dict(service.db.query_one("SELECT * FROM calls"))
            await cad.wait_for(row["call_id"], "call.ended", 30)
            stats = service.engine.stats
        finally:
            c_log, h_log = caller.log_text(), handler.log_text()
            await asyncio.to_thread(caller.stop)
            await asyncio.to_thread(handler.stop)
            await service.stop()
    assert (row["line"], row["handler_id"], row["state"]) == ("999", "h1", "completed"), row
    assert "transport=tls" in c_log and "Call established" in h_log, (c_log, h_log)
    assert stats.rtp_srtp_forged == 0 and stats.rtp_srtp_replayed == 0
    path = Path(row["recording_path"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["recording_sha256"]
    left, right = read_stereo(path)
    for channel, hz in ((left, 440.0), (right, TONE_HZ)):
        loud = max(range(0, len(channel) - 8000, 800),
                   key=lambda i, c=channel: float(np.abs(c[i:i + 8000].astype(np.int64)).sum()))
        assert _tone_strength(channel[loud:loud + 8000], hz) > 0.8, hz
    types = [m["type"] for m in sorted(cad.for_call(row["call_id"]), key=lambda m: m["seq"])]
    for earlier, later in [("call.arrived", "call.queued"), ("call.queued", "call.offered"),
                           ("call.offered", "call.answered"), ("call.answered", "call.ended")]:
        assert types.index(earlier) < types.index(later), types
