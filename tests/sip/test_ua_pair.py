"""Two sans-IO user agents wired together in memory (h11 ConnectionPair style), fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from telephony.sip.events import (
    AckTimeout,
    Answered,
    ByeReceived,
    Failed,
    InviteCancelled,
    InviteReceived,
    Progress,
    RegistrationResult,
    ReInviteReceived,
    SessionConfirmed,
)
from telephony.sip.message import Request, make_response, parse
from telephony.sip.ua import UserAgent

A = ("10.0.0.1", 5060)
B = ("10.0.0.2", 5060)


class Pair:
    """UAC ``a`` and UAS ``b``; ``shuttle`` moves datagrams until quiet (round limit)."""

    def __init__(self) -> None:
        self.a = UserAgent(host=A[0], port=A[1])
        self.b = UserAgent(host=B[0], port=B[1])
        self.now = 0.0
        self.log: list[tuple[str, bytes]] = []

    def ua(self, addr: tuple[str, int]) -> UserAgent:
        return self.a if addr == A else self.b

    def shuttle(self, drop: Callable[[bytes], bool] = lambda d: False, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for src, src_addr in ((self.a, A), (self.b, B)):
                for data, dest in src.datagrams_to_send():
                    self.log.append(("a>b" if src is self.a else "b>a", data))
                    if not drop(data):
                        self.ua(dest).receive(data, src_addr, self.now)
                    moved = True
            if not moved:
                return
        raise AssertionError("no quiescence within the round limit")

    def advance(self, to: float, drop: Callable[[bytes], bool] = lambda d: False) -> None:
        """Run both agents' timers up to ``to`` in deadline order."""
        while True:
            d = [x for x in (self.a.next_deadline(), self.b.next_deadline()) if x is not None]
            if not d or min(d) > to:
                break
            self.now = min(d)
            self.a.handle_timers(self.now)
            self.b.handle_timers(self.now)
            self.shuttle(drop)
        self.now = to

    def sent(self, direction: str, first_line: str) -> list[bytes]:
        return [d for dr, d in self.log if dr == direction and d.startswith(first_line.encode())]

    def invite(self):
        s = self.a.invite("sip:999@10.0.0.2", body=b"v=0\r\n", now=self.now)
        self.shuttle()
        ev = self.b.events()
        assert [type(e) for e in ev] == [InviteReceived]
        assert [(type(e), e.response.status) for e in self.a.events()] == [(Progress, 100)]
        return s, ev[0].session


def is_ack(d: bytes) -> bool:
    return d.startswith(b"ACK ")


def test_invite_200_ack_establishes_dialogs() -> None:
    """INVITE/100/200/ACK: both sides confirmed with mirrored dialog tags."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle()
    assert [type(e) for e in p.a.events()] == [Answered]
    assert [type(e) for e in p.b.events()] == [SessionConfirmed]
    assert uac.dialog.key == (uas.dialog.call_id, uas.dialog.remote_tag, uas.dialog.local_tag)
    assert len(p.sent("b>a", "SIP/2.0 100")) == 1 and len(p.sent("a>b", "ACK")) == 1
    p.advance(40.0)
    assert len(p.sent("b>a", "SIP/2.0 200")) == 1  # ACKed: never retransmitted


def test_retransmitted_invite_absorbed() -> None:
    """The same INVITE again is the same call: no new event, last response re-sent."""
    p = Pair()
    uac, uas = p.invite()
    invite = p.sent("a>b", "INVITE")[0]
    p.b.receive(invite, A, p.now)
    assert p.b.events() == []
    assert p.b.datagrams_to_send()[0][0].startswith(b"SIP/2.0 100")
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle(drop=is_ack)
    p.b.receive(invite.replace(b"branch=z9hG4bK", b"branch=z9hG4bKother"), A, p.now)
    out = p.b.datagrams_to_send()
    assert p.b.events() == [] and len(out) == 1 and out[0][0].startswith(b"SIP/2.0 200")
    assert p.b.counters["retransmissions_absorbed"] == 2


def test_2xx_retransmitted_until_ack_then_bye_on_timeout() -> None:
    """UAS core re-sends 200 at T1, 2T1... capped at T2 until 64*T1, then BYE + AckTimeout."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.a.events()
    p.shuttle(drop=is_ack)
    times: list[float] = []
    while p.now < 40:
        d = p.b.next_deadline()
        assert d is not None
        p.now = d
        before = len(p.b._out)
        p.b.handle_timers(d)
        out = p.b.datagrams_to_send()
        if any(x.startswith(b"SIP/2.0 200") for x, _ in out):
            times.append(d)
        if any(x.startswith(b"BYE") for x, _ in out):
            break
        assert before == 0
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert p.now == 32.0
    assert [type(e) for e in p.b.events()] == [AckTimeout]


