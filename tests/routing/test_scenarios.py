"""Routing scenarios as tables: (time, event, expected actions). See script.py."""

from __future__ import annotations

import pytest

from routing import LineSpec, Router, RoutingError, replay

from .script import run

LINES = [
    LineSpec("999", 0, "999", wrapup=10, callback_on_abandon=True),
    LineSpec("101", 1, "101", wrapup=5, max_queue=3, overflow="busy", ageing_per_minute=0.1),
]


def router(**kw) -> Router:
    kw.setdefault("offer_timeout", 15)
    return Router(lines=list(kw.pop("lines", LINES)), **kw)


def test_999_behind_three_101s_is_offered_first():
    """A 999 arriving after three waiting 101s is the first call offered."""
    run(router(), [
        (0, "login h1 999:5,101:5", ["h1 not_ready(login)"]),
        (1, "arrive c1 101", ["queued c1 #1"]),
        (2, "arrive c2 101", ["queued c2 #2"]),
        (3, "arrive c3 101", ["queued c3 #3"]),
        (4, "arrive e1 999", ["queued e1 #1"]),
        (5, "ready h1", ["h1 available", "offer e1->h1", "h1 offered"]),
        (7, "answer e1 h1", ["connected e1 h1 wait=3", "h1 on_call"]),
        (30, "end e1", ["completed e1 h1 talk=23", "h1 wrap_up"]),
        (39, "tick", []),
        (40, "tick", ["h1 available", "offer c1->h1", "h1 offered"]),
    ])


def test_rona_returns_call_to_its_old_place():
    """Ring-no-answer: CancelOffer, the call is first again (not last), handler not ready."""
    r = router()
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "arrive c2 101", ["queued c2 #1"]),
        (3, "arrive c3 101", ["queued c3 #2"]),
        (15.9, "tick", []),
        (16, "tick", ["cancel c1 h1 no-answer", "h1 not_ready(missed call)", "queued c1 #1"]),
        (17, "ready h2", ["h2 available", "offer c1->h2", "h2 offered"]),
    ])
    assert r.position("c2") == 1 and r.position("c3") == 2
    assert r.position("c1") == 0


def test_rona_without_not_ready_keeps_handler_available_but_at_the_back():
    """rona_not_ready=False: the handler stays available, longest-idle picks the other."""
    run(router(rona_not_ready=False), [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "login h2 101:5", ["h2 not_ready(login)"]),
        (3, "ready h2", ["h2 available"]),
        (16, "tick", ["cancel c1 h1 no-answer", "h1 available", "queued c1 #1",
                      "offer c1->h2", "h2 offered"]),
    ])


def test_rejected_and_unreachable_offers_requeue_and_set_not_ready():
    """A declined offer or a dead phone: call back in place, handler not ready with reason."""
    r = router()
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "arrive c2 101", ["queued c2 #1"]),
        (3, "fail c1 h1 rejected", ["h1 not_ready(rejected)", "queued c1 #1"]),
        (4, "fail c1 h1 rejected", []),          # stale report: ignored
        (5, "ready h1", ["h1 available", "offer c1->h1", "h1 offered"]),
        (6, "fail c1 h1 unreachable", ["h1 not_ready(unreachable)", "queued c1 #1"]),
        (7, "ready h1", ["h1 available", "offer c1->h1", "h1 offered"]),
        (8, "fail c1 h1 error", ["h1 not_ready(error)", "queued c1 #1"]),
        (9, "ready h1", ["h1 available", "offer c1->h1", "h1 offered"]),
        # Withdrawn by us, not declined by the handler: no blame, offered again at once.
        (10, "fail c1 h1 cancelled", ["h1 available", "queued c1 #1", "offer c1->h1",
                                      "h1 offered"]),
        (11, "fail c1 h1 busy", ["h1 not_ready(busy)", "queued c1 #1"]),
    ])
    assert r.handler_info("h1") == {
        "state": "not_ready", "reason": "busy", "since": 11.0, "call_id": None,
        "skills": {"101": 5}, "calls": 0, "idle_since": None, "wrapup_deadline": None,
        "wrapup_extended": 0.0, "after_call": None, "grading_due": None}
    assert r.handler_info("nobody") is None
    assert r.next_deadline() is None


