"""The engine over TCP and TLS (issue 16): calls in and out on a connection, responses on
the same connection, keep-alives, and every kind of bad input refused clearly (400 or a
TLS alert, a log line) without disturbing a call in progress: framing faults, garbage on
the TLS port, a handshake never finished, expired / self-signed / wrong-name
certificates, too many connections, a slow sender. Certificates from a throw-away CA."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from config.schema import LineSettings
from config.telephony import SipSettings
from harness.certs import CertAuthority, CertFiles, self_signed
from telephony import api
from telephony.engine import Engine
from telephony.sip.message import Response, parse
from telephony.streams import TlsPipe

from .fake_media import FakeMedia
from .peer import sdp_offer

LINES = [LineSettings(name="999", numbers=["999"], priority=0),
         LineSettings(name="101", numbers=["101"], priority=1, queue_prompt="silence"),
         LineSettings(name="sbc", numbers=["998"], priority=0, tls_client_cert=True)]


class Certs:
    def __init__(self, root: Path) -> None:
        self.ca = CertAuthority(root / "ca")
        self.server = self.ca.issue("server", "controlroom.test", dns=("controlroom.test",))
        self.client = self.ca.issue("client", "sbc.test", dns=("sbc.test",))
        self.expired = self.ca.issue("expired", "old.test", days=-1)
        self.other_name = self.ca.issue("other", "elsewhere.test", ips=(), dns=("elsewhere.test",))
        self.own = self_signed(root / "own", "own", "rogue.test")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def engine(tmp_path: Path, certs: Certs, request: pytest.FixtureRequest):
    extra = getattr(request, "param", {})
    settings = SipSettings(port=0, tcp=True, tls=True, tls_port=0, tls_cert=str(certs.server.cert),
                           tls_key=str(certs.server.key), tls_ca=str(certs.ca.cert),
                           tls_handshake_timeout=1.0, tcp_message_timeout=1.0, **extra)
    events: list = []
    eng = Engine(settings=settings, lines=LINES, recordings_dir=tmp_path,
                 on_event=events.append, media_factory=FakeMedia)
    eng.events = events  # type: ignore[attr-defined]
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop(drain_timeout=0, bye_grace=0)


def _client_ctx(certs: Certs, cert: CertFiles | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


class Conn:
    """One raw SIP connection (TCP or TLS) from a test caller."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 transport: str) -> None:
        self.reader, self.writer, self.transport = reader, writer, transport
        self.port = writer.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, port: int, transport: str = "TCP",
                   ctx: ssl.SSLContext | None = None, name: str = "controlroom.test") -> Conn:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname=name if ctx else None)
        return cls(r, w, transport)

    def send(self, text: str | bytes) -> None:
        self.writer.write(text.encode() if isinstance(text, str) else text)

    async def recv(self, timeout: float = 3.0) -> Response:  # noqa: ASYNC109 - test deadline
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith((b"content-length:", b"l:")):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        msg = parse(head + body)
        assert isinstance(msg, Response), msg
        return msg

    async def expect(self, status: int) -> Response:
        while True:
            msg = await self.recv()
            if msg.status == 100 and status != 100:
                continue
            assert msg.status == status, f"expected {status}, got {msg.status} {msg.reason}"
            return msg

    async def closed(self, timeout: float = 3.0) -> bool:  # noqa: ASYNC109 - test deadline
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionError, ssl.SSLError):
            return True
        return rest == b"" or self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()

    def invite(self, number: str = "999", call_id: str = "c1") -> str:
        body = sdp_offer()
        return (f"INVITE sip:{number}@127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.port};branch=z9hG4bK{call_id}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:07700900123@127.0.0.1>;tag=ft\r\n"
                f"To: <sip:{number}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
                f"Contact: <sip:caller@127.0.0.1:{self.port};"
                f"transport={self.transport.lower()}>\r\n"
                "Content-Type: application/sdp\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}")

    def in_dialog(self, method: str, ok: Response, cseq: int) -> str:
        assert ok.contact is not None
        return (f"{method} {ok.contact.uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/{self.transport} 127.0.0.1:{self.port};"
                f"branch=z9hG4bK{method}{cseq}{ok.call_id}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:07700900123@127.0.0.1>;tag=ft\r\n"
                f"To: {ok.get('To')}\r\nCall-ID: {ok.call_id}\r\nCSeq: {cseq} {method}\r\n"
                "Content-Length: 0\r\n\r\n")


