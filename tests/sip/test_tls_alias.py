"""RFC 5923 connection reuse in :class:`telephony.streams.StreamTransports`: a request over
an accepted TLS connection whose top Via has ``alias`` makes that connection carry our
requests to (its source address, the Via's port), when the peer proved itself with a
client certificate from our CA; without one (or without alias) we open a connection of
our own, as before. Loopback, throw-away CA."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from harness.certs import CertAuthority
from telephony.sip.hop import Hop
from telephony.streams import StreamTransports


def _request(via_port: int, alias: bool) -> bytes:
    return (f"OPTIONS sip:us@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{via_port};"
            f"branch=z9hG4bKa{'' if not alias else ';alias'}\r\nMax-Forwards: 70\r\n"
            "From: <sip:peer@127.0.0.1>;tag=p\r\nTo: <sip:us@127.0.0.1>\r\nCall-ID: al\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize(("client_cert", "alias", "reused"), [
    (True, True, True),
    (False, True, False),  # not authenticated: its alias is not believed
    (True, False, False),
])
async def test_alias_reuses_the_peers_connection(tmp_path: Path, client_cert: bool, alias: bool,
                                                 reused: bool) -> None:
    """Our request to the peer's Via address goes over the peer's own connection exactly
    when it offered alias and showed a certificate; else over a new connection to that
    address (the peer's listener sees it)."""
    ca = CertAuthority(tmp_path / "ca")
    ours, peer = ca.issue("us", "127.0.0.1"), ca.issue("peer", "127.0.0.1")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(ours.cert), str(ours.key))
    server.load_verify_locations(str(ca.cert))
    server.verify_mode = ssl.CERT_OPTIONAL
    client = ssl.create_default_context(cafile=str(ca.cert))
    got: list[bytes] = []
    table = StreamTransports(on_message=lambda d, h: got.append(d), on_fault=lambda f, h: None,
                             on_error=lambda h: None, server_ctx=server, client_ctx=client)
    port = await table.listen("tls", "127.0.0.1", 0)
    # the peer's own listener, where a connection of ours would land
    listener_hits: list[bytes] = []

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        listener_hits.append(await r.read(4096))
        w.close()

    peer_server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    peer_server_ctx.load_cert_chain(str(peer.cert), str(peer.key))
    listener = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=peer_server_ctx)
    peer_port = listener.sockets[0].getsockname()[1]
    peer_ctx = ssl.create_default_context(cafile=str(ca.cert))
    if client_cert:
        peer_ctx.load_cert_chain(str(peer.cert), str(peer.key))
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=peer_ctx,
                                             server_hostname="127.0.0.1")
        w.write(_request(peer_port, alias))
        t0 = time.monotonic()
        while not got:
            assert time.monotonic() - t0 < 3
            await asyncio.sleep(0.02)
        table.send(b"OPTIONS sip:peer@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n",
                   Hop("127.0.0.1", peer_port, "tls", "127.0.0.1"))
        if reused:
            data = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 3)
            assert data.startswith(b"OPTIONS sip:peer@")
            assert table.stats()["aliased"] == 1 and not listener_hits
        else:
            t0 = time.monotonic()
            while not listener_hits:
                assert time.monotonic() - t0 < 3, "no new connection to the peer's listener"
                await asyncio.sleep(0.02)
            assert listener_hits[0].startswith(b"OPTIONS sip:peer@")
            assert table.stats()["aliased"] == 0
        w.close()
    finally:
        listener.close()
        await table.close()
