"""The SIP UDP socket: a non-blocking socket read until empty on each wake-up.

Why not an asyncio DatagramProtocol: asyncio reads ONE datagram per socket per event-loop
iteration. With the media clock's tick taking milliseconds per iteration at a few hundred
RTP legs, a burst of INVITEs (plus the proxy's retransmissions of them) then queues for
seconds in the kernel buffer. Here every readiness wake-up reads up to ``batch``
datagrams, and handles them for at most ``budget`` seconds of wall time (so neither a
flood nor a burst of expensive INVITEs can hold the loop away from the 20 ms media clock);
what is left is kept, in order, and handled first on the next loop iteration.

Each batch is handed on in priority order: responses and ACK/BYE/CANCEL first (they end
or confirm calls that already exist and are cheap), then everything else (new INVITEs...)
in arrival order. A CANCEL whose INVITE is in the same batch stays after that INVITE.

Overload signal: the kernel's receive timestamp of every datagram (``SO_TIMESTAMPNS``) is
kept, and :attr:`SipProtocol.wait` is the time the datagram now being handled has waited
since it reached the host (kernel queue + this batch). The engine sheds new non-emergency
INVITEs when it is too high.

Nothing raised by the handler may escape into the event loop (the reader would be
logged and the rest of the batch lost): every exception is caught, counted and logged,
so a flood of garbage can never stop the socket.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Addr = tuple[str, int]

RCVBUF_BYTES = 4 * 1024 * 1024
BATCH = 256
"""Datagrams read and held at most (the rest wait in the kernel for the next iteration)."""
BUDGET = 0.010
"""Seconds of handling per wake-up at most: under half the 20 ms media period."""
SHARE = 0.25
MAX_BUDGET = 0.05
"""When the loop was away from SIP for long (the media clock catching up runs up to ten
ticks back to back), SIP may use ``SHARE`` of that time, up to ``MAX_BUDGET`` s, instead
of ``BUDGET``: a fixed 10 ms would then admit a handful of INVITEs per quarter second
and starve call set-up exactly when the machine is busiest."""
SLOW_WAKEUP = 0.2
"""A wake-up longer than this is logged (a single datagram's handling blocked the loop)."""
MAX_DATAGRAM = 65535
SEND_QUEUE_MAX = 4096
"""Datagrams kept while the kernel send buffer is full; beyond, dropped (SIP retransmits)."""

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
_TIMESPEC = struct.Struct("@ll")
_U32 = struct.Struct("@I")
_ANC = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size)
_FIRST = (b"SIP/", b"ACK ", b"BYE ", b"CANCEL ")
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)


def _call_id(data: bytes) -> bytes | None:
    m = _CALL_ID.search(data)
    return m.group(1) if m else None


def prioritise(batch: list[tuple[bytes, Addr, float]]) -> list[tuple[bytes, Addr, float]]:
    """Responses and ACK/BYE/CANCEL first, the rest after, each in arrival order; a
    CANCEL whose INVITE (same Call-ID) is among the rest is kept after that INVITE."""
    first: list[tuple[bytes, Addr, float]] = []
    rest: list[tuple[bytes, Addr, float]] = []
    cancels = False
    for item in batch:
        head = item[0][:7]
        if head.startswith(_FIRST):
            first.append(item)
            cancels = cancels or head == b"CANCEL "
        else:
            rest.append(item)
    if not first:
        return rest
    if cancels and rest:
        invites = {_call_id(d) for d, _, _ in rest if d.startswith(b"INVITE ")}
        if invites:
            keep, later = [], []
            for item in first:
                if item[0].startswith(b"CANCEL ") and _call_id(item[0]) in invites:
                    later.append(item)
                else:
                    keep.append(item)
            return keep + rest + later
    return first + rest


