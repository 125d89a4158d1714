"""Cluster benchmark (issue 14): controlroom nodes behind Kamailio's dispatcher.

    .venv/bin/python bench/cluster_failover.py            # 1, 2, 3 nodes, then kill -9
                                                          # and a network cut with 3
    .venv/bin/python bench/cluster_failover.py --rate 5 --duration 30 --keep /tmp/cl

Everything real (harness/cluster.py): Kamailio with the dispatcher, Mosquitto, each node
a ``controlroom serve`` process in its own network namespace (or on 127.0.0.x where
namespaces cannot be made: then no cut), SIPp handler phones per node and SIPp callers
placing 999 and 101 calls at a steady rate. Bounded: every SIPp has ``-m`` calls and a
global timeout; everything is stopped at the end, also on Ctrl-C. Run as root for the
namespaces.

Figures:
  scale (1, 2, 3 nodes): calls answered / offered, set-up rate achieved (calls/s
  answered), INVITE -> 200 p50/p99 as callers see it (through Kamailio), routing p99
  (arrival -> handler's answer, less the phones' ring time: queue + offer through
  Kamailio), calls per node.
  faults (3 nodes; kill -9 of one, then separately a cable pull): new calls failed as
  seen by callers, fault -> first new call answered by a survivor, slowest new set-up,
  calls the node was carrying (their callers' BYEs lost), CAD messages missing for the
  survivors' calls, duplicates. The fault rounds run on one shared PostgreSQL store
  (a throw-away server on the hub address) with each node's recordings folder visible
  to the others: after the kill a *survivor* closes the calls the dead node was carrying
  (controlroom/cluster.py): fault -> closed, how many closed with their recording sealed
  and its SHA-256 matching the file, call.ended at the CAD; then the dead node restarts
  and nothing is closed twice.
  scale rounds run twice: ``local`` (each node routes its own calls to its own
  handlers, SQLite per node) and ``global`` (one PostgreSQL, ``cluster.global_queue``:
  the routing leader runs one router for the room; every node lists every handler), with
  the leader's decision p99 (an input's row written -> the leader's output row written).
  priority (3 nodes, global queue): handlers only on n2, a burst of 999s and 101s over
  every node, kill -9 of the routing leader mid-run; from the queue log, in the leader's
  order: 101 offers made while a 999 waited anywhere, handlers offered twice, 999s held
  on another node answered by n2's handlers, kill -> new leader, offers after the kill.
Last line: ``cluster: nodes=3 failed_new=N first_answer_s=N.NN salvaged=N/N cad_missing=N``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.cluster import (  # noqa: E402
    CallOutcome,
    Cluster,
    fault_figures,
    keep_dir,
    namespaces_available,
    percentile,
    priority_and_offers,
    store_query,
)


def salvaged_at(cluster: Cluster, node_id: str) -> tuple[str, float] | None:
    """(survivor, wall time) of the ``node.salvaged`` log line for ``node_id``."""
    from datetime import datetime

    for n in cluster.nodes:
        for line in cluster.node_log(n, 2_000_000).splitlines():
            if '"node.salvaged"' in line and f'"node": "{node_id}"' in line:
                rec = json.loads(line)
                if rec.get("calls"):
                    ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
                    return n.node_id, ts.timestamp()
    return None


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def place(cluster: Cluster, *, rate: float, duration: float, talk_s: float,
          during: Any = None) -> list[CallOutcome]:
    """999 and 101 callers at ``rate`` calls/s each for ``duration`` s; ``during(t0)`` is
    called at the start (it may sleep and inject a fault); returns every call."""
    calls = max(1, int(rate * duration))
    loads = [cluster.callers(n, rate=rate, calls=calls, talk_ms=int(talk_s * 1000))
             for n in ("999", "101")]
    for load in loads:
        load.start()
    if during is not None:
        during(time.time())
    for load in loads:
        load.wait(duration + talk_s + 120)
    return sorted((c for load in loads for c in load.outcomes()), key=lambda c: c.sent)


def routing_p99(cluster: Cluster, ring_s: float) -> float | None:
    """Arrival -> handler answer, less the ring time, over every node's answered calls."""
    vals = []
    for node in cluster.nodes:
        for r in node.calls():
            if r.get("answered_at") and r.get("arrived_at"):
                vals.append(max(0.0, r["answered_at"] - r["arrived_at"] - ring_s))
    return percentile(vals, 0.99)