def test_2xx_retransmission_stops_on_ack_and_uac_reacks() -> None:
    """A lost ACK: the retransmitted 200 makes the UAC re-send its ACK, which stops it."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    dropped = []
    p.shuttle(drop=lambda d: is_ack(d) and not dropped.append(d))
    p.advance(5.0)
    assert len(p.sent("a>b", "ACK")) == 2
    assert len(p.sent("b>a", "SIP/2.0 200")) == 2
    assert [type(e) for e in p.b.events()] == [SessionConfirmed]


def test_cancel_before_answer_gives_487() -> None:
    """CANCEL after 180: 200 for CANCEL, 487 for INVITE (ACKed), both sides told."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 180, now=p.now)
    p.shuttle()
    assert [type(e) for e in p.a.events()] == [Progress]
    p.a.cancel(uac, p.now)
    p.shuttle()
    assert [type(e) for e in p.b.events()] == [InviteCancelled]
    failed = p.a.events()
    assert [(type(e), e.status) for e in failed] == [(Failed, 487)]
    assert len(p.sent("b>a", "SIP/2.0 200")) == 1  # the CANCEL's
    assert len(p.sent("a>b", "ACK")) == 1
    p.b.respond(uas, 200, now=p.now)  # too late: ignored
    assert p.b.datagrams_to_send() == []


def test_cancel_for_unknown_transaction_gets_481() -> None:
    """A CANCEL matching no INVITE transaction is answered 481."""
    p = Pair()
    uac, uas = p.invite()
    cancel = p.sent("a>b", "INVITE")[0].replace(b"INVITE sip", b"CANCEL sip").replace(
        b"1 INVITE", b"1 CANCEL").replace(b"z9hG4bK", b"z9hG4bKzz")
    p.b.receive(cancel, A, p.now)
    assert p.b.datagrams_to_send()[0][0].startswith(b"SIP/2.0 481")


@pytest.mark.parametrize("who", ["caller", "callee"])
def test_bye_both_ways(who: str) -> None:
    """Either side's BYE gets 200 and ByeReceived on the other; the dialog is gone."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle()
    p.a.events(), p.b.events()
    src, dst, s = (p.a, p.b, uac) if who == "caller" else (p.b, p.a, uas)
    src.bye(s, p.now)
    p.shuttle()
    assert [type(e) for e in dst.events()] == [ByeReceived]
    assert p.sent("b>a" if who == "caller" else "a>b", "SIP/2.0 200")
    assert p.a.session_count() == 0 and p.b.session_count() == 0


def test_bye_before_ack_waits_for_ack() -> None:
    """The callee's BYE before the ACK is held until the ACK arrives (RFC 3261 §15)."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.b.bye(uas, p.now)
    assert not any(d.startswith(b"BYE") for d, _ in p.b._out)
    p.shuttle()
    assert len(p.sent("b>a", "BYE")) == 1
    assert p.log.index(("a>b", p.sent("a>b", "ACK")[0])) < p.log.index(("b>a", p.sent("b>a", "BYE")[0]))


def test_reinvite_in_dialog() -> None:
    """A re-INVITE reaches the UAS as ReInviteReceived and its 200 reaches the UAC."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle()
    p.a.events(), p.b.events()
    req = uac.dialog.request("INVITE", p.a.via(), body=b"v=0\r\na=sendonly\r\n")
    p.a._start_client(req, uac.dialog.next_hop(req), p.now, owner=None)
    p.shuttle()
    ev = p.b.events()
    assert [type(e) for e in ev] == [ReInviteReceived]
    assert ev[0].request.body.endswith(b"a=sendonly\r\n")
    p.b.respond_reinvite(uas, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle()
    assert len(p.sent("b>a", "SIP/2.0 200")) == 2
    # an old CSeq is refused
    old = uac.dialog.request("INVITE", p.a.via(), cseq=1)
    p.b.receive(old.encode(), A, p.now)
    assert p.b.datagrams_to_send()[0][0].startswith(b"SIP/2.0 500 CSeq out of order")


def test_invite_timer_a_and_b() -> None:
    """Unanswered INVITE: retransmitted at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5; 408 at 32 s."""
    ua = UserAgent(host=A[0], port=A[1])
    s = ua.invite("sip:h@10.9.9.9", now=0.0)
    assert len(ua.datagrams_to_send()) == 1
    times = []
    while (d := ua.next_deadline()) is not None:
        ua.handle_timers(d)
        if ua.datagrams_to_send():
            times.append(d)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [(type(e), e.status) for e in ua.events()] == [(Failed, 408)]
    assert s.state == "terminated"


def test_non_invite_timer_e_and_f() -> None:
    """Unanswered BYE: E doubles to T2=4 s (0.5, 1.5, 3.5, 7.5, 11.5 ...), F gives up at 32 s."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle()
    p.a.bye(uac, p.now)
    p.a.datagrams_to_send()
    times = []
    while (d := p.a.next_deadline()) is not None and d <= 40:
        p.a.handle_timers(d)
        if p.a.datagrams_to_send():
            times.append(d)
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_non_2xx_final_retransmitted_until_ack() -> None:
    """Timer G: a 486 is re-sent until the ACK; the ACK (same branch) stops it."""
    p = Pair()
    uac, uas = p.invite()
    p.b.respond(uas, 486, now=p.now)
    p.shuttle(drop=is_ack)
    p.advance(2.0, drop=is_ack)
    assert len(p.sent("b>a", "SIP/2.0 486")) == 3  # at 0, 0.5, 1.5
    assert len(p.sent("a>b", "ACK")) == 3  # the client transaction re-ACKs each one
    p.advance(3.0)
    p.advance(10.0)
    assert len(p.sent("b>a", "SIP/2.0 486")) == 4
    assert [(type(e), e.status) for e in p.a.events()] == [(Failed, 486)]


