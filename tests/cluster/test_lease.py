"""The routing-leader lease (store/lease.py): one leader at a time, real faults.

Three contender processes (``python -m store.lease``) on one throw-away PostgreSQL.
``kill -9`` of the leader: another leads within 1 s. A cable pull of the leader (its own
network namespace, veth down): it steps down before the server releases its lock, and
another node leads a few seconds after the cut; never two leaders at once. The leader's
path to the store cut silently while its other connection is inside a fenced write
transaction (issue 14): another node still leads ~``release_after`` after the cut.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.cluster import NamespaceNet, namespaces_available
from harness.postgres import Postgres
from harness.postgres import available as postgres_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed")]

ROOT = Path(__file__).resolve().parents[2]


class Contender:
    def __init__(self, url: str, node: str, prefix: list[str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.node = node
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "store.lease",
                                      url, node, "0.1"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.events: list[dict] = []
        self.other: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.other.append(line)

    @property
    def leading(self) -> bool:
        return bool(self.events) and self.events[-1]["leader"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def _wait_leader(cs: list[Contender], timeout: float, exclude: Contender | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lead = [c for c in cs if c is not exclude and c.leading]
        if lead:
            return lead
        time.sleep(0.02)
    return []


def _intervals(cs: list[Contender], end: float) -> list[tuple[float, float, str, int]]:
    out: list[tuple[float, float, str, int]] = []
    for c in cs:
        start: float | None = None
        term = 0
        for e in c.events:
            if e["leader"]:
                start, term = e["at"], e["term"]
            elif start is not None:
                out.append((start, e["at"], c.node, term))
                start = None
        if start is not None:
            out.append((start, c.events[-1].get("end", end), c.node, term))
    return sorted(out)


def test_kill_9_of_the_leader_hands_the_lease_on_within_a_second(pg_url: str) -> None:
    cs = [Contender(pg_url, f"n{i}") for i in (1, 2, 3)]
    try:
        lead = _wait_leader(cs, 20)
        assert len(lead) == 1, [c.events + c.other for c in cs]
        old = lead[0]
        time.sleep(1.0)
        at = time.time()
        os.kill(old.proc.pid, signal.SIGKILL)
        new = _wait_leader(cs, 5, exclude=old)
        assert len(new) == 1, [c.events + c.other for c in cs]
        took = new[0].events[-1]["at"] - at
        assert took < 1.0, took
        assert new[0].events[-1]["term"] == old.events[-1]["term"] + 1
        print(f"\nlease: kill -9 of leader {old.node} -> {new[0].node} leads "
              f"{took:.2f} s later (term {new[0].events[-1]['term']})")
    finally:
        for c in cs:
            c.stop()


@pytest.mark.skipif(not namespaces_available(), reason="a network cut needs namespaces (root)")
def test_network_cut_of_the_leader_never_gives_two_leaders() -> None:
    net = NamespaceNet(3)
    pg = Postgres(host=net.hub)
    cs: list[Contender] = []
    try:
        pg.start()
        url = pg.database("lease")
        cs = [Contender(url, f"n{i + 1}", net.prefix(i)) for i in range(3)]
        lead = _wait_leader(cs, 30)
        assert len(lead) == 1, [c.events + c.other for c in cs]
        old = lead[0]
        time.sleep(1.0)
        at = time.time()
        net.cut(cs.index(old))
        new = _wait_leader(cs, 15, exclude=old)
        assert len(new) == 1, [c.events + c.other for c in cs]
        up = new[0].events[-1]["at"]
        deadline = time.monotonic() + 10
        while old.leading and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not old.leading, old.events
        down = old.events[-1]["at"]
        assert down < up, (down, up)  # stepped down before the other took over
        spans = _intervals(cs, time.time())
        for a, b in zip(spans, spans[1:], strict=False):
            assert a[1] <= b[0], spans  # never two leaders at once
        net.restore(cs.index(old))
        time.sleep(2.0)
        assert [c.node for c in cs if c.leading] == [new[0].node]
        print(f"\nlease: cut of leader {old.node}: it stepped down {down - at:.2f} s after "
              f"the cut, {new[0].node} leads {up - at:.2f} s after it")
    finally:
        for c in cs:
            c.stop()
        pg.close()
        net.close()


def test_a_write_of_an_old_term_is_fenced(pg_url: str) -> None:
    """The term backstop: a leader whose term moved on cannot write as leader."""
    from store import lease as lease_mod
    from store.db import Database

    db = Database(pg_url)
    lease_mod.migrate(db)
    a, b = lease_mod.Lease(pg_url, "a"), lease_mod.Lease(pg_url, "b")
    try:
        assert a.tick() and not b.tick()
        with db.transaction() as conn:
            lease_mod.fenced(conn, a.term)  # type: ignore[arg-type]
        old = a.term
        a.release()
        assert b.tick() and b.term == old + 1  # type: ignore[operator]
        with pytest.raises(lease_mod.LeaseLost), db.transaction() as conn:
            lease_mod.fenced(conn, old)  # type: ignore[arg-type]
    finally:
        a.release()
        b.release()
        db.close()


# A leader's other connection in the middle of a write transaction that share-locks the
# lease row (LeaderThread's fenced writes): ``fenced`` goes through store.lease.fenced,
# ``unfenced`` locks the row itself (no idle timeout: the new holder must end it).
_WRITER = """
import sys, time
import psycopg
from store.lease import fenced
url, kind = sys.argv[1], sys.argv[2]
conn = psycopg.connect(url, autocommit=True, connect_timeout=3, keepalives=1,
                       keepalives_idle=1, keepalives_interval=1, keepalives_count=3,
                       tcp_user_timeout=3000)
