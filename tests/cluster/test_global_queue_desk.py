"""The desk on a global-queue cluster is the room's (issue 14, ``controlroom.desk``).

Real parts: three ``controlroom serve`` nodes on one PostgreSQL with
``cluster.global_queue`` (each in its own network namespace when root), Kamailio's
dispatcher spreading SIPp callers over them, handler phones (SIPp) registered at Kamailio
for node B (n2) only, and the console's JSON API over HTTP with users in the shared store.

* A desk operation the routing leader refuses comes back to the API caller as the same
  409 one node gives (the router's message), and a refused transfer leaves the call with
  its handler; an applied one is carried out.
* A node killed with 999 callers waiting: the survivor's salvage puts them on the
  call-back list, and the leader's list (what every desk reads) has them at once, not
  at the next takeover.
* The service-level figures every node's desk shows are the room's, and a full 101
  queue (``max_queue``, ``overflow = "busy"``) is the room's queue: a node refuses a 101
  with 486 when the room holds ``max_queue`` waiting calls, whatever it holds itself.
"""

from __future__ import annotations

import http.cookiejar
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import Cluster, Node, store_query, wait_for
from harness.postgres import available as postgres_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed")]

PASSWORD = "correct horse battery"


class Desk:
    """A console user's session on one node (cookie and CSRF token), over HTTP."""

    def __init__(self, node: Node, username: str) -> None:
        self.base = f"http://{node.addr}:{node.web_port}"
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""
        status, me = self.call("POST", "/api/login", {"username": username,
                                                      "password": PASSWORD})
        assert status == 200, (status, me)
        self.csrf = me["csrf"]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if self.csrf:
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def _users(url: str, *specs: tuple[str, list[str]]) -> None:
    from console import users
    from store.db import Database

    db = Database(url)
    try:
        for name, roles in specs:
            users.create_user(db, name, PASSWORD, roles)
    finally:
        db.close()


def _one_node_refusal(handler: str) -> str:
    """What one node's router says when a talking handler asks to be available."""
    from routing import Router, RoutingError
    from routing.model import LineSpec

    r = Router(lines=[LineSpec(name="999", priority=0, skill="999")])
    r.handler_login(handler, 0.0, skills={"999": 5})
    r.set_available(handler, 0.0)
    r.call_arrived("c1", "999", 1.0)
    r.offer_answered("c1", handler, 2.0)
    try:
        r.set_available(handler, 3.0)
    except RoutingError as exc:
        return str(exc)
    raise AssertionError("one node applied it")


def test_a_refused_desk_operation_is_the_same_409_as_on_one_node(tmp_path: Path) -> None:
    """Talking handler asks to be available: 409 with the router's message (was 200 with
    nothing done); a transfer to a logged-out handler: 409 and the caller stays with
    their handler; a transfer to the 101 queue: done (the call waits again)."""
    with Cluster(tmp_path, nodes=3, handlers=2, postgres=True, global_queue=True,
                 handler_nodes=[1], ring_ms=300, wrapup=0.3, heartbeat_interval=0.5,
                 salvage_after=20.0) as cluster:
        url = cluster.store_url
        _users(url, ("n2h1", ["handler"]), ("n2h2", ["handler"]))
        t0 = time.time()
        # n2h2 logs out from a desk on n1 (a node that is not their phone's): applied
        away = Desk(cluster.nodes[0], "n2h2")
        assert away.call("POST", "/api/desk/state", {"state": "logged_out"}) == (
            200, {"ok": True})
        load = cluster.callers("999", rate=1, calls=1, talk_ms=60_000, name="999").start()
        try:
            def talking() -> dict[str, Any] | None:
                rows = [r for r in store_query(url, "SELECT * FROM calls WHERE arrived_at > %s"
                                                    " AND answered_at IS NOT NULL", (t0,))]
                return rows[0] if rows else None
            row = wait_for(talking, 20)
            why = "\n".join(cluster.node_log(n, 3000) for n in cluster.nodes)
            assert row and row["handler_id"] == "n2h1", why
            cid = row["call_id"]
            holder = next(n for n in cluster.nodes if n.node_id == row["node"])
            # the handler's desk on a node other than the call's: set available -> 409
            other = next(n for n in cluster.nodes if n is not holder)
            desk = Desk(other, "n2h1")
            status, body = desk.call("POST", "/api/desk/state", {"state": "available"})
            assert (status, body) == (409, {"error": _one_node_refusal("n2h1")}), why
            assert body["error"] == "handler 'n2h1' is on_call: cannot 'ready'"
            # transfer to the logged-out handler, from the desk on the call's node: 409
            mine = Desk(holder, "n2h1")
            status, body = mine.call("POST", f"/api/desk/calls/{cid}/transfer",
                                     {"to_handler": "n2h2"})
            assert (status, body) == (409, {"error": "handler 'n2h2' is logged_out: "
                                                     "cannot take a transfer"}), why
            time.sleep(0.5)
            [now] = store_query(url, "SELECT state, handler_id FROM calls WHERE call_id = %s",
                                (cid,))
            assert (now["state"], now["handler_id"]) == ("connected", "n2h1")
            assert not store_query(url, "SELECT 1 FROM queue_log WHERE call_id = %s AND"
                                        " event = 'TRANSFER'", (cid,))
            # an applied transfer is carried out: the call waits again in the 101 queue
            # (nobody to take it: n2h1 transferred it, n2h2 logged out)
            status, body = mine.call("POST", f"/api/desk/calls/{cid}/transfer",
                                     {"to_line": "101", "confirm": True})
            assert (status, body) == (200, {"ok": True}), why

            def requeued() -> bool:
                [r] = store_query(url, "SELECT state FROM calls WHERE call_id = %s", (cid,))
                return r["state"] == "queued"
            assert wait_for(requeued, 5), why
            assert store_query(url, "SELECT 1 FROM queue_log WHERE call_id = %s AND"
                                    " event = 'TRANSFER'", (cid,))
        finally:
            load.stop()


