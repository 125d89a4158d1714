"""SIP conformance of the real Engine against real peers (SIPp, Kamailio) and raw UDP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from harness import scenarios, speech
from harness.kamailio import sip_options
from harness.sipp import Sipp
from telephony.api import (
    CallArrived,
    CallCancelled,
    CallEnded,
    CallRejected,
    Dtmf,
    HoldChanged,
    LegAnswered,
    LegEnded,
    LegFailed,
    LegRinging,
    RecordingSealed,
    SilentCallFlag,
)

from .conftest import EngineRig
from .rawsip import RawUac

pytestmark = pytest.mark.realparts


def _engine_addr(rig: EngineRig) -> tuple[str, int]:
    return ("127.0.0.1", rig.engine.sip_port)


async def test_retransmitted_invite_is_one_call(rig: EngineRig) -> None:
    """The same INVITE sent three times gives one call, and every copy gets the same 200 (same to-tag)."""
    uac = await RawUac(_engine_addr(rig)).open()
    try:
        invite = uac.invite()
        uac.send(invite)
        await asyncio.sleep(0.1)
        uac.send(invite)
        await asyncio.sleep(0.2)
        uac.send(invite)
        got = await uac.collect(1.0)
        finals = [m for m in got if m.status == 200 and m.cseq_method == "INVITE"]
        assert len(finals) >= 3, got
        assert len({m.to_tag for m in finals}) == 1
        assert all(m.status in (100, 180, 183, 200) for m in got), [m.first for m in got]
        arrived = rig.of(CallArrived, sip_call_id=uac.call_id)
        assert len(arrived) == 1 and len(rig.of(CallArrived)) == 1
        uac.send(uac.ack(finals[0]))
        uac.send(uac.bye(finals[0]))
        bye_ok = [m for m in await uac.collect(1.0) if m.cseq_method == "BYE"]
        assert [m.status for m in bye_ok][:1] == [200]
        ended = await rig.wait(CallEnded, call_id=arrived[0].call_id)
        assert ended.by == "caller"
        await rig.wait(RecordingSealed, call_id=arrived[0].call_id)
        assert rig.engine.stats.calls_active == 0
    finally:
        uac.close()


async def test_caller_cancel_racing_the_answer(rig: EngineRig) -> None:
    """A CANCEL right behind the INVITE: either 487 + CallCancelled, or (answer won) the CANCEL is
    200/481, the call stands and ends cleanly on BYE; never both, never a leaked call."""
    uac = await RawUac(_engine_addr(rig)).open()
    try:
        uac.send(uac.invite())
        uac.send(uac.cancel())
        got = await uac.collect(1.0)
        inv = [m for m in got if m.cseq_method == "INVITE" and (m.status or 0) >= 200]
        can = [m for m in got if m.cseq_method == "CANCEL"]
        assert inv and can, [m.first for m in got]
        assert can[0].status in (200, 481)
        if inv[0].status == 487:
            uac.send(uac.ack(inv[0]))
            cancelled = await rig.wait(CallCancelled)
            assert cancelled.caller == uac.caller and not rig.of(CallEnded)
        else:
            assert inv[0].status == 200
            arrived = await rig.wait(CallArrived, sip_call_id=uac.call_id)
            assert not rig.of(CallCancelled)
            uac.send(uac.ack(inv[0]))
            uac.send(uac.bye(inv[0]))
            ended = await rig.wait(CallEnded, call_id=arrived.call_id)
            assert ended.by == "caller"
        await asyncio.sleep(0.2)
        assert rig.engine.stats.calls_active == 0
    finally:
        uac.close()


def _waiting_caller(rig: EngineRig, **kw: object) -> Sipp:
    """A 999 caller that waits (up to 60 s) for our BYE."""
    return Sipp(scenarios.caller(dialled="999", hangup="remote", wait_bye_ms=60000, **kw),
                target=rig.kamailio.addr, name="caller")


@pytest.mark.parametrize("when", [0.3, 3.0])
async def test_handler_leg_cancelled_while_ringing(rig: EngineRig, when: float) -> None:
    """An offer withdrawn at 0.3 s (cancel_offer) or at its 3 s ring timeout sends CANCEL: the phone
    answers 200 + 487, LegFailed says cancelled / no-answer, and our hangup BYEs the caller."""
    phone = Sipp(scenarios.handler(user="h2", ring_ms=20000, expect_cancel=True), name="h2")
    caller = _waiting_caller(rig)
    await rig.phone(phone, "h2")
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        started = time.monotonic()
        leg = rig.engine.offer(arrived.call_id, rig.aor("h2"), timeout=when if when > 1 else 30)
        await rig.wait(LegRinging, leg_id=leg)
        if when < 1:
            await asyncio.sleep(when - (time.monotonic() - started))
            rig.engine.cancel_offer(leg)
        failed = await rig.wait(LegFailed, leg_id=leg, within=when + 5)
        elapsed = time.monotonic() - started
        assert failed.reason == ("cancelled" if when < 1 else "no-answer"), failed
        assert when - 0.05 <= elapsed <= when + 3.0, elapsed  # generous: shared CI cores
        assert await rig.finish(phone, 10) == 0, phone.diagnostics()
        assert "SIP/2.0 487 Request Terminated" in phone.messages_text(10**6)
        assert not rig.of(LegAnswered)
        rig.engine.hangup(arrived.call_id, "test over")
        ended = await rig.wait(CallEnded, call_id=arrived.call_id)
        assert ended.by == "system"
        assert await rig.finish(caller, 10) == 0, caller.diagnostics()
    finally:
        await asyncio.to_thread(caller.stop)
        await asyncio.to_thread(phone.stop)


async def test_bye_from_handler_then_from_us(rig: EngineRig) -> None:
    """The handler's BYE ends only its leg (LegEnded by handler, caller still up); our hangup then BYEs the caller."""
    phone = Sipp(scenarios.handler(user="h3", ring_ms=100, hangup="handler", talk_ms=1000),
                 name="h3")
    caller = _waiting_caller(rig)
    await rig.phone(phone, "h3")
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        leg = rig.engine.offer(arrived.call_id, rig.aor("h3"), timeout=10)
        await rig.wait(LegAnswered, leg_id=leg)
        rig.engine.bridge(arrived.call_id, leg)
        left = await rig.wait(LegEnded, leg_id=leg)
        assert left.by == "handler"
        assert await rig.finish(phone, 10) == 0, phone.diagnostics()
        await asyncio.sleep(0.5)
        assert not rig.of(CallEnded) and caller.alive()
        rig.engine.hangup(arrived.call_id)
        ended = await rig.wait(CallEnded, call_id=arrived.call_id)
        assert ended.by == "system"
        assert await rig.finish(caller, 10) == 0, caller.diagnostics()
        sealed = await rig.wait(RecordingSealed, call_id=arrived.call_id)
        assert sealed.duration >= 1.0
    finally:
        await asyncio.to_thread(caller.stop)
        await asyncio.to_thread(phone.stop)


