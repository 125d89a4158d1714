"""The SIP core over TCP and TLS (RFC 3261 §17, §18): responses back to the source
connection, Via and Contact naming the transport, no retransmissions on reliable
transports, sips:/transport= picking TLS/TCP, large requests moved off UDP."""

from __future__ import annotations

from telephony.sip.events import Answered, InviteReceived
from telephony.sip.hop import Hop, transport_of
from telephony.sip.message import parse
from telephony.sip.ua import UserAgent

PORTS = {"udp": 5080, "tcp": 5080, "tls": 5081}


def _invite(transport: str, port: int = 40001) -> bytes:
    return (f"INVITE sip:999@10.0.0.9:5081 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 10.0.0.1:5061;branch=z9hG4bKtcp1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:07700900123@10.0.0.1>;tag=c1\r\n"
            "To: <sip:999@10.0.0.9>\r\nCall-ID: tcp-1\r\nCSeq: 1 INVITE\r\n"
            "Contact: <sips:07700900123@10.0.0.1:5061>\r\nContent-Length: 0\r\n\r\n").encode()


def test_response_goes_back_on_the_connection_and_is_not_retransmitted() -> None:
    """An INVITE over TLS from an ephemeral port: 100/200 go to that source (its
    connection), not the Via's sent-by; Contact is our sips: URI; the 2xx is
    retransmitted by the core (§13.3.1.4) but a non-2xx final is not (no timer G)."""
    ua = UserAgent(host="10.0.0.9", port=5080, ports=PORTS)
    src = Hop("10.0.0.1", 40001, "tls")
    ua.receive(_invite("TLS"), src, 0.0)
    [(trying, dest)] = ua.datagrams_to_send()
    assert dest == ("10.0.0.1", 40001) and transport_of(dest) == "tls"
    [ev] = ua.events()
    assert isinstance(ev, InviteReceived)
    ua.respond(ev.session, 200, body=b"", now=0.0)
    [(ok, dest)] = ua.datagrams_to_send()
    msg = parse(ok)
    assert msg.get("Contact") == "<sips:controlroom@10.0.0.9:5081>"  # type: ignore[union-attr]
    assert transport_of(dest) == "tls"

    ua2 = UserAgent(host="10.0.0.9", port=5080, ports=PORTS)
    ua2.receive(_invite("TCP"), Hop("10.0.0.1", 40002, "tcp"), 0.0)
    [ev] = ua2.events()
    ua2.respond(ev.session, 486, now=0.0)
    ua2.datagrams_to_send()
    ua2.handle_timers(10.0)  # timer G would have retransmitted several times by now
    assert ua2.datagrams_to_send() == []
    ua2.handle_timers(33.0)  # timer H (64*T1) still runs: no ACK came
    assert ua2.datagrams_to_send() == []


def test_outbound_request_over_tls_and_tcp() -> None:
    """A sips: target (or ;transport=tcp) is reached over TLS (TCP): the destination Hop
    carries the transport and the certificate name, Via says TLS with our TLS port, and
    the client transaction never retransmits; the ACK for the 2xx goes the same way."""
    ua = UserAgent(host="10.0.0.9", port=5080, ports=PORTS)
    s = ua.invite("sips:h1@10.0.0.2:5061", body=b"v=0\r\n", now=0.0)
    [(data, dest)] = ua.datagrams_to_send()
    req = parse(data)
    assert transport_of(dest) == "tls" and dest == ("10.0.0.2", 5061)
    assert req.get("Via").startswith("SIP/2.0/TLS 10.0.0.9:5081;")  # type: ignore[union-attr]
    assert req.get("Via").endswith(";rport;alias")  # RFC 5923 offer  # type: ignore[union-attr]
    assert req.get("Contact") == "<sips:controlroom@10.0.0.9:5081>"  # type: ignore[union-attr]
    ua.handle_timers(5.0)
    assert ua.datagrams_to_send() == []  # no timer A over TLS
    via, frm = req.get("Via"), req.get("From")  # type: ignore[union-attr]
    ok = (f"SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {frm}\r\n"
          f"To: <sips:h1@10.0.0.2>;tag=h\r\nCall-ID: {req.call_id}\r\nCSeq: 1 INVITE\r\n"
          "Contact: <sips:h1@10.0.0.2:5061>\r\nContent-Length: 0\r\n\r\n").encode()
    ua.receive(ok, Hop("10.0.0.2", 5061, "tls"), 1.0)
    assert any(isinstance(e, Answered) for e in ua.events()) and s.state == "confirmed"
    [(ack, dest)] = ua.datagrams_to_send()
    assert ack.startswith(b"ACK sips:h1@10.0.0.2:5061") and transport_of(dest) == "tls"
    assert b"Via: SIP/2.0/TLS" in ack

    ua.invite("sip:h2@10.0.0.3;transport=tcp", now=0.0)
    [(data, dest)] = ua.datagrams_to_send()
    assert transport_of(dest) == "tcp" and dest == ("10.0.0.3", 5060)
    assert b"Via: SIP/2.0/TCP 10.0.0.9:5080;" in data and b"alias" not in data  # TLS only
    assert b"Contact: <sip:controlroom@10.0.0.9:5080;transport=tcp>" in data


def test_large_request_moves_from_udp_to_tcp() -> None:
    """RFC 3261 §18.1.1: a request over 1300 bytes that would go over UDP goes over TCP
    when we listen on TCP (Via says TCP); without TCP it stays on UDP."""
    big = b"v=0\r\n" + b"a=x-pad:" + b"p" * 1400 + b"\r\n"
    ua = UserAgent(host="10.0.0.9", port=5080, ports=PORTS)
    ua.invite("sip:h1@10.0.0.2", body=big, now=0.0)
    [(data, dest)] = ua.datagrams_to_send()
    assert transport_of(dest) == "tcp" and b"Via: SIP/2.0/TCP" in data
    assert ua.counters["udp_too_large_sent_tcp"] == 1
    udp_only = UserAgent(host="10.0.0.9", port=5080)
    udp_only.invite("sip:h1@10.0.0.2", body=big, now=0.0)
    [(data, dest)] = udp_only.datagrams_to_send()
    assert transport_of(dest) == "udp" and b"Via: SIP/2.0/UDP" in data


def test_framing_fault_is_answered_on_the_connection() -> None:
    """A request whose stream framing failed (no Content-Length) is answered 400 with the
    framer's reason, back on its connection."""
    ua = UserAgent(host="10.0.0.9", port=5080, ports=PORTS)
    head = _invite("TCP").replace(b"Content-Length: 0\r\n", b"")
    src = Hop("10.0.0.1", 40003, "tcp")
    ua.receive_fault(head, src, 400, "Missing Content-Length (required on TCP/TLS)",
                     "no_content_length", 0.0)
    [(data, dest)] = ua.datagrams_to_send()
    assert data.startswith(b"SIP/2.0 400 Missing Content-Length (required on TCP/TLS)\r\n")
    assert dest == src and transport_of(dest) == "tcp"
    assert ua.counters["malformed_no_content_length"] == 1
