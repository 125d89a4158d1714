"""SIP input the service must survive (issue 12, defects 7 and 8), on bytes, with no network:
undecodable bytes, conflicting framing, too many headers, missing headers, bad request
lines; and what a request from an untrusted source may get back (never an amplifier)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.errors import SipParseError
from telephony.sip.events import InviteReceived, MessageRefused
from telephony.sip.guard import MAX_SOURCES, TOTAL_BURST, SourceGuard, TokenBucket
from telephony.sip.message import MAX_HEADERS, Request, Response, make_response, parse
from telephony.sip.ua import UserAgent

US = ("10.0.0.2", 5060)
SBC = ("10.0.0.1", 5060)
SPOOFED = ("192.0.2.77", 5060)


def invite(*, display: bytes = b"Jo Caller", user_agent: bytes = b"sbc/1.0",
           extra: bytes = b"", source: tuple[str, int] = SBC, branch: str = "z9hG4bKh1",
           call_id: bytes = b"hostile-1", body: bytes = b"v=0\r\n") -> bytes:
    host, port = source
    return (b"INVITE sip:999@10.0.0.2 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP " + f"{host}:{port};branch={branch};rport".encode() + b"\r\n"
            b'From: "' + display + b'" <sip:07700900123@10.0.0.1>;tag=f1\r\n'
            b"To: <sip:999@10.0.0.2>\r\nCall-ID: " + call_id + b"\r\nCSeq: 1 INVITE\r\n"
            b"Contact: <sip:07700900123@10.0.0.1:5060>\r\nMax-Forwards: 70\r\n"
            b"User-Agent: " + user_agent + b"\r\n" + extra +
            b"Content-Type: application/sdp\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


# -- defect 7: the parser ------------------------------------------------------------------


def test_latin1_display_name_and_user_agent_parse_and_echo_exactly() -> None:
    """A Latin-1 byte in the From display name and in User-Agent: the INVITE parses, the
    display reads as U+FFFD (valid text for the store and the CAD), User-Agent too, and a
    response echoes the From header byte for byte."""
    data = invite(display=b"Jos\xe9 M\xfcller", user_agent=b"SBC\xff\xfe/2")
    msg = parse(data)
    assert isinstance(msg, Request)
    assert msg.from_.display == "Jos\ufffd M\ufffdller"
    assert msg.get("User-Agent") == "SBC\ufffd\ufffd/2"
    msg.from_.display.encode("utf-8")  # strict: no surrogate left to trip SQLite or MQTT
    resp = make_response(msg, 200, to_tag="t1").encode()
    assert b'From: "Jos\xe9 M\xfcller" <sip:07700900123@10.0.0.1>;tag=f1\r\n' in resp
    again = parse(msg.encode())
    assert isinstance(again, Request) and again.headers == msg.headers


@pytest.mark.parametrize(("data", "status", "reason", "kind", "answerable"), [
    (invite(extra=b"Content-Length: 6\r\n"), 400,
     "Conflicting Content-Length headers: 6, 5", "bad_content_length", True),
    (invite(body=b"v=0\r\n").replace(b"Content-Length: 5", b"Content-Length: -5"), 400,
     "Bad Content-Length: '-5'", "bad_content_length", True),
    (invite().replace(b"Content-Length: 5", b"Content-Length: \xc2\xb2"), 400,
     "Bad Content-Length: '²'", "bad_content_length", True),
    (invite().replace(b"Content-Length: 5", b"Content-Length: " + b"9" * 5000), 400,
     "Bad Content-Length: '99999999999999999999'", "bad_content_length", True),
    (invite(extra=b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(MAX_HEADERS))), 400,
     f"Too many headers (more than {MAX_HEADERS})", "too_many_headers", True),
    (invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1x INVITE"), 400,
     "Malformed CSeq: '1x INVITE'", "bad_cseq", True),
    (invite().replace(b"CSeq: 1 INVITE\r\n", b""), 400, "Missing CSeq header",
     "missing_header", True),
    (invite().replace(b"Call-ID: hostile-1\r\n", b""), 400, "Missing Call-ID header",
     "missing_header", True),
    (invite().replace(b"To: <sip:999@10.0.0.2>\r\n", b""), 400, "Missing To header",
     "missing_header", True),
    (invite().replace(b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKh1;rport\r\n", b""),
     400, "Missing Via header", "missing_header", False),
    (invite(call_id=b"abc\xff@x"), 400, "Call-ID header is not valid UTF-8", "bad_bytes", True),
    (invite().replace(b"<sip:07700900123@10.0.0.1>", b"<sip:0770\xff@10.0.0.1>"), 400,
     "Malformed URI: not valid UTF-8: 'sip:0770\\udcff@10.0.0.1'", "bad_bytes", True),
    (invite().replace(b"INVITE sip:999@10.0.0.2 SIP/2.0", b"INVITE sip:999@ SIP/2.0"), 400,
     "Bad Request-URI: Malformed URI: 'sip:999@'", "bad_request_uri", True),
    (invite().replace(b"INVITE sip:999@10.0.0.2 SIP/2.0", b"INVITE sip:999@10.0.0.2"), 400,
     "Malformed start line: 'INVITE sip:999@10.0.0.2'", "bad_start_line", True),
    (invite().replace(b"INVITE sip:999@10.0.0.2 SIP/2.0", b"INVITE  SIP/2.0"), 400,
     "Bad Request-URI: Malformed URI: ''", "bad_request_uri", True),
    (invite().replace(b"INVITE sip:999@10.0.0.2 SIP/2.0", b"ACK sip:999@ SIP/2.0")
     .replace(b"1 INVITE", b"1 ACK"), 400,
     "Bad Request-URI: Malformed URI: 'sip:999@'", "bad_request_uri", False),
    (invite().replace(b"Via: SIP/2.0/UDP 10.0.0.1:5060", b"Via: SIP/2.0/UDP 10.0.0.1:\xc2\xb2"),
     400, "Malformed URI port: 'SIP/2.0/UDP 10.0.0.1:²;branch=z9hG4bKh1;rport'", "bad_uri",
     False),
    (invite(extra=b"Call-ID: other\r\n"), 400, "Conflicting Call-ID headers",
     "duplicate_header", True),
    (invite(extra=b"X-Pad: " + b"p" * 70000 + b"\r\n"), 513,
     f"Message too large ({len(invite()) + 70009} > 65535 bytes)", "too_large", True),
])
def test_faults_are_named_and_answerable_when_routable(
        data: bytes, status: int, reason: str, kind: str, answerable: bool) -> None:
    """Each fault raises with the status, the exact reason and a stable kind; the request
    comes with it (so it can be answered) whenever it has a usable top Via and is no ACK."""
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert (info.value.status, info.value.reason, info.value.kind) == (status, reason, kind)
    assert (info.value.partial is not None) == answerable


def test_identical_duplicate_content_length_is_harmless() -> None:
    """Two Content-Length headers that agree frame the message one way: accepted."""
    msg = parse(invite(extra=b"l: 5\r\n"))
    assert isinstance(msg, Request) and msg.body == b"v=0\r\n"


def test_response_with_bad_status_line_is_never_answerable() -> None:
    """A broken response raises with no partial: responses are never answered."""
    with pytest.raises(SipParseError) as info:
        parse(b"SIP/2.0 2000 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKr\r\n\r\n")
    assert info.value.partial is None and info.value.kind == "bad_start_line"


_FREE = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\"\\") or b"\xff")


@settings(max_examples=300, deadline=None)
@given(display=_FREE, agent=_FREE, subject=_FREE)
def test_fuzz_any_bytes_in_free_text_still_give_a_call(display: bytes, agent: bytes,
                                                       subject: bytes) -> None:
    """Any bytes (but CR, LF, quote, backslash) in the display name, User-Agent and an
    unknown header: the INVITE parses, every value we read is valid UTF-8 and the From
    header is echoed byte for byte."""
    data = invite(display=display, user_agent=agent, extra=b"X-Note: " + subject + b"\r\n")
    msg = parse(data)
    assert isinstance(msg, Request) and msg.method == "INVITE"
    for text in (msg.from_.display, msg.get("User-Agent") or "", msg.get("X-Note") or "",
                 msg.call_id, str(msg.from_.uri)):
        text.encode("utf-8")
    resp = make_response(msg, 200, to_tag="t").encode()
    assert b'From: "' + display + b'" <sip:07700900123@10.0.0.1>;tag=f1\r\n' in resp


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=6))
def test_fuzz_bytes_anywhere_raise_only_parse_errors(at: int, junk: bytes) -> None:
    """Junk spliced anywhere into a valid INVITE: it parses or raises SipParseError with a
    kind; a parsed message can always be encoded again and answered."""
    base = invite()
    data = base[:at] + junk + base[at:]
    try:
        msg = parse(data)
    except SipParseError as exc:
        assert exc.kind and 400 <= exc.status <= 599
        if exc.partial is not None:
            make_response(exc.partial, exc.status, exc.reason, to_tag="t").encode()
        return
    if msg is not None:
        msg.encode()
        if isinstance(msg, Request):
            make_response(msg, 400, to_tag="t").encode()


# -- defect 8: untrusted sources -----------------------------------------------------------


def ua(policy: str = "reject", **kw: object) -> UserAgent:
    guard = SourceGuard(policy=policy, trusted=lambda ip: ip == SBC[0],  # type: ignore[arg-type]
                        **kw)
    return UserAgent(host=US[0], port=US[1], guard=guard)


def sent(agent: UserAgent) -> list[tuple[Response, int, tuple[str, int]]]:
    out = []
    for data, addr in agent.datagrams_to_send():
        msg = parse(data)
        assert isinstance(msg, Response)
        out.append((msg, len(data), addr))
    return out


def test_spoofed_invite_gets_one_small_403_and_nothing_more() -> None:
    """An INVITE from an untrusted address: one 403 (no 100 Trying, no body, no Server
    header, not larger than the INVITE), no transaction: its retransmissions and 40 s of
    timers send nothing more, and no call is reported."""
    agent = ua()
    data = invite(source=SPOOFED)
    agent.receive(data, SPOOFED, 0.0)
    out = sent(agent)
    assert [(r.status, r.reason) for r, _, _ in out] == [(403, "Source not trusted")]
    resp, size, dest = out[0]
    assert size <= len(data) and resp.body == b"" and resp.get("Server") is None
    assert dest == SPOOFED
    events = agent.events()
    assert not [e for e in events if isinstance(e, InviteReceived)]
    assert [(e.kind, e.status, e.verdict) for e in events if isinstance(e, MessageRefused)] == [
        ("untrusted", 403, "untrusted_answered")]
    for t in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5):
        agent.receive(data, SPOOFED, t)
        agent.handle_timers(t)
    agent.handle_timers(40.0)
    assert agent.datagrams_to_send() == []
    assert agent.counters["untrusted_answered"] == 1
    assert agent.counters["untrusted_repeat_dropped"] == 6


def test_drop_policy_sends_nothing() -> None:
    """untrusted = "drop": nothing at all goes back; counted."""
    agent = ua("drop")
    agent.receive(invite(source=SPOOFED), SPOOFED, 0.0)
    agent.receive(invite(source=SPOOFED).replace(b"CSeq: 1", b"CSeq: x"), SPOOFED, 0.1)
    assert agent.datagrams_to_send() == []
    assert agent.counters["untrusted_dropped"] == 2
    assert agent.counters["malformed_bad_cseq"] == 1


def test_trusted_source_gets_the_full_transaction() -> None:
    """The SBC's INVITE is handled as before: 100 Trying and an InviteReceived."""
    agent = ua()
    agent.receive(invite(), SBC, 0.0)
    assert [r.status for r, _, _ in sent(agent)] == [100]
    assert [type(e) for e in agent.events()] == [InviteReceived]


