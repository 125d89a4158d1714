"""harness.ports: reservations end when their user is done, never while it holds the port.

Each test has its own small pool (a window of real loopback ports, its own lock
directory, a fake clock), so it neither disturbs nor depends on other test runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ports
from harness.ports import PortPool, PortsExhausted

UDP = (socket.SOCK_DGRAM,)
TCP = (socket.SOCK_STREAM,)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _window(size: int) -> tuple[int, int]:
    """``size`` consecutive ports, even first, all bindable for UDP and TCP right now."""
    for base in range(20000, 32000, 256):
        if all(ports._bindable(p, UDP + TCP) for p in range(base, base + size)):
            return base, base + size - 1
    pytest.skip("no free window of loopback ports")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pool(tmp_path: Path, clock: Clock) -> Iterator[PortPool]:
    low, high = _window(4)
    p = PortPool(low, high, tmp_path / "locks", lease=60.0, clock=clock)
    yield p
    p.release(*p.held)


def test_a_held_port_is_never_handed_out_twice(pool: PortPool) -> None:
    """Four ports in the window: four distinct ones, then the pool is exhausted (within the
    lease, a reserved port is not handed out again even though nothing has bound it)."""
    got = [pool.port(UDP, attempts=200) for _ in range(4)]
    assert sorted(got) == list(range(pool.low, pool.high + 1))
    with pytest.raises(PortsExhausted, match=r"4 reserved by this process"):
        pool.port(UDP, attempts=200)


def test_release_gives_a_port_back_at_once(pool: PortPool) -> None:
    """A released port is handed out again, and its lock file is gone."""
    got = [pool.port(UDP, attempts=200) for _ in range(4)]
    pool.release(got[2])
    assert not (pool.lock_dir / str(got[2])).exists()
    assert pool.port(UDP, attempts=200) == got[2]


def test_unreleased_ports_come_back_after_the_lease_so_a_long_run_never_runs_dry(
        pool: PortPool, clock: Clock) -> None:
    """The leak: ports nobody released used to stay reserved for the whole process. Now a
    port past its lease that nothing has bound is handed out again (many rounds on a
    window of 4 ports, never released)."""
    for _ in range(5):
        got = {pool.port(UDP, attempts=200) for _ in range(4)}
        assert got == set(range(pool.low, pool.high + 1))
        with pytest.raises(PortsExhausted):
            pool.port(UDP, attempts=200)
        clock.now += 61.0


def test_a_port_still_bound_by_its_user_is_renewed_not_reissued(
        pool: PortPool, clock: Clock) -> None:
    """Past the lease, a port its user has bound (a peer running) stays reserved; its
    lease is renewed from then, so even a moment unbound (a restart) does not lose it."""
    got = [pool.port(TCP, attempts=200) for _ in range(4)]
    user = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    user.bind((ports.HOST, got[0]))
    user.listen()
    try:
        clock.now += 61.0
        fresh = {pool.port(TCP, attempts=200) for _ in range(3)}
        assert fresh == set(got[1:])
    finally:
        user.close()  # the user restarts: its port is unbound for a moment
    clock.now += 30.0  # within the renewed lease
    with pytest.raises(PortsExhausted):
        pool.port(TCP, attempts=200)
    assert got[0] in pool.held


def test_kinds_are_checked_as_the_user_binds(pool: PortPool, clock: Clock) -> None:
    """A TCP port past its lease, whose user listens on TCP only, is in use: the renewal
    check binds the kinds the port was asked for, not UDP."""
    port = pool.port(TCP, attempts=200)
    user = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    user.bind((ports.HOST, port))
    user.listen()
    try:
        clock.now += 61.0
        pool.expire()
        assert port in pool.held
    finally:
        user.close()


def test_rtp_ranges_stay_reserved_until_released(tmp_path: Path, clock: Clock) -> None:
    """An RTP range is even-aligned and whole; it does not expire (its user binds the
    ports only while calls are up) and comes back when released."""
    low, high = _window(256)
    pool = PortPool(low, high, tmp_path / "locks", lease=60.0, clock=clock)
    first, last = pool.rtp_range(5)
    assert first % 2 == 0 and last - first + 1 == 6
    clock.now += 10_000.0
    pool.expire()
    assert set(range(first, last + 1)) <= pool.held
    other = pool.rtp_range(6)
    assert not set(range(other[0], other[1] + 1)) & set(range(first, last + 1))
    pool.release(*range(first, last + 1), *range(other[0], other[1] + 1))
    assert not pool.held and not list((tmp_path / "locks").iterdir())


def test_another_live_process_lock_is_respected_and_a_dead_ones_cleared(
        tmp_path: Path, clock: Clock) -> None:
    """A lock file of another process that is alive keeps the port out of this pool
    however old; once that process has died the port is free to take."""
    low, high = _window(1)
    locks = tmp_path / "locks"
    locks.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (locks / str(low)).write_text(str(other.pid))
        os.utime(locks / str(low), (0, 0))  # ancient: age alone does not end it
        pool = PortPool(low, high, locks, lease=60.0, clock=clock)
        with pytest.raises(PortsExhausted):
            pool.port(UDP, attempts=20)
    finally:
        other.kill()
        other.wait()
    assert pool.port(UDP, attempts=20) == low
    assert (locks / str(low)).read_text() == str(os.getpid())
    pool.release(low)


def test_two_pools_in_one_lock_directory_never_share_a_port(
        tmp_path: Path, clock: Clock) -> None:
    """Two processes' pools (here two pools and one forged foreign pid) never both hold a
    port: the second sees the first's lock."""
    low, high = _window(2)
    a = PortPool(low, high, tmp_path / "locks", lease=60.0, clock=clock)
    first = a.port(UDP, attempts=200)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the lock as another live process would have written it
        (tmp_path / "locks" / str(first)).write_text(str(other.pid))
        b = PortPool(low, high, tmp_path / "locks", lease=60.0, clock=clock)
        second = b.port(UDP, attempts=200)
        assert second != first
        with pytest.raises(PortsExhausted):
            b.port(UDP, attempts=200)
    finally:
        other.kill()
        other.wait()


def test_bad_requests_say_what_is_wrong(pool: PortPool) -> None:
    """No socket kind, a tiny RTP range, a range too big for the window, a bad window."""
    with pytest.raises(ValueError, match="ask for udp, tcp or both"):
        pool.port(())
    with pytest.raises(ValueError, match="at least 2 ports"):
        pool.rtp_range(1)
    with pytest.raises(ValueError, match="does not fit"):
        pool.rtp_range(64)
    with pytest.raises(ValueError, match="bad port range"):
        PortPool(30000, 20000, pool.lock_dir)
    with pytest.raises(ValueError, match="ask for udp, tcp or both"):
        ports.free_port(udp=False, tcp=False)
