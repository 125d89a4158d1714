"""A node cut off from its PostgreSQL store, silently (issue 14): does it still answer?

    sudo .venv/bin/python bench/store_cut.py                    # global_queue off
    sudo .venv/bin/python bench/store_cut.py --global-queue     # one queue for the room
    sudo .venv/bin/python bench/store_cut.py --cut-s 20 --rate 4 --keep /tmp/cut

Everything real (harness/cluster.py): two ``controlroom serve`` nodes in their own
network namespaces on one PostgreSQL, Kamailio's dispatcher, Mosquitto, SIPp handler
phones and callers placing calls at a steady rate. After ``--before-s`` the harness cuts
node n1's path to the store alone (``Cluster.cut_store``: its packets to the store go to
a next hop nobody answers, no reset), keeps it cut ``--cut-s`` seconds, then restores it.

Figures (printed as one JSON line, then a summary line):
  per node, the INVITE -> 200 set-up as the callers see it for the calls it answered
  during the cut (p50, max), calls failed; the node's event-loop stall measured from
  outside: ``/healthz`` (no store access) is polled every 50 ms with a 30 s timeout and
  its response time recorded (max during the cut, how many polls took more than 0.5 s);
  the node's own loop-stall tracer (``loop.stall`` log lines, over 0.1 s) during the cut
  and from the restore on, its prober's ``store.reachable`` after the restore, how many
  spooled units the flush wrote and how long it took;
  after restore, how many of the calls the node answered during the cut are in the
  store, ended (matched by SIP Call-ID).
Needs root (namespaces); bounded: every SIPp has a call count and a timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.cluster import (  # noqa: E402
    Cluster,
    Node,
    keep_dir,
    log_lines,
    namespaces_available,
    percentile,
    store_query,
    wait_for,
)


class LoopProbe(threading.Thread):
    """Polls ``/healthz`` on a node every ``step`` s; records (sent, response time)."""

    def __init__(self, node: Node, step: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.node, self.step = node, step
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.time()
            status, _ = self.node.get("/healthz", timeout=30.0)
            self.samples.append((t0, time.time() - t0, status))
            self.stop.wait(self.step)

    def stalls(self, since: float, until: float) -> dict[str, Any]:
        took = [d for t, d, _ in self.samples if since <= t <= until]
        return {"polls": len(took), "max_s": round(max(took, default=0.0), 3),
                "over_0_5_s": sum(1 for d in took if d > 0.5),
                "failed": sum(1 for t, _, s in self.samples if since <= t <= until and s != 200)}


def _log_events(log: str, names: tuple[str, ...]) -> list[tuple[float, str, dict[str, Any]]]:
    """(epoch s, event, record) of a node's JSON log lines whose event is in ``names``."""
    return [(at, rec["event"], rec) for at, rec in log_lines(log, *names)
            if rec.get("event") in names]


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.keep) if args.keep else keep_dir("store-cut-")
    with Cluster(workdir, nodes=2, handlers=4, postgres=True, global_queue=args.global_queue,
                 ring_ms=200, wrapup=0.2, handler_talk_ms=800,
                 heartbeat_interval=0.5, salvage_after=120.0) as cluster:
        victim = cluster.nodes[0]
        probes = {n.node_id: LoopProbe(n) for n in cluster.nodes}
        for p in probes.values():
            p.start()
        total = int(args.rate * (args.before_s + args.cut_s + args.after_s))
        load = cluster.callers("101", rate=args.rate, calls=total, talk_ms=1500).start()
        time.sleep(args.before_s)
        cut_at = cluster.cut_store(victim)
        time.sleep(args.cut_s)
        cluster.restore_store(victim)
        restored_at = time.time()
        load.wait(args.after_s + args.cut_s + 120)
        for p in probes.values():
            p.stop.set()
        calls = load.outcomes()
        during = [c for c in calls if cut_at <= c.sent < restored_at]
        nodes: dict[str, Any] = {}
        for n in cluster.nodes:
            mine = [c.setup for c in during if c.node == n.addr and c.setup is not None]
            nodes[n.node_id] = {
                "answered_during_cut": len(mine),
                "setup_p50_s": percentile(mine, 0.5), "setup_max_s": max(mine, default=None),
                "setups_over_0_5_s": sum(1 for s in mine if s > 0.5),
                "loop": probes[n.node_id].stalls(cut_at, restored_at),
                "loop_after_restore": probes[n.node_id].stalls(restored_at, time.time()),
            }
        # the victim's own loop-stall tracer (controlroom.service: loop.stall, over
        # 0.1 s) and its prober's store.reachable, from its log
        marks = _log_events(cluster.node_log(victim, 5_000_000),
                            ("loop.stall", "store.reachable", "storage.recovered"))
        reachable = [t for t, e, _ in marks if e == "store.reachable" and t >= cut_at]
        reachable_at = reachable[0] if reachable else None
        recovered = [r for t, e, r in marks if e == "storage.recovered" and t >= cut_at]
        stalls = [(t, r["stalled_s"]) for t, e, r in marks if e == "loop.stall"]
        nodes[victim.node_id]["restore"] = {
            "reachable_after_restore_s": (round(reachable_at - restored_at, 3)
                                          if reachable_at else None),
            "spool_flushed": recovered[0].get("flushed") if recovered else None,
            "spool_recovered_after_reachable_s": (
                round(next(t for t, e, _ in marks if e == "storage.recovered"
                           and t >= cut_at) - reachable_at, 3)
                if recovered and reachable_at else None),
            "loop_stall_max_s": max((d for t, d in stalls if restored_at - 0.5 <= t), default=0.0),
            "loop_stalls_over_0_1_s": sum(1 for t, _ in stalls if restored_at - 0.5 <= t),
        }
        nodes[victim.node_id]["loop_stall_max_during_cut_s"] = max(
            (d for t, d in stalls if cut_at <= t < restored_at), default=0.0)
        sip_ids = [c.sip_call_id for c in during if c.node == victim.addr]
        victim_answered = len(sip_ids)

        def ended_rows() -> list[dict[str, Any]]:
            return [r for r in store_query(
                cluster.store_url, "SELECT call_id, ended_at FROM calls WHERE node=%s AND"
                " sip_call_id = ANY(%s)", (victim.node_id, sip_ids)) if r["ended_at"]]
        wait_for(lambda: len(ended_rows()) >= victim_answered, 30)
        rows = ended_rows()
        return {
            "global_queue": args.global_queue, "rate": args.rate, "cut_s": args.cut_s,
            "calls": len(calls), "during_cut": len(during),
            "failed_during_cut": sum(1 for c in during if c.answered is None),
            "nodes": nodes,
            "victim_rows_in_store": len(rows), "victim_answered_during_cut": victim_answered,
            "workdir": str(workdir),
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--global-queue", action="store_true")
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--before-s", type=float, default=5.0)
    ap.add_argument("--cut-s", type=float, default=20.0)
    ap.add_argument("--after-s", type=float, default=10.0)
    ap.add_argument("--keep", default="")
    args = ap.parse_args()
    if not namespaces_available():
        print("store_cut: needs network namespaces (root)", file=sys.stderr)
        return 2
    r = run(args)
    print(json.dumps(r, default=str))
    v = r["nodes"]["n1"]
    print(f"store-cut: global_queue={r['global_queue']} calls_during_cut={r['during_cut']} "
          f"failed={r['failed_during_cut']} n1_answered={v['answered_during_cut']} "
          f"n1_setup_max_s={v['setup_max_s']} n1_loop_max_s={v['loop']['max_s']} "
          f"n1_loop_over_0_5={v['loop']['over_0_5_s']} "
          f"n1_after_restore: healthz_max_s={v['loop_after_restore']['max_s']} "
          f"stall_max_s={v['restore']['loop_stall_max_s']} "
          f"reachable_after_s={v['restore']['reachable_after_restore_s']} "
          f"spool_flushed={v['restore']['spool_flushed']} "
          f"flush_s={v['restore']['spool_recovered_after_reachable_s']} "
          f"rows_in_store={r['victim_rows_in_store']}/{r['victim_answered_during_cut']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
