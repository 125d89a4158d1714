"""The SIP UDP socket: one asyncio DatagramProtocol feeding the engine.

Nothing raised by the engine's datagram handler may escape into asyncio's protocol
machinery (it would be logged and the datagram silently lost at best): every exception
is caught, counted and logged here, so a flood of garbage can never stop the socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

Addr = tuple[str, int]

RCVBUF_BYTES = 4 * 1024 * 1024


class SipProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to ``on_datagram(data, addr)``; ICMP errors to ``on_error``."""

    def __init__(self, on_datagram: Callable[[bytes, Addr], None],
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self._on_datagram = on_datagram
        self._on_error = on_error
        self.transport: asyncio.DatagramTransport | None = None
        self.handler_errors = 0
        """Exceptions raised by the handler (bugs): counted, logged, never propagated."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._on_datagram(data, (addr[0], addr[1]))
        except Exception:  # noqa: BLE001 - see module docstring
            self.handler_errors += 1
            log.exception("sip.datagram_handler_failed", source=f"{addr[0]}:{addr[1]}",
                          size=len(data))

    def error_received(self, exc: Exception) -> None:
        # Unconnected UDP on Linux only reports ICMP errors without the peer address;
        # transaction timers cover unreachable peers.
        log.debug("sip.socket_error", error=str(exc))
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:  # noqa: BLE001
                log.exception("sip.error_handler_failed")

    def send(self, data: bytes, addr: Addr) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            self.transport.sendto(data, addr)
        except OSError as exc:
            log.warning("sip.send_failed", dest=f"{addr[0]}:{addr[1]}", error=str(exc))


async def open_sip_socket(bind: str, port: int, on_datagram: Callable[[bytes, Addr], None],
                          on_error: Callable[[Exception], None] | None = None,
                          ) -> tuple[SipProtocol, int]:
    """Bind the SIP UDP socket; returns the protocol and the actual port (for port 0)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: SipProtocol(on_datagram, on_error), local_addr=(bind, port))
    protocol.transport = transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # A burst (a few hundred INVITEs at once, or the loop busy for a moment) must queue
        # in the kernel rather than be dropped: ask for a large receive buffer (capped by
        # net.core.rmem_max).
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        except OSError as exc:
            log.warning("sip.rcvbuf_failed", error=str(exc))
    return protocol, transport.get_extra_info("sockname")[1]
