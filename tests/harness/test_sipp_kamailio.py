"""SIPp callers and SIPp handler phones through a real Kamailio: the harness proves itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import scenarios, speech
from harness.kamailio import Kamailio, sip_options
from harness.sipp import RtpCapture, Sipp

pytestmark = pytest.mark.realparts


def test_kamailio_answers_registers_and_routes(kamailio: Kamailio) -> None:
    """Kamailio answers OPTIONS, accepts a REGISTER and 404s a user nobody registered."""
    assert sip_options(kamailio.addr) == 200
    kamailio.register("hx", "sip:hx@127.0.0.1:9")
    assert sip_options(kamailio.addr, user="nobody-here") == 404, kamailio.log_text()


def test_call_through_kamailio_carries_rtp_bit_exactly(
        kamailio: Kamailio, caller_clip: speech.Clip, handler_clip: speech.Clip) -> None:
    """A caller's speech pcap reaches the handler's media port byte for byte, and the handler's tone comes back."""
    with Sipp(scenarios.handler(user="h1", ring_ms=200, pcap=handler_clip.pcap), name="h1") as hs:
        kamailio.register("h1", hs.contact("h1"))
        with RtpCapture([hs.media_port]) as cap, \
                Sipp(scenarios.caller(dialled="h1", pcap=caller_clip.pcap,
                                      talk_ms=int(caller_clip.duration * 1000) + 500),
                     target=kamailio.addr, name="caller") as cs:
            assert cs.wait(30) == 0, cs.diagnostics() + hs.diagnostics() + kamailio.log_text()
            assert hs.wait(10) == 0, hs.diagnostics()
            time.sleep(0.2)
            cap.stop()
            got = cap.packets()
        assert (cs.successful, hs.successful) == (1, 1), (cs.stats(), hs.stats())
        [rtd] = cs.response_times_ms()
        assert 200 <= rtd < 1500  # INVITE -> 200 includes the 200 ms ring
    to_handler = [c for c in got if c.dst[1] == hs.media_port]
    to_caller = [c for c in got if c.src[1] == hs.media_port]
    assert b"".join(c.rtp.payload for c in to_handler) == caller_clip.payload
    assert [c.rtp.seq for c in to_handler] == [p.seq for p in caller_clip.packets]
    assert b"".join(c.rtp.payload for c in to_caller) == handler_clip.payload
    assert {c.dst[1] for c in to_caller} == {cs.media_port}


def test_handler_cancel_while_ringing(kamailio: Kamailio) -> None:
    """A CANCEL during ringing gets 200 + 487 at the handler phone and the caller ACKs the 487."""
    with Sipp(scenarios.handler(user="h2", ring_ms=5000, expect_cancel=True), name="h2") as hs:
        kamailio.register("h2", hs.contact("h2"))
        with Sipp(scenarios.caller(dialled="h2", cancel_after_ms=300), target=kamailio.addr,
                  name="caller") as cs:
            assert cs.wait(20) == 0, cs.diagnostics()
            assert hs.wait(10) == 0, hs.diagnostics()
            assert "SIP/2.0 487 Request Terminated" in hs.messages_text()
            assert "SIP/2.0 200" in cs.messages_text() and "CSeq: 1 CANCEL" in cs.messages_text()


def test_handler_busy_and_unknown_number(kamailio: Kamailio) -> None:
    """A handler refusing with 486 and an unregistered number (404) are both seen and ACKed by the caller."""
    with Sipp(scenarios.handler(user="h3", ring_ms=50, status=486), name="h3") as hs:
        kamailio.register("h3", hs.contact("h3"))
        with Sipp(scenarios.caller(dialled="h3", expect_status=486), target=kamailio.addr,
                  name="caller") as cs:
            assert cs.wait(20) == 0, cs.diagnostics()
            assert hs.wait(10) == 0, hs.diagnostics()
    with Sipp(scenarios.caller(dialled="h-nobody", expect_status=404), target=kamailio.addr,
              name="caller") as cs:
        assert cs.wait(20) == 0, cs.diagnostics()


