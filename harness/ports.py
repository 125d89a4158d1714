"""Free loopback ports for test peers (Kamailio, SIPp, baresip, the engine's RTP pool).

Binding port 0 and closing the socket gives a port that is free *now*; another test
process (or this one) may take it before the peer we start binds it. Two measures make
that race rare enough for parallel test runs:

* ports are drawn at random from 10000-32767, below Linux's ephemeral range
  (32768-60999), so the kernel never hands them to sockets bound to port 0;
* every port handed out is remembered for this process (:data:`_RESERVED`) and in a
  shared directory of lock files under the temp dir (a file per port, created with
  ``O_EXCL``, expiring after ``_LEASE`` seconds), so two pytest workers do not pick
  the same port within a lease. Peers release their ports when stopped.

RTP needs even ports (RTCP on the odd one above), so :func:`free_rtp_range` returns an
even-aligned block whose every port is bindable.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
_LOW, _HIGH = 10000, 32767
_LEASE = 120.0
_RESERVED: set[int] = set()
_LOCK_DIR = Path(tempfile.gettempdir()) / "controlroom-harness-ports"


class PortsExhausted(RuntimeError):
    """No free port found after many attempts."""


def _lease(port: int) -> bool:
    """Take a cross-process lease on ``port``; False if another process holds one."""
    _LOCK_DIR.mkdir(exist_ok=True)
    path = _LOCK_DIR / str(port)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime < _LEASE:
                return False
            path.unlink()
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError:
            return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def _take(port: int, kinds: tuple[int, ...]) -> bool:
    if port in _RESERVED or not _bindable(port, kinds):
        return False
    if not _lease(port):
        return False
    _RESERVED.add(port)
    return True


def free_port(*, udp: bool = True, tcp: bool = False) -> int:
    """A port free for UDP (and TCP if asked) on 127.0.0.1, reserved for this process."""
    kinds = tuple(k for k, on in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)) if on)
    if not kinds:
        raise ValueError("ask for udp, tcp or both")
    for _ in range(2000):
        port = random.randint(_LOW, _HIGH)
        if _take(port, kinds):
            return port
    raise PortsExhausted("no free port in 10000-32767 after 2000 attempts")


def free_udp_port() -> int:
    """A free UDP port on 127.0.0.1 (SIP over UDP, a single RTP port)."""
    return free_port(udp=True)


def free_tcp_port() -> int:
    """A free TCP port on 127.0.0.1 (HTTP, MQTT)."""
    return free_port(udp=False, tcp=True)


def free_rtp_range(count: int) -> tuple[int, int]:
    """An even-aligned block of ``count`` UDP ports ``(first, last)``, all free and reserved.

    ``count`` is rounded up to an even number so the block holds whole RTP/RTCP pairs.
    """
    if count < 2:
        raise ValueError("an RTP range needs at least 2 ports")
    count += count % 2
    # Blocks start on multiples of 64 so that many ranges tile the space without
    # fragmenting it into holes too small for the next one.
    slots = (_HIGH - _LOW - count) // 64
    if slots <= 0:
        raise ValueError(f"an RTP range of {count} ports does not fit in {_LOW}-{_HIGH}")
    for _ in range(500):
        base = _LOW + 64 * random.randrange(slots)
        ports = range(base, base + count)
        if any(p in _RESERVED for p in ports):
            continue
        if not all(_bindable(p, (socket.SOCK_DGRAM,)) for p in ports):
            continue
        taken: list[int] = []
        for p in ports:
            if not _lease(p):
                break
            taken.append(p)
        if len(taken) < count:
            release(*taken)
            continue
        _RESERVED.update(ports)
        return base, base + count - 1
    raise PortsExhausted(f"no free block of {count} UDP ports after 500 attempts")


def release(*ports: int) -> None:
    """Give ports back (optional: leases expire on their own)."""
    for p in ports:
        _RESERVED.discard(p)
        try:
            (_LOCK_DIR / str(p)).unlink()
        except OSError:
            pass
