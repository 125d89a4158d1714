"""Routing rules the desk relies on (issue 17): the service-level definition, call-backs
owned and one per caller, not ready after the call, grading before ready, wrap-up
extension, and the reason of a reject."""

from __future__ import annotations

import pytest

from routing import HandlerChanged, LineSpec, QueueLogEntry, Router, RoutingError, replay

LINES = [
    LineSpec("999", 0, "999", wrapup=10, callback_on_abandon=True, grading_required=True,
             wrapup_extend_max=30),
    LineSpec("101", 1, "101", answer_threshold=60, wrapup=5),
]


def router() -> tuple[Router, list[QueueLogEntry]]:
    r = Router(lines=list(LINES), offer_timeout=15)
    log: list[QueueLogEntry] = []
    for hid in ("h1", "h2"):
        log += [a for a in r.handler_login(hid, 0, skills={"999": 5, "101": 5})
                if isinstance(a, QueueLogEntry)]
    return r, log


def entries(actions: list) -> list[QueueLogEntry]:
    return [a for a in actions if isinstance(a, QueueLogEntry)]


def state(r: Router, hid: str) -> tuple[str, str]:
    info = r.handler_info(hid)
    assert info is not None
    return info["state"], info["reason"]


def test_service_level_counts_only_calls_with_an_outcome() -> None:
    """A call waiting inside the target counts neither way (no '50 % red' at 0:00); a
    short abandon is reported apart; a late abandon counts against; replay agrees."""
    r, log = router()
    log += entries(r.call_arrived("a", "999", 0, caller="07700900001"))
    log += entries(r.set_available("h1", 2))          # offered a at once
    log += entries(r.offer_answered("a", "h1", 3))    # within 10 s
    log += entries(r.call_arrived("b", "999", 4, caller="07700900002"))
    log += entries(r.call_arrived("c", "999", 5, caller="07700900003"))
    sl = r.service_level("999", 6)
    assert (sl.answered, sl.answered_within, sl.waiting, sl.service_level) == (1, 1, 2, 1.0)
    log += entries(r.call_abandoned("b", 7))          # after 3 s: a short abandon
    log += entries(r.call_abandoned("c", 30))         # after 25 s: counts against
    sl = r.service_level("999", 30)
    assert (sl.abandoned, sl.abandoned_within, sl.abandoned_after) == (2, 1, 1)
    assert sl.service_level == pytest.approx(1 / 2)
    assert replay(log, now=30)["999"] == sl
    # only a waiting call: no figure rather than 0 %
    r.call_arrived("d", "101", 31, caller="x")
    assert r.service_level("101", 31).service_level is None
    # a rolling interval: the answer at 3 s is outside [20, 31)
    assert r.service_level("999", 31, since=20).service_level == 0.0


def test_one_call_back_per_caller_with_its_attempts_in_a_stable_order() -> None:
    """The same number abandoning twice is one entry with two attempts; the list keeps its
    order (first abandon) through take and release; a withheld caller is never merged."""
    r, log = router()
    for cid, t, caller, key in (("a", 0, "07700900001", "+447700900001"),
                                ("b", 1, "+447700900002", "+447700900002"),
                                ("c", 2, "+447700900001", "+447700900001"),
                                ("d", 3, "anonymous", ""), ("e", 4, "anonymous", "")):
        r.call_arrived(cid, "999", t, caller=caller, caller_key=key)
    for cid, t in (("a", 5), ("b", 6), ("c", 7), ("d", 8), ("e", 9)):
        log += entries(r.call_abandoned(cid, t))
    cbs = r.callbacks()
    assert [(c.cb_id, c.caller, [a["call_id"] for a in c.attempts]) for c in cbs] == [
        ("cb1", "07700900001", ["a", "c"]), ("cb2", "+447700900002", ["b"]),
        ("cb3", "anonymous", ["d"]), ("cb4", "anonymous", ["e"])]
    order = [c.cb_id for c in cbs]
    r.take_callback("cb2", "h1", 10)
    assert [c.cb_id for c in r.callbacks()] == order
    r.release_callback("cb2", 11, by="h1")
    assert [c.cb_id for c in r.callbacks()] == order and r.callbacks()[1].state == "pending"
    # a restart rebuilds the same list from the log
    fresh = Router(lines=list(LINES))
    fresh.restore(log, 20)
    assert [(c.cb_id, len(c.attempts)) for c in fresh.callbacks()] == [
        ("cb1", 2), ("cb2", 1), ("cb3", 1), ("cb4", 1)]