def test_wrapup_ends_at_deadline_or_early():
    """Wrap-up per line: ended by end_wrapup early or by tick at the deadline."""
    r = router()
    run(r, [
        (0, "login h1 999:5,101:5", ["h1 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive e1 999", ["queued e1 #1", "offer e1->h1", "h1 offered"]),
        (2, "answer e1 h1", ["connected e1 h1 wait=1", "h1 on_call"]),
        (10, "end e1", ["completed e1 h1 talk=8", "h1 wrap_up"]),
        (11, "arrive e2 999", ["queued e2 #1"]),
        (12, "wrapup h1", ["h1 available", "offer e2->h1", "h1 offered"]),
        (13, "answer e2 h1", ["connected e2 h1 wait=2", "h1 on_call"]),
        (20, "end e2", ["completed e2 h1 talk=7", "h1 wrap_up"]),
    ])
    assert r.next_deadline() == 30
    run(r, [(30, "tick", ["h1 available"])])
    assert r.next_deadline() is None
    # handle time = talk + wrap-up: (12-2) and (30-13) -> moving average 13.5
    assert r.snapshot(31)["lines"]["999"]["estimated_handle_time"] == 13.5


def test_callback_list_for_abandoned_999():
    """An abandoned 999 goes on the call-back list; take and complete it with an outcome."""
    r = router()
    log = run(r, [
        (0, "login h1 999:5,101:5", ["h1 not_ready(login)"]),
        (1, "arrive e1 999 07700900001", ["queued e1 #1"]),
        (2, "arrive e2 999 07700900002", ["queued e2 #2"]),
        (9, "hangup e2", ["abandoned e2 wait=7 pos=2 callback"]),
        (10, "arrive c1 101", ["queued c1 #1"]),
        (12, "hangup c1", ["abandoned c1 wait=2 pos=1"]),
    ])
    cbs = r.callbacks()
    assert [(c.cb_id, c.call_id, c.caller, c.wait, c.state) for c in cbs] == [
        ("cb1", "e2", "07700900002", 7.0, "pending")]
    run(r, [(20, "take cb1 h1", [])])
    assert r.callbacks()[0].state == "taken" and r.callbacks()[0].handler_id == "h1"
    with pytest.raises(RoutingError, match="call-back 'cb1' is taken by 'h1'"):
        r.take_callback("cb1", "h1", 21)
    log += run(r, [(30, "done cb1 reached", [])])
    assert r.callbacks() == []
    assert [e.event for e in log if e.event.startswith("CALLBACK")] == [
        "CALLBACK_ADD", "CALLBACK_DONE"]


def test_overflow_busy_rejects_101_but_never_999():
    """Nobody logged in: 101 gets 486, 999 queues; queue full: 101 gets 486 again."""
    r = router()
    run(r, [
        (0, "arrive c1 101", ["reject c1 486"]),
        (0, "arrive e1 999", ["queued e1 #1"]),
        (1, "login h1 101:5", ["h1 not_ready(login)"]),
        (2, "arrive c2 101", ["queued c2 #1"]),
        (3, "arrive c3 101", ["queued c3 #2"]),
        (4, "arrive c4 101", ["queued c4 #3"]),
        (5, "arrive c5 101", ["reject c5 486"]),
    ])
    with pytest.raises(RoutingError, match="call 'c5' is already rejected"):
        r.call_abandoned("c5", 6)
    sl = r.service_level("101", 6)
    assert (sl.offered, sl.rejected, sl.waiting) == (3, 2, 3)


def test_overflow_queue_keeps_queuing_with_an_announcement():
    """overflow='queue' with max_queue reached: Queued carries overflow='queue-full'."""
    r = Router(lines=[LineSpec("101", 1, "101", max_queue=1)])
    r.handler_login("h1", 0, skills={"101": 1})
    a1 = r.call_arrived("c1", "101", 1)
    a2 = r.call_arrived("c2", "101", 2)
    assert [a.overflow for a in a1 + a2 if type(a).__name__ == "Queued"] == [None, "queue-full"]


def test_ageing_never_crosses_a_class_but_orders_within_one():
    """After an hour a 101 is still behind a fresh 999; an aged 101 passes a fresh 101b."""
    lines = LINES + [LineSpec("101b", 1, "101", wrapup=5)]
    run(router(lines=lines), [
        (0, "login h1 999:5,101:5", ["h1 not_ready(login)"]),
        (0, "arrive c1 101", ["queued c1 #1"]),
        (3590, "arrive d1 101b", ["queued d1 #2"]),
        (3600, "arrive e1 999", ["queued e1 #1"]),
        (3601, "ready h1", ["h1 available", "offer e1->h1", "h1 offered"]),
        (3602, "fail e1 h1 busy", ["h1 not_ready(busy)", "queued e1 #1"]),
        (3603, "login h2 101:5", ["h2 not_ready(login)"]),
        (3604, "ready h2", ["h2 available", "offer c1->h2", "h2 offered"]),
    ])


def test_ageing_is_capped_below_a_class_gap():
    """Effective priority shown = class - min(uplift, cap): a 1 h old 101 shows 0.1."""
    r = router()
    r.handler_login("h1", 0, skills={"101": 5})
    r.call_arrived("c1", "101", 0)
    waiting = r.snapshot(3600)["lines"]["101"]["waiting"]
    assert waiting[0]["priority"] == pytest.approx(0.1)
    assert r.snapshot(60)["lines"]["101"]["waiting"][0]["priority"] == pytest.approx(0.9)


def test_handler_without_999_skill_takes_101_while_999_waits():
    """Skills: a 101-only handler is offered a 101 even though a 999 waits."""
    run(router(), [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (1, "arrive e1 999", ["queued e1 #1"]),
        (2, "arrive c1 101", ["queued c1 #1"]),
        (3, "ready h1", ["h1 available", "offer c1->h1", "h1 offered"]),
    ])


def test_longest_idle_and_least_calls_policies():
    """longest-idle gives the call to the handler idle longest; least-calls to the one with fewest."""
    rows = [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (1, "ready h1", ["h1 available"]),
        (2, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (3, "answer c1 h1", ["connected c1 h1 wait=1", "h1 on_call"]),
        (4, "end c1", ["completed c1 h1 talk=1", "h1 wrap_up"]),
        (5, "wrapup h1", ["h1 available"]),
        (6, "ready h2", ["h2 available"]),
    ]
    run(router(), rows + [(7, "arrive c2 101", ["queued c2 #1", "offer c2->h1", "h1 offered"])])
    run(router(strategy="least-calls"),
        rows + [(7, "arrive c2 101", ["queued c2 #1", "offer c2->h2", "h2 offered"])])
    with pytest.raises(RoutingError, match="unknown strategy 'random'"):
        router(strategy="random")


def test_reprioritise_moves_a_101_ahead_at_once():
    """A supervisor sets a waiting 101 to 0.5: it is offered before older 101s."""
    r = router(lines=[LineSpec("101", 1, "101"), LineSpec("999", 0, "999")])
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (1, "arrive c1 101", ["queued c1 #1"]),
        (2, "arrive c2 101", ["queued c2 #2"]),
        (3, "arrive c3 101", ["queued c3 #3"]),
        (4, "reprio c3 0.5", ["queued c3 #1"]),
        (5, "ready h1", ["h1 available", "offer c3->h1", "h1 offered"]),
    ])
    with pytest.raises(RoutingError, match="priority must be a finite number >= 0"):
        r.reprioritise("c1", 6, priority=float("nan"))


