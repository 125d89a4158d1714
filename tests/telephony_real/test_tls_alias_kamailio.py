"""RFC 5923 with a real Kamailio over TLS (``tcp_accept_aliases = yes``): a request we
send over our TLS connection to Kamailio, with ``alias`` in our Via, that Kamailio relays
back to our TLS listening address comes back over that same connection (Kamailio opens
none to us); without ``alias`` Kamailio opens a new TLS connection to our listener. This
is what lets Kamailio reach the engine on the connection the engine opened, so a handler
leg's in-dialog requests need no second handshake."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from harness.certs import CertAuthority
from harness.kamailio import Kamailio
from telephony.sip.hop import Hop
from telephony.streams import StreamTransports

pytestmark = pytest.mark.realparts


class AliasKamailio(Kamailio):
    """The harness Kamailio with RFC 5923 aliases accepted."""

    def config_text(self) -> str:
        cfg = super().config_text()
        assert "tcp_accept_no_cl=no\n" in cfg
        return cfg.replace("tcp_accept_no_cl=no\n", "tcp_accept_no_cl=no\ntcp_accept_aliases=yes\n")


@pytest.mark.parametrize("alias", [True, False])
async def test_kamailio_reuses_our_tls_connection_when_we_offer_alias(
        tmp_path: Path, alias: bool) -> None:
    """OPTIONS sip:555@ (Kamailio routes 555 to our TLS listener) over our connection:
    with ;alias it comes back on that connection and our listener accepts nothing;
    without, it arrives on a connection Kamailio opened to our listener."""
    ca = CertAuthority(tmp_path / "ca")
    kam_cert = ca.issue("kamailio", "127.0.0.1")
    ours = ca.issue("engine", "127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(ours.cert), str(ours.key))
    server.load_verify_locations(str(ca.cert))
    server.verify_mode = ssl.CERT_OPTIONAL
    client = ssl.create_default_context(cafile=str(ca.cert))
    got: list[tuple[bytes, Hop]] = []
    table = StreamTransports(on_message=lambda d, h: got.append((d, h)),
                             on_fault=lambda f, h: None, on_error=lambda h: None,
                             server_ctx=server, client_ctx=client)
    port = await table.listen("tls", "127.0.0.1", 0)
    kam = AliasKamailio({"555": f"127.0.0.1:{port};transport=tls"}, tcp=True,
                        tls=(kam_cert.cert, kam_cert.key, ca.cert),
                        workdir=tmp_path / "kamailio", trace=False)
    await asyncio.to_thread(kam.start)
    try:
        request = (f"OPTIONS sip:555@127.0.0.1 SIP/2.0\r\n"
                   f"Via: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bKal{int(alias)};rport"
                   f"{';alias' if alias else ''}\r\nMax-Forwards: 70\r\n"
                   "From: <sip:engine@127.0.0.1>;tag=e\r\nTo: <sip:555@127.0.0.1>\r\n"
                   f"Call-ID: alias-{alias}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        table.send(request.encode(), Hop("127.0.0.1", kam.tls_port, "tls", "127.0.0.1"))
        t0 = time.monotonic()
        while not any(d.startswith(b"OPTIONS sip:555@") for d, _ in got):
            assert time.monotonic() - t0 < 5, (got, table.stats(), kam.log_text())
            await asyncio.sleep(0.05)
        _, hop = next((d, h) for d, h in got if d.startswith(b"OPTIONS sip:555@"))
        st = table.stats()
        if alias:
            assert hop[1] == kam.tls_port, hop  # on the connection we opened to Kamailio
            assert st["accepted"] == 0 and st["tls_handshakes"] == 1, st
        else:
            assert hop[1] != kam.tls_port, hop  # Kamailio's own new connection
            assert st["accepted"] == 1 and st["tls_handshakes"] == 2, st
    finally:
        await table.close()
        await asyncio.to_thread(kam.stop)
