"""The engine's SIP transports beyond the UDP socket: TCP and TLS (:mod:`telephony.streams`).

Started by :meth:`TransportsMixin._start_streams` when ``sip.tcp`` or ``sip.tls`` is set:
TCP on the UDP port number, TLS on ``sip.tls_port``. Every message the core produces
goes through :meth:`TransportsMixin._send_sip`: over the connection to its destination
when there is one (or a TCP/TLS destination, which opens one), else over UDP. What
arrives on a connection reaches the core with a :class:`telephony.sip.hop.Hop` source,
so responses go back on it; a framing fault is answered (400) and closes it; a
connection we could not open fails the requests waiting on it at once (503) instead
of after timer B.

Certificates: read at start, and again on SIGHUP (:meth:`TransportsMixin.reload_tls`):
new connections use the new certificate, connections up keep theirs, so no call drops.
Days to expiry are in :meth:`health` (under 14 days: degraded) and /metrics
(``sip_tls_cert_days_left``).

Mutual TLS per trunk line (``lines[].tls_client_cert``): an INVITE on such a line must
come over TLS from a client whose certificate verified against the CAs configured and
was issued by the line's CA (:meth:`TransportsMixin._tls_client_ok`); else 403.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import weakref
from typing import TYPE_CHECKING, Any

import structlog

from config.schema import LineSettings
from config.telephony import SipSettings
from telephony import tls
from telephony.sip.framing import Fault
from telephony.sip.hop import Hop, transport_of
from telephony.sip.ua import UserAgent
from telephony.streams import StreamLimits, StreamTransports
from telephony.transport import SipProtocol

log = structlog.get_logger("telephony.engine")

EXPIRY_WARNING_DAYS = 14.0
"""Health turns degraded when our TLS certificate expires within this many days."""

_RELOADABLE: weakref.WeakSet[Any] = weakref.WeakSet()


def _on_sighup() -> None:
    for engine in list(_RELOADABLE):
        engine.reload_tls()


class TransportsMixin:
    """TCP/TLS for :class:`telephony.engine.Engine`."""

    settings: SipSettings
    lines: list[LineSettings]
    sip_port: int
    _ua: UserAgent | None
    _sock: SipProtocol | None
    _running: bool
    _rx_wait: float
    _loop: asyncio.AbstractEventLoop
    _conns: StreamTransports | None = None
    _tls: tls.TlsContexts | None = None
    tls_port: int = 0
    """Actual TLS port (after start; 0: no TLS)."""
    tcp_port: int = 0
    """Actual TCP port (after start; 0: no TCP)."""

    if TYPE_CHECKING:  # provided by EngineBase (after this class in the MRO)
        def _now(self) -> float: ...

        def _pump(self) -> None: ...

    async def _start_streams(self) -> dict[str, int]:
        """Listen on TCP/TLS as configured; returns our port per transport."""
        s = self.settings
        ports = {"udp": self.sip_port}
        if not (s.tcp or s.tls):
            return ports
        if s.tls:
            self._tls = tls.load(s, self.lines)
        self._conns = StreamTransports(
            on_message=self._on_stream_message, on_fault=self._on_stream_fault,
            on_error=self._on_stream_error,
            limits=StreamLimits(max_connections=s.tcp_max_connections,
                                max_per_source=s.tcp_max_per_source,
                                handshake_timeout=s.tls_handshake_timeout,
                                message_timeout=s.tcp_message_timeout,
                                idle_timeout=s.tcp_idle_timeout,
                                max_message=s.max_message_bytes),
            server_ctx=self._tls.server if self._tls else None,
            client_ctx=self._tls.client if self._tls else None)
        try:
            if s.tcp:
                self.tcp_port = ports["tcp"] = await self._conns.listen("tcp", s.bind,
                                                                         self.sip_port)
            if s.tls:
                self.tls_port = ports["tls"] = await self._conns.listen("tls", s.bind,
                                                                         s.tls_port)
        except BaseException:
            await self._conns.close()
            self._conns = None
            raise
        if self._tls is not None:
            _RELOADABLE.add(self)
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _on_sighup)
            except (RuntimeError, ValueError, NotImplementedError):
                pass  # not the main thread: reload_tls() is still callable
            log.info("sip.tls_certificate", subject=self._tls.subject,
                     days_left=round(tls.days_left(self._tls.not_after), 1))
        return ports

    async def _stop_streams(self) -> None:
        _RELOADABLE.discard(self)
        if self._conns is not None:
            await self._conns.close()

    def _send_sip(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._conns is not None and self._conns.send(data, addr):
            return
        if transport_of(addr) != "udp":
            # a TCP/TLS destination with no stream transport configured: cannot go
            log.warning("sip.transport_not_configured", dest=f"{addr[0]}:{addr[1]}",
                        transport=transport_of(addr))
            self._loop.call_soon(self._on_stream_error, addr)
            return
        assert self._sock is not None
        self._sock.send(data, addr)

    def _on_stream_message(self, data: bytes, hop: Hop) -> None:
        if not self._running or self._ua is None:
            return
        self._rx_wait = 0.0
        self._ua.receive(data, hop, self._now())
        self._pump()

    def _on_stream_fault(self, fault: Fault, hop: Hop) -> None:
        if not self._running or self._ua is None:
            return
        self._ua.receive_fault(fault.head, hop, fault.status, fault.reason, fault.kind,
                               self._now())
        self._pump()

    def _on_stream_error(self, hop: Any) -> None:
        if not self._running or self._ua is None:
            return
        self._ua.transport_error(hop, self._now())
        self._pump()

    def reload_tls(self) -> bool:
        """Re-read the certificate, key and CAs (SIGHUP). Connections up keep theirs; a
        bad file keeps the old ones (logged). Returns whether the new ones are in use."""
        if self._conns is None or not self.settings.tls:
            return False
        try:
            new = tls.load(self.settings, self.lines)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("sip.tls_reload_failed", error=str(exc),
                      detail="the certificate in use is kept")
            return False
        self._tls = new
        self._conns.set_contexts(new.server, new.client)
        log.info("sip.tls_reloaded", subject=new.subject,
                 days_left=round(tls.days_left(new.not_after), 1))
        return True

    def _tls_client_ok(self, line: LineSettings, source: tuple[str, int]) -> bool:
        """Mutual TLS: did ``source``'s connection present a certificate issued by one of
        the line's CAs? (The handshake already verified its chain.)"""
        if not line.tls_client_cert:
            return True
        if transport_of(source) != "tls" or self._conns is None or self._tls is None:
            return False
        conn = self._conns.conns.get((source[0], source[1]))
        cert = conn.tls.peer_certificate() if conn is not None and conn.tls else None
        issuer = tls.issuer_of(cert)
        return issuer is not None and issuer in self._tls.line_issuers.get(line.name, ())

    def transport_health(self) -> list[tuple[str, str]]:
        if self._tls is None:
            return []
        days = tls.days_left(self._tls.not_after)
        if days < EXPIRY_WARNING_DAYS:
            state = "expired" if days < 0 else f"expires in {days:.1f} days"
            return [("sip_tls", f"SIP TLS certificate {self._tls.subject!r} {state}")]
        return []

    def transport_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self._conns is not None:
            out.update({f"stream_{k}": v for k, v in self._conns.stats().items()})
        if self._tls is not None:
            out["tls_cert_days_left"] = int(tls.days_left(self._tls.not_after))
            out["tls_cert_not_after"] = int(self._tls.not_after)
        return out