def test_call_back_take_release_and_close_only_by_its_owner_or_a_supervisor() -> None:
    """Close is refused on an untaken entry and on another handler's; release too; a
    supervisor (by=None) may close or release any."""
    r, _ = router()
    for cid, n in (("a", "1"), ("b", "2")):
        r.call_arrived(cid, "999", 0, caller=f"0770090000{n}")
        r.call_abandoned(cid, 1)
    with pytest.raises(RoutingError, match="'cb1' is pending: take it before you close it"):
        r.complete_callback("cb1", 2, outcome="reached", by="h1")
    r.take_callback("cb1", "h1", 3)
    with pytest.raises(RoutingError, match="taken by 'h1', not 'h2'"):
        r.complete_callback("cb1", 4, outcome="reached", by="h2")
    with pytest.raises(RoutingError, match="taken by 'h1', not 'h2'"):
        r.release_callback("cb1", 4, by="h2")
    with pytest.raises(RoutingError, match="'cb1' is taken by 'h1'"):
        r.take_callback("cb1", "h2", 4)
    done = entries(r.complete_callback("cb1", 5, outcome="reached", by="h1"))
    assert done[0].data == {"cb_id": "cb1", "outcome": "reached", "by": "h1"}
    r.take_callback("cb2", "h2", 6)
    r.release_callback("cb2", 7, by=None)
    r.complete_callback("cb2", 8, outcome="number unobtainable")   # supervisor
    assert r.callbacks() == []


def test_not_ready_after_call_is_a_request_that_takes_effect_after_wrap_up() -> None:
    """During a call the handler asks for not ready: the call goes on, wrap-up runs, then
    not ready with their reason (not available); a withdrawn request ends available."""
    r, _ = router()
    r.set_available("h1", 0)
    r.call_arrived("a", "101", 1, caller="07700900001")
    r.offer_answered("a", "h1", 2)
    with pytest.raises(RoutingError, match="'h1' is on_call: cannot 'not_ready'"):
        r.set_not_ready("h1", 3, reason="Break")
    out = r.not_ready_after_call("h1", 3, reason="Break")
    assert [a for a in out if isinstance(a, HandlerChanged)] == [
        HandlerChanged("h1", "on_call", "", "a")]
    assert r.handler_info("h1")["after_call"] == "Break"
    r.call_ended("a", 10)
    assert state(r, "h1") == ("wrap_up", "")
    r.call_arrived("b", "101", 11, caller="07700900002")
    r.tick(15)                                        # wrap-up of 5 s ends
    assert state(r, "h1") == ("not_ready", "Break")
    assert r.calls["b"].state.value == "queued"       # not offered to h1
    # withdrawn: available after the next call as usual
    r.set_available("h1", 20)
    r.offer_answered("b", "h1", 21)
    r.not_ready_after_call("h1", 22, reason="Meal")
    r.not_ready_after_call("h1", 23, reason=None)
    r.call_ended("b", 24)
    r.tick(29)
    assert state(r, "h1") == ("available", "")
    with pytest.raises(RoutingError, match="'h1' is available: cannot 'not_ready_after'"):
        r.not_ready_after_call("h1", 30, reason="Break")


