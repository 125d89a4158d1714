"""A store whose network path goes silent never holds the event loop long (issue 14).

Real parts: PostgreSQL on a bridge address; the node side (``tests/store/_silent_node``,
an asyncio program using ``store.pg`` and the spooled writer) runs in a network
namespace, and the path is cut as ``harness.cluster.NamespaceNet.cut_store`` cuts it
(a route via a next hop nobody answers: packets dropped, no reset).

Checked: the first write on the loop after the cut fails within the loop deadline (the
watchdog: request unacknowledged), every later write and read fails at once (the
breaker), the loop is never held longer; after the restore the prober reaches the store
and the spool is written in order, nothing lost. A thread's statement on a cut path
fails by the TCP options (seconds, not TCP's ~15 minutes), opens the breaker for the
loop, and the loop is not held meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import postgres as pg
from harness.cluster import NamespaceNet, namespaces_available
from store.pg import LOOP_DEADLINE

pytestmark = [pytest.mark.realparts,
              pytest.mark.skipif(not pg.available(), reason="PostgreSQL is not installed")]

ROOT = Path(__file__).resolve().parents[2]


class _Node:
    def __init__(self, net: NamespaceNet, url: str) -> None:
        self.net = net
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [*net.prefix(0), sys.executable, "-m", "tests.store._silent_node", url],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)

    def read(self) -> Any:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                assert self.proc.stderr is not None
                self.proc.wait(5)
                raise AssertionError(f"node side exited:\n{self.proc.stderr.read()[-3000:]}")
            if line.startswith("SILENT "):  # the rest are the node side's logs
                said = line[len("SILENT "):].strip()
                return said if said == "READY" else json.loads(said)

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def cut_and_restore(self) -> tuple[Any, Any]:
        """Once the node side is READY: cut its store path, read what it saw, restore,
        read what it saw after; returns the two reports."""
        assert self.read() == "READY"
        self.net.cut_store(0)
        self.send("CUT")
        cut = self.read()
        self.net.restore_store(0)
        self.send("RESTORED")
        return cut, self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.mark.skipif(not namespaces_available(),
                    reason="a silent cut needs network namespaces (root)")
def test_a_silent_store_costs_the_loop_one_bounded_wait_then_nothing_and_loses_nothing(
) -> None:
    net = NamespaceNet(1)
    try:
        with pg.Postgres(host=net.store) as server:
            node = _Node(net, server.database("silent"))
            try:
                cut, back = node.cut_and_restore()

                took = cut["took"]
                # the first write waits for the watchdog (deadline + a tick); the breaker
                # answers every later one, and reads, at once
                assert took[0] < LOOP_DEADLINE + 0.25, cut
                assert max(took[1:]) < 0.02, cut
                assert cut["read_s"] < 0.02 and "store unreachable" in cut["read_error"], cut
                assert cut["loop_max_gap_s"] < LOOP_DEADLINE + 0.3, cut
                assert not cut["reachable"] and cut["degraded"] and cut["depth"] == 20, cut
                assert cut["reason"].startswith("no answer from the store"), cut
                # restored: the prober reaches the store, the spool is written in order
                assert back["reachable_after_s"] < 5, back
                assert back["rows"] == [[0, "c1"]] + [[n, f"c{1 + n % 2}"]
                                                      for n in range(1, 21)], back
                for seqs in back["seqs"].values():
                    assert seqs == list(range(1, len(seqs) + 1)), back
                assert back["lost"] == 0 and not back["degraded"] and back["opened"] == 1

                cut2, back2 = node.cut_and_restore()
                # tcp_user_timeout 3 s (or the ARP failure's error): bounded, not minutes
                assert cut2["thread_error"] and cut2["thread_s"] < 8, cut2
                assert not cut2["reachable"] and cut2["opened"] == 2, cut2
                assert cut2["loop_read_s"] < 0.02 and "store unreachable" in cut2["loop_error"]
                assert cut2["loop_max_gap_s"] < 0.3, cut2  # the thread held no loop time
                assert back2 == {"reachable_after_s": back2["reachable_after_s"],
                                 "thread_ok": True, "loop_ok": True}, back2
                assert back2["reachable_after_s"] < 5, back2
                print(f"silent store: first_write_s={took[0]:.3f}"
                      f" later_max_s={max(took[1:]):.4f} loop_max_gap_s="
                      f"{cut['loop_max_gap_s']:.3f} thread_s={cut2['thread_s']:.2f}"
                      f" reachable_after_s={back['reachable_after_s']:.2f}")
            finally:
                node.close()
    finally:
        net.close()


def test_a_slow_statement_on_a_healthy_store_is_left_alone() -> None:
    """The watchdog cuts silence, not slowness: a loop statement the server has (its
    request acknowledged) runs past the deadline and answers; the breaker stays shut."""
    import asyncio

    from store import Database
    from store.pg import PgDatabase

    async def scenario(url: str) -> None:
        db = Database(url)
        assert isinstance(db, PgDatabase)
        try:
            t0 = time.perf_counter()
            row = db.query_one("SELECT 7 FROM pg_sleep(?)", (LOOP_DEADLINE * 3,))
            assert row[0] == 7 and time.perf_counter() - t0 >= LOOP_DEADLINE * 3
            assert db.reachable and db._watchdog.fired == 0 and db.breaker.opened == 0
        finally:
            db.close()

    with pg.Postgres() as server:
        asyncio.run(scenario(server.database("slow")))
