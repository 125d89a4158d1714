"""One global queue with strict priority across nodes (issue 14, ``controlroom.leader``).

Real parts: three ``controlroom serve`` nodes on one PostgreSQL with
``cluster.global_queue`` (each node in its own network namespace when root), Kamailio's
dispatcher spreading SIPp callers over the nodes, and handler phones (SIPp) registered at
Kamailio. Only node B (n2) has handlers (two desks; their phones ring 0.3 s, talk 1 s and
hang up): the 999 and 101 calls held on nodes A and C can only be answered by B's
handlers, whose offers A and C send through Kamailio. The routing leader is ``kill -9``-ed
mid-run.

Checked from the queue log the leader writes (its order is the order of its decisions):
no 101 is offered while a 999 that reached the leader waits anywhere, no handler holds
two offers or calls at once, 999s held on other nodes are answered by B's handlers, and
after the kill another node leads and the calls still waiting are offered and answered.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import Cluster, priority_and_offers, store_query, wait_for
from harness.postgres import available as postgres_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed")]

_wait = wait_for


def test_999s_held_on_any_node_reach_node_b_handlers_first_and_leader_kill(
        tmp_path: Path) -> None:
    with Cluster(tmp_path, nodes=3, handlers=2, postgres=True, global_queue=True,
                 handler_nodes=[1], ring_ms=300, wrapup=0.3, handler_talk_ms=1000,
                 heartbeat_interval=0.5, salvage_after=3.0) as cluster:
        url = cluster.store_url
        b = cluster.nodes[1]
        t0 = time.time()
        start_id = store_query(url, "SELECT COALESCE(MAX(id), 0) AS m FROM queue_log")[0]["m"]
        # A burst: 8 999s and 8 101s within ~1 s over three nodes; two handlers answer
        # ~1 call a second together, so the queue holds both classes for ~10 s.
        loads = [cluster.callers("999", rate=8, calls=8, talk_ms=60_000, name="999").start(),
                 cluster.callers("101", rate=8, calls=8, talk_ms=60_000, name="101").start()]
        try:
            def entered() -> bool:
                n = store_query(url, "SELECT COUNT(*) AS n FROM queue_log WHERE id > %s AND"
                                     " event = 'ENTER'", (start_id,))[0]["n"]
                return n >= 16
            if not _wait(entered, 20):
                rows = store_query(url, "SELECT event, COUNT(*) AS n FROM queue_log WHERE"
                                        " id > %s GROUP BY event", (start_id,))
                pytest.fail(f"{rows} {[load.outcomes() for load in loads]}\n"
                            + "\n".join(cluster.node_log(n, 3000) for n in cluster.nodes))
            time.sleep(2.0)  # a few calls answered by B's handlers
            lease = cluster.leader()
            victim = next(n for n in cluster.nodes if n.node_id == lease["holder"])
            victim_calls = {r["call_id"] for r in victim.calls()}
            killed = cluster.kill(victim)

            def new_leader() -> dict[str, Any] | None:
                row = cluster.leader()
                return row if row["term"] > lease["term"] else None
            after = _wait(new_leader, 10)
            why = "\n".join(cluster.node_log(n, 4000) for n in cluster.nodes if n is not victim)
            assert after and after["holder"] != victim.node_id, why
            took = after["since"] - killed

            survivors = [n for n in cluster.nodes if n is not victim]

            def all_answered() -> list[dict[str, Any]]:
                rows = [r for n in survivors for r in n.calls()
                        if r["call_id"].split("-c")[0] == n.node_id and r["line"]]
                live = [r for r in rows if r["arrived_at"] >= t0]
                return rows if live and all(r["answered_at"] for r in live
                                            if r["call_id"] not in victim_calls) else []
            rows = _wait(all_answered, 60, step=0.5)
            assert rows, why + "\n" + str([(n.node_id, [(r["call_id"], r["state"],
                                                         r["answered_at"]) for r in n.calls()])
                                           for n in survivors])
            log = store_query(url, "SELECT id, at, call_id, line, handler_id, event FROM"
                                   " queue_log WHERE id > %s ORDER BY id", (start_id,))
            first = next((e["id"] for e in log if e["at"] > killed), 1 << 62)
            res = priority_and_offers(log, dead={victim.node_id: first})
            assert res["violations"] == [], (res, log)
            hs = {d[1] for d in res["doubles"]}
            assert res["doubles"] == [], (res, killed, lease, after, victim.node_id,
                                          [e for e in log if e["handler_id"] in hs])
            # 999s held on nodes other than B answered by B's handlers (through Kamailio)
            cross = [r for r in rows if r["line"] == "999" and r["node"] != b.node_id
                     and (r["handler_id"] or "").startswith(f"{b.node_id}h")]
            assert cross, rows
            # after the kill, waiting calls on survivors were still offered and answered
            offered_after = [e for e in log if e["event"] == "OFFER" and e["at"] > killed
                             and not e["call_id"].startswith(f"{victim.node_id}-")]
            assert offered_after, log
            connected_after = [e for e in log if e["event"] == "CONNECT" and e["at"] > killed]
            assert connected_after, log
            print(f"\nglobal queue: offers={res['offers']} cross-node 999s={len(cross)}"
                  f" leader {lease['holder']}->{after['holder']} in {took:.2f} s;"
                  f" offered after kill={len(offered_after)}, the first"
                  f" {min(e['at'] for e in offered_after) - killed:.2f} s after it")
        finally:
            for load in loads:
                load.stop()


def test_a_killed_nodes_waiting_calls_are_parked_not_offered(tmp_path: Path) -> None:
    """kill -9 of a node that is not the leader while it holds waiting calls: once its
    heartbeat is stale (``controlroom.leader.stale_after``: 2 s here) the leader stops
    offering its calls (an offer would ring no phone and hold a handler), long before a
    survivor salvages them (8 s here); the other nodes' calls keep being offered."""
    from types import SimpleNamespace

    from controlroom.leader import NODES_EVERY, stale_after

    with Cluster(tmp_path, nodes=3, handlers=2, postgres=True, global_queue=True,
                 handler_nodes=[1], ring_ms=300, wrapup=0.3, handler_talk_ms=1000,
                 heartbeat_interval=0.5, salvage_after=8.0) as cluster:
        url = cluster.store_url
        t0 = time.time()
        start_id = store_query(url, "SELECT COALESCE(MAX(id), 0) AS m FROM queue_log")[0]["m"]
        loads = [cluster.callers("999", rate=8, calls=8, talk_ms=60_000, name="999").start(),
                 cluster.callers("101", rate=8, calls=8, talk_ms=60_000, name="101").start()]
        try:
            lead = cluster.leader()["holder"]

            def victim_waiting() -> Any:
                for n in cluster.nodes:
                    if n.node_id == lead:
                        continue
                    w = [r for r in n.calls() if r["arrived_at"] >= t0
                         and r["ended_at"] is None and not r["answered_at"]]
                    if len(w) >= 2:
                        return n
                return None
            victim = _wait(victim_waiting, 20)
            assert victim is not None
            killed = cluster.kill(victim)
            stale = stale_after(SimpleNamespace(storage=SimpleNamespace(
                heartbeat_interval=0.5)))
            parked_by = killed + stale + NODES_EVERY + 0.5
            time.sleep(max(0.0, parked_by - time.time()) + 3.0)  # still before salvage
            log = store_query(url, "SELECT id, at, call_id, line, handler_id, event FROM"
                                   " queue_log WHERE id > %s ORDER BY id", (start_id,))
            leader = next(n for n in cluster.nodes if n.node_id == lead)
            why = cluster.node_log(leader, 6000)
            assert "routing.node_parked" in cluster.node_log(leader, 500_000), why
            late = [e for e in log if e["event"] == "OFFER" and e["at"] > parked_by
                    and e["call_id"].startswith(f"{victim.node_id}-")]
            assert late == [], (late, why)
            others = [e for e in log if e["event"] == "OFFER" and e["at"] > parked_by]
            assert others, (log, why)
            first = next((e["id"] for e in log if e["at"] > killed), 1 << 62)
            res = priority_and_offers(log, dead={victim.node_id: first})
            assert res["violations"] == [] and res["doubles"] == [], res
            print(f"\nparked: {victim.node_id} killed; offers after it to others "
                  f"{len(others)}, to its calls 0")
        finally:
            for load in loads:
                load.stop()


