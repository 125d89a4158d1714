"""Free loopback ports for test peers (Kamailio, SIPp, baresip, the engine's RTP pool).

Binding port 0 and closing the socket gives a port that is free *now*; another test
process (or this one) may take it before the peer we start binds it. So every port
handed out is *reserved* until its user is done with it:

* ports are drawn at random from 10000-32767, below Linux's ephemeral range
  (32768-60999), so the kernel never hands them to sockets bound to port 0;
* a reservation is held in this process (:class:`PortPool`) and, for other processes,
  in a shared directory of lock files under the temp dir (a file per port, created with
  ``O_EXCL``, holding the owner's pid);
* it ends when the user gives the port back (:func:`release`; the harness's peers do
  when stopped), or, for a single port (the many callers that never give one back: a
  port written into a config), once it is at least ``lease`` seconds old *and* nothing
  has it bound when the pool looks: a port still bound (a peer running) has its
  reservation renewed instead. This keeps a long run from exhausting the pool (it used
  to keep every port it ever handed out) while a port whose user is alive and holding
  it is never handed out twice. RTP ranges do not expire (their users bind them only
  while calls are up, and all release them when stopped);
* another process's lock file stands as long as that process lives, and is cleared once
  it has died (a crashed run leaves no port locked).

The one window left open: a user that closes its port for longer than ``lease`` after
getting it, and means to bind it again (a node restarted on the same port), may find it
handed to someone else if this process asked for ports in between. Such users should not
release the port and should restart within the lease, or hold a socket.

RTP needs even ports (RTCP on the odd one above), so :func:`free_rtp_range` returns an
even-aligned block whose every port is bindable.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
_LOW, _HIGH = 10000, 32767
_LEASE = 300.0
_LOCK_DIR = Path(tempfile.gettempdir()) / "controlroom-harness-ports"
_UDP, _TCP = (socket.SOCK_DGRAM,), (socket.SOCK_STREAM,)


class PortsExhausted(RuntimeError):
    """No free port found after many attempts."""


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class PortPool:
    """Reservations of ports in ``low``-``high``, for this process and against others.

    Args:
        low, high: the range ports are drawn from (inclusive).
        lock_dir: the directory of lock files shared with other processes.
        lease: seconds a reservation lasts at least; after that it lasts while the port
            is bound, and ends the first time the pool finds it free.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, low: int, high: int, lock_dir: Path, *, lease: float = _LEASE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high}")
        self.low, self.high, self.lock_dir, self.lease = low, high, lock_dir, lease
        self._clock = clock
        self._held: dict[int, tuple[float, tuple[int, ...]]] = {}
        """port -> (when its lease runs out, the socket kinds its user binds)."""
        self._next_expiry = float("inf")
        # Peers are started from worker threads too (asyncio.to_thread): one at a time,
        # or two threads could both find a port free and lock it.
        self._mutex = threading.RLock()

    @property
    def held(self) -> frozenset[int]:
        """The ports this process has reserved now."""
        return frozenset(self._held)

    # -- reservations ------------------------------------------------------------
    def expire(self) -> None:
        """End the reservations past their lease whose port nobody has bound; renew the
        others (a port in use stays reserved, here and in its lock file)."""
        with self._mutex:
            self._expire(self._clock())

    def _expire(self, now: float) -> None:
        if now < self._next_expiry:
            return
        nxt = float("inf")
        for port, (until, kinds) in list(self._held.items()):
            if until > now:
                nxt = min(nxt, until)
            elif _bindable(port, kinds):
                del self._held[port]
                self._unlock(port)
            else:
                self._held[port] = (now + self.lease, kinds)
                nxt = min(nxt, now + self.lease)
        self._next_expiry = nxt

    def release(self, *ports: int) -> None:
        """Give ports back at once."""
        with self._mutex:
            for p in ports:
                if self._held.pop(p, None) is not None:
                    self._unlock(p)

    def _hold(self, ports: range | list[int], kinds: tuple[int, ...], *,
              expires: bool = True) -> None:
        until = self._clock() + self.lease if expires else float("inf")
        for p in ports:
            self._held[p] = (until, kinds)
        self._next_expiry = min(self._next_expiry, until)

    # -- lock files (other processes) --------------------------------------------
    def _lock(self, port: int) -> bool:
        """Take the cross-process lock on ``port``; False if a live process holds it."""
        self.lock_dir.mkdir(exist_ok=True)
        path = self.lock_dir / str(port)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(path):
                    return False
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    return False
                continue
            except OSError:
                return False
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return True
        return False  # another process took it between our unlink and create

    def _stale(self, path: Path) -> bool:
        """A lock whose owner has died, or ours from an earlier pool (not held now)."""
        try:
            text = path.read_text().strip()
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False
        if not text.isdigit():  # being written, or damaged: trust it for one lease
            return age > self.lease
        pid = int(text)
        if pid == os.getpid():
            return int(path.name) not in self._held
        return not _alive(pid)

    def _unlock(self, port: int) -> None:
        path = self.lock_dir / str(port)
        try:
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()
        except OSError:
            pass

    # -- handing out -------------------------------------------------------------
    def _take(self, port: int, kinds: tuple[int, ...]) -> bool:
        if port in self._held or not _bindable(port, kinds) or not self._lock(port):
            return False
        self._hold([port], kinds)
        return True

    def port(self, kinds: tuple[int, ...], attempts: int = 2000) -> int:
        """A port bindable for every socket kind in ``kinds``, reserved."""
        if not kinds:
            raise ValueError("ask for udp, tcp or both")
        with self._mutex:
            self._expire(self._clock())
            for _ in range(attempts):
                port = random.randint(self.low, self.high)
                if self._take(port, kinds):
                    return port
        raise PortsExhausted(f"no free port in {self.low}-{self.high} after {attempts} "
                             f"attempts ({len(self._held)} reserved by this process)")

    def rtp_range(self, count: int, attempts: int = 500) -> tuple[int, int]:
        """An even-aligned block of ``count`` UDP ports (rounded up to pairs), reserved."""
        if count < 2:
            raise ValueError("an RTP range needs at least 2 ports")
        count += count % 2
        # Blocks start on multiples of 64 so that many ranges tile the space without
        # fragmenting it into holes too small for the next one.
        first = self.low + self.low % 2
        slots = (self.high - first - count) // 64
        if slots <= 0:
            raise ValueError(f"an RTP range of {count} ports does not fit in "
                             f"{self.low}-{self.high}")
        with self._mutex:
            self._expire(self._clock())
            for _ in range(attempts):
                base = first + 64 * random.randrange(slots)
                ports = range(base, base + count)
                if any(p in self._held for p in ports):
                    continue
                if not all(_bindable(p, _UDP) for p in ports):
                    continue
                taken: list[int] = []
                for p in ports:
                    if not self._lock(p):
                        break
                    taken.append(p)
                if len(taken) < count:
                    for p in taken:
                        self._unlock(p)
                    continue
                # No lease: an RTP range's user binds its ports only while calls are up,
                # so "unbound" does not mean "done"; every user releases it when stopped.
                self._hold(ports, _UDP, expires=False)
                return base, base + count - 1
        raise PortsExhausted(f"no free block of {count} UDP ports after {attempts} attempts "
                             f"({len(self._held)} ports reserved by this process)")


_POOL = PortPool(_LOW, _HIGH, _LOCK_DIR)


def free_port(*, udp: bool = True, tcp: bool = False) -> int:
    """A port free for UDP (and TCP if asked) on 127.0.0.1, reserved for this process."""
    kinds = tuple(k for k, on in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)) if on)
    return _POOL.port(kinds)


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
    return _POOL.rtp_range(count)


def release(*ports: int) -> None:
    """Give ports back (optional: a reservation ends on its own once the port is unused
    past its lease)."""
    _POOL.release(*ports)