async def test_caller_hold_and_resume(rig: EngineRig) -> None:
    """A sendonly re-INVITE is answered recvonly and reported as hold; sendrecv resumes it."""
    caller = Sipp(scenarios.caller(dialled="101", talk_ms=500, hold_ms=800),
                  target=rig.kamailio.addr, name="caller")
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        assert arrived.line == "101"
        assert await rig.finish(caller) == 0, caller.diagnostics()
        holds = rig.of(HoldChanged, call_id=arrived.call_id)
        assert [(h.on_hold, h.by) for h in holds] == [(True, "caller"), (False, "caller")]
        blocks = caller.messages_text(10**6).split("-" * 47)
        answer2 = [b for b in blocks if "message received" in b and "SIP/2.0 200" in b
                   and "CSeq: 2 INVITE" in b]
        answer3 = [b for b in blocks if "message received" in b and "SIP/2.0 200" in b
                   and "CSeq: 3 INVITE" in b]
        assert answer2 and "a=recvonly" in answer2[0], answer2
        assert answer3 and "a=sendrecv" in answer3[0], answer3
        ended = await rig.wait(CallEnded, call_id=arrived.call_id)
        assert ended.by == "caller"
    finally:
        await asyncio.to_thread(caller.stop)


async def test_no_common_codec_is_488(rig: EngineRig) -> None:
    """A caller offering only G.729 gets 488 and the engine reports the rejection."""
    caller = Sipp(scenarios.caller(dialled="999", codecs=("G729",), dtmf_pt=None,
                                   expect_status=488),
                  target=rig.kamailio.addr, name="caller")
    try:
        await rig.sipp(caller)
        assert await rig.finish(caller) == 0, caller.diagnostics()
        rejected = await rig.wait(CallRejected)
        assert (rejected.status, rejected.line, rejected.dialled) == (488, "999", "999")
        assert not rig.of(CallArrived)
    finally:
        await asyncio.to_thread(caller.stop)


