"""Handler legs: offer -> ringing -> answered -> bridge, failures, CANCEL on timeout, digest
through a proxy. The peer plays the handler's phone (or the proxy) by hand."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from config.telephony import SipSettings
from telephony import api
from telephony.engine import Engine
from telephony.errors import EngineError
from telephony.sip.auth import parse_challenge
from telephony.sip.sdp import parse_sdp

from .fake_media import FakeMedia
from .peer import Peer, in_dialog, sdp_offer
from .rigs import ANSWER, LINES, Rig, _reply


async def _call(rig: Rig) -> str:
    await rig.answered_call()
    return rig.of(api.CallArrived)[0].call_id


async def test_leg_rings_answers_and_bridges(legrig: Rig) -> None:
    """offer -> INVITE with our offer; 180 -> LegRinging; 200 -> ACK + LegAnswered; bridge."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5,
                                 caller_display="999 Jo")
    inv = await h.expect_request("INVITE")
    assert inv.from_.display == "999 Jo" and inv.uri.user == "h1"
    offer = parse_sdp(inv.body)
    assert offer.media[0].formats == ["8", "0", "101"]
    _reply(h, inv, 180)
    await legrig.wait_for(api.LegRinging)
    _reply(h, inv, 200, body=ANSWER)
    ack = await h.expect_request("ACK")
    assert ack.to.tag == "h1" and ack.uri.user == "handler" and ack.cseq == (1, "ACK")
    answered = await legrig.wait_for(api.LegAnswered)
    assert answered[0].leg_id == leg_id
    leg_stream = legrig.media.streams[1]
    assert leg_stream.codec.name == "PCMU" and leg_stream.remote == ("127.0.0.1", 41000)
    # a retransmitted 200 gets the ACK again
    _reply(h, inv, 200, body=ANSWER)
    await h.expect_request("ACK")
    legrig.engine.bridge(call_id, leg_id)
    caller_stream = legrig.media.streams[0]
    assert legrig.media.bridges == [(caller_stream, leg_stream)]
    assert legrig.media.recordings[call_id].handler is leg_stream
    # handler hangs up
    bye = (f"BYE sip:controlroom@127.0.0.1:{legrig.engine.sip_port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{h.port};branch=z9hG4bKhb1\r\n"
           f"From: {ack.get('To')}\r\nTo: {ack.get('From')}\r\nCall-ID: {ack.call_id}\r\n"
           "CSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n")
    h.send(bye, legrig.engine.sip_port)
    await h.expect_status(200)
    ended = await legrig.wait_for(api.LegEnded)
    assert (ended[0].leg_id, ended[0].by) == (leg_id, "handler")
    assert legrig.media.unbridged == [caller_stream]
    assert caller_stream.prompt == "tone" and leg_stream.closed
    assert legrig.media.recordings[call_id].handler is None


@pytest.mark.parametrize("status,reason", [(486, "busy"), (600, "busy"), (603, "rejected"),
                                           (404, "unreachable"), (500, "error")])
async def test_leg_final_failure_maps_to_reason(legrig: Rig, status: int, reason: str) -> None:
    """Final non-2xx answers map to LegFailed reasons and are ACKed."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, status)
    ack = await h.expect_request("ACK")
    assert ack.get_all("Via") == inv.get_all("Via")  # same transaction
    failed = await legrig.wait_for(api.LegFailed)
    assert [(f.leg_id, f.reason, f.status) for f in failed] == [(leg_id, reason, status)]
    assert legrig.media.streams[1].closed


async def test_ring_timeout_cancels_with_no_answer(legrig: Rig) -> None:
    """No answer within timeout after 180 -> CANCEL, LegFailed(no-answer); 487 is ACKed."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=0.2)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 180)
    cancel = await h.expect_request("CANCEL")
    assert cancel.get_all("Via") == inv.get_all("Via") and cancel.cseq == (1, "CANCEL")
    assert [f.reason for f in legrig.of(api.LegFailed)] == ["no-answer"]
    _reply(h, cancel, 200)
    _reply(h, inv, 487)
    await h.expect_request("ACK")
    assert len(legrig.of(api.LegFailed)) == 1