def leader_lags(cluster: Cluster, since: float) -> list[float]:
    """Global queue: an input row written by a node -> the leader's output row written,
    for the rows of the measured calls (not the start-up's logins, read by the first
    leader after it took the lease)."""
    rows = store_query(cluster.store_url, "SELECT at - input_at AS lag FROM routing_outputs"
                                          " WHERE input_at IS NOT NULL AND input_at >= %s",
                       (since,))
    return [r["lag"] for r in rows]


def scale_round(n: int, args: argparse.Namespace, work: Path, mode: str) -> dict[str, Any]:
    shared = mode == "global"
    with Cluster(work / f"scale-{mode}-{n}", nodes=n, handlers=args.handlers,
                 namespaces=args.namespaces, ring_ms=args.ring_ms, postgres=shared,
                 global_queue=shared) as cluster:
        t0 = time.time()
        calls = place(cluster, rate=args.rate, duration=args.duration, talk_s=args.talk)
        answered = [c for c in calls if c.answered is not None]
        span = (max(c.answered for c in answered) - min(c.sent for c in calls)  # type: ignore[type-var]
                if answered else 0.0)
        setups = [c.setup for c in answered if c.setup is not None]
        per_node = {node.node_id: sum(1 for c in answered if c.node == node.addr)
                    for node in cluster.nodes}
        return {"nodes": n, "offered": len(calls), "answered": len(answered),
                "rate": len(answered) / span if span > 0 else 0.0,
                "p50": percentile(setups, 0.5), "p99": percentile(setups, 0.99),
                "routing_p99": routing_p99(cluster, args.ring_ms / 1000),
                "leader_p50": percentile(leader_lags(cluster, t0), 0.5) if shared else None,
                "leader_p99": percentile(leader_lags(cluster, t0), 0.99) if shared else None,
                "per_node": per_node, "wall": time.time() - t0}