async def test_unknown_number_is_404(rig: EngineRig) -> None:
    """A number the proxy routes to us but no line owns gets 404 and a CallRejected(404)."""
    caller = Sipp(scenarios.caller(dialled="888", expect_status=404),
                  target=rig.kamailio.addr, name="caller")
    try:
        await rig.sipp(caller)
        assert await rig.finish(caller) == 0, caller.diagnostics()
        rejected = await rig.wait(CallRejected)
        assert (rejected.status, rejected.line, rejected.dialled) == (404, None, "888")
    finally:
        await asyncio.to_thread(caller.stop)


async def test_malformed_requests_get_400_and_do_not_hurt(rig: EngineRig) -> None:
    """Bad CSeq, CSeq/method mismatch and bad Content-Length each get 400 echoing the Call-ID;
    junk bytes get nothing; no call starts and the engine keeps answering OPTIONS."""
    uac = await RawUac(_engine_addr(rig)).open()
    try:
        for n, bad_header in enumerate(("CSeq: abc INVITE", "CSeq: 1 BYE",
                                        "CSeq: 1 INVITE\r\nContent-Length: zz")):
            bad = (f"INVITE sip:999@127.0.0.1:{rig.engine.sip_port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bK-bad{n};rport\r\n"
                   "From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:999@127.0.0.1>\r\n"
                   f"Call-ID: bad{n}@127.0.0.1\r\n{bad_header}\r\n"
                   "Max-Forwards: 70\r\n\r\n")
            uac.send(bad)
            resp = await uac.recv(2.0)
            assert resp is not None and resp.status == 400, (bad_header, resp)
            assert resp.get("Call-ID") == f"bad{n}@127.0.0.1"
        for junk in (b"\x00\xff" * 300, b"INVITE\r\n\r\n", b"SIP/2.0 200\r\n", b"\r\n\r\n",
                     b"INVITE sip:999@x SIP/2.0\r\nContent-Length: 99999\r\n\r\nabc",
                     b"X" * 65000):
            uac.send(junk)
        await asyncio.sleep(0.3)
        assert not rig.of(CallArrived)
        status = await asyncio.to_thread(sip_options, _engine_addr(rig), timeout=2.0)
        assert status == 200
    finally:
        uac.close()


async def test_rfc4733_five_five_flags_silent_call(rig: EngineRig, tmp_path: Path) -> None:
    """Digits 5 5 sent as RFC 4733 events give two Dtmf('5') events once each and a SilentCallFlag."""
    packets = speech.dtmf_packets("55", "PCMA")
    pcap = speech.write_rtp_pcap(tmp_path / "55.pcap", packets)
    caller = Sipp(scenarios.caller(dialled="999", pcap=pcap,
                                   talk_ms=int(packets[-1].at * 1000) + 600),
                  target=rig.kamailio.addr, name="caller")
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        flag = await rig.wait(SilentCallFlag, call_id=arrived.call_id)
        assert await rig.finish(caller) == 0, caller.diagnostics()
        await rig.wait(CallEnded, call_id=arrived.call_id)
        digits = [d.digit for d in rig.of(Dtmf, call_id=arrived.call_id)]
        assert digits == ["5", "5"]
        assert all(d.leg_id is None for d in rig.of(Dtmf))
        assert flag.at >= rig.of(Dtmf)[1].at
    finally:
        await asyncio.to_thread(caller.stop)


@pytest.mark.slow
async def test_sixty_second_call_is_not_dropped(rig: EngineRig, clip_dir: Path) -> None:
    """A 65 s call with continuous speech stays up until the caller's BYE; its recording lasts 65 s."""
    clip = speech.speech_clip("This is a long call to check that nothing drops it.", "PCMA",
                              clip_dir / "long.pcap", repeat=25)
    assert clip.duration > 66
    caller = Sipp(scenarios.caller(dialled="101", pcap=clip.pcap, talk_ms=65000),
                  target=rig.kamailio.addr, name="caller", timeout=120)
    try:
        await rig.sipp(caller)
        arrived = await rig.wait(CallArrived)
        assert await rig.finish(caller, 90) == 0, caller.diagnostics()
        ended = await rig.wait(CallEnded, call_id=arrived.call_id)
        assert ended.by == "caller" and ended.reason == "bye"
        assert ended.at - arrived.at >= 64.5
        sealed = await rig.wait(RecordingSealed, call_id=arrived.call_id)
        assert 64.5 <= sealed.duration <= 66.0
    finally:
        await asyncio.to_thread(caller.stop)
