"""Parser/builder tests on recorded SIP messages (tests/data/sip/*.sip) and fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.errors import SipParseError
from telephony.sip.message import Request, Response, body_parts, make_response, parse
from telephony.sip.uri import parse_name_addr, parse_uri, parse_via

DATA = Path(__file__).parent.parent / "data" / "sip"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_kamailio_forwarded_invite() -> None:
    """A proxied INVITE: two Vias, Record-Route, PAI, multi-value Allow, SDP body."""
    msg = parse(load("kamailio_invite.sip"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE" and msg.uri.user == "999" and msg.uri.port == 5080
    vias = msg.vias
    assert [(v.host, v.port) for v in vias] == [("10.0.0.2", None), ("10.0.0.5", 5060)]
    assert vias[0].response_address() == ("10.0.0.2", 5060)
    assert vias[1].response_address() == ("10.0.0.5", 5060)
    assert msg.get_all("Record-Route") == ["<sip:10.0.0.2;lr;ftag=as5a1b>"]
    assert msg.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"]
    assert msg.from_.display == "BT 999" and msg.from_.tag == "as5a1b"
    assert msg.from_.uri.number == "441632960001"
    assert msg.cseq == (102, "INVITE")
    assert msg.body.startswith(b"v=0\r\n") and msg.body.endswith(b"a=sendrecv\r\n")


def test_compact_headers_expand() -> None:
    """Compact forms i/f/t/v/m/k/c/l are read as their full names."""
    msg = parse(load("compact_invite.sip"))
    assert isinstance(msg, Request)
    assert msg.call_id == "compact-1@127.0.0.1"
    assert msg.get("Supported") == "timer" and msg.get("content-type") == "application/sdp"
    assert msg.contact is not None and msg.contact.uri.port == 5070
    assert msg.from_.tag == "a1" and msg.to.uri.user == "101"
    assert len(msg.body) == int(msg.get("l") or 0)


def test_folded_and_multivalue_headers() -> None:
    """Folded lines are unfolded; commas split Via/Route but not inside quotes."""
    msg = parse(load("folded_multivalue.sip"))
    assert isinstance(msg, Request)
    assert [v.branch for v in msg.vias] == ["z9hG4bKf1", "z9hG4bKf0"]
    assert msg.get_all("Route") == ["<sip:10.0.0.2;lr>", "<sip:10.0.0.3;lr>"]
    assert msg.from_.display == "Smith, John"
    assert msg.get("Subject") == "a long folded subject"


def test_response_parse() -> None:
    """A 180 with Record-Route and tags parses into a Response."""
    msg = parse(load("response_180.sip"))
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (180, "Ringing")
    assert msg.to.tag == "theirs" and msg.top_via.response_address() == ("127.0.0.1", 5080)


@pytest.mark.parametrize("name,status,reason,answerable", [
    # a request with a usable top Via is answered whatever else is wrong (issue 12 #7)
    ("bad_start_line.sip", 400, "Malformed start line: 'HELLO WORLD'", True),
    ("bad_version.sip", 505, "Unsupported SIP version: SIP/3.0", True),
    ("bad_content_length.sip", 400, "Bad Content-Length: '12x'", True),
    ("short_body.sip", 400, "Content-Length 500 exceeds body (0 bytes)", True),
    ("missing_call_id.sip", 400, "Missing Call-ID header", True),
    ("missing_cseq.sip", 400, "Missing CSeq header", True),
    ("missing_via.sip", 400, "Missing Via header", False),
    ("cseq_method_mismatch.sip", 400, "CSeq method BYE does not match INVITE", True),
    ("bad_header_line.sip", 400, "Malformed header line: 'This is not a header'", True),
    ("bad_from.sip", 400, "Malformed URI: 'mailto:a@b'", True),
    ("too_many_headers.sip", 400, "Too many headers (more than 200)", True),
    ("oversized.sip", 513, None, True),
])
def test_malformed_messages(name: str, status: int, reason: str | None, answerable: bool) -> None:
    """Each malformed shape raises SipParseError with the exact status and reason."""
    data = load(name)
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert info.value.status == status
    if reason is None:
        reason = f"Message too large ({len(data)} > 65535 bytes)"
    assert info.value.reason == reason
    assert (info.value.partial is not None) == answerable


def test_keepalive_is_ignored() -> None:
    """A CRLF keep-alive datagram parses to None."""
    assert parse(b"\r\n\r\n") is None


def test_build_roundtrip_and_content_length() -> None:
    """encode() writes Content-Length from the body; parse(encode(x)) == x."""
    msg = parse(load("kamailio_invite.sip"))
    assert isinstance(msg, Request)
    again = parse(msg.encode())
    assert isinstance(again, Request)
    assert again.headers == msg.headers and again.body == msg.body


def test_make_response_copies_dialog_headers() -> None:
    """Responses copy Via (all), From, To (+tag), Call-ID, CSeq and Record-Route on 2xx."""
    req = parse(load("kamailio_invite.sip"))
    assert isinstance(req, Request)
    resp = make_response(req, 200, to_tag="t9")
    assert resp.get_all("Via") == req.get_all("Via")
    assert resp.to.tag == "t9" and resp.get_all("Record-Route") == req.get_all("Record-Route")
    assert make_response(req, 404).get_all("Record-Route") == []
    assert resp.encode().startswith(b"SIP/2.0 200 OK\r\n")


def test_uri_forms() -> None:
    """sip/tel URIs with params, IPv6, user params; name-addr with quoted display."""
    u = parse_uri("sip:+44 1632@[2001:db8::1]:5070;transport=udp;lr")
    assert (u.host, u.port, u.params) == ("2001:db8::1", 5070, {"transport": "udp", "lr": None})
    assert u.number == "441632"
    assert str(parse_uri("sip:a@b.example:5061;lr")) == "sip:a@b.example:5061;lr"
    t = parse_uri("tel:+441632960001;phone-context=+44")
    assert (t.scheme, t.number) == ("tel", "441632960001")
    na = parse_name_addr('"A \\"B\\"" <sip:x@y>;tag=1')
    assert (na.display, na.tag) == ('A "B"', "1")
    assert parse_name_addr("sip:x@y;tag=2").tag == "2"
    with pytest.raises(SipParseError, match="Malformed URI port"):
        parse_uri("sip:a@b:99999")
    with pytest.raises(SipParseError, match="Malformed Via"):
        parse_via("garbage")


def test_multipart_body_split() -> None:
    """multipart/mixed (SDP + PIDF-LO) is split by content type."""
    req = parse(load("compact_invite.sip"))
    assert isinstance(req, Request)
    req.set("Content-Type", 'multipart/mixed;boundary="b1"')
    req.body = (b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n"
                b"--b1\r\nContent-Type: application/pidf+xml\r\n\r\n<presence/>\r\n--b1--\r\n")
    assert body_parts(req) == {"application/sdp": b"v=0\r\n", "application/pidf+xml": b"<presence/>"}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    """Arbitrary bytes either parse or raise SipParseError, nothing else."""
    try:
        parse(data)
    except SipParseError as exc:
        assert 400 <= exc.status <= 599


_LINES = st.sampled_from([
    "Via: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx", "Via: SIP/2.0/UDP [::1]:5;rport", "Via: junk",
    "From: <sip:a@b>;tag=1", "From: \"x <sip:a@b>", "To: sip:b@c", "To: <>", "Call-ID: x",
    "CSeq: 1 INVITE", "CSeq: 99999999999999 INVITE", "CSeq: 1", "Content-Length: 3",
    "Content-Length: -1", "l: 0", "Max-Forwards: x", "Route: <sip:a;lr>, <sip:b", ": x",
    " folded", "Contact: *", "Contact: <sip:a@[::1", "X: \xe9",
])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["INVITE sip:1@h SIP/2.0", "SIP/2.0 200 OK", "BYE tel:1 SIP/2.0",
                        "ACK sip:@ SIP/2.0", "SIP/2.0 9999 X"]),
       st.lists(_LINES, max_size=12), st.binary(max_size=8))
def test_fuzz_sip_shaped_messages_never_crash(start: str, lines: list[str], body: bytes) -> None:
    """SIP-shaped messages with broken headers either parse or raise SipParseError."""
    data = ("\r\n".join([start, *lines]) + "\r\n\r\n").encode() + body
    try:
        msg = parse(data)
    except SipParseError as exc:
        assert 400 <= exc.status <= 599
        return
    assert msg is not None
    msg.call_id, msg.cseq, msg.vias, msg.from_, msg.to  # noqa: B018 - accessors must work


_REQ_LINES = st.sampled_from([
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKf1;rport", "Via: SIP/2.0/UDP 10.0.0.1",
    "From: <sip:a@b>;tag=1", "From: <sip:a@b>", "To: <sip:999@c>", "To: <sip:999@c>;tag=zz",
    "Call-ID: fz", "CSeq: 1 INVITE", "CSeq: 2 BYE", "CSeq: 1 ACK", "CSeq: 1 CANCEL",
    "Contact: <sip:a@10.0.0.1:5060>", "Contact: *", "Record-Route: <sip:p;lr>",
    "Max-Forwards: 0", "Require: 100rel", "Content-Type: application/sdp",
    "Content-Type: multipart/mixed;boundary=x", "Content-Length: 4", "Route: <sip:x;lr>",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "FOO", "SIP/2.0 200",
                     "SIP/2.0 487", "SIP/2.0 100"]),
    st.lists(_REQ_LINES, max_size=10), st.sampled_from([b"", b"v=0\r\n", b"\xff\xfe"])),
    max_size=6), st.floats(0, 100))
def test_fuzz_user_agent_never_raises(msgs: list, now: float) -> None:
    """The UA core absorbs any sequence of SIP-shaped datagrams without raising."""
    from telephony.sip.ua import UserAgent

    ua = UserAgent(host="10.0.0.2", port=5060)
    for start, lines, body in msgs:
        first = f"{start} OK" if start.startswith("SIP/") else f"{start} sip:999@10.0.0.2 SIP/2.0"
        data = ("\r\n".join([first, *lines]) + "\r\n\r\n").encode() + body
        ua.receive(data, ("10.0.0.1", 5060), now)
        for ev in ua.events():
            session = getattr(ev, "session", None)
            if session is not None and session.role == "uas" and session.state == "incoming":
                ua.respond(session, 200, body=b"v=0\r\n", now=now)
        ua.handle_timers(now + 40)
        ua.datagrams_to_send()
