"""The engine's SRTP policy with the real media layer on loopback: per line and per handler
phone (required / offered / off), SDES keys only over TLS (or the loud lab setting),
refusals with 488 and a log line that leave calls in progress alone."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from pathlib import Path

import pytest
from pylibsrtp import Policy, Session
from structlog.testing import capture_logs

from config.schema import HandlerSettings, LineSettings
from config.telephony import SipSettings
from telephony import api
from telephony.engine import Engine
from telephony.errors import EngineError
from telephony.sip.sdp import parse_crypto, parse_sdp

from .peer import Peer, in_dialog, invite, sdp_offer
from .rigs import Rig, _reply
from .test_engine_real_media import _rtp_socket

SUITE = "AES_CM_128_HMAC_SHA1_80"


def _lines(srtp_999: str) -> list[LineSettings]:
    return [LineSettings(name="999", numbers=["999"], priority=0, srtp=srtp_999),  # type: ignore[arg-type]
            LineSettings(name="101", numbers=["101"], priority=1, queue_prompt="silence")]


def _crypto_sdp(port: int, key: bytes, proto: str = "RTP/SAVP", tag: int = 1,
                suite: str = SUITE) -> str:
    return (sdp_offer(port=port, codecs="8 101").replace("RTP/AVP", proto)
            + f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}\r\n")


def _their_key(body: bytes) -> tuple[int, str, bytes, str]:
    """(tag, suite, key, proto) of the one a=crypto line in an SDP from the engine."""
    m = parse_sdp(body).media[0]
    lines = [v for n, v in m.attributes if n == "crypto"]
    c = parse_crypto(lines[0])
    assert not isinstance(c, str)
    return c.tag, c.suite, c.key, m.proto


def _sessions(own: bytes, engine: bytes) -> tuple[Session, Session]:
    return (Session(Policy(key=own, ssrc_type=Policy.SSRC_ANY_OUTBOUND)),
            Session(Policy(key=engine, ssrc_type=Policy.SSRC_ANY_INBOUND)))


def _packet(seq: int, pt: int, byte: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + bytes([byte]) * 160


async def _engine(tmp_path: Path, *, srtp_999: str = "required", lab: bool = True,
                  handler_srtp: str = "offered", handler_port: int = 0,
                  proxy: str = "") -> tuple[Engine, list, str]:
    events: list = []
    rtp_min = 32000 + (os.getpid() % 50) * 40
    uri = f"sip:h1@127.0.0.1:{handler_port}"
    engine = Engine(settings=SipSettings(port=0, rtp_port_min=rtp_min, rtp_port_max=rtp_min + 39,
                                         srtp_over_plain_sip=lab, proxy=proxy),
                    lines=_lines(srtp_999), recordings_dir=tmp_path, on_event=events.append,
                    handlers=[HandlerSettings(id="h1", phone=uri, srtp=handler_srtp)])  # type: ignore[arg-type]
    await engine.start()
    return engine, events, uri


async def test_srtp_call_both_ways_recorded_in_clear(tmp_path: Path) -> None:
    """999 line srtp = required (lab setting on: loopback UDP), handler srtp = offered:
    the caller's RTP/SAVP offer is answered with our key; the handler gets RTP/AVP with
    two a=crypto lines, answers one; both directions decrypt to the other side's codes;
    the recording holds the audio; a replayed packet is counted."""
    handler = await Peer().open()
    engine, events, uri = await _engine(tmp_path, handler_port=handler.port)
    caller = await Peer().open()
    rig = Rig(engine, events, caller)
    c_tr, c_rtp, c_port = await _rtp_socket()
    h_tr, h_rtp, h_port = await _rtp_socket()
    try:
        c_key, h_key = os.urandom(30), os.urandom(30)
        with capture_logs() as logs:
            ok, _ = await rig.answered_call(body=_crypto_sdp(c_port, c_key))
        assert any(e["event"] == "srtp.keys_over_plain_sip" for e in logs)
        tag, suite, c_engine_key, proto = _their_key(ok.body)
        assert (tag, suite, proto) == (1, SUITE, "RTP/SAVP")
        our = parse_sdp(ok.body).media[0].port
        c_tx, c_rx = _sessions(c_key, c_engine_key)
        call_id = rig.of(api.CallArrived)[0].call_id
        leg_id = engine.offer(call_id, uri, timeout=5)
        inv = await handler.expect_request("INVITE")
        m = parse_sdp(inv.body).media[0]
        assert m.proto == "RTP/AVP"  # best-effort: a phone without SRTP could answer plain
        offered = [parse_crypto(v) for n, v in m.attributes if n == "crypto"]
        assert [(c.tag, c.suite) for c in offered] == [  # type: ignore[union-attr]
            (1, "AEAD_AES_128_GCM"), (2, "AES_CM_128_HMAC_SHA1_80"),
            (3, "AES_CM_128_HMAC_SHA1_32")]
        leg_port = m.port  # a phone without GCM: takes tag 2
        _reply(handler, inv, 200,
               body=_crypto_sdp(h_port, h_key, proto="RTP/AVP", tag=2).encode())
        await handler.expect_request("ACK")
        await rig.wait_for(api.LegAnswered)
        engine.bridge(call_id, leg_id)
        h_tx, h_rx = _sessions(h_key, offered[1].key)  # type: ignore[union-attr]
        c_before, h_before = len(c_rtp.received), len(h_rtp.received)
        for i in range(1, 31):
            c_tr.sendto(c_tx.protect(_packet(i, 8, 0x11, 0xC0)), ("127.0.0.1", our))
            h_tr.sendto(h_tx.protect(_packet(i, 8, 0x22, 0xD0)), ("127.0.0.1", leg_port))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        to_handler = [h_rx.unprotect(p) for p in h_rtp.received[h_before:]]
        to_caller = [c_rx.unprotect(p) for p in c_rtp.received[c_before:]]
        assert sum(p[12:] == b"\x11" * 160 for p in to_handler) >= 10
        assert sum(p[12:] == b"\x22" * 160 for p in to_caller) >= 10
        replay = c_tx.protect(_packet(31, 8, 0x11, 0xC0))
        c_tr.sendto(replay, ("127.0.0.1", our))
        c_tr.sendto(replay, ("127.0.0.1", our))
        await asyncio.sleep(0.1)
        st = engine.stats
        assert (st.rtp_srtp_replayed, st.rtp_srtp_forged, st.srtp_streams) == (1, 0, 2)
        caller.send(in_dialog("BYE", caller, engine.sip_port, ok, cseq=2), engine.sip_port)
        await caller.expect_status(200)
        bye = await handler.expect_request("BYE")
        _reply(handler, bye, 200)
        sealed = (await rig.wait_for(api.RecordingSealed))[0]
        import wave

        import numpy as np

        from telephony.media import g711
        with wave.open(str(sealed.path)) as w:
            frames = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
        assert (frames[:, 0] == g711.ALAW_DECODE[0x11]).sum() >= 160 * 10
        assert (frames[:, 1] == g711.ALAW_DECODE[0x22]).sum() >= 160 * 10
    finally:
        for x in (c_tr, h_tr, caller, handler):
            x.close()
        await engine.stop(bye_grace=0)


async def test_required_line_over_udp_is_488_without_the_lab_setting(tmp_path: Path) -> None:
    """SDES keys never cross plain SIP: a required line's INVITE over UDP gets 488."""
    engine, events, _ = await _engine(tmp_path, lab=False)
    caller = await Peer().open()
    try:
        with capture_logs() as logs:
            text, _, _ = invite(caller, engine.sip_port, body=_crypto_sdp(40000, os.urandom(30)))
            caller.send(text, engine.sip_port)
            resp = await caller.expect_status(488)
        assert "keys travel only over TLS" in resp.reason
        assert [e["status"] for e in logs if e["event"] == "call.rejected"] == [488]
        assert not any(e["event"] == "srtp.keys_over_plain_sip" for e in logs)
    finally:
        caller.close()
        await engine.stop(bye_grace=0)