def test_register_with_digest_and_refresh() -> None:
    """REGISTER: 401 -> retried with Authorization; 200 -> refresh scheduled before expiry."""
    ua = UserAgent(host=A[0], port=A[1])
    reg = ua.register(registrar="sip:10.0.0.9:5060", user="line999", expires=300,
                      credentials=("line999", "pw"), now=0.0)
    req = parse(ua.datagrams_to_send()[0][0])
    assert isinstance(req, Request) and req.get("Expires") == "300"
    chal = make_response(req, 401, to_tag="r", headers=[
        ("WWW-Authenticate", 'Digest realm="pbx", nonce="n1", algorithm=MD5')])
    ua.receive(chal.encode(), ("10.0.0.9", 5060), 0.1)
    req2 = parse(ua.datagrams_to_send()[0][0])
    assert isinstance(req2, Request) and req2.get("Authorization", "").startswith('Digest username="line999"')
    assert req2.cseq[0] == req.cseq[0] + 1 and req2.call_id == req.call_id
    ok = make_response(req2, 200, to_tag="r", headers=[("Contact", "<sip:line999@10.0.0.1:5060>;expires=120")])
    ua.receive(ok.encode(), ("10.0.0.9", 5060), 0.2)
    ev = [e for e in ua.events() if isinstance(e, RegistrationResult)]
    assert [(e.ok, e.expires) for e in ev] == [(True, 120)]
    assert reg.registered and reg.refresh_at == pytest.approx(0.2 + 96.0)
    ua.handle_timers(96.3)
    again = parse(ua.datagrams_to_send()[0][0])
    assert isinstance(again, Request) and again.method == "REGISTER"


def test_register_failure_backs_off() -> None:
    """A 403 to REGISTER is reported and retried after 5 s, then 10 s."""
    ua = UserAgent(host=A[0], port=A[1])
    reg = ua.register(registrar="sip:10.0.0.9", user="u", expires=60, credentials=None, now=0.0)
    for t, delay in ((0.0, 5.0), (5.0, 10.0)):
        req = parse(ua.datagrams_to_send()[0][0])
        ua.receive(make_response(req, 403, to_tag="r").encode(), ("10.0.0.9", 5060), t)
        assert reg.refresh_at == t + delay
        ua.handle_timers(t + delay)
    assert [e.ok for e in ua.events()] == [False, False]


def test_second_forked_2xx_is_acked_and_hung_up() -> None:
    """Two phones answer a forked INVITE: the second 200 (other To tag) is ACKed then BYEd."""
    p = Pair()
    uac, uas = p.invite()
    invite = parse(p.sent("a>b", "INVITE")[0])
    assert isinstance(invite, Request)
    p.b.respond(uas, 200, body=b"v=0\r\n", now=p.now)
    p.shuttle()
    other = make_response(invite, 200, to_tag="fork2",
                          headers=[("Contact", "<sip:other@10.0.0.2:5060>")])
    p.a.receive(other.encode(), B, p.now)
    out = [d for d, _ in p.a.datagrams_to_send()]
    assert [d.split(b" ", 1)[0] for d in out] == [b"ACK", b"BYE"]
    assert all(b"tag=fork2" in d for d in out)
    assert [type(e) for e in p.a.events()] == [Answered]
    assert uac.dialog.remote_tag == uas.local_tag