def test_transfer_101_to_999_queue_head():
    """A connected 101 that is really an emergency goes to the 999 queue ahead of 999s."""
    r = router()
    log = run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 999:5", ["h2 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "answer c1 h1", ["connected c1 h1 wait=1", "h1 on_call"]),
        (3, "arrive e1 999", ["queued e1 #1"]),
        (4, "arrive e2 999", ["queued e2 #2"]),
        (5, "xline c1 999", ["h1 wrap_up", "queued c1 #1"]),
        (6, "ready h2", ["h2 available", "offer c1->h2", "h2 offered"]),
        (7, "answer c1 h2", ["connected c1 h2 wait=2", "h2 on_call"]),
        (9, "end c1", ["completed c1 h2 talk=2", "h2 wrap_up"]),
    ])
    assert [e.event for e in log if e.call_id == "c1" and e.event != "STATE"] == [
        "ENTER", "OFFER", "CONNECT", "TRANSFER", "ENTER", "OFFER", "CONNECT", "COMPLETE"]
    sl = replay(log, now=9)
    assert (sl["101"].offered, sl["101"].answered, sl["999"].offered, sl["999"].answered) == (
        1, 1, 3, 1)


def test_transfer_to_named_handler_waits_until_available():
    """A transfer to h2 (on a call) is offered to h2 when h2 is free, not to h3."""
    r = router()
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (0, "ready h2", ["h2 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h2", "h2 offered"]),
        (2, "answer c1 h2", ["connected c1 h2 wait=1", "h2 on_call"]),
        (3, "ready h1", ["h1 available"]),
        (4, "arrive c2 101", ["queued c2 #1", "offer c2->h1", "h1 offered"]),
        (5, "answer c2 h1", ["connected c2 h1 wait=1", "h1 on_call"]),
        (6, "xhandler c2 h2", ["h1 wrap_up", "queued c2 #1"]),
        (7, "login h3 101:5", ["h3 not_ready(login)"]),
        (8, "ready h3", ["h3 available"]),
        (9, "end c1", ["completed c1 h2 talk=7", "h2 wrap_up"]),
        (10, "wrapup h2", ["h2 available", "offer c2->h2", "h2 offered"]),
    ])
    with pytest.raises(RoutingError, match="call 'c2' is offered: cannot 'transfer'"):
        r.transfer_to_handler("c2", "h3", 11)