@pytest.mark.parametrize(("number", "body", "reason"), [
    ("999", sdp_offer(port=40000), "SRTP required: no a=crypto in the offer"),
    ("999", _crypto_sdp(40000, os.urandom(30), suite="AES_192_CM_HMAC_SHA1_80"),
     "SRTP required: no usable a=crypto (unknown crypto suite AES_192_CM_HMAC_SHA1_80)"),
    ("999", sdp_offer(port=40000).replace("RTP/AVP", "RTP/SAVP")
     + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJD|2^31\r\n",
     "Malformed a=crypto: AES_CM_128_HMAC_SHA1_80 needs a 30-byte key, got 3 (tag 1)"),
    ("101", sdp_offer(port=40000) + "a=crypto:one AES_CM_128_HMAC_SHA1_80 inline:QUJD\r\n",
     "Malformed a=crypto: the tag must be 1 to 9 digits"),
    ("101", _crypto_sdp(40000, os.urandom(30)),
     "Secure RTP (RTP/SAVP) is not accepted here (srtp = 'off')"),
])
async def test_bad_crypto_is_488_and_a_call_in_progress_goes_on(
        tmp_path: Path, number: str, body: str, reason: str) -> None:
    """Each bad offer gets 488 with its reason and one log line; a 101 call already up keeps
    its media flowing and is not ended."""
    engine, events, _ = await _engine(tmp_path)
    caller = await Peer().open()
    rig = Rig(engine, events, caller)
    c_tr, _c_rtp, c_port = await _rtp_socket()
    try:
        ok, _ = await rig.answered_call(number="101", body=sdp_offer(port=c_port))
        our = parse_sdp(ok.body).media[0].port
        stream = engine._calls[rig.of(api.CallArrived)[0].call_id].stream
        for i in range(5):
            c_tr.sendto(_packet(i, 8, 0x55, 0xAA), ("127.0.0.1", our))
            await asyncio.sleep(0.02)
        other = await Peer().open()
        with capture_logs() as logs:
            text, _, _ = invite(other, engine.sip_port, number=number, body=body)
            other.send(text, engine.sip_port)
            resp = await other.expect_status(488)
        other.close()
        assert resp.reason == reason
        rejected = [e for e in logs if e["event"] == "call.rejected"]
        assert [(e["status"], e["reason"]) for e in rejected] == [(488, reason)]
        before = stream.stats.packets_in
        for i in range(5, 10):
            c_tr.sendto(_packet(i, 8, 0x55, 0xAA), ("127.0.0.1", our))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        assert stream.stats.packets_in > before
        assert not rig.of(api.CallEnded) and len(engine._calls) == 1
    finally:
        c_tr.close()
        caller.close()
        await engine.stop(bye_grace=0)


