"""A desk node cut off from the store alone, still reaching the phones: no handler is
ever offered two calls (issue 14, ``controlroom.leader`` desks away, ``fallback``).

Real parts: three ``controlroom serve`` nodes, each in its own network namespace, on one
PostgreSQL with ``cluster.global_queue``; Kamailio's dispatcher spreading SIPp 999 and
101 callers over all three; SIPp handler phones (every SIP message traced) for desks on
two nodes (A and B, two handlers each; C has none); Mosquitto as the CAD. The fault is
``Cluster.cut_store(A)``: A's packets to the store's address go to a next hop nobody
answers, while Kamailio, the phones and the broker still reach it. A is a desk node that
does not hold the routing lease (the leader keeps seeing B and C).

Checked over the whole run (before, during and after the cut): from the phones' side no
handler's phone has two INVITE dialogs at once, no handler has two open ``call.offered``
CAD events, and the queue log (A's spooled rows with the leader's) shows no second offer
to a busy handler; the leader put A's desks away (their STATE row) before A began routing
alone (its ``/healthz``); during the cut A's desks took A's calls alone and no other
node's, and B's desks took B's and C's calls through the leader; after the restore A
hands back and its desks are offered the room's calls again; every call placed is in the
store answered and ended, and the CAD has its arrival, answer and end. Timings printed:
cut -> A's desks away, cut -> A alone, restore -> A's desks back, restore -> first room
call offered to an A desk.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import statistics
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from harness.cluster import (
    Cluster,
    Node,
    namespaces_available,
    priority_and_offers,
    store_query,
    wait_for,
)
from harness.postgres import available as postgres_available

from .test_global_queue_outage import _desk_ready, _health

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed"),
              pytest.mark.skipif(not namespaces_available(),
                                 reason="a store cut needs namespaces (root)")]

RATE_101, RATE_999 = 0.8, 0.4
"""Calls a second per line, over the three nodes (~1.2/s for four handlers taking one
every ~2 s: ring 0.3 + talk 1.2 + wrap-up 0.3)."""
BEFORE_S, CUT_S, AFTER_S = 5.0, 14.0, 10.0
AFTER_CALLS = 6
"""101s placed once the cut node has handed back (its desks are offered them)."""
FIGURES: dict[bool, list[dict[str, float]]] = {False: [], True: []}
"""Per variant (the leader's node cut or not): each run's timings."""


class _TracedCluster(Cluster):
    """The handler phones trace every SIP message (``messages.log``): when each INVITE
    came to which handler and when that dialog's last message passed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trace_phones = True


_STAMP = re.compile(r"^-{10,} (\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d(?:\.\d+)?)")


def phone_dialogs(text: str) -> dict[str, list[tuple[float, float, str]]]:
    """From a SIPp message trace: per handler (the INVITE's request-URI user), each
    dialog as (INVITE received, its last message, Call-ID)."""
    blocks: list[tuple[float, list[str]]] = []
    for line in text.splitlines():
        m = _STAMP.match(line)
        if m:
            at = dt.datetime.strptime(f"{m[1]} {m[2]}", "%Y-%m-%d %H:%M:%S.%f").timestamp()
            blocks.append((at, []))
        elif blocks:
            blocks[-1][1].append(line)
    first: dict[str, tuple[float, str]] = {}
    last: dict[str, float] = {}
    for at, lines in blocks:
        body = [x.strip() for x in lines if x.strip()]
        start = next((x for x in body if x.startswith(("SIP/2.0", "INVITE ", "ACK ", "BYE ",
                                                        "CANCEL ", "OPTIONS "))), "")
        cid = next((x.split(":", 1)[1].strip() for x in body
                    if x.lower().startswith(("call-id:", "i:"))), "")
        if not cid:
            continue
        if start.startswith("INVITE ") and cid not in first:
            found = re.match(r"INVITE sips?:([^@;>\s]+)", start)
            if found:
                first[cid] = (at, found[1])
        last[cid] = max(last.get(cid, at), at)
    out: dict[str, list[tuple[float, float, str]]] = {}
    for cid, (at, user) in first.items():
        out.setdefault(user, []).append((at, last[cid], cid))
    return {u: sorted(v) for u, v in out.items()}


def overlaps(dialogs: dict[str, list[tuple[float, float, str]]]) -> list[tuple[str, str, str]]:
    """Handlers whose phone had a dialog start while another was still going on."""
    bad = []
    for user, ds in dialogs.items():
        for i, (_s1, e1, c1) in enumerate(ds):
            bad += [(user, c1, c2) for s2, _e2, c2 in ds[i + 1:] if s2 < e1]
    return bad


def cad_doubles(msgs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``call.offered`` to a handler still holding an offered call (not failed, not
    ended) in the CAD events, by their time."""
    def at(m: dict[str, Any]) -> float:
        return dt.datetime.fromisoformat(str(m.get("timestamp"))).timestamp()
    open_: dict[str, str] = {}
    bad = []
    for m in sorted(msgs, key=at):
        t, c = m.get("type"), m.get("call_id") or ""
        h = str((m.get("agent") or {}).get("id") or "")
        if t == "call.offered":
            assert h, m
            if h in open_ and open_[h] != c:
                bad.append((h, open_[h], c))
            open_[h] = c
        elif t == "call.offer_failed" and open_.get(h) == c:
            del open_[h]
        elif t in ("call.ended", "call.abandoned"):
            open_ = {k: v for k, v in open_.items() if v != c}
    return bad


def _alone(node: Node) -> bool:
    return any("routing alone" in r for r in _health(node).get("reasons", ()))


def why_now(cluster: Cluster) -> str:
    return "\n".join(cluster.node_log(x, 3000) for x in cluster.nodes)


class _Alone(threading.Thread):
    """Polls a node's ``/healthz`` every 50 ms: when it first said it routes alone, and
    when it last did."""

    def __init__(self, node: Node) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.first: float | None = None
        self.last: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            t0 = time.time()
            h = _health(self.node)
            if any("routing alone" in r for r in h.get("reasons", ())):
                self.first = self.first or t0
                self.last = t0
            self.done.wait(0.05)


def _term_past(cluster: Cluster, term: int) -> bool:
    return int(cluster.leader()["term"]) > term


def _lease_on(cluster: Cluster, wanted: set[str], timeout: float = 90.0) -> str:
    """Until a node in ``wanted`` holds the routing lease: the holder's lease session is
    ended (``pg_terminate_backend``) and the nodes contend again."""
    from store.lease import LOCK_KEY

    url = cluster.store_url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = cluster.leader()
        if row["holder"] in wanted:
            time.sleep(3.0)  # its takeover done, every node resynced
            return str(row["holder"])
        store_query(url, "SELECT pg_terminate_backend(pid) AS x FROM pg_locks WHERE"
                         " locktype = 'advisory' AND granted AND classid = %s AND objid = %s",
                    (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF))
        wait_for(partial(_term_past, cluster, int(row["term"])), 10, step=0.1)
    raise AssertionError(f"the lease never came to {wanted}: {cluster.leader()}")


RUNS = range(int(os.environ.get("CONTROLROOM_CUT_RUNS", "1")))


@pytest.mark.parametrize("run", RUNS)
def test_a_desk_node_cut_from_the_store_never_makes_a_handler_ring_twice(
        tmp_path: Path, run: int) -> None:
    """A desk node that is not the routing leader is cut off from the store."""
    _cut_desk_node(tmp_path, leader=False)


@pytest.mark.parametrize("run", RUNS)
def test_the_leaders_desk_node_cut_from_the_store_never_makes_a_handler_ring_twice(
        tmp_path: Path, run: int) -> None:
    """The desk node holding the routing lease is cut off from the store: another node
    takes the lease over (its session released by the server ~3 s after the cut) and
    leaves the cut node's desks out of its rebuild, as that node did not resync."""
    _cut_desk_node(tmp_path, leader=True)


def _cut_desk_node(tmp_path: Path, *, leader: bool) -> None:
    from controlroom.fallback import DESK_AWAY
    from controlroom.leader import fallback_after, stale_after

    with _TracedCluster(tmp_path, nodes=3, handlers=2, postgres=True, global_queue=True,
                        handler_nodes=[0, 1], ring_ms=300, wrapup=0.3,
                        handler_talk_ms=1200, heartbeat_interval=0.5,
                        salvage_after=120.0) as cluster:
        url = cluster.store_url
        n = cluster.nodes
        for node in n[:2]:
            for h in node.handlers:
                _desk_ready(node, url, h)
        if leader:
            holder = _lease_on(cluster, {n[0].node_id, n[1].node_id})
            a, b = (n[0], n[1]) if holder == n[0].node_id else (n[1], n[0])
        else:
            holder = cluster.leader()["holder"]
            a, b = (n[1], n[0]) if holder == n[0].node_id else (n[0], n[1])
        term = cluster.leader()["term"]
        desks = {h: node.node_id for node in (a, b) for h in node.handlers}

        def published() -> bool:
            hs = json.loads(store_query(url, "SELECT handlers FROM routing_state")[0]
                            ["handlers"])
            return all(hs.get(h, {}).get("desk") == nd for h, nd in desks.items())
        assert wait_for(published, 15)
        time.sleep(1.5)  # every node has read them
        start_id = store_query(url, "SELECT COALESCE(MAX(id), 0) AS m FROM queue_log")[0]["m"]
        began = time.time()
        total = BEFORE_S + CUT_S + AFTER_S
        loads = [cluster.callers("101", rate=RATE_101, calls=int(RATE_101 * total),
                                 talk_ms=60_000, name="101").start(),
                 cluster.callers("999", rate=RATE_999, calls=int(RATE_999 * total),
                                 talk_ms=60_000, name="999").start()]
        probe = _Alone(a)
        probe.start()
        try:
            time.sleep(BEFORE_S)
            cut = cluster.cut_store(a)
            time.sleep(CUT_S)
            cluster.restore_store(a)
            restored = time.time()
            # once A has handed back, a few more 101s: the room's calls for A's desks
            assert wait_for(lambda: not _alone(a), 40, step=0.1), why_now(cluster)
            loads.append(cluster.callers("101", rate=1.0, calls=AFTER_CALLS, talk_ms=60_000,
                                         name="101-after").start())
            expected = (sum(int(r * total) for r in (RATE_101, RATE_999)) + AFTER_CALLS)

            def all_over() -> list[dict[str, Any]]:
                placed = sum(len(load.outcomes()) for load in loads)
                rows = store_query(url, "SELECT * FROM calls WHERE arrived_at >= %s"
                                        " AND line <> ''", (began,))
                done = [r for r in rows if r["answered_at"] and r["ended_at"]]
                ok = (placed == expected and len(rows) >= placed
                      and len(done) == len(rows))
                return rows if ok else []
            rows = wait_for(all_over, AFTER_S + 90, step=0.5)
            why = "\n".join(cluster.node_log(x, 4000) for x in n)
            assert rows, (store_query(url, "SELECT call_id, node, state, answered_at,"
                                           " ended_at FROM calls WHERE arrived_at >= %s",
                                      (began,)), [load.outcomes() for load in loads], why)
        finally:
            probe.done.set()
            for load in loads:
                load.stop()
        assert wait_for(lambda: all(_health(x).get("status") == "ok" for x in n), 20), (
            [_health(x) for x in n])
        log = store_query(url, "SELECT id, at, call_id, line, handler_id, event, data"
                               " FROM queue_log WHERE id > %s ORDER BY at, id", (start_id,))
        why = "\n".join(cluster.node_log(x, 6000) for x in n)
        (tmp_path / "queue_log.json").write_text(json.dumps(log, default=str))

        # (a) one call at a time per handler: phones, CAD, queue log
        phones = {}
        for node in (a, b):
            assert node.phones is not None
            text = (node.workdir / "phones" / "messages.log").read_text(errors="replace")
            phones.update(phone_dialogs(text))
        assert set(phones) == set(desks), phones.keys()
        assert overlaps(phones) == [], (overlaps(phones), phones)
        assert cluster.cad is not None
        cad = cluster.cad.snapshot()
        (tmp_path / "cad.json").write_text(json.dumps(cad, default=str))
        assert cad_doubles(cad) == [], cad_doubles(cad)
        res = priority_and_offers(log)
        assert res["doubles"] == [], (res, log)

        def data(e: dict[str, Any]) -> dict[str, Any]:
            d = e["data"]
            return dict(json.loads(d) if isinstance(d, str) else d or {})
        def node_of(cid: str) -> str:
            return cid.split("-")[0]
        away = [e for e in log if e["event"] == "STATE" and data(e).get("reason") == DESK_AWAY
                and e["at"] > cut]
        assert {e["handler_id"] for e in away} == set(a.handlers), (away, why)
        away_at = min(e["at"] for e in away)
        assert probe.first is not None, why
        alone_at = probe.first
        if leader:  # another node took over, and left A's desks out from the start
            took = cluster.leader()
            assert took["term"] > term and took["holder"] != a.node_id, took
        else:  # the leader put A's desks away before A routed alone
            assert away_at < alone_at, (away_at - cut, alone_at - cut)
        back = [e for e in log if e["event"] == "STATE" and e["handler_id"] in a.handlers
                and e["at"] > restored and data(e).get("from") == "not_ready"
                and data(e).get("state") == "available"]
        assert back, (log, why)
        back_at = min(e["at"] for e in back)

        offers = [e for e in log if e["event"] == "OFFER"]
        # (b) A's desks took A's calls alone during the cut, and no other node's calls
        # from the time they were put away until their hand-back
        a_alone = [e for e in offers if alone_at <= e["at"] < restored
                   and e["handler_id"] in a.handlers]
        assert a_alone and all(node_of(e["call_id"]) == a.node_id for e in a_alone), a_alone
        # (with the leader's node cut, none from the cut: the taker-over left them out)
        assert [e for e in offers if (cut if leader else min(away_at, alone_at)) <= e["at"]
                < back_at
                and e["handler_id"] in a.handlers
                and node_of(e["call_id"]) != a.node_id] == []
        connected = [e for e in log if e["event"] == "CONNECT" and cut < e["at"] < restored
                     and e["handler_id"] in a.handlers]
        assert connected, log
        # (c) B's desks took B's and C's calls through the leader during the cut
        b_cut = [e for e in offers if cut < e["at"] < restored and e["handler_id"] in b.handlers]
        assert b_cut and all(node_of(e["call_id"]) != a.node_id for e in b_cut), b_cut
        # (d) after the hand-back A's desks are offered the room's calls again
        room = [e for e in offers if e["at"] >= back_at and e["handler_id"] in a.handlers
                and node_of(e["call_id"]) != a.node_id]
        assert room, ([e for e in offers if e["at"] >= restored], why)
        # nothing lost: every call placed answered and ended, once in the queue log, CAD
        placed = [o for load in loads for o in load.outcomes()]
        by_sip = {r["sip_call_id"]: r for r in rows}
        assert all(o.sip_call_id in by_sip and o.answered for o in placed), (placed, rows)
        for r in rows:
            evs = [e["event"] for e in log if e["call_id"] == r["call_id"]]
            assert evs.count("ENTER") == 1 and evs.count("COMPLETE") == 1, (r, evs)

        def cad_missing() -> list[str]:
            seen: dict[str, set[str]] = {}
            assert cluster.cad is not None
            for m in cluster.cad.snapshot():
                seen.setdefault(m.get("call_id", ""), set()).add(m.get("type", ""))
            return [r["call_id"] for r in rows
                    if not {"call.arrived", "call.answered", "call.ended"}
                    <= seen.get(r["call_id"], set())]
        assert wait_for(lambda: not cad_missing(), 20), cad_missing()
        figures = {"away": away_at - cut, "alone": alone_at - cut, "back": back_at - restored,
                   "room_offer": min(e["at"] for e in room) - restored,
                   "calls": float(len(rows)), "a_alone_offers": float(len(a_alone))}
        FIGURES[leader].append(figures)
        print(f"\nstore cut of {a.node_id} (leader {holder}{', cut' if leader else ''}): "
              f"stale_after="
              f"{stale_after(_cfg())} s, fallback_after={fallback_after(_cfg())} s; "
              f"cut -> its desks away {figures['away']:.2f} s; cut -> alone "
              f"{figures['alone']:.2f} s ("
              + (f"no leader until the takeover {cluster.leader()['since'] - cut:.2f} s"
                 f" after the cut" if leader else f"margin {alone_at - away_at:.2f} s")
              + f"); restore -> "
              f"desks back {figures['back']:.2f} s, -> first room call offered to them "
              f"{figures['room_offer']:.2f} s; {len(rows)} calls, {len(a_alone)} offered "
              f"alone on {a.node_id}, {len(b_cut)} to {b.node_id}'s desks during the cut; "
              f"phone dialogs {sum(len(v) for v in phones.values())}, overlaps 0")
        if len(FIGURES[leader]) > 1:
            for k in ("away", "alone", "back", "room_offer"):
                vals = [f[k] for f in FIGURES[leader]]
                print(f"{k}: min {min(vals):.2f} median {statistics.median(vals):.2f} "
                      f"max {max(vals):.2f} s over {len(vals)} runs")


def _cfg() -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(storage=SimpleNamespace(heartbeat_interval=0.5))