def test_handler_hangs_up_and_hold_resume(kamailio: Kamailio) -> None:
    """The handler's own BYE follows the record-route; a sendonly re-INVITE is answered recvonly, then resumed."""
    with Sipp(scenarios.handler(user="h4", ring_ms=50, hangup="handler", talk_ms=800),
              name="h4") as hs:
        kamailio.register("h4", hs.contact("h4"))
        with Sipp(scenarios.caller(dialled="h4", hangup="remote"), target=kamailio.addr,
                  name="caller") as cs:
            assert cs.wait(20) == 0, cs.diagnostics()
            assert hs.wait(10) == 0, hs.diagnostics()
            assert f"BYE sip:07700900123@127.0.0.1:{cs.port} SIP/2.0" in cs.messages_text()
    with Sipp(scenarios.handler(user="h5", ring_ms=50), name="h5") as hs:
        kamailio.register("h5", hs.contact("h5"))
        with Sipp(scenarios.caller(dialled="h5", talk_ms=300, hold_ms=300), target=kamailio.addr,
                  name="caller") as cs:
            assert cs.wait(20) == 0, cs.diagnostics()
            assert hs.wait(10) == 0, hs.diagnostics()
        blocks = hs.messages_text(10**6).split("-----------------------------------------------")
        answers = {cseq: b for b in blocks for cseq in (1, 2, 3)
                   if "message sent" in b and "SIP/2.0 200 OK" in b and f"CSeq: {cseq} INVITE" in b}
        assert "a=sendrecv" in answers[1] and "a=recvonly" in answers[2] and "a=sendrecv" in answers[3]


def test_dtmf_pcap_plays_through(kamailio: Kamailio, tmp_path: Path) -> None:
    """SIPp replays an RFC 4733 pcap unchanged: the handler receives the 5 5 events with their end bits."""
    packets = speech.dtmf_packets("55", "PCMA")
    pcap = speech.write_rtp_pcap(tmp_path / "dtmf.pcap", packets)
    with Sipp(scenarios.handler(user="h6", ring_ms=50), name="h6") as hs:
        kamailio.register("h6", hs.contact("h6"))
        with RtpCapture([hs.media_port]) as cap, \
                Sipp(scenarios.caller(dialled="h6", pcap=pcap, talk_ms=int(packets[-1].at * 1000) + 400),
                     target=kamailio.addr, name="caller") as cs:
            assert cs.wait(20) == 0, cs.diagnostics()
            time.sleep(0.2)
            cap.stop()
        got = [c.rtp for c in cap.packets() if c.dst[1] == hs.media_port]
    assert [(p.pt, p.seq, p.ts, p.payload, p.marker) for p in got] == \
        [(p.pt, p.seq, p.ts, p.payload, p.marker) for p in packets]


def test_route_to_several_workers_spreads_calls() -> None:
    """A number routed to two targets spreads calls over both by Call-ID hash; each call stays whole."""
    with Sipp(scenarios.handler(user="w", ring_ms=10), calls=20, name="wa") as wa, \
            Sipp(scenarios.handler(user="w", ring_ms=10), calls=20, name="wb") as wb, \
            Kamailio(routes={"999": [f"127.0.0.1:{wa.port}", f"127.0.0.1:{wb.port}"]}) as k, \
            Sipp(scenarios.caller(dialled="999", talk_ms=200), target=k.addr, calls=20, rate=20,
                 name="caller") as cs:
        assert cs.wait(30) == 0, cs.diagnostics() + k.log_text()
        wa.stop()
        wb.stop()
        assert cs.successful == 20
        assert wa.successful + wb.successful == 20
        assert wa.successful >= 2 and wb.successful >= 2, (wa.successful, wb.successful)
