"""PostgreSQL away with the global queue on: each node routes its own calls alone, then
hands them back (issue 14, ``controlroom.fallback``).

Real parts: three ``controlroom serve`` nodes on one PostgreSQL with
``cluster.global_queue`` (each in its own network namespace when root), Kamailio's
dispatcher spreading SIPp callers over them, SIPp handler phones. Nodes A (n1) and B (n2)
have one handler desk each; C (n3) has none. PostgreSQL is crashed (``stop -m
immediate``) and 101s then 999s are placed while it is down, on every node.

Checked: every node says degraded on ``/healthz`` (routing alone) while it is down; the
calls held on A and B are offered to and answered by their own node's handler meanwhile,
999s before the 101s waiting on that node; no handler is offered two calls at once, over
the whole run and across nodes; C's calls wait. PostgreSQL back: the nodes hand their
state back, the leader offers C's waiting calls, every call placed is in the store
answered and ended, and the CAD has its arrival and its end.

999 callers who hang up while waiting (issue 14): two right after the crash, before any
node routes alone (their node drops those unsent inputs on going alone), and two while
the nodes route alone, behind the waiting 999s. Each abandoned one is on the record with
its call-back (ABANDON, CALLBACK_ADD) and on the leader's published call-back list within
a few seconds of the store being back (the node's hand-back sends them).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import Cluster, Node, priority_and_offers, store_query, wait_for
from harness.postgres import available as postgres_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed")]

CALLS = 5
"""Calls per line (101 then 999), spread over the three nodes by the dispatcher."""
PASSWORD = "correct horse battery"


def _desk_ready(node: Node, url: str, handler: str) -> None:
    """``handler`` logs in at a desk (console session) on ``node`` and says available:
    the leader then has their desk on that node."""
    from console import users
    from store.db import Database

    db = Database(url)
    try:
        users.create_user(db, handler, PASSWORD, ["handler"])
    finally:
        db.close()
    base = f"http://{node.addr}:{node.web_port}"
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(path: str, body: Any, csrf: str = "") -> Any:
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"X-CSRF-Token": csrf} if csrf else {})})
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read() or b"null")
    me = call("/api/login", {"username": handler, "password": PASSWORD})
    assert call("/api/desk/state", {"state": "available"}, me["csrf"]) == {"ok": True}


def _health(node: Node) -> dict[str, Any]:
    status, body = node.get("/healthz", timeout=1.0)
    try:
        return dict(json.loads(body)) if status else {}
    except ValueError:
        return {}


def _alone(node: Node) -> bool:
    h = _health(node)
    return h.get("status") == "degraded" and any("routing alone" in r
                                                 for r in h.get("reasons", ()))


def test_postgresql_down_nodes_route_their_calls_alone_then_hand_them_back(
        tmp_path: Path) -> None:
    from controlroom.leader import fallback_after

    with Cluster(tmp_path, nodes=3, handlers=1, postgres=True, global_queue=True,
                 handler_nodes=[0, 1], ring_ms=300, wrapup=0.3, handler_talk_ms=1200,
                 heartbeat_interval=0.5, salvage_after=120.0) as cluster:
        url = cluster.store_url
        a, b, c = cluster.nodes
        desk = {a.node_id: a.handlers[0], b.node_id: b.handlers[0]}
        for n in (a, b):
            _desk_ready(n, url, desk[n.node_id])

        def desks_published() -> bool:
            hs = json.loads(store_query(url, "SELECT handlers FROM routing_state")[0]
                            ["handlers"])
            return all(hs.get(h, {}).get("desk") == n for n, h in desk.items())
        assert wait_for(desks_published, 15), store_query(url, "SELECT handlers FROM"
                                                               " routing_state")
        time.sleep(1.5)  # every node has read them (the reader reads them every second)
        start_id = store_query(url, "SELECT COALESCE(MAX(id), 0) AS m FROM queue_log")[0]["m"]
        term = cluster.leader()["term"]

        cluster.postgres.stop("immediate")
        down = time.time()
        # they hang up (0.8 s) before any node goes alone (fallback_after, 3 s)
        gone = [cluster.callers("999", rate=10, calls=2, talk_ms=800,
                                name="999-gone-early").start()]
        alone = wait_for(lambda: all(_alone(n) for n in cluster.nodes), 15, step=0.1)
        switched = time.time()
        why = "\n".join(cluster.node_log(n, 3000) for n in cluster.nodes)
        assert alone, ([_health(n) for n in cluster.nodes], why)
        loads = [cluster.callers("101", rate=10, calls=CALLS, talk_ms=60_000,
                                 name="101").start()]
        time.sleep(0.8)  # the 101s wait (or ring) before the 999s come
        loads.append(cluster.callers("999", rate=10, calls=CALLS, talk_ms=60_000,
                                     name="999").start())
        time.sleep(0.6)  # behind those 999s (or on C, with no desk): they hang up waiting
        gone.append(cluster.callers("999", rate=10, calls=2, talk_ms=1500,
                                    name="999-gone").start())
        try:
            # a handler takes a call every ~2 s (ring 0.3, talk 1.2, wrap-up 0.3): A and B
            # each answer a few of theirs while the store is down
            time.sleep(9.0)
            health = {n.node_id: _health(n) for n in cluster.nodes}
            assert all(_alone(n) for n in cluster.nodes), health
            cluster.postgres.start()
            up = time.time()

            gone_ids = {o.sip_call_id for load in gone for o in load.outcomes()}
            assert len(gone_ids) == 4, [load.outcomes() for load in gone]

            def all_over() -> list[dict[str, Any]]:
                rows = store_query(url, "SELECT * FROM calls WHERE arrived_at >= %s"
                                        " AND line <> ''", (down,))
                rows = [r for r in rows if r["sip_call_id"] not in gone_ids]
                done = [r for r in rows if r["answered_at"] and r["ended_at"]]
                return rows if len(rows) >= 2 * CALLS and len(done) == len(rows) else []

            # every 999 that hung up waiting: on the leader's list soon after the store is
            # back (the entry, or an attempt of the caller's entry: one caller id here)
            def on_leaders_list() -> list[str]:
                ended = [r for r in store_query(
                    url, "SELECT * FROM calls WHERE arrived_at >= %s AND line <> ''", (down,))
                    if r["sip_call_id"] in gone_ids and r["ended_at"]]
                if len(ended) < len(gone_ids):
                    return []
                snap = json.loads(store_query(url, "SELECT snapshot FROM routing_state")[0]
                                  ["snapshot"])
                listed = {a.get("call_id") for cb in snap.get("callbacks") or ()
                          for a in cb.get("attempts") or ()}
                # never answered by a handler: hung up waiting
                mine = [r["call_id"] for r in ended if not r["answered_at"]]
                return mine if mine and set(mine) <= listed else []
            abandoned = wait_for(on_leaders_list, 20, step=0.2)
            listed_at = time.time()
            gone_rows = [r for r in store_query(
                url, "SELECT call_id, sip_call_id, state, node, answered_at, ended_at FROM"
                     " calls WHERE arrived_at >= %s AND line <> ''", (down,))
                if r["sip_call_id"] in gone_ids]
            snap = json.loads(store_query(url, "SELECT snapshot FROM routing_state")[0]
                              ["snapshot"])
            assert abandoned, (gone_rows, snap.get("callbacks"),
                               "\n".join(cluster.node_log(n, 4000) for n in cluster.nodes))
            rows = wait_for(all_over, 60, step=0.5)
            why = "\n".join(cluster.node_log(n, 4000) for n in cluster.nodes)
            assert rows, (store_query(url, "SELECT call_id, state, answered_at, ended_at"
                                           " FROM calls WHERE arrived_at >= %s", (down,)),
                          [load.outcomes() for load in loads], why)
            assert wait_for(lambda: all(_health(n).get("status") == "ok"
                                        for n in cluster.nodes), 15), (
                [_health(n) for n in cluster.nodes], why)
            assert cluster.leader()["term"] > term

            log = store_query(url, "SELECT id, at, call_id, line, handler_id, event FROM"
                                   " queue_log WHERE id > %s ORDER BY at, id", (start_id,))
            offers = [e for e in log if e["event"] == "OFFER"]
            during = [e for e in offers if down < e["at"] < up]
            # routing alone: A's and B's calls to their own desk only; C's wait
            assert during, (log, why)
            for e in during:
                node = e["call_id"].split("-")[0]
                assert desk.get(node) == e["handler_id"], (e, during)
            connected = [e for e in log if e["event"] == "CONNECT" and down < e["at"] < up]
            assert connected, log
            # strict priority on each node while it routed alone: no 101 offered while a
            # 999 of that node waited, and 999s overtook 101s waiting before them
            overtaken = 0
            for node in (a, b):
                mine = [e for e in log if e["call_id"].startswith(f"{node.node_id}-")
                        and e["at"] < up]
                res = priority_and_offers(mine)
                assert res["violations"] == [], (node.node_id, res, mine)
                enter = {e["call_id"]: e["at"] for e in mine if e["event"] == "ENTER"}
                first: dict[str, float] = {}
                for e in mine:
                    if e["event"] == "OFFER":
                        first.setdefault(e["call_id"], e["at"])
                overtaken += sum(1 for x in first for y in enter
                                 if x.split("-")[0] == y.split("-")[0]
                                 and enter.get(x, 0) > enter[y]
                                 and _line(mine, x) == "999" and _line(mine, y) == "101"
                                 and first[x] < first.get(y, float("inf")))
            assert overtaken, log
            # one offer at a time per handler, across nodes, outage and hand-back included
            res = priority_and_offers(log)
            assert res["doubles"] == [], (res, log)
            # the room's queue again after the hand-back: strict priority across nodes
            after = [e for e in log if e["at"] > up + 3.0]
            assert priority_and_offers(after)["violations"] == [], after
            c_offers = [e for e in offers if e["call_id"].startswith(f"{c.node_id}-")]
            c_rows = [r for r in rows if r["node"] == c.node_id]
            if c_rows:  # the dispatcher gave C calls: offered only once the store was back
                assert c_offers and min(e["at"] for e in c_offers) > up, (c_offers, up)
            # nothing lost: every call placed is in the store, answered and ended
            placed = [o for load in loads for o in load.outcomes()]
            by_sip = {r["sip_call_id"]: r for r in rows}
            assert len(placed) == 2 * CALLS and all(o.sip_call_id in by_sip for o in placed), (
                placed, rows)
            # queue log: each call entered once and completed once
            for r in rows:
                evs = [e["event"] for e in log if e["call_id"] == r["call_id"]]
                assert evs.count("ENTER") == 1 and evs.count("COMPLETE") == 1, (r, evs)

            # the abandoned 999s on the record with their call-back (the outage's spool)
            for cid in abandoned:
                evs = [e["event"] for e in store_query(
                    url, "SELECT event FROM queue_log WHERE call_id = %s ORDER BY id", (cid,))]
                assert evs.count("ENTER") == 1 and evs.count("ABANDON") == 1, (cid, evs)
                assert evs.count("CALLBACK_ADD") == 1, (cid, evs)
            assert all(r["state"] == "abandoned" for r in gone_rows
                       if r["call_id"] in abandoned), gone_rows
            # the list's entries carry the abandon's data, as a leader's own would
            for cb in snap.get("callbacks") or ():
                if cb["call_id"] in abandoned:
                    assert (cb["line"], cb["caller"]) == ("999", "07700900123"), cb
                    assert 0.0 < cb["wait"] < 5.0 and down < cb["at"] < listed_at, cb

            # CAD: every call's arrival and end (the outage's events were spooled)
            def cad_complete() -> list[str]:
                seen: dict[str, set[str]] = {}
                assert cluster.cad is not None
                for m in cluster.cad.snapshot():
                    seen.setdefault(m.get("call_id", ""), set()).add(m.get("type", ""))
                missing = [r["call_id"] for r in rows
                           if not {"call.arrived", "call.answered", "call.ended"}
                           <= seen.get(r["call_id"], set())]
                missing += [cid for cid in abandoned
                            if not {"call.arrived", "call.abandoned"}
                            <= seen.get(cid, set())]
                return missing
            missing = cad_complete()
            deadline = time.monotonic() + 20
            while missing and time.monotonic() < deadline:
                time.sleep(0.5)
                missing = cad_complete()
            cad = cluster.cad.snapshot() if cluster.cad is not None else []
            assert missing == [], (missing, [m for m in cad if m.get("call_id") in missing],
                                   gone_rows)
            logs = "".join(cluster.node_log(n, 2_000_000) for n in cluster.nodes)
            assert logs.count("routing.fallback_over") >= 3, why

            handed = 0  # call-backs the leader took from hand-backs (not from the log)
            for text in logs.splitlines():
                if '"routing.callbacks_added"' in text:
                    with contextlib.suppress(ValueError):
                        handed += int(json.loads(text).get("added", 0))
            first_alone = min(e["at"] for e in during)
            first_call = min(r["arrived_at"] for r in rows)
            c_first = min((e["at"] for e in c_offers), default=None)
            done = max(r["answered_at"] for r in rows)
            print(f"\noutage: fallback_after={fallback_after(_cfg())} s; all nodes alone "
                  f"{switched - down:.2f} s after the crash; first offer alone "
                  f"{first_alone - first_call:.2f} s after the first call came "
                  f"({first_alone - down:.2f} s after the crash); offers alone {len(during)},"
                  f" answered alone {len(connected)}; store down {up - down:.1f} s; "
                  f"C's first offer {(c_first - up) if c_first else float('nan'):.2f} s "
                  f"after it was back; all {len(rows)} answered {done - up:.2f} s after; "
                  f"{len(abandoned)} of 4 999s abandoned waiting, all on the leader's "
                  f"call-back list {listed_at - up:.2f} s after it was back ({handed} added"
                  f" from the nodes' hand-backs)")
        finally:
            for load in loads + gone:
                load.stop()


def _line(rows: list[dict[str, Any]], call_id: str) -> str:
    return next((str(e["line"]) for e in rows if e["call_id"] == call_id), "")


def _cfg() -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(storage=SimpleNamespace(heartbeat_interval=0.5))