class _SocketHandle:
    """The small part of ``asyncio.DatagramTransport`` the engine uses on the socket."""

    def __init__(self, proto: SipProtocol) -> None:
        self._proto = proto

    def close(self) -> None:
        self._proto.close()

    def is_closing(self) -> bool:
        return self._proto.closed

    def sendto(self, data: bytes, addr: Addr) -> None:
        self._proto.send(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sock = self._proto.sock
        if sock is None:
            return default
        if name == "socket":
            return sock
        if name == "sockname":
            return sock.getsockname()
        return default


class SipProtocol:
    """Hands each datagram to ``on_datagram(data, addr)``; socket errors to ``on_error``.

    Read-only figures: :attr:`wait` (seconds the datagram being handled has waited since
    the kernel received it), :attr:`max_wait`, :attr:`datagrams`, :attr:`wakeups`,
    :attr:`max_batch`, :attr:`kernel_drops` (datagrams the kernel dropped on a full
    receive buffer), :attr:`handler_errors`, :attr:`send_drops`.
    """

    def __init__(self, on_datagram: Callable[[bytes, Addr], None],
                 on_error: Callable[[Exception], None] | None = None, *,
                 batch: int = BATCH, budget: float = BUDGET) -> None:
        self._on_datagram = on_datagram
        self._on_error = on_error
        self.batch = batch
        self.budget = budget
        self._backlog: list[tuple[bytes, Addr, float]] = []
        """Read but not yet handled (the budget ran out), in handling order."""
        self._resume: asyncio.Handle | None = None
        self._last_end = time.perf_counter()
        self.sock: socket.socket | None = None
        self.transport: _SocketHandle | None = None
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timestamps = False
        self._pending: deque[tuple[bytes, Addr]] = deque()
        self._writing = False
        self.handler_errors = 0
        """Exceptions raised by the handler (bugs): counted, logged, never propagated."""
        self.wait = 0.0
        self.max_wait = 0.0
        self.datagrams = 0
        self.wakeups = 0
        self.max_batch = 0
        self.kernel_drops = 0
        self.send_drops = 0
        self.deferred = 0
        """Wake-ups that ran out of budget and left datagrams for the next iteration."""
        self.max_wakeup = 0.0
        """Longest time spent handling datagrams in one wake-up, seconds."""

    @property
    def backlog(self) -> int:
        """Datagrams read from the socket but not handled yet."""
        return len(self._backlog)

    def attach(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        """Take over a bound UDP socket: non-blocking, timestamped, read on readiness."""
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self._timestamps = True
        except OSError:  # not Linux: the wait then counts from the read, not the arrival
            self._timestamps = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
        except OSError:
            pass
        self.sock, self._loop = sock, loop
        self.transport = _SocketHandle(self)
        loop.add_reader(sock.fileno(), self._read_ready)

    def close(self) -> None:
        """Stop reading and close the socket (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._backlog = []
        if self.sock is not None and self._loop is not None:
            fd = self.sock.fileno()
            if fd >= 0:
                self._loop.remove_reader(fd)
                if self._writing:
                    self._loop.remove_writer(fd)
            self.sock.close()
        self._pending.clear()

    # -- receive -----------------------------------------------------------------------

    def _read_batch(self, limit: int) -> list[tuple[bytes, Addr, float]]:
        """Up to ``limit`` datagrams with their arrival time (``time.time()`` scale)."""
        sock = self.sock
        assert sock is not None
        out: list[tuple[bytes, Addr, float]] = []
        ts_wanted = self._timestamps
        for _ in range(limit):
            try:
                data, anc, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _ANC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP error queued on the socket: report, keep reading
                self._error(exc)
                continue
            arrived = 0.0
            for level, kind, payload in anc:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == _SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    arrived = sec + nsec * 1e-9
                elif kind == _SO_RXQ_OVFL and len(payload) >= _U32.size:
                    # cumulative count of datagrams dropped on a full buffer
                    self.kernel_drops = _U32.unpack_from(payload)[0]
            if not arrived or not ts_wanted:
                arrived = time.time()
            out.append((data, (addr[0], addr[1]), arrived))
        return out

    def _read_ready(self) -> None:
        if self._resume is not None:
            return  # a resume is already queued for this iteration: it reads too
        self._safe_drain()

    def _resumed(self) -> None:
        self._resume = None
        self._safe_drain()

    def _safe_drain(self) -> None:
        try:
            self.drain()
        except Exception:  # noqa: BLE001 - the reader must survive anything
            self.handler_errors += 1
            log.exception("sip.read_failed")

    def drain(self) -> int:
        """Read what is queued (up to ``batch`` held) and handle it in priority order for
        at most ``budget`` s; returns how many were handled. The rest is handled on the
        next loop iteration. Safe to call from anywhere on the loop."""
        if self.closed or self.sock is None:
            return 0
        room = self.batch - len(self._backlog)
        fresh = self._read_batch(room) if room > 0 else []
        if fresh:
            self.wakeups += 1
            self.datagrams += len(fresh)
            if len(fresh) > self.max_batch:
                self.max_batch = len(fresh)
        if not fresh and not self._backlog:
            return 0
        # re-ordered together: a BYE read now goes before INVITEs left from last time
        items = prioritise(self._backlog + fresh) if fresh else self._backlog
        self._backlog = []
        start = time.perf_counter()
        # how long SIP work has been kept waiting by the rest of the loop
        oldest_wait = time.time() - min(it[2] for it in items)
        away = min(start - self._last_end, oldest_wait)
        stop_at = start + min(MAX_BUDGET, max(self.budget, SHARE * away))
        done = 0
        for data, addr, arrived in items:
            if self.closed:
                return done
            wait = time.time() - arrived
            self.wait = wait if wait > 0 else 0.0
            if self.wait > self.max_wait:
                self.max_wait = self.wait
            try:
                self._on_datagram(data, addr)
            except Exception:  # noqa: BLE001 - see module docstring
                self.handler_errors += 1
                log.exception("sip.datagram_handler_failed", source=f"{addr[0]}:{addr[1]}",
                              size=len(data))
            done += 1
            if done < len(items) and time.perf_counter() > stop_at:
                self._backlog = items[done:]
                self.deferred += 1
                if self._resume is None and self._loop is not None:
                    self._resume = self._loop.call_soon(self._resumed)
                break
        self._last_end = end = time.perf_counter()
        spent = end - start
        if spent > self.max_wakeup:
            self.max_wakeup = spent
        if spent > SLOW_WAKEUP:
            log.warning("sip.slow_wakeup", seconds=round(spent, 3), handled=done)
        return done

    def _error(self, exc: Exception) -> None:
        # Unconnected UDP on Linux only reports ICMP errors without the peer address;
        # transaction timers cover unreachable peers.
        log.debug("sip.socket_error", error=str(exc))
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:  # noqa: BLE001
                log.exception("sip.error_handler_failed")

    # kept for callers written against the asyncio protocol
    def error_received(self, exc: Exception) -> None:
        self._error(exc)

    # -- send --------------------------------------------------------------------------

    def send(self, data: bytes, addr: Addr) -> None:
        """Send at once; if the kernel buffer is full, queue (bounded) until writable."""
        if self.closed or self.sock is None:
            return
        if self._pending:
            self._queue(data, addr)
            return
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._queue(data, addr)
        except OSError as exc:
            log.warning("sip.send_failed", dest=f"{addr[0]}:{addr[1]}", error=str(exc))

    def _queue(self, data: bytes, addr: Addr) -> None:
        if len(self._pending) >= SEND_QUEUE_MAX:
            self.send_drops += 1
            return
        self._pending.append((data, addr))
        if not self._writing and self._loop is not None and self.sock is not None:
            self._writing = True
            self._loop.add_writer(self.sock.fileno(), self._write_ready)

    def _write_ready(self) -> None:
        sock = self.sock
        while self._pending and sock is not None and not self.closed:
            data, addr = self._pending[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("sip.send_failed", dest=f"{addr[0]}:{addr[1]}", error=str(exc))
            self._pending.popleft()
        if self._writing and self._loop is not None and sock is not None and not self.closed:
            self._loop.remove_writer(sock.fileno())
        self._writing = False


async def open_sip_socket(bind: str, port: int, on_datagram: Callable[[bytes, Addr], None],
                          on_error: Callable[[Exception], None] | None = None,
                          ) -> tuple[SipProtocol, int]:
    """Bind the SIP UDP socket; returns the protocol and the actual port (for port 0).

    Raises OSError when the address is taken or cannot be bound (nothing left open).
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # A burst (a few hundred INVITEs at once, or the loop busy for a moment) must queue
        # in the kernel rather than be dropped: ask for a large receive buffer (capped by
        # net.core.rmem_max). The wait figure, not the buffer, bounds how stale work gets.
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        except OSError as exc:
            log.warning("sip.rcvbuf_failed", error=str(exc))
        sock.bind((bind, port))
        protocol = SipProtocol(on_datagram, on_error)
        protocol.attach(sock, loop)
    except BaseException:
        sock.close()
        raise
    return protocol, sock.getsockname()[1]