async def test_cancel_offer_before_provisional_waits_for_it(legrig: Rig) -> None:
    """cancel_offer before any 1xx: LegFailed(cancelled) at once, CANCEL sent after the 180."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    legrig.engine.cancel_offer(leg_id)
    assert [f.reason for f in legrig.of(api.LegFailed)] == ["cancelled"]
    assert await h.silent(0.2)  # RFC 3261 §9.1: no CANCEL before a provisional
    _reply(h, inv, 180)
    await h.expect_request("CANCEL")


async def test_answer_after_cancel_is_hung_up(legrig: Rig) -> None:
    """A 200 racing our CANCEL is ACKed and then hung up with BYE."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 180)
    legrig.engine.cancel_offer(leg_id)
    await h.expect_request("CANCEL")
    _reply(h, inv, 200, body=ANSWER)
    await h.expect_request("ACK")
    await h.expect_request("BYE")
    assert legrig.of(api.LegAnswered) == []


@pytest.mark.parametrize("legrig", [{"proxy": True, "username": "cr", "password": "s3cret"}],
                         indirect=True)
async def test_leg_via_proxy_answers_407_with_digest(legrig: Rig) -> None:
    """Through the proxy: Route ;lr to it, 407 -> INVITE again with a correct digest."""
    proxy: Peer = legrig.handler
    call_id = await _call(legrig)
    legrig.engine.offer(call_id, "sip:h7@handlers.example", timeout=5)
    inv = await proxy.expect_request("INVITE")
    assert inv.get_all("Route") == [f"<sip:127.0.0.1:{proxy.port};lr>"]
    assert str(inv.uri) == "sip:h7@handlers.example"
    _reply(proxy, inv, 407, headers=[("Proxy-Authenticate",
                                      'Digest realm="cr.local", nonce="abc123", qop="auth"')])
    await proxy.expect_request("ACK")
    inv2 = await proxy.expect_request("INVITE")
    assert inv2.cseq == (2, "INVITE") and inv2.call_id == inv.call_id
    assert inv2.top_via.branch != inv.top_via.branch
    cred = parse_challenge(inv2.get("Proxy-Authorization") or "")
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5("cr:cr.local:s3cret"), md5("INVITE:sip:h7@handlers.example")
    expected = md5(f"{ha1}:abc123:{cred['nc']}:{cred['cnonce']}:auth:{ha2}")
    assert cred["response"] == expected and cred["username"] == "cr"
    # record-routed answer: in-dialog requests go through the proxy with Route
    _reply(proxy, inv2, 200, body=ANSWER,
           headers=[("Record-Route", f"<sip:127.0.0.1:{proxy.port};lr>")])
    ack = await proxy.expect_request("ACK")
    assert ack.get_all("Route") == [f"<sip:127.0.0.1:{proxy.port};lr>"]
    assert ack.uri.user == "handler"


async def test_offer_unknown_call_raises(legrig: Rig) -> None:
    """Commands on an unknown call_id raise EngineError with the id."""
    with pytest.raises(EngineError, match="unknown call_id 'nope'"):
        legrig.engine.offer("nope", "sip:h@127.0.0.1", timeout=1)


async def test_caller_bye_ends_bridged_leg(legrig: Rig) -> None:
    """The caller hanging up sends BYE to the bridged handler and reports LegEnded(caller)."""
    h: Peer = legrig.handler
    ok, _ = await legrig.answered_call()
    call_id = legrig.of(api.CallArrived)[0].call_id
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 200, body=ANSWER)
    await h.expect_request("ACK")
    legrig.engine.bridge(call_id, leg_id)
    legrig.peer.send(in_dialog("BYE", legrig.peer, legrig.engine.sip_port, ok, cseq=2),
                     legrig.engine.sip_port)
    await legrig.peer.expect_status(200)
    bye = await h.expect_request("BYE")
    assert bye.call_id == inv.call_id
    assert [(e.leg_id, e.by) for e in legrig.of(api.LegEnded)] == [(leg_id, "caller")]
    assert [e.by for e in legrig.of(api.CallEnded)] == ["caller"]
    await asyncio.sleep(0)


@pytest.mark.parametrize("legrig", [{"dead_call_timeout": 0.4}], indirect=True)
async def test_dead_handler_leg_is_hung_up(legrig: Rig) -> None:
    """A connected leg with no RTP/signalling for dead_call_timeout gets BYE + LegEnded(system)
    while the caller, who keeps sending RTP, stays up."""
    h: Peer = legrig.handler
    await legrig.answered_call()
    call_id = legrig.of(api.CallArrived)[0].call_id
    caller_stream = legrig.media.streams[0]
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 200, body=ANSWER)
    await h.expect_request("ACK")
    loop = asyncio.get_running_loop()
    for _ in range(12):  # the caller is alive
        caller_stream.last_rx = loop.time()
        await asyncio.sleep(0.05)
    await h.expect_request("BYE", timeout=1.0)
    assert [(e.leg_id, e.by) for e in legrig.of(api.LegEnded)] == [(leg_id, "system")]
    assert legrig.of(api.CallEnded) == []


