"""Engine-level tests on loopback UDP with a hand-driven peer and a fake media layer."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from config.schema import LineSettings
from config.telephony import SipSettings
from telephony import api
from telephony.engine import Engine
from telephony.sip.message import Response, make_response
from telephony.sip.sdp import parse_sdp

from .fake_media import FakeMedia, RecordingInfo
from .peer import in_dialog, invite, sdp_offer
from .rigs import LINES, Rig


async def test_invite_answered_at_once_with_pcma_and_reported(rig: Rig) -> None:
    """INVITE -> 100 then 200 with an A-law answer; CallArrived carries line/caller/codec."""
    text, call_id, _ = invite(rig.peer, rig.engine.sip_port)
    rig.peer.send(text, rig.engine.sip_port)
    trying = await rig.peer.recv()
    assert isinstance(trying, Response) and trying.status == 100
    ok = await rig.peer.expect_status(200)
    answer = parse_sdp(ok.body)
    assert answer.media[0].formats == ["8", "101"]
    assert answer.media[0].port == rig.media.streams[0].local_port
    assert ok.to.tag and ok.call_id == call_id
    arrived = rig.of(api.CallArrived)
    assert len(arrived) == 1
    ev = arrived[0]
    assert (ev.line, ev.dialled, ev.caller, ev.display_name, ev.codec, ev.sip_call_id) == (
        "999", "999", "07700900123", "Jo Caller", "PCMA", call_id)
    stream = rig.media.streams[0]
    assert stream.remote == ("127.0.0.1", 40000) and stream.codec.name == "PCMA"
    assert stream.dtmf_pt == 101 and stream.prompt == "tone"
    assert rig.media.recordings[ev.call_id].caller is stream


async def test_bye_from_caller_ends_call_and_seals_recording(rig: Rig) -> None:
    """BYE -> 200, CallEnded(by=caller), RecordingSealed with the file's sha256."""
    ok, _ = await rig.answered_call()
    rig.peer.send(in_dialog("BYE", rig.peer, rig.engine.sip_port, ok, cseq=2), rig.engine.sip_port)
    await rig.peer.expect_status(200)
    ended = rig.of(api.CallEnded)
    assert [(e.by, e.reason) for e in ended] == [("caller", "bye")]
    sealed = await rig.wait_for(api.RecordingSealed)
    assert len(sealed) == 1 and not sealed[0].recovered
    assert sealed[0].sha256 == hashlib.sha256(sealed[0].path.read_bytes()).hexdigest()
    assert rig.media.streams[0].closed
    assert rig.engine.stats.calls_active == 0


async def test_unknown_number_gets_404(rig: Rig) -> None:
    """A number no line owns is refused with 404 and reported as CallRejected."""
    text, _, _ = invite(rig.peer, rig.engine.sip_port, number="12345")
    rig.peer.send(text, rig.engine.sip_port)
    resp = await rig.peer.expect_status(404)
    assert resp.reason == "Unknown number"
    assert [(e.dialled, e.status) for e in rig.of(api.CallRejected)] == [("12345", 404)]
    assert rig.media.streams == []


@pytest.mark.parametrize("rig", [{"lines": [LineSettings(name="999", numbers=["999"], priority=0,
                                                          trusted_sources=["10.1.1.1"])]}],
                         indirect=True)
async def test_untrusted_source_gets_403(rig: Rig) -> None:
    """An INVITE from an address outside trusted_sources is refused with 403."""
    text, _, _ = invite(rig.peer, rig.engine.sip_port)
    rig.peer.send(text, rig.engine.sip_port)
    resp = await rig.peer.expect_status(403)
    assert resp.reason == "Source not trusted"


@pytest.mark.parametrize("rig", [{"settings": {"max_calls": 1}}], indirect=True)
async def test_overload_refuses_101_with_503_but_takes_999(rig: Rig) -> None:
    """Above max_calls a 101 call gets 503 + Retry-After while 999 is still answered."""
    await rig.answered_call("999", from_tag="a")
    text, _, _ = invite(rig.peer, rig.engine.sip_port, number="101", from_tag="b")
    rig.peer.send(text, rig.engine.sip_port)
    resp = await rig.peer.expect_status(503)
    assert resp.get("Retry-After") == "30"
    await rig.answered_call("999", from_tag="c")
    assert rig.engine.stats.calls_active == 2
    assert rig.engine.stats.rejected == {503: 1}


async def test_set_accepting_limits_by_priority(rig: Rig) -> None:
    """set_accepting(priority_max=0) refuses 101 with 503; None accepts again."""
    rig.engine.set_accepting(priority_max=0)
    text, _, _ = invite(rig.peer, rig.engine.sip_port, number="101")
    rig.peer.send(text, rig.engine.sip_port)
    await rig.peer.expect_status(503)
    rig.engine.set_accepting(priority_max=None)
    await rig.answered_call("101", from_tag="x2")
    assert rig.media.streams[0].prompt == "silence"