def test_postgresql_restarted_mid_run_the_queue_carries_on_after(tmp_path: Path) -> None:
    """PostgreSQL crashes (stop -m immediate) while 999s and 101s wait on every node and
    is back ~1.5 s later, before ``controlroom.leader.fallback_after`` (3 s here): no offer
    is made meanwhile (the leader is in the store; the nodes do not route alone yet:
    tests/cluster/test_global_queue_outage.py has a longer outage), then a leader takes
    the lease again, the nodes resync, and every waiting call is offered and answered,
    still in strict priority and with no handler offered twice."""
    with Cluster(tmp_path, nodes=3, handlers=2, postgres=True, global_queue=True,
                 handler_nodes=[1], ring_ms=300, wrapup=0.3, handler_talk_ms=1000,
                 heartbeat_interval=0.5, salvage_after=20.0) as cluster:
        url = cluster.store_url
        t0 = time.time()
        start_id = store_query(url, "SELECT COALESCE(MAX(id), 0) AS m FROM queue_log")[0]["m"]
        term = cluster.leader()["term"]
        loads = [cluster.callers("999", rate=8, calls=6, talk_ms=90_000, name="999").start(),
                 cluster.callers("101", rate=8, calls=6, talk_ms=90_000, name="101").start()]
        try:
            time.sleep(2.5)
            cluster.postgres.stop("immediate")
            down = time.time()
            time.sleep(1.0)  # + the server's start: under fallback_after
            cluster.postgres.start()
            up = time.time()

            def all_answered() -> list[dict[str, Any]]:
                rows = [r for n in cluster.nodes for r in n.calls()
                        if r["arrived_at"] >= t0 and r["line"]]
                return rows if len(rows) >= 12 and all(r["answered_at"] for r in rows) else []
            rows = _wait(all_answered, 60, step=0.5)
            why = "\n".join(cluster.node_log(n, 3000) for n in cluster.nodes)
            assert rows, why
            lease = cluster.leader()
            assert lease["term"] > term, lease
            log = store_query(url, "SELECT id, at, call_id, line, handler_id, event FROM"
                                   " queue_log WHERE id > %s ORDER BY id", (start_id,))
            res = priority_and_offers(log)
            assert res["violations"] == [] and res["doubles"] == [], (res, log)
            during = [e for e in log if e["event"] == "OFFER" and down + 0.5 < e["at"] < up]
            assert during == [], during
            after = [e for e in log if e["event"] == "OFFER" and e["at"] > up]
            assert after, log
            print(f"\npostgres restart: down {up - down:.1f} s; offers after {len(after)}; "
                  f"all {len(rows)} calls answered; term {term}->{lease['term']}")
        finally:
            for load in loads:
                load.stop()