async def test_handler_requiring_srtp_without_tls_is_a_start_error(tmp_path: Path) -> None:
    """handlers[].srtp = 'required' with a plain-UDP proxy: the engine refuses to start."""
    with pytest.raises(EngineError, match="srtp = 'required' but its calls do not go over "
                                          "SIP over TLS"):
        await _engine(tmp_path, lab=False, handler_srtp="required")


async def test_handler_requiring_srtp_answered_plain_fails_the_offer(tmp_path: Path) -> None:
    """Our RTP/SAVP offer answered without a=crypto: BYE, LegFailed(error), call goes on."""
    handler = await Peer().open()
    engine, events, uri = await _engine(tmp_path, srtp_999="offered", handler_srtp="required",
                                        handler_port=handler.port)
    caller = await Peer().open()
    rig = Rig(engine, events, caller)
    try:
        await rig.answered_call(body=sdp_offer(port=40000))
        call_id = rig.of(api.CallArrived)[0].call_id
        engine.offer(call_id, uri, timeout=5)
        inv = await handler.expect_request("INVITE")
        assert parse_sdp(inv.body).media[0].proto == "RTP/SAVP"
        _reply(handler, inv, 200, body=sdp_offer(port=41000).encode())
        await handler.expect_request("ACK")
        await handler.expect_request("BYE")
        failed = await rig.wait_for(api.LegFailed)
        assert failed[0].reason == "error" and call_id in engine._calls
    finally:
        caller.close()
        handler.close()
        await engine.stop(bye_grace=0)


async def test_reinvite_keeps_srtp_and_a_downgrade_is_refused(tmp_path: Path) -> None:
    """A hold re-INVITE with the same a=crypto is answered with the same key of ours and
    the stream keeps its SRTP context; a re-INVITE without a=crypto on a required line is
    488 and the call goes on encrypted."""
    engine, events, _ = await _engine(tmp_path)
    caller = await Peer().open()
    rig = Rig(engine, events, caller)
    try:
        key = os.urandom(30)
        ok, _ = await rig.answered_call(body=_crypto_sdp(40000, key))
        first = _their_key(ok.body)
        stream = engine._calls[rig.of(api.CallArrived)[0].call_id].stream
        ctx = stream._srtp
        hold = _crypto_sdp(40000, key).replace("a=sendrecv", "a=sendonly")
        caller.send(in_dialog("INVITE", caller, engine.sip_port, ok, cseq=2, body=hold),
                    engine.sip_port)
        resp = await caller.expect_status(200)
        assert _their_key(resp.body) == first and stream._srtp is ctx
        await rig.wait_for(api.HoldChanged)
        with capture_logs() as logs:
            caller.send(in_dialog("INVITE", caller, engine.sip_port, ok, cseq=3,
                                  body=sdp_offer(port=40000)), engine.sip_port)
            refused = await caller.expect_status(488)
        assert refused.reason == "SRTP required: no a=crypto in the offer"
        assert any(e["event"] == "sdp.reinvite_refused" for e in logs)
        assert stream._srtp is ctx and len(engine._calls) == 1
    finally:
        caller.close()
        await engine.stop(bye_grace=0)