async def _answered_call(conn: Conn, call_id: str, number: str = "999") -> Response:
    conn.send(conn.invite(number, call_id))
    ok = await conn.expect(200)
    conn.send(conn.in_dialog("ACK", ok, 1))
    return ok


async def test_call_over_tcp_answered_and_hung_up_on_one_connection(engine: Engine) -> None:
    """An INVITE over TCP is answered 100/200 on the same connection with a TCP Contact;
    ACK and BYE come on it too; a CRLFCRLF keep-alive gets a CRLF pong; nothing is
    retransmitted on a reliable transport."""
    conn = await Conn.open(engine.tcp_port)
    ok = await _answered_call(conn, "tcp-call")
    assert ok.get("Contact") == f"<sip:controlroom@127.0.0.1:{engine.tcp_port};transport=tcp>"
    assert any(isinstance(e, api.CallArrived) for e in engine.events)  # type: ignore[attr-defined]
    conn.send(b"\r\n\r\n")
    assert await asyncio.wait_for(conn.reader.readexactly(2), 2) == b"\r\n"
    conn.send(conn.in_dialog("BYE", ok, 2))
    bye_ok = await conn.expect(200)
    assert bye_ok.cseq == (2, "BYE")
    assert any(isinstance(e, api.CallEnded) for e in engine.events)  # type: ignore[attr-defined]
    conn.close()


async def test_call_over_tls_with_sips_contact(engine: Engine, certs: Certs) -> None:
    """Over TLS (server certificate checked by the caller against the test CA, by name)
    the answer names our sips: Contact on the TLS port."""
    conn = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs))
    ok = await _answered_call(conn, "tls-call")
    assert ok.get("Contact") == f"<sips:controlroom@127.0.0.1:{engine.tls_port}>"
    conn.send(conn.in_dialog("BYE", ok, 2))
    await conn.expect(200)
    conn.close()


async def test_framing_faults_are_400_and_close_the_connection(engine: Engine) -> None:
    """A request without Content-Length, or with a bad one, is answered 400 naming the
    fault and the connection is closed (never a hang); a lying (too long) one is answered
    400 after the message timeout."""
    for mangle, reason in [
        (lambda t: t.replace("Content-Length: 0\r\n", ""),
         "Missing Content-Length (required on TCP/TLS)"),
        (lambda t: t.replace("Content-Length: 0", "Content-Length: x1"),
         "Bad Content-Length: 'x1'"),
        (lambda t: t.replace("Content-Length: 0", "Content-Length: 900"),
         "Incomplete message after 1 s"),
    ]:
        conn = await Conn.open(engine.tcp_port)
        options = ("OPTIONS sip:999@127.0.0.1 SIP/2.0\r\n"
                   f"Via: SIP/2.0/TCP 127.0.0.1:{conn.port};branch=z9hG4bKopt\r\n"
                   "From: <sip:p@127.0.0.1>;tag=1\r\nTo: <sip:999@127.0.0.1>\r\n"
                   "Call-ID: opt\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        conn.send(mangle(options))
        resp = await conn.recv()
        assert (resp.status, resp.reason) == (400, reason)
        assert await conn.closed()


async def test_bad_tls_input_is_refused_and_a_call_goes_on(engine: Engine, certs: Certs) -> None:
    """With a TCP call up: garbage on the TLS port gets a TLS alert and a closed
    connection; a client that never finishes its handshake is cut after the handshake
    timeout; expired and self-signed client certificates are refused at the handshake;
    each is logged (sip.tls_refused). The call is then hung up normally."""
    call = await Conn.open(engine.tcp_port)
    ok = await _answered_call(call, "survivor")
    with capture_logs() as logs:
        r, w = await asyncio.open_connection("127.0.0.1", engine.tls_port)
        w.write(b"INVITE sip:999@127.0.0.1 SIP/2.0\r\n\r\n" + b"\x00" * 64)
        alert = await asyncio.wait_for(r.read(), 3)
        assert alert[:1] == b"\x15", alert  # a TLS alert record, then the close
        w.close()

        r, w = await asyncio.open_connection("127.0.0.1", engine.tls_port)
        t0 = time.monotonic()
        w.write(b"\x16\x03\x01\x00\xff")  # a ClientHello that never comes whole
        assert await asyncio.wait_for(r.read(), 4) == b""
        assert time.monotonic() - t0 < 3.0
        w.close()

        for bad in (certs.expired, certs.own):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                conn = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs, bad))
                # TLS 1.3: the server's verdict on our certificate arrives after the
                # handshake; the first read sees the alert
                conn.send(conn.invite("999", "rogue"))
                await conn.recv()
    refusals = [e for e in logs if e["event"] == "sip.tls_refused"]
    assert len(refusals) >= 4, refusals
    reasons = " | ".join(str(e["reason"]) for e in refusals)
    assert "handshake not done in 1 s" in reasons
    assert "certificate has expired" in reasons and "self-signed certificate" in reasons
    call.send(call.in_dialog("BYE", ok, 2))
    await call.expect(200)


