"""SIP over TCP and TLS (RFC 3261 §18): listeners, outbound connections, one table.

A thin asyncio adapter around two sans-IO parts: the stream framer
(:mod:`telephony.sip.framing`) and TLS through :class:`ssl.MemoryBIO` (:class:`TlsPipe`),
so the handshake is ours to time out and count, and garbage on the TLS port is refused
with the TLS alert OpenSSL writes, before any SIP is read. Each connection is a plain
``asyncio.Protocol``; whole messages go to ``on_message(data, hop)`` where ``hop`` is a
:class:`telephony.sip.hop.Hop` naming the peer's address and the transport, so the SIP
core answers on the same connection (§18.2.2).

The table (:class:`StreamTransports`) keys connections by the peer's address: the
source of an accepted one, the destination of one we opened. :meth:`StreamTransports.send`
uses the connection to that address when there is one (reuse, in both directions), else
opens one for a TCP/TLS hop (messages wait, bounded, until it is up) and tells
``on_error(hop)`` if it cannot be opened, so the core fails the request at once.

Limits (:class:`StreamLimits`), checked by a sweep once a second: connections in all
and per source address (a new one over the limit is closed at once, before any TLS
work); a TLS handshake must finish within ``handshake_timeout``; a message must be
complete ``message_timeout`` s after its first byte (slow senders, lying Content-Length:
answered 400 when it can be, then closed); an accepted connection must bring its
first message (or keep-alive) within ``message_timeout`` too; one with no traffic for
``idle_timeout`` s is closed; a peer that does not read what we send (more than
``write_buffer_max`` bytes queued) is closed. A slow or hostile peer costs one socket and
its buffer, never the loop's time: nothing here blocks or waits on a peer.

Connection reuse (RFC 5923): a request that comes over an accepted TLS connection with
``alias`` in its top Via also keys that connection under (its source address, the Via's
port), so our requests to the peer's listening address go over it instead of a new
connection; only the port is taken from the Via (as Kamailio's ``tcp_accept_aliases``
does), never the host, so a peer can alias only its own address, and an open connection
to that address is never displaced. Only over TLS and only when the peer presented a
client certificate our CA verified (RFC 5923 rests on both ends being authenticated:
our requests, SDES keys included, must not go to whoever connected from that address).
Our own requests over TLS carry ``alias`` in their Via (``UserAgent._stamp``).

Keep-alives (RFC 5626 §4.4.1): a peer's CRLFCRLF ping is answered with a CRLF pong. On a
connection we opened, we ping after ``keepalive_interval`` s without a byte from the
peer (80-100 % of it, drawn per connection so many flows do not ping in step); a peer
that answers neither pong nor anything else within ``keepalive_timeout`` s (10 s, as
RFC 5626 says) is taken for dead: the connection is closed and logged, and the next
message to that peer opens a new one. Keep-alives keep NAT and firewall bindings open but
do not keep an unused connection of ours: ``idle_timeout`` counts from the last SIP
message on a connection we opened, and from the last byte on one we accepted (where the
peer's pings say it wants the flow kept, RFC 5626).

A framing fault (:class:`telephony.sip.framing.Fault`) goes to ``on_fault``, whose
answer (400 on the same connection) is written before the connection closes.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from telephony.sip.framing import (
    PING,
    PONG,
    Fault,
    Frame,
    Ping,
    Pong,
    StreamFramer,
    via_alias_port,
)
from telephony.sip.hop import Hop

log = structlog.get_logger("telephony.streams")

Addr = tuple[str, int]

ALERT_PROTOCOL_VERSION = b"\x15\x03\x03\x00\x02\x02\x46"
"""A fatal TLS alert record, protocol_version (70): the answer to bytes that are not TLS."""
PENDING_MAX = 256
"""Messages held for a connection still being opened (beyond: dropped, counted)."""


@dataclass(frozen=True, kw_only=True)
class StreamLimits:
    """Bounds on what TCP/TLS peers may hold (see the module docstring)."""

    max_connections: int = 1024
    """Open connections at most, in all."""
    max_per_source: int = 32
    """Open connections at most from (or to) one IP address."""
    handshake_timeout: float = 5.0
    """Seconds a TLS handshake may take from the TCP accept/connect."""
    message_timeout: float = 10.0
    """Seconds a message may take from its first byte to its last; also how long an
    accepted connection may stay silent before its first message (or keep-alive)."""
    idle_timeout: float = 300.0
    """Seconds without a byte either way before the connection is closed."""
    write_buffer_max: int = 1 << 20
    """Bytes queued to a peer that does not read, at most."""
    max_message: int = 65535
    """Largest message framed (bigger: 513 and closed)."""
    keepalive_interval: float = 100.0
    """Seconds without a byte from the peer before we ping a connection we opened (RFC
    5626 §4.4.1 suggests 95-120 s for connection-oriented flows); 0: never ping."""
    keepalive_timeout: float = 10.0
    """Seconds a ping may go unanswered before the connection is taken for dead."""


class TlsPipe:
    """TLS over memory buffers (sans-IO): ciphertext in, plaintext out, and back."""

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side,
                                server_hostname=server_hostname)
        self.handshaken = False
        self.closed = False
        self._queued: list[bytes] = []

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; returns the plaintext now readable. Raises ``ssl.SSLError``
        on a failed handshake or a broken record (OpenSSL has then queued its alert in
        :meth:`outgoing`)."""
        self._in.write(data)
        if not self.handshaken:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshaken = True
            for plain in self._queued:
                self.obj.write(plain)
            self._queued.clear()
        chunks = []
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def start(self) -> None:
        """Client side: produce the ClientHello."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass

    def send(self, plain: bytes) -> None:
        if self.handshaken:
            self.obj.write(plain)
        else:
            self._queued.append(plain)

    def outgoing(self) -> bytes:
        return self._out.read()

    def peer_certificate(self) -> dict[str, Any] | None:
        try:
            return self.obj.getpeercert() or None
        except ValueError:
            return None


class SipConnection(asyncio.Protocol):
    """One TCP or TLS connection carrying SIP (accepted or opened by us)."""

    def __init__(self, table: StreamTransports, *, transport: str, server_side: bool,
                 key: Addr | None = None, server_hostname: str | None = None) -> None:
        self.table = table
        self.kind = transport
        self.server_side = server_side
        self.key = key
        self.server_hostname = server_hostname
        self.hop: Hop | None = None
        self.t: asyncio.Transport | None = None
        self.tls: TlsPipe | None = None
        self.framer = StreamFramer(max_message=table.limits.max_message)
        now = time.monotonic()
        self.opened = now
        self.last_io = now
        self.ready = False
        """Connected (and for TLS, handshake done): messages go out at once."""
        self.pending: deque[bytes] = deque()
        self.closing = False
        self.messages_in = 0
        self.ready_at = 0.0
        self.pinged = False
        """A keep-alive came: the peer is using the connection (RFC 5626 flow)."""
        self.last_rx = now
        """When the peer last sent a byte (our keep-alive is due this long after)."""
        self.last_msg = now
        """When a SIP message last went either way (our own connections idle from it)."""
        self.ping_sent: float | None = None
        """When our unanswered keep-alive went out (None: none outstanding)."""
        self.ping_after = table.limits.keepalive_interval * random.uniform(0.8, 1.0)
        self.aliases: list[Addr] = []
        """Keys this connection also has in the table (RFC 5923 alias)."""

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport
        peer = transport.get_extra_info("peername")
        self.hop = Hop(peer[0], peer[1], self.kind, self.server_hostname or "")
        if self.key is None:
            self.key = (peer[0], peer[1])
        if not self.table._admit(self):
            return
        if self.kind == "tls":
            ctx = self.table.server_ctx if self.server_side else self.table.client_ctx
            if ctx is None:
                self.abort("no TLS context")
                return
            self.tls = TlsPipe(ctx, server_side=self.server_side,
                               server_hostname=None if self.server_side
                               else (self.server_hostname or peer[0]))
            if not self.server_side:
                self.tls.start()
                self._write_raw(self.tls.outgoing())
        else:
            self._ready()

    def data_received(self, data: bytes) -> None:
        self.last_io = self.last_rx = now = time.monotonic()
        if self.closing:
            return
        if self.ping_sent is not None:  # whatever the peer sends shows it is there
            self.ping_sent = None
        if self.tls is not None:
            was = self.tls.handshaken
            try:
                data = self.tls.receive(data)
            except ssl.SSLError as exc:
                self.table.tls_failures += 1
                reason = _tls_reason(exc)
                if not was and data[:1] != b"\x16":
                    reason += " (not a TLS handshake: plaintext on the TLS port?)"
                log.warning("sip.tls_refused", peer=self._peer(), reason=reason,
                            side="server" if self.server_side else "client")
                # the alert OpenSSL wrote; for bytes that are not TLS at all it writes
                # none, so say "protocol version" (fatal) ourselves before closing
                self._write_raw(self.tls.outgoing() or ALERT_PROTOCOL_VERSION)
                self.close()
                if not self.server_side:
                    self.table._failed(self)
                return
            self._write_raw(self.tls.outgoing())
            if not was and self.tls.handshaken:
                self.table.tls_handshakes += 1
                self._ready()
            if self.tls.closed:
                self.close()
            if not data:
                return
        for item in self.framer.feed(data, now):
            if isinstance(item, Frame):
                self.messages_in += 1
                self.last_msg = now
                if self.tls is not None and self.server_side and not self.aliases \
                        and self.tls.peer_certificate() is not None:
                    port = via_alias_port(item.data)
                    if port is not None:
                        self.table._alias(self, port)
                self.table._message(item.data, self)
            elif isinstance(item, Ping):
                self.pinged = True
                self.send(PONG, keepalive=True)
            elif isinstance(item, Pong):
                self.table.keepalive_pongs += 1
            elif isinstance(item, Fault):
                self._fault(item)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.table._lost(self)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # -- ours ---------------------------------------------------------------------------

    def _peer(self) -> str:
        return f"{self.hop[0]}:{self.hop[1]}" if self.hop else "?"

    def _ready(self) -> None:
        self.ready = True
        self.ready_at = time.monotonic()
        while self.pending:
            self.send(self.pending.popleft())

    def _fault(self, fault: Fault) -> None:
        self.table.framing_faults += 1
        log.warning("sip.stream_fault", peer=self._peer(), transport=self.kind,
                    kind=fault.kind, status=fault.status, reason=fault.reason)
        self.table._fault(fault, self)
        self.close()

    def _write_raw(self, data: bytes) -> None:
        if data and self.t is not None and not self.t.is_closing():
            self.t.write(data)

    def send(self, data: bytes, *, keepalive: bool = False) -> None:
        if self.closing:
            return
        if not self.ready or self.t is None:
            if len(self.pending) >= PENDING_MAX:
                self.table.send_drops += 1
                return
            self.pending.append(data)
            return
        self.last_io = time.monotonic()
        if not keepalive:
            self.last_msg = self.last_io
        if self.tls is not None:
            self.tls.send(data)
            self._write_raw(self.tls.outgoing())
        else:
            self._write_raw(data)
        if self.t.get_write_buffer_size() > self.table.limits.write_buffer_max:
            log.warning("sip.stream_not_reading", peer=self._peer(), transport=self.kind)
            self.abort("peer not reading")

    def close(self) -> None:
        """Close after what is queued is written (a 400 or TLS alert goes out first)."""
        if self.closing:
            return
        self.closing = True
        if self.t is not None:
            self.t.close()

    def abort(self, why: str) -> None:
        self.closing = True
        log.info("sip.stream_closed", peer=self._peer(), transport=self.kind, why=why)
        if self.t is not None:
            self.t.abort()

    def sweep(self, now: float) -> None:
        limits = self.table.limits
        if self.closing:
            return
        if self.tls is not None and not self.tls.handshaken:
            if now - self.opened > limits.handshake_timeout:
                self.table.tls_failures += 1
                log.warning("sip.tls_refused", peer=self._peer(),
                            reason=f"handshake not done in {limits.handshake_timeout:g} s",
                            side="server" if self.server_side else "client")
                self.abort("handshake timeout")
                if not self.server_side:
                    self.table._failed(self)
            return
        fault = self.framer.expire(now, limits.message_timeout)
        if fault is not None:
            self._fault(fault)
            return
        if self.server_side and not self.messages_in and not self.pinged \
                and not self.framer.buffered and now - self.ready_at > limits.message_timeout:
            # connected (and TLS done) but silent: a peer holding a slot without using it
            self.table.idle_closed += 1
            log.info("sip.stream_idle_closed", peer=self._peer(), transport=self.kind,
                     why=f"no SIP message within {limits.message_timeout:g} s of connecting")
            self.close()
            return
        if not self.server_side and self.ready:
            if self.ping_sent is not None:
                if now - self.ping_sent > limits.keepalive_timeout:
                    self.table.keepalive_failures += 1
                    log.warning("sip.keepalive_failed", peer=self._peer(), transport=self.kind,
                                why=f"no answer to a keep-alive in {limits.keepalive_timeout:g} s")
                    self.abort("keep-alive unanswered")
                    return
            elif self.ping_after > 0 and now - self.last_rx >= self.ping_after:
                self.ping_sent = now
                self.table.keepalives_sent += 1
                self.framer.awaiting_pong = True
                self.send(PING, keepalive=True)
        idle_since = self.last_io if self.server_side else self.last_msg
        if now - idle_since > limits.idle_timeout:
            self.table.idle_closed += 1
            log.info("sip.stream_idle_closed", peer=self._peer(), transport=self.kind)
            self.close()


class StreamTransports:
    """TCP and TLS listeners and the connection table (one per engine)."""

    def __init__(self, *, on_message: Callable[[bytes, Hop], None],
                 on_fault: Callable[[Fault, Hop], None],
                 on_error: Callable[[Hop], None],
                 limits: StreamLimits = StreamLimits(),
                 server_ctx: ssl.SSLContext | None = None,
                 client_ctx: ssl.SSLContext | None = None) -> None:
        self._on_message = on_message
        self._on_fault = on_fault
        self._on_error = on_error
        self.limits = limits
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.conns: dict[Addr, SipConnection] = {}
        self._all: set[SipConnection] = set()
        self._per_source: Counter[str] = Counter()
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.accepted = 0
        self.refused = 0
        """Connections closed at once: over the total or per-source limit."""
        self.tls_handshakes = 0
        self.tls_failures = 0
        self.framing_faults = 0
        self.idle_closed = 0
        self.send_drops = 0
        self.connect_failures = 0
        self.handler_errors = 0
        self.aliased = 0
        """Accepted connections also used for requests to the peer's Via address."""
        self.keepalives_sent = 0
        """CRLFCRLF pings sent on connections we opened."""
        self.keepalive_pongs = 0
        """CRLF pongs received (answers to our pings)."""
        self.keepalive_failures = 0
        """Connections closed because a ping went unanswered."""

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def listen(self, transport: str, bind: str, port: int) -> int:
        """Listen for ``tcp`` or ``tls`` on ``bind:port``; returns the bound port."""
        loop = self._loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SipConnection(self, transport=transport, server_side=True),
            bind, port, reuse_address=True, backlog=512)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.call_later(1.0, self._sweep)
        return int(server.sockets[0].getsockname()[1])

    def send(self, data: bytes, addr: Addr) -> bool:
        """Send over the connection to ``addr`` (or open one for a TCP/TLS hop); False
        when ``addr`` is for UDP (no connection and not a stream hop)."""
        conn = self.conns.get((addr[0], addr[1]))
        if conn is not None and not conn.closing:
            conn.send(data)
            return True
        transport = getattr(addr, "transport", "udp")
        if transport not in ("tcp", "tls"):
            return False
        if transport == "tls" and self.client_ctx is None:
            log.warning("sip.tls_not_configured", dest=f"{addr[0]}:{addr[1]}")
            self._on_error(addr)  # type: ignore[arg-type]
            return True
        self._connect(addr, transport).send(data)
        return True

    def _connect(self, addr: Addr, transport: str) -> SipConnection:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        key = (addr[0], addr[1])
        name = getattr(addr, "name", "") or addr[0]
        conn = SipConnection(self, transport=transport, server_side=False, key=key,
                             server_hostname=name)
        conn.hop = Hop(addr[0], addr[1], transport, name)
        self.conns[key] = conn

        async def connect() -> None:
            try:
                await asyncio.wait_for(loop.create_connection(lambda: conn, addr[0], addr[1]),
                                       self.limits.handshake_timeout)
            except (OSError, TimeoutError) as exc:
                log.warning("sip.connect_failed", dest=f"{addr[0]}:{addr[1]}",
                            transport=transport, error=str(exc) or type(exc).__name__)
                self._failed(conn)

        loop.create_task(connect())
        if self._sweeper is None:
            self._sweeper = loop.call_later(1.0, self._sweep)
        return conn

    def _admit(self, conn: SipConnection) -> bool:
        assert conn.hop is not None
        ip = conn.hop[0]
        if conn.server_side:
            if len(self._all) >= self.limits.max_connections \
                    or self._per_source[ip] >= self.limits.max_per_source:
                self.refused += 1
                log.warning("sip.stream_refused", peer=f"{ip}:{conn.hop[1]}",
                            transport=conn.kind, open=len(self._all),
                            from_source=self._per_source[ip])
                conn.abort("connection limit")
                return False
            self.accepted += 1
            assert conn.key is not None
            old = self.conns.get(conn.key)
            if old is None or old.closing:
                self.conns[conn.key] = conn
        self._all.add(conn)
        self._per_source[ip] += 1
        return True

    def _lost(self, conn: SipConnection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            ip = conn.hop[0] if conn.hop else ""
            self._per_source[ip] -= 1
            if self._per_source[ip] <= 0:
                del self._per_source[ip]
        for key in conn.aliases:
            if self.conns.get(key) is conn:
                del self.conns[key]
        if conn.key is not None and self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
            if not conn.server_side and not conn.ready:
                self._failed(conn)

    def _alias(self, conn: SipConnection, port: int) -> None:
        """RFC 5923: ``conn`` also carries our requests to (its source address, ``port``)."""
        assert conn.hop is not None
        key = (conn.hop[0], port)
        old = self.conns.get(key)
        if old is not None and old is not conn and not old.closing:
            return  # a connection to that address is up: keep using it
        self.conns[key] = conn
        conn.aliases.append(key)
        self.aliased += 1
        log.info("sip.connection_alias", peer=conn._peer(), transport=conn.kind,
                 alias=f"{key[0]}:{key[1]}")

    def _failed(self, conn: SipConnection) -> None:
        """An outbound connection could not be opened: fail what waited on it."""
        if conn.key is not None and self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        if conn.pending or not conn.ready:
            conn.pending.clear()
            self.connect_failures += 1
            if conn.hop is not None:
                self._call(self._on_error, conn.hop)
        conn.ready = False
        conn.closing = True

    def _message(self, data: bytes, conn: SipConnection) -> None:
        assert conn.hop is not None
        self._call(self._on_message, data, conn.hop)

    def _fault(self, fault: Fault, conn: SipConnection) -> None:
        assert conn.hop is not None
        self._call(self._on_fault, fault, conn.hop)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a handler bug must not kill the connection
            self.handler_errors += 1
            log.exception("sip.stream_handler_failed")

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for conn in list(self._all):
            conn.sweep(now)
        for conn in [c for c in self.conns.values() if c not in self._all and not c.ready]:
            # still connecting: the connect task's own timeout ends it
            _ = conn
        if self._loop is not None and (self._servers or self._all or self.conns):
            self._sweeper = self._loop.call_later(1.0, self._sweep)

    def set_contexts(self, server_ctx: ssl.SSLContext | None,
                     client_ctx: ssl.SSLContext | None) -> None:
        """New TLS contexts (certificate reload): used by connections made from now on;
        connections up keep theirs, so no call is dropped."""
        self.server_ctx, self.client_ctx = server_ctx, client_ctx

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._all) + list(self.conns.values()):
            conn.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass
        self._servers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def stats(self) -> dict[str, int]:
        return {"open": len(self._all), "accepted": self.accepted, "refused": self.refused,
                "tls_handshakes": self.tls_handshakes, "tls_failures": self.tls_failures,
                "framing_faults": self.framing_faults, "idle_closed": self.idle_closed,
                "send_drops": self.send_drops, "connect_failures": self.connect_failures,
                "keepalives_sent": self.keepalives_sent, "keepalive_pongs": self.keepalive_pongs,
                "keepalive_failures": self.keepalive_failures, "aliased": self.aliased}


def _tls_reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or ""
    verify = getattr(exc, "verify_message", None)
    return f"{reason}: {verify}" if verify else (reason or str(exc))