def test_a_salvaged_nodes_999_callbacks_reach_the_leaders_list_at_once(
        tmp_path: Path) -> None:
    """kill -9 of a node with 999 callers waiting: once a survivor salvages it, every
    desk's call-back list (the leader's) has those callers, within a snapshot or two."""
    with Cluster(tmp_path, nodes=3, handlers=1, postgres=True, global_queue=True,
                 handler_nodes=[1], ring_ms=300, wrapup=0.3, heartbeat_interval=0.5,
                 salvage_after=3.0) as cluster:
        url = cluster.store_url
        _users(url, ("sup", ["supervisor"]))
        t0 = time.time()
        # one handler: the first 999 talks for a minute, the others wait on every node
        load = cluster.callers("999", rate=6, calls=7, talk_ms=60_000, name="999").start()
        try:
            lead = cluster.leader()["holder"]

            def victim() -> Node | None:
                best = None
                for n in cluster.nodes:
                    waiting = [r for r in n.calls() if r["arrived_at"] >= t0
                               and r["ended_at"] is None and not r["answered_at"]]
                    if n.node_id != lead and waiting and (best is None or n.handlers == []):
                        best = n
                return best
            dead = wait_for(victim, 20)
            assert dead is not None, [n.calls() for n in cluster.nodes]
            waiting = {r["call_id"] for r in dead.calls() if r["arrived_at"] >= t0
                       and r["ended_at"] is None and not r["answered_at"]}
            cluster.kill(dead)

            def salvaged() -> bool:
                rows = [r for r in dead.calls() if r["call_id"] in waiting]
                return all(r["state"] == "interrupted" for r in rows)
            assert wait_for(salvaged, 15), cluster.node_log(cluster.nodes[0], 4000)
            done = time.time()
            on_record = {r["call_id"] for r in store_query(
                url, "SELECT call_id FROM queue_log WHERE event = 'CALLBACK_ADD'")}
            assert waiting <= on_record
            survivor = next(n for n in cluster.nodes if n is not dead)
            sup = Desk(survivor, "sup")

            def listed() -> set[str]:
                status, cbs = sup.call("GET", "/api/callbacks")
                assert status == 200, cbs
                got = {a["call_id"] for cb in cbs for a in cb["attempts"]}
                return got if waiting <= got else set()
            got = wait_for(listed, 5)
            why = "\n".join(cluster.node_log(n, 4000) for n in cluster.nodes if n is not dead)
            assert waiting <= got, (waiting, got, why)
            print(f"\nsalvaged call-backs: {len(waiting)} of {dead.node_id} on the leader's"
                  f" list {time.time() - done:.2f} s after the salvage")
        finally:
            load.stop()


MAX_QUEUE = 2


