"""A cut that lands inside a transaction leaves no lock that holds the loop after the
restore (issue 14: a node's loop held ~12 s after the store came back).

Real parts: PostgreSQL on a bridge address; the node side (a ``python -c`` program using
``store.pg``) in a network namespace; the cut as ``harness.cluster.NamespaceNet``
makes it (a route via a next hop nobody answers: packets dropped, no reset).

The case: the loop's connection has begun a transaction and locked a row when the path
goes silent; its next statement is failed by the watchdog and the node drops the
connection. The server never hears of it: its backend stays in the transaction,
holding the row, until its own TCP gives up (its unacknowledged reply retransmitted
with back-off, or TCP keepalives; the defaults are minutes to hours, and after a 12 s
cut the next retransmission is ~12 s after the restore). Unbounded, the first write of
that row after the restore (the spool's flush, on the loop) waits for that lock and
the loop with it.

Checked: a statement on the loop's connection that waits for a row lock a live session
holds gives up after ``lock_timeout`` (SQLSTATE 55P03, which the spool keeps and
retries; the breaker stays shut). After the restore the node's write of the same row, on the loop, never holds
the loop more than a lock wait of :data:`store.pg.LOOP_LOCK_TIMEOUT` per try, and the
row is written within a few seconds (the server ended the dead session: server-side
``tcp_user_timeout`` and keepalives on every connection, :data:`store.pg.SERVER_TCP`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import postgres as pg
from harness.cluster import NamespaceNet, namespaces_available
from store.pg import LOOP_DEADLINE, LOOP_LOCK_TIMEOUT

pytestmark = [pytest.mark.realparts,
              pytest.mark.skipif(not pg.available(), reason="PostgreSQL is not installed"),
              pytest.mark.skipif(not namespaces_available(),
                                 reason="a silent cut needs network namespaces (root)")]

ROOT = Path(__file__).resolve().parents[2]
CUT_S = 8.0

_NODE = textwrap.dedent("""
    import asyncio, json, sys, time
    from store import Database

    def say(x):
        print("CUTLOCK " + json.dumps(x), flush=True)

    async def main(url):
        db = Database(url)
        db.execute("CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY, v INT)")
        db.execute("INSERT INTO t VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING")
        # a lock held by a live session (a slow thread): the loop's statement gives up
        # after lock_timeout, the holder is left alone
        holder = db.connect_reader()
        holder.execute("BEGIN")
        holder.execute("UPDATE t SET v = 9 WHERE id = 2")
        t0 = time.monotonic()
        try:
            db.execute("UPDATE t SET v = 1 WHERE id = 2")
            busy = {"s": round(time.monotonic() - t0, 3), "sqlstate": None}
        except Exception as exc:
            busy = {"s": round(time.monotonic() - t0, 3),
                    "sqlstate": getattr(exc, "sqlstate", None)}
        holder.execute("COMMIT")
        holder.close()
        busy["reachable"] = db.reachable
        say(busy)
        conn = db._ensure()
        conn.execute("BEGIN")
        conn.execute("UPDATE t SET v = 1 WHERE id = 1")  # the server has it: row locked
        say("LOCKED")
        sys.stdin.readline()  # the path is cut now
        t0 = time.monotonic()
        try:
            conn.execute("UPDATE t SET v = 2 WHERE id = 1")
        except Exception as exc:
            say({"failed_s": round(time.monotonic() - t0, 3), "error": str(exc)[:200]})
        sys.stdin.readline()  # restored
        restored = time.monotonic()
        while not db.reachable and time.monotonic() - restored < 15:
            await asyncio.sleep(0.05)
        reachable = time.monotonic() - restored
        holds = []
        while time.monotonic() - restored < 30:
            t0 = time.monotonic()
            try:
                db.execute("UPDATE t SET v = 3 WHERE id = 1")
                holds.append(round(time.monotonic() - t0, 3))
                break
            except Exception:
                holds.append(round(time.monotonic() - t0, 3))
                await asyncio.sleep(0.25)
        say({"reachable_s": round(reachable, 3), "holds": holds,
             "written_s": round(time.monotonic() - restored, 3),
             "v": db.query_one("SELECT v FROM t WHERE id = 1")[0]})
        db.close()

    asyncio.run(main(sys.argv[1]))
