"""The queue-log checker the global-queue test and benchmark rely on
(``harness.cluster.priority_and_offers``) finds what it must: a 101 offered while a 999
waits, a handler offered twice, and forgets a killed node's calls from its kill on."""

from __future__ import annotations

from harness.cluster import priority_and_offers


def row(i: int, call: str, line: str, handler: str, event: str) -> dict:
    return {"id": i, "call_id": call, "line": line, "handler_id": handler, "event": event}


def test_a_101_offered_while_a_999_waits_and_a_handler_offered_twice_are_found() -> None:
    rows = [row(1, "a-1", "999", "", "ENTER"), row(2, "a-2", "101", "", "ENTER"),
            row(3, "a-2", "101", "h1", "OFFER"), row(4, "a-1", "999", "h1", "OFFER")]
    res = priority_and_offers(rows)
    assert res["violations"] == [(3, "a-2", ["a-1"])]
    assert res["doubles"] == [(4, "h1", "a-2", "a-1")]
    assert res["offers"] == {"101": 1, "999": 1}


def test_a_999_back_in_the_queue_after_a_failed_offer_waits_again() -> None:
    rows = [row(1, "a-1", "999", "", "ENTER"), row(2, "a-1", "999", "h1", "OFFER"),
            row(3, "a-1", "999", "h1", "RINGNOANSWER"), row(4, "b-2", "101", "h2", "OFFER")]
    assert priority_and_offers(rows)["violations"] == [(4, "b-2", ["a-1"])]


def test_in_order_offers_and_released_handlers_are_clean() -> None:
    rows = [row(1, "a-1", "999", "", "ENTER"), row(2, "b-2", "101", "", "ENTER"),
            row(3, "a-1", "999", "h1", "OFFER"), row(4, "a-1", "999", "h1", "CONNECT"),
            row(5, "a-1", "999", "h1", "COMPLETE"), row(6, "b-2", "101", "h1", "OFFER")]
    assert priority_and_offers(rows) == {"violations": [], "doubles": [],
                                         "offers": {"999": 1, "101": 1}}


def test_a_killed_nodes_calls_stop_waiting_and_holding_from_its_kill() -> None:
    rows = [row(1, "a-1", "999", "", "ENTER"), row(2, "a-1", "999", "h1", "OFFER"),
            row(3, "a-3", "999", "", "ENTER"), row(4, "b-2", "101", "h1", "OFFER")]
    assert priority_and_offers(rows)["doubles"] and priority_and_offers(rows)["violations"]
    assert priority_and_offers(rows, dead={"a": 4}) == {
        "violations": [], "doubles": [], "offers": {"999": 1, "101": 1}}


def test_an_offer_of_a_dead_nodes_call_holds_its_handler_until_released() -> None:
    rows = [row(1, "a-1", "999", "", "ENTER"), row(2, "x", "", "", "KILL"),
            row(3, "a-1", "999", "h1", "OFFER"), row(4, "b-2", "101", "h1", "OFFER")]
    assert priority_and_offers(rows, dead={"a": 2})["doubles"] == [(4, "h1", "a-1", "b-2")]
    rows.insert(3, row(4, "a-1", "999", "h1", "RINGCANCELED"))
    rows[-1] = row(5, "b-2", "101", "h1", "OFFER")
    assert priority_and_offers(rows, dead={"a": 2}) == {
        "violations": [], "doubles": [], "offers": {"999": 1, "101": 1}}