with conn.transaction():
    term = conn.execute("SELECT term FROM routing_lease WHERE id = 1").fetchone()[0]
    if kind == "fenced":
        fenced(conn, int(term))
    else:
        conn.execute("SELECT term FROM routing_lease WHERE id = 1 FOR SHARE").fetchone()
    print("in", flush=True)
    time.sleep(600)
"""
CUT_RUNS = int(os.environ.get("CONTROLROOM_LEASE_CUT_RUNS", "1"))  # more: the env var
RELEASE_AFTER = 3.0  # store.lease.Lease's default, what python -m store.lease runs with
TAKEOVER_WITHIN = RELEASE_AFTER + 2.0  # + polls and a loaded machine's slack


@pytest.mark.skipif(not namespaces_available(), reason="a network cut needs namespaces (root)")
@pytest.mark.parametrize("writer", ["fenced", "unfenced"])
def test_a_silent_store_cut_mid_write_transaction_still_hands_the_lease_on(
        writer: str) -> None:
    """Issue 14: the leader's path to the store is cut (packets from the server still
    arrive, its own are lost) while its other connection is inside a write transaction
    holding the lease row. Its lease session goes ~``release_after`` after the cut; the
    other node must then write its term within a poll or two, not wait (26 s measured,
    unbounded with the transaction idle) for the cut node's stuck session."""
    net = NamespaceNet(2)
    pg = Postgres(host=net.store)
    took: list[float] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        pg.start()
        url = pg.database("lease")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        for run in range(CUT_RUNS):
            assert time.monotonic() - started < 40.0 * CUT_RUNS, took
            a = Contender(url, "a", net.prefix(0))
            assert _wait_leader([a], 30), a.events + a.other
            a_term = a.events[-1]["term"]
            b = Contender(url, "b", net.prefix(1))
            w = subprocess.Popen([*net.prefix(0), sys.executable, "-c", _WRITER, url, writer],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=env, cwd=ROOT)
            procs, cut = [w], False
            try:
                assert w.stdout is not None and w.stdout.readline() == "in\n"
                time.sleep(0.5 + 0.1 * run)
                at = time.time()
                net.cut_store(0)
                cut = True
                new = _wait_leader([b], 20)
                assert new, (f"run {run}: no takeover within 20 s of the cut", took,
                             b.events + b.other)
                took.append(b.events[-1]["at"] - at)
                assert b.events[-1]["term"] == a_term + 1, (a.events, b.events)
                # fenced: the server ended the idle transaction (3 s after its last
                # statement, before the lock came free); unfenced: b had to end it
                evicted = b.events[-1]["evicted"]
                assert evicted == 0 if writer == "fenced" else evicted >= 1, b.events
                net.restore_store(0)
                cut = False
            finally:
                if cut:
                    net.restore_store(0)
                for p in procs:
                    p.kill()
                    p.wait(5)
                a.stop()
                b.stop()
            # a's sessions end (its node answers again) before the next run
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _sessions(pg) > 0:
                time.sleep(0.2)
        print(f"\nlease: store cut of the leader mid-transaction ({writer}), {len(took)} runs:"
              f" takeover after min {min(took):.2f} / median {sorted(took)[len(took) // 2]:.2f}"
              f" / max {max(took):.2f} s")
        assert max(took) < TAKEOVER_WITHIN, took
    finally:
        pg.close()
        net.close()


def _sessions(pg: Postgres) -> int:
    import psycopg

    with psycopg.connect(pg.url("lease"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'lease'"
                           " AND pid <> pg_backend_pid()").fetchone()
        return int(row[0]) if row else 0