def test_abandon_while_ringing_cancels_and_frees_the_handler():
    """Caller hangs up while ringing: CancelOffer caller-gone, handler offered the next call."""
    run(router(), [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "arrive c2 101", ["queued c2 #1"]),
        (4, "hangup c1", ["cancel c1 h1 caller-gone", "h1 available",
                          "abandoned c1 wait=3 pos=0", "offer c2->h1", "h1 offered"]),
    ])


def test_not_ready_or_logout_while_ringing_requeues_in_place():
    """The handler goes not ready / logs out during an offer: the call is first again."""
    run(router(), [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "arrive c2 101", ["queued c2 #1"]),
        (3, "notready h1 break", ["cancel c1 h1 handler-not-ready", "h1 not_ready(break)",
                                  "queued c1 #1"]),
        (4, "ready h1", ["h1 available", "offer c1->h1", "h1 offered"]),
        (5, "logout h1", ["cancel c1 h1 handler-logout", "h1 logged_out(logout)",
                          "queued c1 #1"]),
    ])


def test_position_and_estimated_wait():
    """Estimated wait = calls ahead x moving-average handle time / staffed handlers."""
    r = router(default_handle_time=120)
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (0, "ready h2", ["h2 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (1, "arrive c2 101", ["queued c2 #1", "offer c2->h2", "h2 offered"]),
        (2, "arrive c3 101", ["queued c3 #1"]),
        (2, "arrive c4 101", ["queued c4 #2"]),
    ])
    assert [r.position(c) for c in ("c1", "c3", "c4", "nope")] == [0, 1, 2, None]
    assert r.estimated_wait("c3", 3) == 60.0     # position 1 x 120 s / 2 staffed
    assert r.estimated_wait("c4", 3) == 120.0    # position 2 x 120 s / 2 staffed
    r.set_not_ready("h2", 4, reason="break")       # call c2 back to its place, 1 staffed
    assert [r.position(c) for c in ("c2", "c3", "c4")] == [1, 2, 3]
    assert r.estimated_wait("c4", 5) == 3 * 120.0