async def test_garbage_after_the_tls_handshake_is_refused_and_a_tls_call_goes_on(
        engine: Engine, certs: Certs) -> None:
    """With a call up over TLS: after a finished handshake, a record that is not valid TLS
    (bytes written under the TLS layer) ends that connection with a close, logged
    sip.tls_refused on the server side; plaintext garbage inside a good TLS connection is
    a framing fault (logged sip.stream_fault) and a close. The TLS call is then hung up
    normally on its own connection."""
    call = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs))
    ok = await _answered_call(call, "tls-survivor")
    with capture_logs() as logs:
        r, w = await asyncio.open_connection("127.0.0.1", engine.tls_port)
        pipe = TlsPipe(_client_ctx(certs), server_side=False, server_hostname="controlroom.test")
        pipe.start()
        w.write(pipe.outgoing())
        while not pipe.handshaken:
            data = await asyncio.wait_for(r.read(65536), 3)
            assert data, "server closed during the handshake"
            pipe.receive(data)
            w.write(pipe.outgoing())
        w.write(b"\x17\x03\x03\x00\x20" + bytes(range(32)))  # application data, bad tag
        rest = b""
        while chunk := await asyncio.wait_for(r.read(65536), 3):
            rest += chunk  # session tickets, then the (encrypted) alert; then EOF
        w.close()

        bad = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs))
        bad.send(b"\x00\x01 not SIP at all \xff\r\n\r\n")
        assert await bad.closed()
        bad.close()
    refused = [e for e in logs if e["event"] == "sip.tls_refused"]
    assert [e["side"] for e in refused] == ["server"], refused
    faults = [e for e in logs if e["event"] == "sip.stream_fault"]
    assert len(faults) == 1 and faults[0]["transport"] == "tls", faults
    call.send(call.in_dialog("BYE", ok, 2))
    await call.expect(200)


async def test_mutual_tls_line_wants_a_client_certificate(engine: Engine, certs: Certs) -> None:
    """A line with tls_client_cert: an INVITE over TLS without a client certificate (or
    over TCP) is 403; with a certificate from the CA it is answered."""
    plain = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs))
    plain.send(plain.invite("998", "no-cert"))
    resp = await plain.expect(403)
    assert resp.reason == "Client certificate required"
    tcp = await Conn.open(engine.tcp_port)
    tcp.send(tcp.invite("998", "tcp-no-cert"))
    await tcp.expect(403)
    mutual = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs, certs.client))
    ok = await _answered_call(mutual, "with-cert", "998")
    mutual.send(mutual.in_dialog("BYE", ok, 2))
    await mutual.expect(200)


