"""Stream framing (RFC 3261 §18.3): whole messages out of any chunking, keep-alives, and a
Fault (never a hang) for a missing, bad or lying Content-Length and for garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.sip.framing import Fault, Frame, Ping, Pong, StreamFramer, via_alias_port


def _msg(n: int, body: bytes = b"") -> bytes:
    return (f"OPTIONS sip:999@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKf{n}\r\n"
            f"Call-ID: f-{n}\r\nCSeq: {n + 1} OPTIONS\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _resp(body: bytes) -> bytes:
    return (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\r\nl: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


STREAM = [_msg(0), b"\r\n\r\n", _msg(1, b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n\r\n\r\n"),
          _resp(b""), b"\r\n", _resp(b"x" * 300), _msg(2, b"\r\n\r\n")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_chunking_gives_the_same_messages(cuts: list[int]) -> None:
    """However the bytes are cut (one at a time, mid-CRLF, mid-ping, many per chunk), the
    framer yields exactly the messages, pings and pongs sent, in order."""
    data = b"".join(STREAM)
    f = StreamFramer()
    got: list[object] = []
    for i, chunk in enumerate(_chunks(data, cuts)):
        got += f.feed(chunk, float(i))
    assert got == [Frame(STREAM[0]), Ping(), Frame(STREAM[2]), Frame(STREAM[3]), Pong(),
                   Frame(STREAM[5]), Frame(STREAM[6])]
    assert f.partial_since is None and f.buffered == 0 and f.failed is None


def test_one_byte_at_a_time() -> None:
    """Byte-by-byte feeding still frames every message (the slowest sender)."""
    f = StreamFramer()
    data = b"".join(STREAM)
    got = [x for i in range(len(data)) for x in f.feed(data[i:i + 1], 0.0)]
    assert [type(x).__name__ for x in got] == ["Frame", "Ping", "Frame", "Frame", "Pong",
                                               "Frame", "Frame"]


def test_missing_content_length_is_400_with_the_head() -> None:
    """No Content-Length on a stream: 400 naming it, the head kept so a request can be
    answered, and the framer refuses anything more."""
    head = _msg(0).replace(b"Content-Length: 0\r\n", b"")
    f = StreamFramer()
    [fault] = f.feed(head + b"garbage", 0.0)
    assert fault == Fault(400, "Missing Content-Length (required on TCP/TLS)",
                          "no_content_length", head)
    assert f.feed(_msg(1), 1.0) == [] and f.failed == fault


def test_bad_and_conflicting_content_length() -> None:
    """A non-numeric or conflicting Content-Length is a 400."""
    bad = _msg(0).replace(b"Content-Length: 0", b"Content-Length: -5")
    [fault] = StreamFramer().feed(bad, 0.0)
    assert (fault.status, fault.kind, fault.reason) == (400, "bad_content_length",
                                                        "Bad Content-Length: '-5'")
    both = _msg(0).replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 4")
    [fault] = StreamFramer().feed(both, 0.0)
    assert (fault.status, fault.reason) == (400, "Conflicting Content-Length headers")


def test_content_length_shorter_than_body_fails_on_the_leftover() -> None:
    """A Content-Length shorter than the body frames a short message, then the rest of
    the body is not a SIP start line: a 400 fault (the connection is closed)."""
    data = _msg(0, b"v=0\r\nabc\r\n").replace(b"Content-Length: 10", b"Content-Length: 2")
    got = StreamFramer().feed(data, 0.0)
    assert isinstance(got[0], Frame) and got[1] == Fault(400, "Not a SIP message",
                                                         "bad_start_line")


def test_content_length_longer_than_body_expires() -> None:
    """A Content-Length promising more than comes never hangs: after the timeout the
    framer gives a 400 'Incomplete message' with the head."""
    data = _msg(0).replace(b"Content-Length: 0", b"Content-Length: 500")
    f = StreamFramer()
    assert f.feed(data, 10.0) == [] and f.partial_since == 10.0
    assert f.expire(14.0, 5.0) is None
    fault = f.expire(15.0, 5.0)
    assert fault is not None and (fault.status, fault.kind) == (400, "incomplete")
    assert fault.reason == "Incomplete message after 5 s" and fault.head == data


def test_slow_sender_clock_starts_at_first_byte() -> None:
    """The message timeout counts from the first byte of the message, so dribbling a byte
    a second does not keep the connection (slow-loris)."""
    f = StreamFramer()
    data = _msg(0)
    for i in range(5):
        f.feed(data[i:i + 1], float(i))
    assert f.partial_since == 0.0 and f.expire(5.0, 5.0) is not None


def test_garbage_and_oversize() -> None:
    """Binary garbage is refused at once; headers without end over the limit are 513; a
    Content-Length over the message limit is 513 before the body is read."""
    [fault] = StreamFramer().feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 3, 0.0)
    assert fault.kind == "bad_start_line"
    f = StreamFramer(max_head=1024)
    got = f.feed(b"INVITE sip:x@y SIP/2.0\r\n" + b"X-Pad: aaaaaaaaaaaaaaaa\r\n" * 100, 0.0)
    assert [(x.status, x.kind) for x in got] == [(513, "too_large")]  # type: ignore[union-attr]
    big = _msg(0).replace(b"Content-Length: 0", b"Content-Length: 70000")
    [fault] = StreamFramer().feed(big, 0.0)
    assert (fault.status, fault.kind) == (513, "too_large")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 500), max_size=10))
def test_random_bytes_never_raise_and_always_progress(data: bytes, cuts: list[int]) -> None:
    """Random bytes never raise; the framer either frames, fails, or holds a partial
    message whose clock is running (so the timeout will end it)."""
    f = StreamFramer(max_message=2048)
    for chunk in _chunks(data, cuts):
        f.feed(chunk, 0.0)
    assert f.failed is not None or f.buffered == 0 or f.partial_since is not None


def test_a_lone_crlf_is_our_pong_only_while_we_wait_for_one() -> None:
    """After our ping a lone CRLF is the pong at once (not held as half a ping, where the
    message timeout would later call it an incomplete message); without a ping out it
    waits for the next bytes, and CRLFCRLF is the peer's ping."""
    f = StreamFramer()
    f.awaiting_pong = True
    assert f.feed(b"\r\n", 0.0) == [Pong()]
    assert not f.awaiting_pong and f.buffered == 0 and f.expire(100.0, 1.0) is None
    assert f.feed(b"\r\n", 1.0) == []  # no ping of ours out: maybe half of the peer's
    assert f.feed(b"\r\n", 1.1) == [Ping()]