@pytest.mark.parametrize(("call", "expected"), [
    (lambda r: r.handler_logout("h1", 5), "handler 'h1' is on_call: cannot 'logout'"),
    (lambda r: r.end_wrapup("h1", 5), "handler 'h1' is on_call: cannot 'wrapup_end'"),
    (lambda r: r.handler_login("h1", 5, skills={"101": 1}),
     "handler 'h1' is on_call: cannot 'login'"),
    (lambda r: r.call_abandoned("c1", 5), "call 'c1' is connected: cannot 'abandon'"),
    (lambda r: r.offer_answered("c1", "h1", 5), "call 'c1' is connected: cannot 'answer'"),
    (lambda r: r.call_arrived("c1", "101", 5), "call 'c1' already exists"),
    (lambda r: r.call_arrived("c9", "102", 5), "unknown line '102'"),
    (lambda r: r.call_ended("c9", 5), "unknown call 'c9'"),
    (lambda r: r.set_available("h9", 5), "unknown handler 'h9'"),
    (lambda r: r.offer_failed("c1", "h1", 5, reason="x"), "unknown offer failure reason 'x'; expected one of no-answer, rejected, busy, unreachable, cancelled, error"),
    (lambda r: r.handler_login("h2", 5, skills={"101": 11}),
     "proficiency of skill '101' must be an int 1-10, got 11"),
    (lambda r: r.tick(float("inf")), "now must be a finite number, got inf"),
    (lambda r: r.transfer_to_line("c1", "nope", 5), "unknown line 'nope'"),
])
def test_illegal_requests_raise_routing_error_naming_state_and_event(call, expected):
    """Illegal moves and bad input raise RoutingError with an exact message; state intact."""
    r = router()
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "answer c1 h1", ["connected c1 h1 wait=1", "h1 on_call"]),
    ])
    with pytest.raises(RoutingError) as info:
        call(r)
    assert info.value.message == expected
    assert r.snapshot(6)["handlers"]["h1"]["state"] == "on_call"


def test_answer_by_the_wrong_handler_is_refused():
    """A stale or foreign answer raises; the offer stands."""
    r = router()
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
    ])
    with pytest.raises(RoutingError, match="call 'c1' is offered to 'h1', not 'h2'"):
        r.offer_answered("c1", "h2", 2)
    assert r.position("c1") == 0


def test_from_settings_builds_lines_and_policy():
    """Router.from_settings maps config lines (skill defaults to the name) and routing."""
    from config import LineSettings, RoutingSettings
    r = Router.from_settings(
        [LineSettings(name="999", numbers=["999"], priority=0, callback_on_abandon=True),
         LineSettings(name="101", numbers=["101"], priority=1, skill="nonemergency")],
        RoutingSettings(strategy="least-calls", offer_timeout=20, rona_not_ready=False))
    assert r.lines["101"].skill == "nonemergency" and r.lines["999"].skill == "999"
    assert (r.policy.name, r.offer_timeout, r.rona_not_ready) == ("least-calls", 20, False)


def test_ageing_lets_an_older_waiter_on_a_faster_ageing_line_go_first():
    """Same class: a call on an ageing line passes an earlier call on a non-ageing line."""
    lines = [LineSpec("a", 1, "101"), LineSpec("b", 1, "101", ageing_per_minute=0.5)]
    run(router(lines=lines), [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "arrive a1 a", ["queued a1 #1"]),
        (10, "arrive b1 b", ["queued b1 #2"]),
        (100, "ready h1", ["h1 available", "offer b1->h1", "h1 offered"]),
    ])


def test_directed_transfer_falls_back_to_the_line_queue():
    """If the named handler logs out, or lets the offer ring out, the call joins its line."""
    r = router(lines=[LineSpec("101", 1, "101", wrapup=0)])
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "answer c1 h1", ["connected c1 h1 wait=1", "h1 on_call"]),
        (3, "arrive c2 101", ["queued c2 #1"]),
        (4, "xhandler c1 h2", ["h1 wrap_up", "h1 available", "queued c1 #1",
                               "offer c2->h1", "h1 offered"]),
        (4.5, "answer c2 h1", ["connected c2 h1 wait=1.5", "h1 on_call"]),
        (5, "logout h2", ["h2 logged_out(logout)", "queued c1 #1"]),
        (6, "login h2 101:5", ["h2 not_ready(login)"]),
        (7, "ready h2", ["h2 available", "offer c1->h2", "h2 offered"]),
        (8, "answer c1 h2", ["connected c1 h2 wait=4", "h2 on_call"]),
        (9, "login h3 101:5", ["h3 not_ready(login)"]),
        (10, "xhandler c1 h3", ["h2 wrap_up", "h2 available", "queued c1 #1"]),
        (11, "ready h3", ["h3 available", "offer c1->h3", "h3 offered"]),
        (26, "tick", ["cancel c1 h3 no-answer", "h3 not_ready(missed call)",
                      "queued c1 #1", "offer c1->h2", "h2 offered"]),
    ])
    with pytest.raises(RoutingError, match="handler 'h9' is logged_out: cannot take"):
        r.handler_login("h9", 27, skills={"101": 1})
        r.handler_logout("h9", 27)
        r.offer_answered("c1", "h2", 28)
        r.transfer_to_handler("c1", "h9", 29)


