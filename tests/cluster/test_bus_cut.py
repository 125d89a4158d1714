"""The routing bus's writers' turn (store/routing_bus.py) under a silent store cut.

Every node appends its routing inputs under one transaction-level advisory lock (ids in
commit order). A node whose path to the store goes silent while it holds that lock (its
packets lost, no reset) leaves its server session idle in the transaction: unless the
server ends it, every other node's inputs wait behind it and nobody's calls are routed.
Real PostgreSQL, the writer in its own network namespace, cut the way
``harness.cluster.NamespaceNet.cut_store`` cuts a node (issue 14).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cluster import NamespaceNet, namespaces_available
from harness.postgres import Postgres
from harness.postgres import available as postgres_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed"),
              pytest.mark.skipif(not namespaces_available(),
                                 reason="a network cut needs namespaces (root)")]

ROOT = Path(__file__).resolve().parents[2]

# A node's bus writer that has taken the writers' turn and is cut before it commits.
_WRITER = """
import sys, time
import psycopg
from store import routing_bus as bus
conn = psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=3)
with conn.transaction():
    bus.take_write_turn(conn)
    print("in", flush=True)
    time.sleep(600)
"""
WITHIN = 6.0  # the server's idle-in-transaction limit (3 s) + a loaded machine's slack


def test_a_node_cut_off_while_holding_the_writers_turn_does_not_stop_the_other_nodes_inputs(
) -> None:
    import psycopg

    from store import routing_bus as bus
    from store.db import Database

    net = NamespaceNet(1)
    pg = Postgres(host=net.store)
    w: subprocess.Popen[str] | None = None
    try:
        pg.start()
        url = pg.database("bus")
        db = Database(url)
        bus.migrate(db)
        db.close()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        w = subprocess.Popen([*net.prefix(0), sys.executable, "-c", _WRITER, url],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=ROOT)
        assert w.stdout is not None
        line = w.stdout.readline()
        assert line == "in\n", line + w.stdout.read()
        net.cut_store(0)
        at = time.monotonic()
        # Another node (here, on the host) sends an input; it waits for the turn at most
        # 20 s (the test's bound), then fails: without a bound it would wait for hours.
        with psycopg.connect(url, autocommit=True, connect_timeout=3,
                             options="-c statement_timeout=20000") as conn:
            bus.send(conn, "n2", [("call_arrived", {"call_id": "c1"}, time.time())])
            took = time.monotonic() - at
            rows = bus.inputs_after(conn, 0)
        print(f"\nbus: another node's input committed {took:.2f} s after the turn holder's"
              " store path was cut")
        assert [r[2] for r in rows] == ["call_arrived"], rows
        assert took < WITHIN, took
    finally:
        if w is not None:
            w.kill()
            w.wait(5)
        pg.close()
        net.close()