@pytest.mark.parametrize(("message", "port"), [
    (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.5:5071;branch=z9hG4bK1;alias\r\n"
     b"Content-Length: 0\r\n\r\n", 5071),
    (b"BYE sip:a@b SIP/2.0\r\nv: SIP/2.0/TLS proxy.example;alias;branch=z9hG4bK2\r\n\r\n", 5061),
    (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.5:5071;branch=z9hG4bK1\r\n"
     b"Via: SIP/2.0/TLS 10.0.0.6:5061;alias\r\n\r\n", None),  # only the top Via counts
    (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.5:5071;branch=z9hG4bK1, "
     b"SIP/2.0/TLS 10.0.0.6:5061;alias\r\n\r\n", None),
    (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TLS 10.0.0.5:5071;alias\r\n\r\n", None),  # a response
    (b"INVITE sip:a@b SIP/2.0\r\nVia: garbage;alias\r\n\r\n", None),
    (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.5;aliased=1\r\n\r\n", None),
    (b"INVITE sip:a@b SIP/2.0\r\nTo: <sip:x>;alias\r\n\r\nVia: SIP/2.0/TLS h:1;alias", None),
])
def test_via_alias_port(message: bytes, port: int | None) -> None:
    """RFC 5923: the top Via's port of a request with ``alias``; never a response's, a
    lower Via's, a parameter merely starting with alias, or anything in the body."""
    assert via_alias_port(message) == port
