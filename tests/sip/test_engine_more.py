"""Engine: proxied INVITEs, delayed offer, Require, media commands, DTMF, registered lines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from config.schema import LineSettings
from config.telephony import SipSettings
from telephony import api
from telephony.engine import Engine
from telephony.sip.message import make_response
from telephony.sip.sdp import parse_sdp

from .fake_media import FakeMedia
from .peer import Peer, in_dialog, invite, sdp_offer
from .rigs import ANSWER, LINES, Rig, _reply


async def test_proxied_invite_replies_via_top_via_and_bye_follows_record_route(rig: Rig) -> None:
    """Through a proxy: 200 keeps both Vias and Record-Route; our BYE goes to the proxy
    with a Route header and the caller's Contact as Request-URI."""
    p = rig.peer
    text, call_id, _ = invite(p, rig.engine.sip_port, extra=(
        f"Record-Route: <sip:127.0.0.1:{p.port};lr;ftag=ft1>\r\n"))
    text = text.replace(
        f"Via: SIP/2.0/UDP 127.0.0.1:{p.port};branch=",
        f"Via: SIP/2.0/UDP 127.0.0.1:{p.port};branch=z9hG4bKproxy1\r\n"
        "Via: SIP/2.0/UDP 10.9.9.9:5060;received=10.9.9.9;branch=", 1)
    text = text.replace(f"Contact: <sip:caller@127.0.0.1:{p.port}>", "Contact: <sip:caller@10.9.9.9:5060>")
    p.send(text, rig.engine.sip_port)
    ok = await p.expect_status(200)
    assert [v.host for v in ok.vias] == ["127.0.0.1", "10.9.9.9"]
    assert ok.get_all("Record-Route") == [f"<sip:127.0.0.1:{p.port};lr;ftag=ft1>"]
    ack = in_dialog("ACK", p, rig.engine.sip_port, ok, cseq=1)
    p.send(ack, rig.engine.sip_port)
    await asyncio.sleep(0.05)
    rig.engine.hangup(rig.of(api.CallArrived)[0].call_id)
    bye = await p.expect_request("BYE")
    assert str(bye.uri) == "sip:caller@10.9.9.9:5060"
    assert bye.get_all("Route") == [f"<sip:127.0.0.1:{p.port};lr;ftag=ft1>"]


async def test_delayed_offer_answer_in_ack(rig: Rig) -> None:
    """INVITE without SDP: our 200 offers, the ACK's answer configures the stream."""
    text, _, _ = invite(rig.peer, rig.engine.sip_port, body="")
    rig.peer.send(text.replace("Content-Type: application/sdp\r\n", ""), rig.engine.sip_port)
    ok = await rig.peer.expect_status(200)
    assert parse_sdp(ok.body).media[0].formats == ["8", "0", "101"]
    rig.peer.send(in_dialog("ACK", rig.peer, rig.engine.sip_port, ok, cseq=1,
                            body=sdp_offer(port=42000, codecs="0 101")), rig.engine.sip_port)
    await asyncio.sleep(0.1)
    stream = rig.media.streams[0]
    assert stream.remote == ("127.0.0.1", 42000) and stream.codec.name == "PCMU"


async def test_require_100rel_is_420(rig: Rig) -> None:
    """Require: 100rel (unsupported) is refused with 420 naming it; timer is accepted."""
    text, _, _ = invite(rig.peer, rig.engine.sip_port, extra="Require: 100rel, timer\r\n")
    rig.peer.send(text, rig.engine.sip_port)
    resp = await rig.peer.expect_status(420)
    assert resp.get("Unsupported") == "100rel"


@pytest.mark.parametrize("rig", [{}], indirect=True)
async def test_port_pool_exhausted_is_503(rig: Rig) -> None:
    """No RTP port left: 503 with Retry-After and the media error as reason."""
    rig.media.pool_limit = 0
    text, _, _ = invite(rig.peer, rig.engine.sip_port)
    rig.peer.send(text, rig.engine.sip_port)
    resp = await rig.peer.expect_status(503)
    assert resp.reason == "RTP port pool exhausted" and resp.get("Retry-After") == "30"


