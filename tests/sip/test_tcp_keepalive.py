"""CRLF keep-alives on SIP connections we open (RFC 5626 §4.4.1), through
:class:`telephony.streams.StreamTransports` on loopback: a peer that answers pongs keeps
the connection; one that answers nothing within the keep-alive timeout has its
connection closed (counted, logged) and the next message opens a new one; a peer's own
ping is answered with a pong; keep-alives alone do not keep an unused connection of ours
past the idle timeout."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from telephony.sip.hop import Hop
from telephony.streams import StreamLimits, StreamTransports

OPTIONS = (b"OPTIONS sip:peer@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5;branch=z9hG4bKk\r\n"
           b"Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:peer@127.0.0.1>\r\n"
           b"Call-ID: ka\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")


class Peer:
    """A TCP server on loopback that records what it reads and, if ``pong``, answers
    each CRLFCRLF with CRLF (as Kamailio does)."""

    def __init__(self, *, pong: bool) -> None:
        self.pong = pong
        self.received = b""
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(w)
        while data := await r.read(4096):
            self.received += data
            if self.pong and data.endswith(b"\r\n\r\n") and not data.startswith(b"OPTIONS"):
                w.write(b"\r\n")

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        assert self.server is not None
        self.server.close()


def _table(interval: float, timeout: float, idle: float = 300.0) -> StreamTransports:
    return StreamTransports(on_message=lambda d, h: None, on_fault=lambda f, h: None,
                            on_error=lambda h: None,
                            limits=StreamLimits(keepalive_interval=interval,
                                                keepalive_timeout=timeout, idle_timeout=idle))


async def _until(cond, limit: float) -> float:  # noqa: ANN001 - a test helper
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < limit, "condition not met in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def test_answered_keepalives_keep_the_connection() -> None:
    """Pings go out after the interval without traffic; pongs are counted and the
    connection stays the one in use."""
    peer = Peer(pong=True)
    port = await peer.start()
    table = _table(0.3, 1.0)
    try:
        table.send(OPTIONS, Hop("127.0.0.1", port, "tcp"))
        await _until(lambda: table.keepalive_pongs >= 2, 6)
        assert b"\r\n\r\n\r\n\r\n" in peer.received.split(b"Content-Length: 0\r\n\r\n", 1)[1] \
            or peer.received.count(b"\r\n\r\n") >= 3
        assert table.keepalive_failures == 0 and peer.connections == 1
        assert table.open_connections == 1
    finally:
        await table.close()
        await peer.stop()


async def test_unanswered_keepalive_closes_the_connection_and_the_next_message_reconnects(
        ) -> None:
    """A peer that never answers the ping: the connection is closed after the keep-alive
    timeout (sip.keepalive_failed), and the next message opens a new connection."""
    peer = Peer(pong=False)
    port = await peer.start()
    table = _table(0.3, 0.5)
    try:
        with capture_logs() as logs:
            table.send(OPTIONS, Hop("127.0.0.1", port, "tcp"))
            await _until(lambda: table.keepalive_failures == 1, 6)
            await _until(lambda: table.open_connections == 0, 2)
        assert table.keepalives_sent == 1 and table.keepalive_pongs == 0
        failed = [e for e in logs if e["event"] == "sip.keepalive_failed"]
        assert len(failed) == 1 and failed[0]["why"] == "no answer to a keep-alive in 0.5 s"
        table.send(OPTIONS, Hop("127.0.0.1", port, "tcp"))
        await _until(lambda: peer.connections == 2, 3)
    finally:
        await table.close()
        await peer.stop()


async def test_keepalives_do_not_keep_an_unused_connection_of_ours() -> None:
    """With pongs coming back, a connection we opened that carries no SIP message for the
    idle timeout is still closed."""
    peer = Peer(pong=True)
    port = await peer.start()
    table = _table(0.3, 1.0, idle=2.0)
    try:
        table.send(OPTIONS, Hop("127.0.0.1", port, "tcp"))
        await _until(lambda: table.open_connections == 1, 2)
        await _until(lambda: table.open_connections == 0, 6)
        assert table.keepalive_pongs >= 1 and table.idle_closed == 1
    finally:
        await table.close()
        await peer.stop()


async def test_a_peers_ping_is_answered_with_a_pong() -> None:
    """A CRLFCRLF from a client on an accepted connection gets one CRLF back."""
    table = _table(0.3, 1.0)
    port = await table.listen("tcp", "127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\r\n\r\n")
        assert await asyncio.wait_for(r.readexactly(2), 3) == b"\r\n"
        w.close()
    finally:
        await table.close()