async def test_leg_without_any_response_is_unreachable(legrig: Rig) -> None:
    """No response at all (not even 100) by the deadline -> LegFailed(unreachable, 408)."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=0.3)
    await h.expect_request("INVITE")
    failed = await legrig.wait_for(api.LegFailed)
    assert [(f.leg_id, f.reason, f.status) for f in failed] == [(leg_id, "unreachable", 408)]


async def test_leg_trying_then_ringing_then_no_answer(legrig: Rig) -> None:
    """100 then 180: one LegRinging, then no-answer at the ring timeout (not unreachable)."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=0.3)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 100)
    _reply(h, inv, 180)
    _reply(h, inv, 183)
    await h.expect_request("CANCEL")
    assert len(legrig.of(api.LegRinging)) == 1
    assert [f.reason for f in legrig.of(api.LegFailed)] == ["no-answer"]


async def test_cancel_offer_on_answered_leg_hangs_it_up(legrig: Rig) -> None:
    """cancel_offer after the phone answered (offer withdrawn in the race): BYE + LegEnded."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    leg_id = legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 200, body=ANSWER)
    await h.expect_request("ACK")
    await legrig.wait_for(api.LegAnswered)
    legrig.engine.cancel_offer(leg_id)
    bye = await h.expect_request("BYE")
    assert bye.call_id == inv.call_id
    assert [(e.leg_id, e.by) for e in legrig.of(api.LegEnded)] == [(leg_id, "system")]
    assert legrig.of(api.LegFailed) == [] and legrig.media.streams[1].closed
    legrig.engine.cancel_offer(leg_id)  # idempotent
    assert len(legrig.of(api.LegEnded)) == 1


async def test_commands_from_inside_on_event(tmp_path: Path) -> None:
    """A consumer that offers a leg from inside its CallArrived handler (re-entrant command)
    gets the INVITE out and later events in order."""
    handler = await Peer().open()
    caller = await Peer().open()
    events: list = []
    holder: dict = {}

    def on_event(ev: object) -> None:
        events.append(ev)
        if isinstance(ev, api.CallArrived):
            holder["leg"] = holder["engine"].offer(ev.call_id, f"sip:h@127.0.0.1:{handler.port}",
                                                   timeout=5)

    engine = Engine(settings=SipSettings(port=0), lines=LINES, recordings_dir=tmp_path,
                    on_event=on_event, media_factory=FakeMedia)
    holder["engine"] = engine
    await engine.start()
    try:
        await Rig(engine, events, caller).answered_call()
        inv = await handler.expect_request("INVITE")
        _reply(handler, inv, 180)
        await Rig(engine, events, caller).wait_for(api.LegRinging)
        assert [type(e).__name__ for e in events] == ["CallArrived", "LegRinging"]
        assert events[1].leg_id == holder["leg"]
    finally:
        caller.close()
        handler.close()
        await engine.stop(bye_grace=0)


async def test_handler_hold_reinvite(legrig: Rig) -> None:
    """The handler's phone holds (re-INVITE sendonly): 200 recvonly with the leg's own o=
    session, HoldChanged(by=handler)."""
    h: Peer = legrig.handler
    call_id = await _call(legrig)
    legrig.engine.offer(call_id, f"sip:h1@127.0.0.1:{h.port}", timeout=5)
    inv = await h.expect_request("INVITE")
    _reply(h, inv, 200, body=ANSWER)
    ack = await h.expect_request("ACK")
    reinvite = (f"INVITE sip:controlroom@127.0.0.1:{legrig.engine.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{h.port};branch=z9hG4bKhold1\r\n"
                f"From: {ack.get('To')}\r\nTo: {ack.get('From')}\r\nCall-ID: {ack.call_id}\r\n"
                f"CSeq: 2 INVITE\r\nContact: <sip:handler@127.0.0.1:{h.port}>\r\n"
                "Content-Type: application/sdp\r\n")
    body = sdp_offer(port=41000, codecs="0 101", direction="sendonly")
    h.send(reinvite + f"Content-Length: {len(body)}\r\n\r\n{body}", legrig.engine.sip_port)
    resp = await h.expect_status(200)
    ours, theirs = parse_sdp(resp.body), parse_sdp(inv.body)
    assert ours.media[0].direction == "recvonly"
    assert ours.origin.split()[1] == theirs.origin.split()[1]  # same session id as our offer
    assert ours.origin.split()[2] == "2"
    assert [(e.on_hold, e.by) for e in legrig.of(api.HoldChanged)] == [(True, "handler")]
