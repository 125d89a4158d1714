"""Router.adopt: a surviving node closes a dead node's calls on its own record (issue 14)."""

from __future__ import annotations

from routing import Router

from .test_stats_and_queuelog import LINES, play


def test_adopt_closes_the_dead_nodes_calls_and_leaves_the_survivor_alone():
    """The dead router's log at t=25: e2 connected, e4 ringing, c1 waiting (101), e3 on
    its call-back list. A live survivor adopts the rows of the calls still open: COMPLETE
    for e2, ABANDON for e4 and c1 with the given reason, e4 (a 999) onto the survivor's
    call-back list. The survivor's own waiting call, statistics and list are untouched."""
    _, log = play()
    survivor = Router(lines=LINES, offer_timeout=15)
    survivor.call_arrived("s1", "999", 30)
    before = survivor.service_level("999", 30)
    dead = [e for e in log if e.call_id in ("e2", "e4", "c1")]
    rows = survivor.adopt(dead, 40, reason="node n2 died")
    assert [(e.event, e.call_id, e.data.get("reason")) for e in rows] == [
        ("COMPLETE", "e2", "node n2 died"),
        ("ABANDON", "e4", "node n2 died"), ("CALLBACK_ADD", "e4", "node n2 died"),
        ("ABANDON", "c1", "node n2 died")]
    assert [(c.call_id, c.caller) for c in survivor.callbacks()] == [("e4", "444")]
    assert survivor.service_level("999", 30) == before
    assert "s1" in survivor.calls
    # Adopted twice (a second survivor's view): the calls are over, nothing is added.
    assert survivor.adopt(dead + rows, 41, reason="again") == []