""")


def test_a_transaction_cut_mid_way_does_not_hold_the_loop_after_the_restore() -> None:
    net = NamespaceNet(1)
    try:
        with pg.Postgres(host=net.store) as server:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.Popen(
                [*net.prefix(0), sys.executable, "-c", _NODE, server.database("cutlock")],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            assert proc.stdin is not None and proc.stdout is not None

            def read() -> object:
                assert proc.stdout is not None and proc.stderr is not None
                while True:
                    line = proc.stdout.readline()
                    if not line:
                        proc.wait(5)
                        raise AssertionError(f"node side exited:\n{proc.stderr.read()[-3000:]}")
                    if line.startswith("CUTLOCK "):
                        return json.loads(line[len("CUTLOCK "):])
            try:
                busy = read()
                # a live holder: the loop waits one lock_timeout, the store is not "away"
                assert isinstance(busy, dict) and busy["sqlstate"] == "55P03", busy
                assert LOOP_LOCK_TIMEOUT <= busy["s"] < LOOP_LOCK_TIMEOUT + 0.2, busy
                assert busy["reachable"], busy
                assert read() == "LOCKED"
                net.cut_store(0)
                proc.stdin.write("cut\n")
                proc.stdin.flush()
                cut = read()
                assert isinstance(cut, dict) and cut["failed_s"] < LOOP_DEADLINE + 0.3, cut
                time.sleep(CUT_S)
                net.restore_store(0)
                proc.stdin.write("restored\n")
                proc.stdin.flush()
                back = read()
                assert isinstance(back, dict), back
                print(f"cut mid-transaction ({CUT_S:g} s): {back}")
                assert back["v"] == 3, back  # written
                # the loop: never held longer than one lock wait per try
                assert max(back["holds"]) < LOOP_LOCK_TIMEOUT + 0.2, back
                assert back["written_s"] < back["reachable_s"] + 3.0, back
            finally:
                _end(proc)
    finally:
        net.close()


_HOLDER = textwrap.dedent("""
    import sys, psycopg
    from store.pg import server_options
    url, server_side = sys.argv[1], sys.argv[2] == "1"
    extra = {"options": server_options(url)} if server_side else {}
    conn = psycopg.connect(url, autocommit=True, keepalives=1, keepalives_idle=1,
                           keepalives_interval=1, keepalives_count=3, tcp_user_timeout=3000,
                           **extra)
    conn.execute("BEGIN")
    conn.execute("SELECT pg_advisory_xact_lock(4242)")
    print("HELD", conn.info.backend_pid, flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("server_side", [True, False], ids=["server-tcp", "client-only"])
def test_a_session_cut_mid_transaction_is_ended_by_the_server_in_seconds(
        server_side: bool) -> None:
    """The mechanism behind :data:`store.pg.SERVER_TCP`, on a raw connection that
    holds an advisory lock in a transaction when its path goes silent: with the
    server's side of the TCP settings (:func:`store.pg.server_options`, as every
    ``PgDatabase`` connection has) the server ends that session within seconds of the
    cut and the lock is free before the restore; with the client's side only (as
    before; as the global queue's bus connections still are, on purpose: their open
    session tells the leader a node is cut off, not dead) it is still held."""
    import psycopg

    net = NamespaceNet(1)
    try:
        with pg.Postgres(host=net.store) as server:
            url = server.database("cuthold")
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            proc = subprocess.Popen(
                [*net.prefix(0), sys.executable, "-c", _HOLDER, url, "1" if server_side else "0"],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            try:
                assert proc.stdout is not None
                said = proc.stdout.readline().split()
                assert said and said[0] == "HELD", said
                pid = int(said[1])
                with psycopg.connect(url, autocommit=True) as watch:
                    net.cut_store(0)
                    cut = time.monotonic()
                    gone = None
                    while time.monotonic() - cut < CUT_S:
                        if not watch.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                             (pid,)).fetchone():
                            gone = time.monotonic() - cut
                            break
                        time.sleep(0.1)
                    row = watch.execute("SELECT pg_try_advisory_lock(4242)").fetchone()
                    free = bool(row and row[0])
                    net.restore_store(0)
                print(f"session cut mid-transaction, {'server and client' if server_side else 'client only'}"
                      f" TCP settings: ended by the server after {gone} s of the cut; lock"
                      f" free at {CUT_S:g} s: {free}")
                if server_side:
                    assert gone is not None and gone < 6.0 and free, (gone, free)
                else:  # the zombie holds the lock past the cut: what the settings end
                    assert gone is None and not free, (gone, free)
            finally:
                _end(proc)
    finally:
        net.close()


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