async def test_no_common_codec_gets_488(rig: Rig) -> None:
    """An offer with only G.729 is refused with 488 and the RTP port is released."""
    text, _, _ = invite(rig.peer, rig.engine.sip_port, body=sdp_offer(codecs="18"))
    rig.peer.send(text, rig.engine.sip_port)
    resp = await rig.peer.expect_status(488)
    assert resp.reason == "No common codec (we accept PCMA, PCMU)"
    assert all(s.closed for s in rig.media.streams)


async def test_malformed_request_answered_400_and_garbage_dropped(rig: Rig) -> None:
    """A request with a bad Content-Length gets 400 with the parser's reason; junk is dropped."""
    text, _, _ = invite(rig.peer, rig.engine.sip_port)
    rig.peer.send(text.replace("Content-Length: ", "Content-Length: x"), rig.engine.sip_port)
    resp = await rig.peer.expect_status(400)
    assert resp.reason.startswith("Bad Content-Length: 'x")
    rig.peer.send(b"\x00\xff" * 300, rig.engine.sip_port)
    assert await rig.peer.silent(0.2)
    assert rig.engine.sip_counters["malformed"] == 2
    await rig.answered_call()  # still serving


async def test_options_out_of_dialog_gets_200(rig: Rig) -> None:
    """OPTIONS (SBC keep-alive) is answered 200 with Allow."""
    rig.peer.send(
        f"OPTIONS sip:127.0.0.1:{rig.engine.sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{rig.peer.port};branch=z9hG4bKopt1\r\n"
        "From: <sip:sbc@127.0.0.1>;tag=o1\r\nTo: <sip:cr@127.0.0.1>\r\nCall-ID: opt1\r\n"
        "CSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n", rig.engine.sip_port)
    resp = await rig.peer.expect_status(200)
    assert "INVITE" in (resp.get("Allow") or "")
    assert resp.cseq == (7, "OPTIONS")


async def test_retransmitted_invite_is_the_same_call(rig: Rig) -> None:
    """The same INVITE twice gives one CallArrived and the same 200 (same To tag)."""
    text, _, _ = invite(rig.peer, rig.engine.sip_port)
    rig.peer.send(text, rig.engine.sip_port)
    ok1 = await rig.peer.expect_status(200)
    rig.peer.send(text, rig.engine.sip_port)
    ok2 = await rig.peer.expect_status(200)
    assert ok1.to.tag == ok2.to.tag
    assert len(rig.of(api.CallArrived)) == 1 and len(rig.media.streams) == 1


async def test_cancel_after_200_has_no_effect_then_bye(rig: Rig) -> None:
    """CANCEL racing our 200 gets 200 (RFC 3261 §9.2); the call ends on the caller's BYE."""
    text, _, branch = invite(rig.peer, rig.engine.sip_port)
    rig.peer.send(text, rig.engine.sip_port)
    ok = await rig.peer.expect_status(200)
    cancel = (text.split("\r\n\r\n")[0].replace("INVITE sip:", "CANCEL sip:", 1)
              .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
              .replace("Content-Type: application/sdp\r\n", "")
              .rsplit("Content-Length", 1)[0] + "Content-Length: 0\r\n\r\n")
    rig.peer.send(cancel, rig.engine.sip_port)
    resp = await rig.peer.expect_status(200)
    assert resp.cseq == (1, "CANCEL")
    assert rig.of(api.CallCancelled) == [] and rig.engine.stats.calls_active == 1
    rig.peer.send(in_dialog("BYE", rig.peer, rig.engine.sip_port, ok, cseq=2), rig.engine.sip_port)
    await rig.peer.expect_status(200)
    assert rig.of(api.CallEnded)[0].by == "caller"


async def test_bye_for_unknown_dialog_gets_481(rig: Rig) -> None:
    """A BYE whose tags match no dialog is answered 481."""
    ok, _ = await rig.answered_call()
    bye = in_dialog("BYE", rig.peer, rig.engine.sip_port, ok, cseq=2, from_tag="other")
    rig.peer.send(bye, rig.engine.sip_port)
    await rig.peer.expect_status(481)


async def test_reinvite_hold_and_resume(rig: Rig) -> None:
    """re-INVITE sendonly -> 200 recvonly + HoldChanged(True); sendrecv -> resumed."""
    ok, _ = await rig.answered_call()
    rig.peer.send(in_dialog("INVITE", rig.peer, rig.engine.sip_port, ok, cseq=2,
                            body=sdp_offer(direction="sendonly")), rig.engine.sip_port)
    resp = await rig.peer.expect_status(200)
    assert parse_sdp(resp.body).media[0].direction == "recvonly"
    assert rig.media.streams[0].direction == "recvonly"
    rig.peer.send(in_dialog("INVITE", rig.peer, rig.engine.sip_port, ok, cseq=3,
                            body=sdp_offer()), rig.engine.sip_port)
    resp = await rig.peer.expect_status(200)
    assert parse_sdp(resp.body).media[0].direction == "sendrecv"
    assert [e.on_hold for e in rig.of(api.HoldChanged)] == [True, False]
    # o= version: 1 in the 200, 2 on hold, 3 on resume, unchanged for a same-SDP refresh
    assert resp.body.split(b"\r\n")[1].split()[2] == b"3"
    rig.peer.send(in_dialog("INVITE", rig.peer, rig.engine.sip_port, ok, cseq=4,
                            body=sdp_offer()), rig.engine.sip_port)
    again = await rig.peer.expect_status(200)
    assert again.body == resp.body