async def test_dtmf_events_and_silent_solution(rig: Rig) -> None:
    """Caller digits become Dtmf events; 5 then 5 raises SilentCallFlag once."""
    await rig.answered_call()
    stream = rig.media.streams[0]
    for d in "2555":
        rig.media.on_dtmf(stream, d)
    call_id = rig.of(api.CallArrived)[0].call_id
    assert [(e.digit, e.leg_id) for e in rig.of(api.Dtmf)] == [("2", None), ("5", None),
                                                              ("5", None), ("5", None)]
    assert [e.call_id for e in rig.of(api.SilentCallFlag)] == [call_id]


async def test_stats_stay_monotonic_after_calls_end(rig: Rig) -> None:
    """RTP counters of closed streams remain in EngineStats."""
    ok, _ = await rig.answered_call()

    class S:
        packets_in, packets_out, lost, late, max_send_gap_ms = 50, 49, 1, 2, 21.5

    rig.media.streams[0].stats = S()
    assert rig.engine.stats.rtp_packets_in == 50
    rig.peer.send(in_dialog("BYE", rig.peer, rig.engine.sip_port, ok, cseq=2), rig.engine.sip_port)
    await rig.peer.expect_status(200)
    st = rig.engine.stats
    assert (st.rtp_packets_in, st.rtp_packets_out, st.rtp_lost, st.rtp_late) == (50, 49, 1, 2)
    assert st.max_send_gap_ms == 21.5 and st.invites == 1 and st.calls_active == 0


async def test_hold_unbridge_and_play(legrig: Rig) -> None:
    """hold() unbridges (caller hears the prompt), resume re-bridges; unbridge() hangs the
    leg up with LegEnded(system); play() changes the prompt while not bridged."""
    h: Peer = legrig.handler
    await legrig.answered_call()
    call_id = legrig.of(api.CallArrived)[0].call_id
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 200, body=ANSWER)
    await h.expect_request("ACK")
    caller, leg = legrig.media.streams[0], legrig.media.streams[1]
    legrig.engine.bridge(call_id, leg_id)
    legrig.engine.hold(call_id, True)
    assert legrig.media.unbridged == [caller] and caller.prompt == "tone" and leg.prompt == "silence"
    legrig.engine.play(call_id, "/tmp/announce.wav")
    assert caller.prompt == "/tmp/announce.wav"
    legrig.engine.hold(call_id, False)
    assert legrig.media.bridges == [(caller, leg), (caller, leg)]
    legrig.engine.unbridge(call_id)
    await h.expect_request("BYE")
    assert [(e.leg_id, e.by) for e in legrig.of(api.LegEnded)] == [(leg_id, "system")]
    assert caller.prompt == "/tmp/announce.wav" and leg.closed
    assert legrig.media.recordings[call_id].handler_history == [leg, None]


async def test_registered_line_registers_and_takes_calls(tmp_path: Path) -> None:
    """A registered line REGISTERs with digest, and INVITEs for its user from the registrar
    are answered."""
    registrar = await Peer().open()
    line = LineSettings(name="101", numbers=["101"], priority=1, mode="registered",
                        registrar=f"sip:127.0.0.1:{registrar.port}", username="cr101",
                        password="pw", trusted_sources=[], register_expires=60)
    events: list = []
    engine = Engine(settings=SipSettings(port=0), lines=[line], recordings_dir=tmp_path,
                    on_event=events.append, media_factory=FakeMedia)
    await engine.start()
    try:
        reg = await registrar.expect_request("REGISTER")
        assert reg.contact is not None and reg.contact.uri.user == "cr101"
        _reply(registrar, reg, 401, headers=[("WWW-Authenticate", 'Digest realm="pbx", nonce="x"')])
        reg2 = await registrar.expect_request("REGISTER")
        assert (reg2.get("Authorization") or "").startswith('Digest username="cr101"')
        ok = make_response(reg2, 200, to_tag="r", headers=[("Expires", "60")])
        registrar.transport.sendto(ok.encode(), registrar.last_addr)
        await asyncio.sleep(0.05)
        assert engine.registrations == {"101": True}
        text, _, _ = invite(registrar, engine.sip_port, number="cr101")
        registrar.send(text, engine.sip_port)
        await registrar.expect_status(200)
        assert [(e.line, e.dialled) for e in events if isinstance(e, api.CallArrived)] == [
            ("101", "cr101")]
    finally:
        await engine.stop(bye_grace=0)
        registrar.close()