class FullQueueCluster(Cluster):
    """The 101 line refuses past ``MAX_QUEUE`` waiting calls (overflow busy: 486)."""

    def node_config(self, node: Node) -> dict[str, Any]:
        cfg = super().node_config(node)
        for line in cfg["lines"]:
            if line["name"] == "101":
                line.update(max_queue=MAX_QUEUE, overflow="busy")
        return cfg


def test_service_level_and_the_101_queue_full_refusal_are_the_rooms(tmp_path: Path) -> None:
    """Every node's desk shows the room's 101 figures (answered today = every node's
    answered 101s); with the one handler talking, the room's 101 queue holds
    ``MAX_QUEUE`` calls and a node refuses the next with 486 though it holds fewer."""
    with FullQueueCluster(tmp_path, nodes=3, handlers=1, postgres=True, global_queue=True,
                          handler_nodes=[1], ring_ms=300, wrapup=0.3,
                          heartbeat_interval=0.5, salvage_after=20.0) as cluster:
        url = cluster.store_url
        _users(url, ("sup", ["supervisor"]))
        boards = [Desk(n, "sup") for n in cluster.nodes]
        # one 101 answered (on whichever node), besides the warm-up's abandoned ones
        cluster.callers("101", rate=1, calls=1, talk_ms=3000, name="answered").start().wait(30)
        midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
        last: list[Any] = []

        def figures() -> tuple[int, int] | None:
            rows = store_query(url, "SELECT event, COUNT(DISTINCT call_id) AS n FROM queue_log"
                                    " WHERE line = '101' AND at >= %s AND event IN"
                                    " ('CONNECT', 'ABANDON') GROUP BY event", (midnight,))
            n = {r["event"]: r["n"] for r in rows}
            want = (n.get("CONNECT", 0), n.get("ABANDON", 0))
            seen = []
            for b in boards:
                status, snap = b.call("GET", "/api/wallboard")
                assert status == 200, snap
                line = next(ln for ln in snap["lines"] if ln["name"] == "101")
                seen.append((line["answered_today"], line["abandoned_today"]))
            last[:] = [want, seen]
            return want if want[0] and all(s == want for s in seen) else None
        room = wait_for(figures, 10, step=0.5)
        assert room, last  # (answered, abandoned) today: the room's, on every node
        # one 101 keeps the handler talking; then 101s at 1/s over the three nodes
        t0 = time.time()
        hold = cluster.callers("101", rate=1, calls=1, talk_ms=60_000, name="hold").start()
        loads = [hold]
        try:
            assert wait_for(lambda: store_query(
                url, "SELECT 1 FROM calls WHERE arrived_at >= %s AND answered_at IS NOT NULL",
                (t0,)), 15)
            t1 = time.time()
            loads.append(cluster.callers("101", rate=1, calls=8, talk_ms=30_000,
                                         name="101").start())
            time.sleep(10.0)
            open_calls = store_query(url, "SELECT node, call_id FROM calls WHERE"
                                          " arrived_at >= %s AND ended_at IS NULL AND"
                                          " answered_at IS NULL", (t1,))
            assert len(open_calls) == MAX_QUEUE, open_calls  # the room's queue, full
            rejected = store_query(url, "SELECT call_id, data FROM queue_log WHERE at >= %s"
                                        " AND event = 'REJECTED'", (t1,))
            before = [r for r in rejected if r["call_id"].startswith("r-")]
            assert before and all(json.loads(r["data"])["reason"] == "queue-full"
                                  for r in rejected), rejected
            # 486 before answering on a node holding fewer than MAX_QUEUE waiting calls
            held = {n.node_id: sum(1 for c in open_calls if c["node"] == n.node_id)
                    for n in cluster.nodes}
            refusing = {n.node_id for n in cluster.nodes
                        if '"Busy Here (queue-full)"' in cluster.node_log(n, 500_000)}
            assert any(held[n] < MAX_QUEUE for n in refusing), (held, refusing)
            for n in cluster.nodes:
                assert "Busy Here (no-handlers)" not in cluster.node_log(n, 500_000)
            print(f"\nroom-wide 101: (answered, abandoned) today {room} on every desk; queue"
                  f" {len(open_calls)}/{MAX_QUEUE} held {held}; refused before answer"
                  f" {len(before)} by {sorted(refusing)}")
        finally:
            for load in loads:
                load.stop()