@pytest.mark.parametrize("rig", [{"settings": {"dead_call_timeout": 0.3}}], indirect=True)
async def test_dead_call_guard_hangs_up(rig: Rig) -> None:
    """No RTP and no signalling for dead_call_timeout -> BYE and CallEnded(system)."""
    await rig.answered_call()
    bye = await rig.peer.expect_request("BYE", timeout=2.0)
    assert bye.uri.user == "caller"
    ended = await rig.wait_for(api.CallEnded)
    assert (ended[0].by, ended[0].reason) == ("system", "dead-call: no RTP or signalling for 0.3 s")


async def test_hangup_sends_bye(rig: Rig) -> None:
    """hangup() sends BYE to the caller and reports CallEnded(system) with the reason."""
    ok, _ = await rig.answered_call()
    await asyncio.sleep(0.05)  # let the ACK land so BYE is allowed
    call_id = rig.of(api.CallArrived)[0].call_id
    rig.engine.hangup(call_id, "transferred")
    bye = await rig.peer.expect_request("BYE")
    assert bye.call_id == ok.call_id and bye.to.tag == "ft1"
    assert [(e.by, e.reason) for e in rig.of(api.CallEnded)] == [("system", "transferred")]


async def test_stop_hangs_up_calls_and_waits_for_bye_answer(rig: Rig) -> None:
    """stop() ends live calls (reason shutdown) with BYE, retransmits an unanswered BYE
    during the grace period and returns once it is answered."""
    await rig.answered_call()
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(rig.engine.stop(drain_timeout=0, bye_grace=3.0))
    first = await rig.peer.expect_request("BYE")
    again = await rig.peer.expect_request("BYE", timeout=1.5)  # T1 retransmission
    assert again.top_via.branch == first.top_via.branch
    resp = make_response(again, 200)
    rig.peer.transport.sendto(resp.encode(), rig.peer.last_addr)
    await asyncio.wait_for(stopping, 1.0)
    assert [e.reason for e in rig.of(api.CallEnded)] == ["shutdown"]
    assert rig.media.stopped


async def test_recovered_recordings_reported_at_start(tmp_path: Path) -> None:
    """Recordings the media layer recovers at start-up are reported with recovered=True."""
    info = RecordingInfo("c9", tmp_path / "c9.wav", "ab" * 32, 12.0, 192044, True)

    class Recovering(FakeMedia):
        def recover_recordings(self):
            return [info]

    events: list = []
    engine = Engine(settings=SipSettings(port=0), lines=LINES, recordings_dir=tmp_path,
                    on_event=events.append, media_factory=Recovering)
    await engine.start()
    await engine.stop(bye_grace=0)
    assert events == [api.RecordingSealed(at=events[0].at, call_id="c9", path=info.path,
                                          sha256="ab" * 32, duration=12.0, bytes=192044,
                                          recovered=True)]


async def test_flood_of_junk_does_not_stop_service(rig: Rig) -> None:
    """2000 junk/malformed datagrams are counted (no exception escapes); calls still work."""
    received = [0]
    handler = rig.engine._sock._on_datagram

    def counting(data: bytes, addr: tuple[str, int]) -> None:
        received[0] += 1
        handler(data, addr)

    rig.engine._sock._on_datagram = counting
    text, _, _ = invite(rig.peer, rig.engine.sip_port)
    bad = text.replace("Content-Length: ", "Content-Length: x")
    for i in range(1000):
        rig.peer.send(bytes([i % 256]) * (i % 700 + 1), rig.engine.sip_port)
        rig.peer.send(bad, rig.engine.sip_port)
        if i % 50 == 49:
            await asyncio.sleep(0.005)  # same loop: let the engine read (bounded kernel buffer)
    last = -1
    for _ in range(50):  # until the engine has read its backlog (bounded: 5 s)
        if received[0] == last:
            break
        last = received[0]
        await asyncio.sleep(0.1)
    while not rig.peer.proto.queue.empty():
        rig.peer.proto.queue.get_nowait()
    counters = rig.engine.sip_counters
    # every datagram that reached the socket was either refused or a blank keep-alive
    assert received[0] > 100
    assert counters["malformed"] + counters["keepalives"] == received[0]
    assert counters.get("requests", 0) == 0
    assert rig.engine._sock.handler_errors == 0
    await rig.answered_call(from_tag="after-flood")
    assert len(rig.of(api.CallArrived)) == 1