async def test_sip_info_dtmf_and_update(rig: Rig) -> None:
    """SIP INFO dtmf-relay digits become Dtmf events; UPDATE with SDP gets 405, without 200."""
    ok, _ = await rig.answered_call()
    info = in_dialog("INFO", rig.peer, rig.engine.sip_port, ok, cseq=2, body="Signal=5\r\nDuration=160\r\n")
    rig.peer.send(info.replace("application/sdp", "application/dtmf-relay"), rig.engine.sip_port)
    await rig.peer.expect_status(200)
    info = in_dialog("INFO", rig.peer, rig.engine.sip_port, ok, cseq=3, body="#")
    rig.peer.send(info.replace("application/sdp", "application/dtmf"), rig.engine.sip_port)
    await rig.peer.expect_status(200)
    assert [e.digit for e in rig.of(api.Dtmf)] == ["5", "#"]
    rig.peer.send(in_dialog("UPDATE", rig.peer, rig.engine.sip_port, ok, cseq=4, body=sdp_offer()),
                  rig.engine.sip_port)
    await rig.peer.expect_status(405)
    rig.peer.send(in_dialog("UPDATE", rig.peer, rig.engine.sip_port, ok, cseq=5), rig.engine.sip_port)
    await rig.peer.expect_status(200)


async def test_consumer_exception_does_not_break_signalling(tmp_path: Path) -> None:
    """An on_event handler that raises is logged; the call is still answered and ended."""
    from structlog.testing import capture_logs

    def bad(ev: object) -> None:
        raise RuntimeError("consumer bug")

    engine = Engine(settings=SipSettings(port=0), lines=LINES, recordings_dir=tmp_path,
                    on_event=bad, media_factory=FakeMedia)
    await engine.start()
    peer = await Peer().open()
    try:
        with capture_logs() as logs:
            rig = Rig(engine, [], peer)
            ok, _ = await rig.answered_call()
            peer.send(in_dialog("BYE", peer, engine.sip_port, ok, cseq=2), engine.sip_port)
            await peer.expect_status(200)
            assert engine.stats.calls_active == 0
            await engine.stop(bye_grace=0)  # waits for the recording to be sealed
        failures = [e for e in logs if e["event"] == "engine.on_event_failed"]
        assert [e["event_type"] for e in failures] == ["CallArrived", "CallEnded", "RecordingSealed"]
    finally:
        peer.close()
        await engine.stop(bye_grace=0)


async def test_start_refuses_wildcard_bind_without_public_host(tmp_path: Path) -> None:
    """bind=0.0.0.0 without public_host would put 0.0.0.0 in Via/SDP: refused at start."""
    from telephony.errors import EngineError

    engine = Engine(settings=SipSettings(port=0, bind="0.0.0.0"), lines=LINES,
                    recordings_dir=tmp_path, on_event=lambda e: None, media_factory=FakeMedia)
    with pytest.raises(EngineError, match="sip.public_host is required when sip.bind is 0.0.0.0"):
        await engine.start()


