"""CRLF keep-alives (RFC 5626 §4.4.1) against a real Kamailio over TCP and TLS: the
connection our StreamTransports opens to Kamailio carries a SIP request and its answer,
then our pings; Kamailio answers each with a pong (its tcp_crlf_ping, on by default), so
the connection stays up and no keep-alive fails. Certificates from a throw-away CA."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from harness.certs import CertAuthority
from harness.kamailio import Kamailio
from telephony.sip.hop import Hop
from telephony.streams import StreamLimits, StreamTransports

pytestmark = pytest.mark.realparts


def _options(transport: str, call_id: str) -> bytes:
    return (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:9;branch=z9hG4bK{call_id}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=ka\r\n"
            f"To: <sip:127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_kamailio_answers_our_keepalives(tmp_path: Path, transport: str) -> None:
    """Over ``transport``: an OPTIONS answered on our connection, then at least two pings
    each answered by Kamailio's pong; the one connection stays open, none failed."""
    ca = CertAuthority(tmp_path / "ca")
    kam_cert = ca.issue("kamailio", "kamailio.test", dns=("kamailio.test",))
    kam = Kamailio({}, tcp=True, tls=(kam_cert.cert, kam_cert.key, ca.cert),
                   workdir=tmp_path / "kamailio", trace=False)
    await asyncio.to_thread(kam.start)
    answers: list[bytes] = []
    client = ssl.create_default_context(cafile=str(ca.cert))
    table = StreamTransports(on_message=lambda data, hop: answers.append(data),
                             on_fault=lambda f, h: None, on_error=lambda h: None,
                             limits=StreamLimits(keepalive_interval=0.5, keepalive_timeout=2.0),
                             client_ctx=client)
    port = kam.tls_port if transport == "tls" else kam.port
    try:
        table.send(_options(transport, f"ka-{transport}"),
                   Hop("127.0.0.1", port, transport, "kamailio.test"))
        t0 = time.monotonic()
        while not (answers and table.keepalive_pongs >= 2):
            assert time.monotonic() - t0 < 10, (answers, table.stats(), kam.log_text())
            await asyncio.sleep(0.05)
        # (the harness config answers an OPTIONS to no user 484: any answer will do, on
        # our connection)
        assert answers[0].startswith(b"SIP/2.0 ") and f"ka-{transport}".encode() in answers[0]
        st = table.stats()
        assert st["keepalive_failures"] == 0 and st["open"] == 1, st
        assert st["keepalives_sent"] >= st["keepalive_pongs"] >= 2, st
        if transport == "tls":
            assert st["tls_handshakes"] == 1, st
    finally:
        await table.close()
        await asyncio.to_thread(kam.stop)
