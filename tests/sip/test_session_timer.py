"""Session timers (RFC 4028) in the sans-IO core: two user agents in memory, fake clock."""

from __future__ import annotations

import asyncio

import pytest

from telephony.sip.events import (
    Answered,
    ByeReceived,
    ReInviteReceived,
    SessionConfirmed,
    SessionExpired,
)
from telephony.sip.message import Response, parse
from telephony.sip.timer import Timer, TooSmall, negotiate

from .test_ua_pair import A, Pair


def _invite(p: Pair, headers: str):
    """An INVITE from a to b carrying ``headers`` (CRLF-terminated lines)."""
    p.a.invite("sip:999@10.0.0.2", body=b"v=0\r\n", now=p.now)
    ((data, dest),) = p.a.datagrams_to_send()
    data = data.replace(b"CSeq: 1 INVITE\r\n", b"CSeq: 1 INVITE\r\n" + headers.encode())
    p.log.append(("a>b", data))
    p.b.receive(data, A, p.now)
    p.shuttle()
    ev = p.b.events()
    p.a.events()
    return ev


def _last(p: Pair, direction: str, first: str) -> Response:
    msg = parse(p.sent(direction, first)[-1])
    assert isinstance(msg, Response)
    return msg


def _answered(p: Pair, headers: str):
    (ev,) = _invite(p, headers)
    p.b.respond(ev.session, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle()
    assert [type(e) for e in p.b.events()] == [SessionConfirmed]
    (answered,) = p.a.events()
    assert isinstance(answered, Answered)
    return answered.session, ev.session


def test_200_carries_session_expires_refresher_uac_and_require_timer() -> None:
    """RFC 4028 §9: the 2xx copies Session-Expires with the caller's refresher and, the
    caller refreshing, Require: timer."""
    p = Pair()
    _answered(p, "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n")
    ok = _last(p, "b>a", "SIP/2.0 200")
    assert ok.get("Session-Expires") == "90;refresher=uac"
    assert "timer" in ok.get_all("Require") and "timer" in ok.get_all("Supported")


def test_no_session_expires_no_timer() -> None:
    """A caller that asks for no timer gets none, and the call is never ended by one."""
    p = Pair()
    _, uas = _answered(p, "Supported: timer\r\n")
    ok = _last(p, "b>a", "SIP/2.0 200")
    assert ok.get("Session-Expires") is None and ok.get_all("Require") == []
    p.advance(4000.0)
    assert p.b.events() == [] and not p.sent("b>a", "BYE")


def test_too_small_interval_gets_422_with_min_se() -> None:
    """Below our Min-SE, a caller that supports timers gets 422 and our minimum."""
    p = Pair()
    p.b.min_se = 120
    assert _invite(p, "Session-Expires: 90\r\nSupported: timer\r\n") == []
    resp = _last(p, "b>a", "SIP/2.0 422")
    assert resp.get("Min-SE") == "120"
    assert p.b.counters["session_interval_too_small"] == 1


def test_refreshee_sends_bye_when_no_refresh_comes() -> None:
    """§10: with the caller as refresher and no refresh, BYE at SE - min(32, SE/3): 60 s."""
    p = Pair()
    _, uas = _answered(p, "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n")
    p.advance(59.9)
    assert p.b.events() == [] and not p.sent("b>a", "BYE")
    p.advance(60.1)
    ev = p.b.events()
    assert [type(e) for e in ev] == [SessionExpired] and ev[0].interval == 90
    assert len(p.sent("b>a", "BYE")) == 1
    assert [type(e) for e in p.a.events()] == [ByeReceived]
    assert p.b.counters["session_timer_expired"] == 1


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_refresh_restarts_the_timer(method: str) -> None:
    """A re-INVITE (answered by the engine) or a bodyless UPDATE refreshes: its 200 carries
    Session-Expires again and the BYE moves to 60 s after the refresh."""
    p = Pair()
    uac, uas = _answered(p, "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n")
    p.advance(45.0)
    body = b"v=0\r\n" if method == "INVITE" else b""
    req = uac.dialog.request(method, p.a.via(), body=body,
                             headers=[("Session-Expires", "90;refresher=uac"),
                                      ("Supported", "timer")])
    p.a._start_client(req, uac.dialog.next_hop(req), p.now, owner=None)
    p.shuttle()
    if method == "INVITE":
        (ev,) = p.b.events()
        assert isinstance(ev, ReInviteReceived)
        p.b.respond_reinvite(uas, 200, body=b"v=0\r\n", now=p.now)
        p.shuttle()
    ok = _last(p, "b>a", "SIP/2.0 200")
    assert ok.cseq[1] == method and ok.get("Session-Expires") == "90;refresher=uac"
    p.advance(104.0)
    assert not p.sent("b>a", "BYE")
    p.advance(105.1)
    assert [type(e) for e in p.b.events()] == [SessionExpired]


def test_we_refresh_when_the_caller_does_not_support_timers() -> None:
    """A Session-Expires inserted by a proxy for a caller without the extension makes us
    the refresher: a re-INVITE with our SDP at half the interval; the caller's 200 keeps
    the session; no answer at all (481/408) ends it."""
    p = Pair()
    uac, uas = _answered(p, "Session-Expires: 1800\r\n")
    ok = _last(p, "b>a", "SIP/2.0 200")
    assert ok.get("Session-Expires") == "1800;refresher=uas" and ok.get_all("Require") == []
    p.advance(900.0)
    (reinvite,) = p.sent("b>a", "INVITE")
    msg = parse(reinvite)
    assert msg.get("Session-Expires") == "1800;refresher=uac" and msg.body == b"v=0\r\n"
    (ev,) = p.a.events()
    assert isinstance(ev, ReInviteReceived)
    # answer the refresh from the caller's side as a plain UA would (no timer support)
    p.a._reply(ev.session.reinvite_tx, 200, body=b"v=0\r\n",
               headers=[("Session-Expires", "1800;refresher=uac")], now=p.now)
    p.shuttle()
    assert len(p.sent("b>a", "ACK")) == 1  # we ACK the 200 to our refresh
    p.advance(1799.0)
    assert len(p.sent("b>a", "INVITE")) == 1 and p.b.events() == []
    # the next refresh, half an interval after the last one, is never answered (the
    # caller is gone): the transaction times out (408), the session ends with BYE
    p.advance(1800.1, drop=lambda d: d.startswith(b"SIP/2.0 "))
    assert len(p.sent("b>a", "INVITE")) == 2
    p.advance(1840.0, drop=lambda d: d.startswith(b"SIP/2.0 "))
    assert [type(e) for e in p.b.events()] == [SessionExpired]
    assert p.sent("b>a", "BYE")


@pytest.mark.parametrize("headers, expected", [
    ({"Session-Expires": "1800", "Supported": "timer"}, Timer(1800, "uac")),
    ({"Session-Expires": "1800;refresher=uas", "Supported": "timer"}, Timer(1800, "uas")),
    ({"Session-Expires": "1800;refresher=uac"}, Timer(1800, "uas")),
    ({"Session-Expires": "60"}, Timer(90, "uas")),
    ({"Session-Expires": "60", "Supported": "timer"}, TooSmall(90)),
    ({"Session-Expires": "100", "Min-SE": "150", "Supported": "timer"}, Timer(150, "uac")),
    ({"Session-Expires": "abc", "Supported": "timer"}, None),
    ({"Supported": "timer"}, None),
])
def test_negotiation_table(headers: dict[str, str], expected: object) -> None:
    """The refresher the 2xx names, the 422s and the intervals, per RFC 4028 §9."""
    from telephony.sip.message import Request
    from telephony.sip.uri import parse_uri

    req = Request(method="INVITE", uri=parse_uri("sip:999@x"))
    for k, v in headers.items():
        req.add(k, v)
    assert negotiate(req) == expected


async def test_engine_ends_the_call_when_the_caller_stops_refreshing(rig) -> None:
    """Through the engine: the 200 carries the timer; with no refresh the core's BYE
    reaches the caller and the call ends with the session-timer reason."""
    from telephony import api

    ok, _ = await rig.answered_call(
        extra="Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n")
    assert ok.get("Session-Expires") == "90;refresher=uac" and "timer" in ok.get_all("Require")
    engine = rig.engine
    for _ in range(100):  # the ACK reaches the engine (else the 200 is never confirmed)
        if engine._ua._dialogs and all(s.state == "confirmed" for s in engine._ua._dialogs.values()):
            break
        await asyncio.sleep(0.01)
    engine._ua.handle_timers(engine._now() + 59)  # not yet: BYE is due at 60 s
    engine._pump()
    assert rig.of(api.CallEnded) == []
    engine._ua.handle_timers(engine._now() + 61)
    engine._pump()
    bye = await rig.peer.expect_request("BYE")
    assert bye.method == "BYE"
    (ended,) = await rig.wait_for(api.CallEnded)
    assert (ended.by, ended.reason) == ("system", "session timer: no refresh within 90 s")