def test_grading_required_keeps_the_handler_in_wrap_up_until_saved() -> None:
    """On a grading-required line the wrap-up timer does not make the handler available
    and ready is refused until the grading is saved; then they are offered the next call.
    A supervisor may force them available (logged); grading during the call counts."""
    r, _ = router()
    r.set_available("h1", 0)
    r.call_arrived("a", "999", 1, caller="07700900001")
    r.offer_answered("a", "h1", 2)
    r.call_ended("a", 10)
    r.call_arrived("b", "999", 11, caller="07700900002")
    out = r.tick(20)                                  # the 10 s wrap-up ran out
    assert state(r, "h1") == ("wrap_up", "grading required")
    assert r.handler_info("h1")["grading_due"] == "a"
    assert not any(type(a).__name__ == "Offer" for a in out)
    with pytest.raises(RoutingError, match="must save the grading of call 'a' first"):
        r.end_wrapup("h1", 21)
    with pytest.raises(RoutingError, match="must save the grading of call 'a' first"):
        r.set_available("h1", 21)
    out = r.graded("h1", "a", 22)
    assert state(r, "h1") == ("offered", "")
    assert r.calls["b"].handler_id == "h1"
    # graded during the call: nothing due at the end
    r.offer_answered("b", "h1", 23)
    r.graded("h1", "b", 24)
    r.call_ended("b", 30)
    assert r.handler_info("h1")["grading_due"] is None
    r.end_wrapup("h1", 31)
    # a supervisor forces: logged as waived
    r.call_arrived("c", "999", 32, caller="07700900003")
    r.offer_answered("c", "h1", 33)
    r.call_ended("c", 34)
    out = r.set_available("h1", 35, reason="supervisor s1: needed on calls", force=True)
    assert [e.event for e in entries(out)][:1] == ["GRADING_WAIVED"]
    assert state(r, "h1") == ("available", "supervisor s1: needed on calls")


def test_wrap_up_extension_within_the_line_limit() -> None:
    """The handler adds time to wrap-up up to the line's limit; the rest is refused."""
    r, _ = router()
    r.set_available("h1", 0)
    r.call_arrived("a", "101", 1, caller="07700900001")
    r.offer_answered("a", "h1", 2)
    r.call_ended("a", 10)                             # wrap-up until 15
    r.extend_wrapup("h1", 11, seconds=60)
    assert r.handler_info("h1")["wrapup_deadline"] == 75
    with pytest.raises(RoutingError, match=r"extended by 60 s more \(limit 120 s\)"):
        r.extend_wrapup("h1", 12, seconds=61)
    r.tick(15)
    assert state(r, "h1") == ("wrap_up", "")
    r.tick(75)
    assert state(r, "h1") == ("available", "")


def test_reject_reason_is_kept_in_the_not_ready_reason() -> None:
    """A reject with a reason: not ready 'rejected: phone fault'; the call requeues."""
    r, _ = router()
    r.set_available("h1", 0)
    r.call_arrived("a", "101", 1, caller="07700900001")
    out = r.offer_failed("a", "h1", 2, reason="rejected", note="phone fault")
    assert state(r, "h1") == ("not_ready", "rejected: phone fault")
    assert entries(out)[0].data == {"reason": "rejected", "note": "phone fault"}
    assert r.calls["a"].state.value == "queued"


def test_supervisor_sets_the_wrap_up_limit_and_logs_a_handler_out_with_a_reason() -> None:
    """The limit a supervisor sets applies to the next extension; a logout keeps the
    reason given (a supervisor's, with their name) in the handler's state and the log."""
    r, _ = router()
    out = r.set_wrapup_limit("101", 0, seconds=20, by="sup1")
    assert entries(out)[0].data == {"seconds": 20.0, "by": "sup1"}
    r.set_available("h1", 0)
    r.call_arrived("a", "101", 1, caller="07700900001")
    r.offer_answered("a", "h1", 2)
    r.call_ended("a", 3)
    with pytest.raises(RoutingError, match=r"by 20 s more \(limit 20 s\)"):
        r.extend_wrapup("h1", 4, seconds=30)
    r.extend_wrapup("h1", 4, seconds=20)
    with pytest.raises(RoutingError, match="wrap-up limit must be 0-3600 s"):
        r.set_wrapup_limit("101", 5, seconds=-1)
    out = r.handler_logout("h2", 6, reason="end of shift (set by sup1)")
    assert state(r, "h2") == ("logged_out", "end of shift (set by sup1)")
    assert entries(out)[0].data["reason"] == "end of shift (set by sup1)"