def test_new_skill_makes_a_waiting_call_offerable_at_once():
    """set_skills on an available handler offers the waiting call it can now take."""
    run(router(), [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive e1 999", ["queued e1 #1"]),
        (2, "skills h1 101:5,999:3", ["offer e1->h1", "h1 offered"]),
    ])


def test_snapshot_is_json_and_lists_waiting_calls_in_order():
    """snapshot() serialises to JSON with positions, waits and handler states."""
    import json
    r = router()
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (1, "arrive c1 101 07700900001", ["queued c1 #1"]),
        (2, "arrive c2 101", ["queued c2 #2"]),
        (2, "arrive e1 999", ["queued e1 #1"]),
    ])
    snap = json.loads(json.dumps(r.snapshot(12)))
    assert [(w["call_id"], w["position"], w["wait"]) for w in snap["lines"]["101"]["waiting"]] \
        == [("c1", 1, 11.0), ("c2", 2, 10.0)]
    # nobody staffs 999; h1 (101) is not ready, so no estimate can be made either
    assert snap["lines"]["999"]["waiting"][0]["estimated_wait"] is None
    assert snap["lines"]["101"]["waiting"][1]["estimated_wait"] is None
    assert snap["handlers"]["h1"] == {
        "state": "not_ready", "reason": "login", "since": 0.0, "call_id": None,
        "skills": {"101": 5}, "calls": 0, "idle_since": None, "wrapup_deadline": None,
        "wrapup_extended": 0.0, "after_call": None, "grading_due": None}


def test_snapshot_limit_keeps_the_head_of_each_line_and_the_count():
    """snapshot(limit=2) lists the first two queued calls per line (offer order) and counts all."""
    r = router(lines=[LineSpec("a", 1, "101"), LineSpec("b", 1, "101")])
    r.handler_login("h1", 0, skills={"101": 1})
    for i, line in enumerate("ababbb"):
        r.call_arrived(f"c{i}", line, i)
    snap = r.snapshot(10, limit=2)
    assert [(w["call_id"], w["position"]) for w in snap["lines"]["a"]["waiting"]] == [
        ("c0", 1), ("c2", 3)]
    assert [(w["call_id"], w["position"]) for w in snap["lines"]["b"]["waiting"]] == [
        ("c1", 2), ("c3", 4)]
    assert (snap["lines"]["a"]["waiting_count"], snap["lines"]["b"]["waiting_count"]) == (2, 4)
    assert len(r.snapshot(10, limit=None)["lines"]["b"]["waiting"]) == 4


def test_reprioritise_while_ringing_applies_when_the_call_returns():
    """A ringing call's new priority takes effect if the offer fails and it is requeued."""
    r = router(lines=[LineSpec("101", 1, "101"), LineSpec("bsl", 2, "101")])
    run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive b1 bsl", ["queued b1 #1", "offer b1->h1", "h1 offered"]),
        (2, "arrive c1 101", ["queued c1 #1"]),
        (3, "reprio b1 0", []),
        (4, "fail b1 h1 busy", ["h1 not_ready(busy)", "queued b1 #1"]),
        (5, "ready h2", ["h2 available", "offer b1->h2", "h2 offered"]),
    ])
    assert r.position("c1") == 1