def priority_round(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Handlers only on n2; 999s and 101s held on every node; kill -9 of the leader."""
    with Cluster(work / "priority", nodes=3, handlers=2, namespaces=args.namespaces,
                 postgres=True, global_queue=True, handler_nodes=[1], ring_ms=300,
                 wrapup=0.3, handler_talk_ms=1000, heartbeat_interval=0.5,
                 salvage_after=args.salvage_after) as cluster:
        url = cluster.store_url
        start_id = store_query(url, "SELECT COALESCE(MAX(id), 0) AS m FROM queue_log")[0]["m"]
        t0 = time.time()
        n = args.priority_calls
        loads = [cluster.callers(line, rate=8, calls=n, talk_ms=90_000, name=line).start()
                 for line in ("999", "101")]
        try:
            time.sleep(n / 8 + 2.0)
            lease = cluster.leader()
            victim = next(x for x in cluster.nodes if x.node_id == lease["holder"])
            killed = cluster.kill(victim)
            after = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = cluster.leader()
                if row["term"] > lease["term"]:
                    after = row
                    break
                time.sleep(0.05)
            survivors = [x for x in cluster.nodes if x is not victim]

            def waiting() -> int:
                return sum(1 for x in survivors for r in x.calls()
                           if r["arrived_at"] >= t0 and r["ended_at"] is None
                           and not r["answered_at"])
            deadline = time.monotonic() + 4 * n
            while waiting() and time.monotonic() < deadline:
                time.sleep(0.5)
            log = store_query(url, "SELECT id, at, call_id, line, handler_id, event FROM"
                                   " queue_log WHERE id > %s ORDER BY id", (start_id,))
            first = next((e["id"] for e in log if e["at"] > killed), 1 << 62)
            res = priority_and_offers(log, dead={victim.node_id: first})
            rows = [r for x in survivors for r in x.calls() if r["arrived_at"] >= t0]
            return {
                "offers": res["offers"], "violations": len(res["violations"]),
                "doubles": len(res["doubles"]),
                "cross_999": sum(1 for r in rows if r["line"] == "999"
                                 and r["node"] != "n2"
                                 and (r["handler_id"] or "").startswith("n2h")),
                "old": lease["holder"], "new": after["holder"] if after else None,
                "takeover_s": (after["since"] - killed) if after else None,
                "offers_after": sum(1 for e in log if e["event"] == "OFFER"
                                    and e["at"] > killed),
                "left_waiting": waiting(), "survivor_calls": len(rows)}
        finally:
            for load in loads:
                load.stop()


def fault_round(kind: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with Cluster(work / f"fault-{kind}", nodes=3, handlers=args.handlers,
                 namespaces=args.namespaces, ring_ms=args.ring_ms, postgres=True,
                 heartbeat_interval=0.5, salvage_after=args.salvage_after) as cluster:
        victim = cluster.nodes[1]
        at: dict[str, float] = {}

        def inject(t0: float) -> None:
            time.sleep(max(0.0, t0 + args.duration * 0.4 - time.time()))
            at["fault"] = cluster.kill(victim) if kind == "kill" else cluster.cut(victim)

        calls = place(cluster, rate=args.rate, duration=args.duration, talk_s=args.talk,
                      during=inject)
        figures = fault_figures(cluster, calls, victim, at["fault"], talk_s=args.talk)
        in_flight = [c for c in calls if c.node == victim.addr and c.answered is not None
                     and c.answered < at["fault"] < c.answered + args.talk]
        figures["in_flight_ids"] = [c.sip_call_id for c in in_flight]
        if kind == "kill":
            # A survivor closed the calls the dead node was carrying (shared store).
            rows = {r["sip_call_id"]: r for r in victim.calls()}
            mine = [rows[s] for s in figures["in_flight_ids"] if s in rows]
            ids = {r["call_id"] for r in mine}

            def ok(r: dict[str, Any]) -> bool:
                p = Path(r["recording_path"] or "/nonexistent")
                return (r["ended_at"] is not None and "died" in (r["end_reason"] or "")
                        and p.exists() and
                        hashlib.sha256(p.read_bytes()).hexdigest() == r["recording_sha256"])

            def ended_events() -> dict[str, set[str]]:
                out: dict[str, set[str]] = {}
                for m in cluster.cad.snapshot():  # type: ignore[union-attr]
                    if m.get("type") == "call.ended" and m.get("call_id") in ids:
                        out.setdefault(m["call_id"], set()).add(m["event_id"])
                return out

            by = salvaged_at(cluster, victim.node_id)
            before = ended_events()
            t = time.time()
            cluster.restart(victim)
            restart_s = time.time() - t
            time.sleep(2.0)
            after = ended_events()
            figures.update(
                salvaged_by=by[0] if by else None,
                salvage_s=(by[1] - at["fault"]) if by else None,
                salvaged=sum(1 for r in mine if ok(r)), salvage_of=len(mine),
                ended_at_cad=len(before), restart_s=restart_s,
                closed_twice=sum(1 for c in after if after[c] != before.get(c)))
        else:
            cluster.restore(victim)
            t = time.time()
            back = cluster.callers("999", rate=3, calls=12, talk_ms=500, name="after")
            back.start()
            back.wait(60)
            taken = [c for c in back.outcomes() if c.node == victim.addr and c.answered]
            figures["back_in_service_s"] = (min(c.answered for c in taken) - t  # type: ignore[type-var]
                                            if taken else None)
        return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=3.0, help="new calls/s per line (999, 101)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of calls per round")
    ap.add_argument("--talk", type=float, default=3.0, help="seconds each caller talks")
    ap.add_argument("--handlers", type=int, default=24,
                    help="handler phones per node (enough that calls do not queue: routing "
                    "p99 is then the offer path, not a wait for a free handler)")
    ap.add_argument("--ring-ms", type=int, default=300)
    ap.add_argument("--salvage-after", type=float, default=3.0,
                    help="cluster.salvage_after for the fault rounds (heartbeat 0.5 s)")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3],
                    help="node counts for the scale rounds")
    ap.add_argument("--modes", nargs="+", default=["local", "global"],
                    choices=["local", "global"], help="routing modes for the scale rounds")
    ap.add_argument("--priority-calls", type=int, default=8,
                    help="999s and 101s each in the priority round")
    ap.add_argument("--no-priority", action="store_true")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--no-faults", action="store_true")
    ap.add_argument("--loopback", dest="namespaces", action="store_false", default=None,
                    help="nodes on 127.0.0.x instead of namespaces (no cut)")
    ap.add_argument("--keep", type=Path, help="keep configs, logs and stores here")
    args = ap.parse_args()
    if args.namespaces is None:
        args.namespaces = namespaces_available()
    work = args.keep or keep_dir("cluster-bench-")
    work.mkdir(parents=True, exist_ok=True)
    print(f"cluster bench: {args.rate:g} calls/s per line (999 + 101), {args.duration:g} s "
          f"rounds, {args.talk:g} s calls, {args.handlers} handlers per node, nodes in "
          f"{'network namespaces' if args.namespaces else '127.0.0.x addresses'}; "
          f"work {work}", flush=True)
    try:
        if not args.no_scale:
            print(f"\n{'routing':>7} {'nodes':>5} {'offered':>7} {'answered':>8} "
                  f"{'calls/s':>7} {'setup p50 ms':>12} {'setup p99 ms':>12} "
                  f"{'routing p99 ms':>14} {'leader p50/p99 ms':>17}  per node")
            for mode in args.modes:
                for n in args.nodes:
                    r = scale_round(n, args, work, mode)
                    print(f"{mode:>7} {r['nodes']:>5} {r['offered']:>7} {r['answered']:>8} "
                          f"{r['rate']:>7.2f} {ms(r['p50']):>12} {ms(r['p99']):>12} "
                          f"{ms(r['routing_p99']):>14} "
                          f"{ms(r['leader_p50']) + '/' + ms(r['leader_p99']):>17}  "
                          f"{r['per_node']}", flush=True)
        if not args.no_priority:
            p = priority_round(args, work)
            kept = p["violations"] == 0 and p["doubles"] == 0
            ts = p["takeover_s"]
            print(f"\n  strict priority across nodes (global queue, handlers on n2 only, "
                  f"kill -9 of leader {p['old']}): {'kept' if kept else 'NOT kept'}: "
                  f"offers {p['offers']}, 101 offered while a 999 waited {p['violations']}, "
                  f"handler offered twice {p['doubles']}; 999s held on other nodes "
                  f"answered by n2's handlers {p['cross_999']}; new leader {p['new']} "
                  f"{'-' if ts is None else f'{ts:.2f} s'} after the kill, offers after "
                  f"it {p['offers_after']}, survivors' calls left waiting "
                  f"{p['left_waiting']}/{p['survivor_calls']}", flush=True)
        last = None
        if not args.no_faults:
            kinds = ["kill"] + (["cut"] if args.namespaces else [])
            for kind in kinds:
                f = fault_round(kind, args, work)
                name = "kill -9" if kind == "kill" else "network cut (veth down)"
                print(f"\n{name} of n2 (3 nodes):", flush=True)
                print(f"  new calls after the fault {f['new']}, failed as callers saw it "
                      f"{f['failed_new']}")
                print(f"  fault -> first new call answered by a survivor "
                      f"{f['first_answer_s']:.3f} s; slowest new set-up "
                      f"{f['max_setup_s']:.3f} s; answered by n2 meanwhile "
                      f"{f['answered_by_faulty']}")
                print(f"  calls n2 was carrying {f['in_flight']} (callers' BYE lost: "
                      f"{f['bye_lost']})")
                print(f"  CAD: survivors' calls checked {f['cad_checked']}, missing "
                      f"call.arrived/call.ended {f['cad_missing']}, duplicates (same "
                      f"event_id) {f['cad_duplicates']}")
                if kind == "kill":
                    s_s = f["salvage_s"]
                    print(f"  survivor {f['salvaged_by']} closed n2's calls "
                          f"{'-' if s_s is None else f'{s_s:.1f} s'} after the kill "
                          f"(cluster.salvage_after {args.salvage_after:g} s): of its "
                          f"{f['salvage_of']} cut-off calls {f['salvaged']} closed with "
                          f"their recording sealed (SHA-256 matches the file), "
                          f"{f['ended_at_cad']} call.ended at the CAD")
                    print(f"  n2 restarted in {f['restart_s']:.1f} s: calls closed a "
                          f"second time {f['closed_twice']}")
                    last = f
                else:
                    b = f["back_in_service_s"]
                    print(f"  cable back: n2 answers new calls again after "
                          f"{'-' if b is None else f'{b:.2f} s'}")
        if last is not None:
            print(f"cluster: nodes=3 failed_new={last['failed_new']} "
                  f"first_answer_s={last['first_answer_s']:.2f} "
                  f"salvaged={last['salvaged']}/{last['salvage_of']} "
                  f"cad_missing={last['cad_missing']}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