def test_transfer_to_a_queue_excludes_the_transferring_handler() -> None:
    """A call moved to a line's queue is never offered back to whoever moved it on that
    leg, even when they are the longest idle; it waits for someone else (without holding
    up the calls behind it), and the exclusion ends when another handler answers."""
    r, _ = router()
    r.set_available("h1", 1)
    r.call_arrived("a", "101", 2, caller="01214960001")
    r.offer_answered("a", "h1", 3)
    r.transfer_to_line("a", "999", 10)
    r.end_wrapup("h1", 11)
    offers = [a for a in r.set_available("h1", 11) if type(a).__name__ == "Offer"]
    assert offers == [] and r.position("a") == 1          # h1 stays free, a waits
    # a 101 behind it is not held up by the call h1 may not take
    offers = [a for a in r.call_arrived("b", "101", 12, caller="01214960002")
              if type(a).__name__ == "Offer"]
    assert [(o.call_id, o.handler_id) for o in offers] == [("b", "h1")]
    offers = [a for a in r.set_available("h2", 13) if type(a).__name__ == "Offer"]
    assert [(o.call_id, o.handler_id) for o in offers] == [("a", "h2")]
    r.offer_answered("a", "h2", 14)
    # answered: h2 may transfer it back to the queue and h1 (free) can now take it
    r.end_wrapup("h1", 15) if state(r, "h1")[0] == "wrap_up" else None
    r.offer_answered("b", "h1", 15)
    r.call_ended("b", 16)
    r.end_wrapup("h1", 17)
    r.set_available("h1", 17)
    offers = [a for a in r.transfer_to_line("a", "999", 18) if type(a).__name__ == "Offer"]
    assert [(o.call_id, o.handler_id) for o in offers] == [("a", "h1")]


def test_a_directed_call_moved_on_to_a_queue_waits_there_not_for_its_old_target() -> None:
    """A call handed to h2 by name, answered by h2, then moved by h2 to a line's queue
    waits in that queue (h2 excluded) and is offered to the next free handler; it is not
    put back in h2's own list (where it could not be set aside: the router broke)."""
    r, _ = router()
    r.set_available("h1", 1)
    r.call_arrived("a", "101", 2, caller="01214960001")
    r.offer_answered("a", "h1", 3)
    r.set_available("h2", 4)
    offers = [a for a in r.transfer_to_handler("a", "h2", 5) if type(a).__name__ == "Offer"]
    assert [(o.call_id, o.handler_id) for o in offers] == [("a", "h2")]
    r.offer_answered("a", "h2", 6)
    assert state(r, "h1")[0] == "wrap_up"                   # h1 is busy: nobody free
    acts = r.transfer_to_line("a", "999", 9)                 # h2 moves it on
    assert [a for a in acts if type(a).__name__ == "Offer"] == [] and r.position("a") == 1
    r.end_wrapup("h2", 10)
    if state(r, "h2")[0] != "available":
        r.set_available("h2", 10)
    assert state(r, "h2")[0] == "available" and r.position("a") == 1   # h2 excluded
    r.end_wrapup("h1", 12)
    if state(r, "h1")[0] != "offered":
        offers = [a for a in r.set_available("h1", 12) if type(a).__name__ == "Offer"]
    assert state(r, "h1")[0] == "offered"
    r.offer_answered("a", "h1", 13)
    assert state(r, "h1")[0] == "on_call"


def test_a_999_moved_to_the_101_queue_keeps_its_priority() -> None:
    """A 999 transferred to the 101 queue keeps class 0: it goes before every 101 call
    already waiting, whatever their age, and the queue log says the priority was kept."""
    r, _ = router()
    r.set_available("h1", 1)
    r.call_arrived("e", "999", 2, caller="07700900001")
    r.offer_answered("e", "h1", 3)
    for i in range(3):
        r.call_arrived(f"n{i}", "101", 4 + i, caller=f"0121496000{i}")
    acts = r.transfer_to_line("e", "101", 10, head=False)
    log = {e.event: e.data for e in entries(acts)}
    assert log["TRANSFER"]["kept_priority"] == 0 and log["ENTER"]["priority"] == 0
    assert r.position("e") == 1
    offers = [a for a in r.set_available("h2", 11) if type(a).__name__ == "Offer"]
    assert [(o.call_id, o.handler_id) for o in offers] == [("e", "h2")]