def test_old_statistics_are_forgotten_after_the_retention():
    """tick() drops service-level facts older than stats_retention (bounded memory)."""
    r = router(stats_retention=100)
    run(r, [
        (0, "login h1 999:1", ["h1 not_ready(login)"]),
        (1, "arrive e1 999", ["queued e1 #1"]),
        (2, "hangup e1", ["abandoned e1 wait=1 pos=1 callback"]),
        (50, "arrive e2 999", ["queued e2 #1"]),
        (51, "hangup e2", ["abandoned e2 wait=1 pos=1 callback"]),
    ])
    assert (r.service_level("999", 60).offered, r.service_level("999", 60).abandoned) == (2, 2)
    run(r, [(120, "tick", [])])
    assert (r.service_level("999", 120).offered, r.service_level("999", 120).abandoned) == (1, 1)


@pytest.mark.parametrize(("kw", "message"), [
    ({"ageing_cap": 1.0}, "ageing_cap must be in [0, 1), got 1.0"),
    ({"offer_timeout": 0}, "offer_timeout and transfer_timeout must be positive, got 0 and 60.0"),
    ({"transfer_timeout": -1},
     "offer_timeout and transfer_timeout must be positive, got 15 and -1"),
    ({"lines": []}, "at least one line is required"),
    ({"lines": [LineSpec("a", 0, "x"), LineSpec("a", 1, "y")]}, "duplicate line 'a'"),
    ({"lines": [LineSpec("a", 0, "x", overflow="drop")]},
     "line 'a': overflow must be 'queue' or 'busy', got 'drop'"),
    ({"lines": [LineSpec("a", -1, "x")]}, "line 'a': priority must be >= 0, got -1"),
])
def test_bad_router_configuration_is_refused(kw, message):
    """Router() refuses inconsistent settings with a message naming the setting."""
    with pytest.raises(RoutingError) as info:
        router(**kw)
    assert info.value.message == message


def test_directed_transfer_waits_at_most_transfer_timeout():
    """A transfer to a handler who stays busy joins the line's queue after transfer_timeout."""
    r = router(lines=[LineSpec("101", 1, "101", wrapup=0)], transfer_timeout=30)
    log = run(r, [
        (0, "login h1 101:5", ["h1 not_ready(login)"]),
        (0, "login h2 101:5", ["h2 not_ready(login)"]),
        (0, "ready h1", ["h1 available"]),
        (1, "arrive c1 101", ["queued c1 #1", "offer c1->h1", "h1 offered"]),
        (2, "answer c1 h1", ["connected c1 h1 wait=1", "h1 on_call"]),
        (3, "xhandler c1 h2", ["h1 wrap_up", "h1 available", "queued c1 #1"]),
        (3, "notready h1 lunch", ["h1 not_ready(lunch)"]),
        (4, "arrive c2 101", ["queued c2 #1"]),
    ])
    assert r.next_deadline() == 33
    log += run(r, [
        (32.9, "tick", []),
        (33, "tick", ["queued c1 #1"]),
        (34, "ready h1", ["h1 available", "offer c1->h1", "h1 offered"]),
    ])
    assert [e.data for e in log if e.event == "REQUEUE"] == [{"reason": "transfer-timeout"}]


def test_would_refuse_and_refused_before_answer() -> None:
    """would_refuse is pure (101 busy when full, never 999); refused logs REJECTED and counts it."""
    from routing import LineSpec, QueueLogEntry, Router

    r = Router(lines=[LineSpec(name="999", priority=0, skill="999", overflow="busy"),
                      LineSpec(name="101", priority=1, skill="101", max_queue=1, overflow="busy")])
    assert r.would_refuse("101") == "no-handlers"
    assert r.would_refuse("999") is None
    r.handler_login("h1", 0.0, skills={"101": 5})
    assert r.would_refuse("101") is None
    r.call_arrived("c1", "101", 1.0)
    assert r.would_refuse("101") == "queue-full"
    assert r.would_refuse("101") == "queue-full"  # asking changes nothing
    rows = r.refused("r1", "101", 2.0, caller="0121", reason="queue-full")
    assert [(e.event, e.call_id, e.data["status"]) for e in rows
            if isinstance(e, QueueLogEntry)] == [("REJECTED", "r1", 486)]
    sl = r.service_level("101", 3.0)
    assert (sl.offered, sl.rejected) == (1, 1)  # a refused call is not an offered one