def test_untrusted_answers_are_rate_limited_per_source_and_in_total() -> None:
    """Distinct requests from one untrusted address: a burst, then ``rate`` a second; over
    many addresses no more than the total burst."""
    agent = ua(rate=1.0, burst=3)
    for i in range(10):
        agent.receive(invite(source=SPOOFED, branch=f"z9hG4bKr{i}"), SPOOFED, 0.0)
    assert len(agent.datagrams_to_send()) == 3
    agent.receive(invite(source=SPOOFED, branch="z9hG4bKlater"), SPOOFED, 1.0)
    assert len(agent.datagrams_to_send()) == 1
    assert agent.counters["untrusted_rate_limited"] == 7
    many = ua(rate=1.0, burst=3)
    for i in range(200):
        src = (f"198.51.100.{i}", 5060)
        many.receive(invite(source=src, branch=f"z9hG4bKm{i}"), src, 5.0)
    assert len(many.datagrams_to_send()) == TOTAL_BURST


def test_malformed_from_untrusted_is_answered_once_and_never_larger() -> None:
    """A malformed request from an untrusted address gets its 400 once (not for the
    retransmission); a tiny one whose 400 would be larger than itself gets nothing."""
    agent = ua()
    bad = invite(source=SPOOFED).replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    agent.receive(bad, SPOOFED, 0.0)
    agent.receive(bad, SPOOFED, 0.5)
    out = sent(agent)
    assert [(r.status, r.reason) for r, _, _ in out] == [
        (400, "CSeq method BYE does not match INVITE")]
    tiny = (b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKt\r\n"
            b"CSeq: 1 OPTIONS\r\n\r\n")
    agent.receive(tiny, SPOOFED, 1.0)
    assert agent.datagrams_to_send() == []
    assert agent.counters["untrusted_too_large"] == 1