@pytest.mark.parametrize("engine", [{"tcp_max_per_source": 3}], indirect=True)
async def test_connections_per_source_are_limited_and_slow_senders_cut(engine: Engine) -> None:
    """A fourth connection from one address is closed at once; a slow sender dribbling a
    request holds its connection no longer than the message timeout, and meanwhile
    another connection's OPTIONS is answered at once; a connection that never says
    anything is closed after the message timeout as well."""
    slow = await Conn.open(engine.tcp_port)
    other = await Conn.open(engine.tcp_port)
    third = await Conn.open(engine.tcp_port)
    fourth = await Conn.open(engine.tcp_port)
    assert await fourth.closed(2.0)
    t0 = time.monotonic()
    for ch in "OPTIONS sip:999@127.0.0.1 SIP/2.0\r\nVia: ":
        slow.send(ch)
        await asyncio.sleep(0.02)
    options = ("OPTIONS sip:999@127.0.0.1 SIP/2.0\r\n"
               f"Via: SIP/2.0/TCP 127.0.0.1:{other.port};branch=z9hG4bKquick\r\n"
               "From: <sip:p@127.0.0.1>;tag=1\r\nTo: <sip:999@127.0.0.1>\r\n"
               "Call-ID: quick\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    other.send(options)
    assert (await other.recv()).status == 200
    assert time.monotonic() - t0 < 1.5
    assert await slow.closed(3.0)
    assert time.monotonic() - t0 < 3.5
    # the third connection never said anything: closed after the message timeout too
    assert await third.closed(3.0)
    other.close()


async def test_certificate_reload_keeps_calls_and_serves_the_new_one(
        engine: Engine, certs: Certs, tmp_path: Path) -> None:
    """reload_tls (SIGHUP) swaps in the files' new certificate for new connections; a
    call up on an old connection carries on; a bad file keeps the old certificate."""
    call = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs))
    ok = await _answered_call(call, "before-reload")
    fresh = certs.ca.issue("fresh", "renewed.test", dns=("controlroom.test",))
    backup, backup_key = tmp_path / "old.pem", tmp_path / "old.key"
    shutil.copy(certs.server.cert, backup)
    shutil.copy(certs.server.key, backup_key)
    try:
        shutil.copy(fresh.cert, certs.server.cert)
        shutil.copy(fresh.key, certs.server.key)
        assert engine.reload_tls()
        conn = await Conn.open(engine.tls_port, "TLS", _client_ctx(certs))
        peer = conn.writer.get_extra_info("ssl_object").getpeercert()
        assert dict(x[0] for x in peer["subject"])["commonName"] == "renewed.test"
        assert engine.sip_counters["tls_cert_days_left"] >= 1
        certs.server.cert.write_text("not a certificate")
        assert not engine.reload_tls()
        conn.close()
    finally:
        shutil.copy(backup, certs.server.cert)
        shutil.copy(backup_key, certs.server.key)
    call.send(call.in_dialog("BYE", ok, 2))
    await call.expect(200)


async def test_expiring_certificate_shows_in_health(tmp_path: Path, certs: Certs) -> None:
    """A certificate expiring within 14 days makes health() name it."""
    settings = SipSettings(port=0, tls=True, tls_port=0, tls_cert=str(certs.expired.cert),
                           tls_key=str(certs.expired.key))
    eng = Engine(settings=settings, lines=LINES[:1], recordings_dir=tmp_path,
                 on_event=lambda e: None, media_factory=FakeMedia)
    await eng.start()
    try:
        [(component, reason)] = eng.health()
        assert component == "sip_tls" and reason == "SIP TLS certificate 'old.test' expired"
    finally:
        await eng.stop(drain_timeout=0, bye_grace=0)


async def test_leg_to_a_server_with_a_bad_certificate_fails_at_once(
        engine: Engine, certs: Certs) -> None:
    """A handler leg to a sips: phone whose certificate is for another name, self-signed
    or expired fails at the handshake (LegFailed 503 within a second, not timer B's 32 s),
    logged as sip.tls_refused on the client side; the call itself is unharmed."""
    call = await Conn.open(engine.tcp_port)
    ok = await _answered_call(call, "leg-owner")
    arrived = [e for e in engine.events if isinstance(e, api.CallArrived)]  # type: ignore[attr-defined]
    for bad, why in ((certs.other_name, "IP address mismatch"),
                     (certs.own, "self-signed certificate"),
                     (certs.expired, "certificate has expired")):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(bad.cert), str(bad.key))
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        with capture_logs() as logs:
            leg = engine.offer(arrived[-1].call_id, f"sips:h1@127.0.0.1:{port}", timeout=10)
            t0 = time.monotonic()
            while not any(isinstance(e, api.LegFailed) and e.leg_id == leg
                          for e in engine.events):  # type: ignore[attr-defined]
                assert time.monotonic() - t0 < 3, "leg did not fail"
                await asyncio.sleep(0.02)
        failed = next(e for e in engine.events  # type: ignore[attr-defined]
                      if isinstance(e, api.LegFailed) and e.leg_id == leg)
        assert (failed.reason, failed.status) == ("unreachable", 503)
        refused = [e for e in logs if e["event"] == "sip.tls_refused"]
        assert refused and refused[0]["side"] == "client" and why in refused[0]["reason"]
        server.close()
    call.send(call.in_dialog("BYE", ok, 2))
    await call.expect(200)
