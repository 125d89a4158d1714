"""Three controlroom nodes behind Kamailio's dispatcher survive a dead node (issue 14).

Real parts: Kamailio (dispatcher, registrar), Mosquitto, three ``controlroom serve``
processes, each in its own network namespace (veth to a bridge on the host, which
carries Kamailio, Mosquitto and every SIPp), SIPp handler phones per node and SIPp
callers placing 999 and 101 calls at a steady rate. Faults are real: ``kill -9`` of a
node, and a cable pull (the host end of the node's veth set down).

What callers must see: no new call failed during or after the fault, and the first
new call answered by a survivor within 1 s of it. Each node has its own SQLite store
and queue here, so the calls the dead node was carrying are lost at the media level
and closed when it restarts: counted, not asserted. The shared PostgreSQL store with
survivor salvage is tested in test_salvage.py, the global queue in
test_global_queue.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.cluster import Cluster, fault_figures, namespaces_available

pytestmark = [pytest.mark.cluster, pytest.mark.realparts, pytest.mark.slow]

RATE = 1.5
"""New calls a second per line (999 and 101 each): 3 calls/s in all."""
TALK_S = 3.0
BEFORE_S = 8.0
"""Seconds of calls before the fault."""
AFTER_S = 10.0
"""Seconds of calls after it."""


def _run(cluster: Cluster, fault: str) -> tuple[dict, list]:
    calls = int(RATE * (BEFORE_S + AFTER_S))
    loads = [cluster.callers(n, rate=RATE, calls=calls, talk_ms=int(TALK_S * 1000)).start()
             for n in ("999", "101")]
    victim = cluster.nodes[1]
    time.sleep(BEFORE_S)
    at = cluster.kill(victim) if fault == "kill" else cluster.cut(victim)
    for load in loads:
        assert load.wait(AFTER_S + TALK_S + 90) is not None
    outcomes = sorted((c for load in loads for c in load.outcomes()), key=lambda c: c.sent)
    figures = fault_figures(cluster, outcomes, victim, at, talk_s=TALK_S)
    return figures, outcomes


def _explain(cluster: Cluster, figures: dict, outcomes: list) -> str:
    lines = [f"figures: {figures}"]
    lines += [f"  {c.line} #{c.number} sent={c.sent:.3f} setup={c.setup} node={c.node} "
              f"bye={c.bye}" for c in outcomes if c.answered is None or (c.setup or 0) > 1]
    lines.append("kamailio:\n" + cluster.kamailio.log_text(4000))
    return "\n".join(lines)


def _common_asserts(cluster: Cluster, figures: dict, outcomes: list) -> None:
    why = _explain(cluster, figures, outcomes)
    assert figures["new"] >= 20, why
    assert figures["failed_new"] == 0, why
    assert figures["first_answer_s"] is not None and figures["first_answer_s"] <= 1.0, why
    assert figures["answered_by_faulty"] == 0, why
    # Every node took calls before the fault (round-robin over the three).
    assert {c.node for c in outcomes} == {n.addr for n in cluster.nodes}, why
    # The fault hit calls in progress on the node; their callers' BYEs found nobody.
    assert figures["in_flight"] >= 1 and figures["bye_lost"] == figures["in_flight"], why
    # Survivors: every call they answered reached the CAD (arrival and end), and every
    # message names the node whose id starts its call id.
    assert figures["cad_missing"] == 0 and figures["wrong_node"] == 0, why
    for node in cluster.nodes:
        rows = node.calls()
        assert rows and all(r["node"] == node.node_id and
                            r["call_id"].startswith(f"{node.node_id}-c") for r in rows), why


def test_kill_9_of_a_node_fails_no_new_call(tmp_path: Path) -> None:
    """kill -9 of one of three nodes mid-run: no new call fails as the callers see it,
    the first new call is answered by a survivor within 1 s, none by the dead node."""
    with Cluster(tmp_path, nodes=3, handlers=3) as cluster:
        figures, outcomes = _run(cluster, "kill")
        _common_asserts(cluster, figures, outcomes)
        print(f"\nkill -9: {figures}")


@pytest.mark.skipif(not namespaces_available(), reason="a network cut needs namespaces (root)")
def test_network_cut_of_a_node_fails_no_new_call_and_it_comes_back(tmp_path: Path) -> None:
    """A node's cable pulled mid-run (the process lives on): no new call fails, the
    first is answered by a survivor within 1 s; once the cable is back the node is
    probed active again and takes new calls."""
    with Cluster(tmp_path, nodes=3, handlers=3) as cluster:
        figures, outcomes = _run(cluster, "cut")
        _common_asserts(cluster, figures, outcomes)
        victim = cluster.nodes[1]
        assert victim.alive()
        up_line = f"dispatcher: node sip:{victim.addr}:"
        ups_before = _events(cluster, up_line, "up")
        cluster.restore(victim)
        back = time.time()
        # Its next answered OPTIONS (one a second) puts it back into the rotation.
        deadline = back + 30
        while _events(cluster, up_line, "up") == ups_before and time.time() < deadline:
            time.sleep(0.1)
        probed_up_s = time.time() - back
        assert _events(cluster, up_line, "up") > ups_before, (
            f"node not probed up 30 s after the cable\n{cluster.kamailio.log_text(4000)}")
        load = cluster.callers("999", rate=3, calls=15, talk_ms=500, name="after").start()
        assert load.wait(60) is not None
        after = load.outcomes()
        assert all(c.answered is not None for c in after), _explain(cluster, figures, after)
        taken = [c for c in after if c.node == victim.addr]
        assert taken, _explain(cluster, figures, after)
        print(f"\ncut: {figures}; probed up {probed_up_s:.2f} s and answering "
              f"{taken[0].answered - back:.2f} s after the cable")


@pytest.mark.skipif(not namespaces_available(), reason="a network cut needs namespaces (root)")
def test_with_every_node_marked_inactive_a_call_still_reaches_a_live_node(
        tmp_path: Path) -> None:
    """Both nodes cut: a call times out on each, which marks both inactive. Cables back
    before any probe revives them (probes every 60 s here): the next 999 is not refused
    with 'No Node Available' but tried on every node (set 2, the last resort) and
    answered."""
    with Cluster(tmp_path, nodes=2, handlers=2, probe_interval=60) as cluster:
        for node in cluster.nodes:
            cluster.cut(node)
        lost = cluster.callers("999", rate=1, calls=1, talk_ms=500, name="while-cut").start()
        assert lost.wait(30) is not None
        assert [c.answered for c in lost.outcomes()] == [None]
        assert cluster.kamailio.log_text().count("marked inactive") >= 2
        for node in cluster.nodes:
            cluster.restore(node)
        load = cluster.callers("999", rate=2, calls=4, talk_ms=500, name="after").start()
        assert load.wait(30) is not None
        after = load.outcomes()
        why = f"{after}\n{cluster.kamailio.log_text(4000)}"
        assert len(after) == 4 and all(c.answered is not None for c in after), why
        assert "trying every node" in cluster.kamailio.log_text(), why


@pytest.mark.skipif(not namespaces_available(), reason="a network cut needs namespaces (root)")
def test_a_node_that_missed_probes_is_probed_back_into_the_rotation(tmp_path: Path) -> None:
    """No call in flight: a node's cable is pulled long enough for its OPTIONS probes to go
    unanswered (as at a start where Kamailio is up before the nodes), then put back. The
    probes alone must bring it back (a probing mode that drops the probing flag on a
    failed probe left such a node out of the rotation for good; calls then reached it only
    through the last-resort set), and new calls go round-robin over both nodes again."""
    with Cluster(tmp_path, nodes=2, handlers=1) as cluster:
        victim = cluster.nodes[0]
        line = f"dispatcher: node sip:{victim.addr}:"
        downs = _events(cluster, line, "down")
        ups = _events(cluster, line, "up")
        cluster.cut(victim)
        deadline = time.time() + 15
        while _events(cluster, line, "down") == downs and time.time() < deadline:
            time.sleep(0.2)
        assert _events(cluster, line, "down") > downs, cluster.kamailio.log_text(4000)
        time.sleep(3)  # several more probes lost
        cluster.restore(victim)
        deadline = time.time() + 15
        while _events(cluster, line, "up") == ups and time.time() < deadline:
            time.sleep(0.2)
        assert _events(cluster, line, "up") > ups, cluster.kamailio.log_text(4000)
        before = len(cluster.kamailio.log_text(10**7))
        load = cluster.callers("999", rate=4, calls=4, talk_ms=300, name="probed").start()
        assert load.wait(30) is not None
        after = load.outcomes()
        assert {c.node for c in after} == {n.addr for n in cluster.nodes}, after
        assert "trying every node" not in cluster.kamailio.log_text(10**7)[before:]


def _events(cluster: Cluster, line: str, what: str) -> int:
    """How many times Kamailio has logged ``line`` ... ``what`` (dispatcher:dst-up/down)."""
    return sum(1 for row in cluster.kamailio.log_text(10**7).splitlines()
               if line in row and row.rstrip().endswith(f" {what}"))