def test_in_dialog_bye_from_an_unlisted_address_still_ends_the_call() -> None:
    """A request inside one of our dialogs is ours whatever its source (a handler phone
    talking to us directly): the BYE gets 200."""
    agent = ua()
    agent.receive(invite(), SBC, 0.0)
    session = agent.events()[0].session  # type: ignore[attr-defined]
    agent.respond(session, 200, body=b"v=0\r\n", now=0.1)
    ok = [r for r, _, _ in sent(agent) if r.status == 200][0]
    bye = (b"BYE sip:controlroom@10.0.0.2:5060 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKbye\r\n"
           b"From: <sip:07700900123@10.0.0.1>;tag=f1\r\nTo: <sip:999@10.0.0.2>;tag="
           + (ok.to.tag or "").encode() + b"\r\nCall-ID: hostile-1\r\nCSeq: 2 BYE\r\n\r\n")
    agent.receive(bye, SPOOFED, 1.0)
    assert [(r.status, r.cseq[1]) for r, _, _ in sent(agent)] == [(200, "BYE")]


def test_token_bucket_and_bounded_tables() -> None:
    """The bucket refills at its rate up to its burst; the per-source table stays bounded."""
    b = TokenBucket.full(2.0, 2.0, 0.0)
    assert [b.take(0.0), b.take(0.0), b.take(0.0), b.take(0.5), b.take(0.5)] == [
        True, True, False, True, False]
    g = SourceGuard(trusted=lambda ip: False)
    for i in range(MAX_SOURCES + 50):
        g.verdict((f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 5060), ("b", i), float(i))
    assert len(g._sources) == MAX_SOURCES
    with pytest.raises(ValueError, match="must be 'reject' or 'drop'"):
        SourceGuard(policy="maybe")  # type: ignore[arg-type]
