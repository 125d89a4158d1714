"""A survivor closes a dead node's calls on the record (issue 14, ``controlroom.cluster``).

Real parts: three ``controlroom serve`` nodes on one PostgreSQL (each node in its own
network namespace when root), Kamailio's dispatcher, Mosquitto as the CAD, SIPp callers
and handler phones. Each node's recordings folder is visible to the others
(``cluster.peer_recordings``: one machine stands for a shared file system). The fault is
real: ``kill -9`` of a node carrying calls, some talking to handlers, some still queued.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from harness.cluster import Cluster, store_query, wait_for
from harness.postgres import available as postgres_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not postgres_available(), reason="PostgreSQL not installed")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_wait = wait_for

WAV_HEADER, STEREO_BYTES_PER_S = 44, 2 * 2 * 8000  # 16-bit, 2 channels, 8 kHz


def _recorded_s(recordings: Path, call_id: str) -> float:
    """Seconds of audio the node has written to disk so far for ``call_id`` (0 if none)."""
    try:
        size = (recordings / f"{call_id}.wav.part").stat().st_size
    except OSError:
        return 0.0
    return max(0, size - WAV_HEADER) / STEREO_BYTES_PER_S


def test_kill_9_survivor_closes_calls_salvages_recordings_and_tells_the_cad(
        tmp_path: Path) -> None:
    with Cluster(tmp_path, nodes=3, handlers=2, postgres=True, heartbeat_interval=0.5,
                 salvage_after=3.0) as cluster:
        url = cluster.store_url
        victim = cluster.nodes[1]
        # 2 handlers a node, ~8 long calls a node: some talk, the rest wait in the queue
        # (~6 999s a node: however the dispatcher spreads the two streams, the victim
        # holds 999s waiting behind its two talking calls when it dies).
        recordings = victim.workdir / "data" / "recordings"
        since = time.time()
        loads = [cluster.callers("999", rate=6, calls=18, talk_ms=60_000, name="999").start(),
                 cluster.callers("101", rate=2, calls=6, talk_ms=60_000, name="101").start()]

        def ready() -> bool:
            live = [r for r in victim.calls() if r["ended_at"] is None
                    and r["call_id"].count("-c") and r["line"]]
            return len(live) >= 5 and any(r["line"] == "999" and not r["handler_id"]
                                          for r in live)

        def placed() -> bool:  # all 24 calls have reached a node (18 at 6/s, 6 at 2/s)
            return len(store_query(url, "SELECT call_id FROM calls WHERE arrived_at >= %s",
                                   (since,))) >= 24

        def on_disk() -> bool:  # every open call has 2 s of audio written to disk
            return all(_recorded_s(recordings, r["call_id"]) >= 2.0
                       for r in victim.calls() if r["ended_at"] is None)

        try:
            # conditions, not the clock: how long SIPp and the nodes take depends on load
            assert _wait(placed, 60), store_query(url, "SELECT call_id, node FROM calls", ())
            assert _wait(ready, 30), victim.calls()
            assert _wait(on_disk, 30), [(r["call_id"], _recorded_s(recordings, r["call_id"]))
                                        for r in victim.calls() if r["ended_at"] is None]
            open_calls = [r for r in victim.calls() if r["ended_at"] is None]
            killed = cluster.kill(victim)
            ids = {r["call_id"] for r in open_calls}

            def closed() -> list[dict]:
                rows = [r for r in victim.calls() if r["call_id"] in ids]
                return rows if all(r["ended_at"] is not None for r in rows) else []

            rows = _wait(closed, 60)  # salvage_after=3 s: a bound, not a speed target
            took = time.time() - killed
            why = "\n".join(cluster.node_log(n, 3000) for n in cluster.nodes if n is not victim)
            assert rows, why
            assert len(rows) == len(ids) >= 5
            # Closed on the record by exactly one survivor.
            assert all(r["state"] == "interrupted" and "node n2 died" in r["end_reason"]
                       for r in rows), rows
            salvagers = [n.node_id for n in cluster.nodes if n is not victim
                         and "node.salvaged" in cluster.node_log(n, 200_000)]
            assert len(salvagers) == 1, why
            # Recordings up to the crash: sealed (no .part), on record with their SHA-256.
            recorded = [r for r in rows if r["recording_path"]]
            assert len(recorded) == len(rows), rows
            for r in recorded:
                p = Path(r["recording_path"])
                assert p.suffix == ".wav" and p.exists(), r
                assert _sha256(p) == r["recording_sha256"], r
                assert r["recording_duration"] > 0.5, r
            assert not list((victim.workdir / "data" / "recordings").glob("*.part"))
            # Waiting 999s were abandoned onto the call-back list; talking calls completed.
            log = store_query(url, "SELECT call_id, event, data FROM queue_log "
                                   "WHERE data LIKE %s ORDER BY id", ("%died%",))
            waiting = {r["call_id"] for r in rows if not r["handler_id"]}
            talking = {r["call_id"] for r in rows if r["handler_id"]}
            assert waiting and talking, rows
            assert {e["call_id"] for e in log if e["event"] == "ABANDON"} == waiting, log
            w999 = {r["call_id"] for r in rows if r["call_id"] in waiting and r["line"] == "999"}
            assert w999, rows
            assert {e["call_id"] for e in log if e["event"] == "CALLBACK_ADD"} == w999, log
            assert {e["call_id"] for e in log if e["event"] == "COMPLETE"} == talking, log
            # The CAD heard every end (and every abandonment), under the dead node's id.

            def cad() -> dict[str, set[str]]:
                seen: dict[str, set[str]] = {}
                for m in cluster.cad.snapshot():  # type: ignore[union-attr]
                    if m.get("call_id") in ids:
                        seen.setdefault(m["call_id"], set()).add(m["type"])
                return seen

            _wait(lambda: all("call.ended" in cad().get(c, ()) for c in ids), 30)
            seen = cad()
            assert all("call.ended" in seen.get(c, ()) for c in ids), seen
            assert all("call.abandoned" in seen.get(c, ()) for c in waiting), seen
            assert all("call.recording" in seen.get(c, ()) for c in ids), seen
            assert all(m["node"] == "n2" for m in cluster.cad.snapshot()  # type: ignore[union-attr]
                       if m.get("call_id") in ids)
            print(f"\nsalvaged={len(recorded)}/{len(ids)} closed in {took:.1f} s by "
                  f"{salvagers[0]}; waiting={len(waiting)} callbacks={len(w999)}")

            # The dead node restarts: nothing is closed twice.
            ended_before = [m for m in cluster.cad.snapshot()  # type: ignore[union-attr]
                            if m.get("call_id") in ids and m["type"] == "call.ended"]
            cluster.restart(victim)
            # Ready means its start-up recovery has run; anything it closed again would be
            # a new call.ended row in the outbox. Wait until the outbox holds nothing
            # undelivered for these calls (so the CAD has had whatever there is), then compare.
            assert _wait(lambda: not store_query(
                url, "SELECT id FROM outbox WHERE call_id = ANY(%s) AND delivered_at IS NULL",
                (list(ids),)), 30)
            ended_rows = store_query(url, "SELECT call_id FROM outbox WHERE call_id = ANY(%s)"
                                          " AND type = 'call.ended'", (list(ids),))
            assert sorted(r["call_id"] for r in ended_rows) == sorted(ids), ended_rows
            ended_after = [m for m in cluster.cad.snapshot()  # type: ignore[union-attr]
                           if m.get("call_id") in ids and m["type"] == "call.ended"]
            assert {m["event_id"] for m in ended_after} == {m["event_id"] for m in ended_before}
            again = store_query(url, "SELECT call_id, event FROM queue_log WHERE call_id = ANY(%s)"
                                     " AND event IN ('ABANDON','COMPLETE','CALLBACK_ADD')",
                                (list(ids),))
            assert len(again) == len(log), again
            after = [r for r in victim.calls() if r["call_id"] in ids]
            assert [r["end_reason"] for r in after] == [r["end_reason"] for r in rows]
        finally:
            for load in loads:
                load.stop()