async def test_start_failure_stops_media(tmp_path: Path) -> None:
    """If the SIP port is taken, start() raises OSError and the media layer is stopped."""
    import socket

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        engine = Engine(settings=SipSettings(port=busy.getsockname()[1]), lines=LINES,
                        recordings_dir=tmp_path, on_event=lambda e: None, media_factory=FakeMedia)
        with pytest.raises(OSError):
            await engine.start()
        assert engine._media.stopped
    finally:
        busy.close()


@pytest.mark.parametrize("rig", [{"lines": [
    LineSettings(name="999", numbers=["999"], priority=0, trusted_sources=["127.0.0.0/8"]),
    LineSettings(name="101", numbers=["101"], priority=1, trusted_sources=["10.0.0.0/24", "bad"])]}],
    indirect=True)
async def test_trusted_sources_accept_cidr(rig: Rig) -> None:
    """trusted_sources may hold CIDR blocks; an unparsable entry is ignored (logged)."""
    await rig.answered_call("999")
    text, _, _ = invite(rig.peer, rig.engine.sip_port, number="101", from_tag="b")
    rig.peer.send(text, rig.engine.sip_port)
    await rig.peer.expect_status(403)


async def test_recording_and_prompt_faults_do_not_refuse_the_call(tmp_path: Path) -> None:
    """create_recording failing and a bad prompt: the call is still answered (tone plays);
    no RecordingSealed is reported for it."""
    from .fake_media import FakeStream

    class PickyStream(FakeStream):
        def play(self, prompt: str) -> None:
            if prompt.endswith(".wav"):
                raise FileNotFoundError(prompt)
            self.prompt = prompt

    class Broken(FakeMedia):
        def create_recording(self, call_id: str):
            raise OSError("disk full")

        def allocate(self) -> FakeStream:
            s = PickyStream(self.port_min + 2 * len(self.streams))
            self.streams.append(s)
            return s

    line = LineSettings(name="999", numbers=["999"], priority=0, queue_prompt="/nonexistent.wav")
    events: list = []
    engine = Engine(settings=SipSettings(port=0), lines=[line], recordings_dir=tmp_path,
                    on_event=events.append, media_factory=Broken)
    await engine.start()
    peer = await Peer().open()
    try:
        ok, _ = await Rig(engine, events, peer).answered_call()
        assert engine._media.streams[0].prompt == "tone"
        peer.send(in_dialog("BYE", peer, engine.sip_port, ok, cseq=2), engine.sip_port)
        await peer.expect_status(200)
        await engine.stop(bye_grace=0)
        assert [type(e).__name__ for e in events] == ["CallArrived", "CallEnded"]
    finally:
        peer.close()
        await engine.stop(bye_grace=0)


@pytest.mark.parametrize("verdict,status,reason", [
    ((486, "Line full"), 486, "Line full"), ("raise", 500, "Internal error")])
async def test_admit_hook_and_internal_error(tmp_path: Path, verdict, status: int,
                                             reason: str) -> None:
    """admit() may refuse with its own status (sees IncomingCall); if INVITE handling
    raises, the caller still gets a final 500 instead of silence."""
    seen: list[api.IncomingCall] = []

    def admit(inc: api.IncomingCall):
        seen.append(inc)
        if verdict == "raise":
            raise RuntimeError("service bug")
        return verdict

    events: list = []
    engine = Engine(settings=SipSettings(port=0), lines=LINES, recordings_dir=tmp_path,
                    on_event=events.append, media_factory=FakeMedia, admit=admit)
    await engine.start()
    peer = await Peer().open()
    try:
        text, _, _ = invite(peer, engine.sip_port, extra="Geolocation: <cid:loc1@sbc>\r\n")
        peer.send(text, engine.sip_port)
        resp = await peer.expect_status(status)
        assert resp.reason == reason
        assert [(i.line, i.caller, i.location) for i in seen] == [
            ("999", "07700900123", "<cid:loc1@sbc>")]
        assert engine._media.streams == []
    finally:
        peer.close()
        await engine.stop(bye_grace=0)
