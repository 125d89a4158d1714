"""The store's circuit breaker (store.breaker): pure, fed ``now``."""

from __future__ import annotations

import pytest

from store.breaker import Breaker, BreakerError, Closed, Opened, State


def test_first_failure_opens_once_and_a_probe_is_due_at_once() -> None:
    b = Breaker(probe_min=0.5, probe_max=2.0)
    assert b.allow() and b.next_probe() is None and not b.probe_due(100.0)
    assert b.failed("no answer from the store in 0.3 s", 100.0) == Opened(
        "no answer from the store in 0.3 s", 100.0)
    assert not b.allow() and b.state is State.OPEN
    assert b.failed("connection lost", 100.1) is None  # already open: reason kept
    assert b.reason == "no answer from the store in 0.3 s" and b.opened == 1
    assert b.next_probe() == 100.0 and b.probe_due(100.0)
    assert b.state is State.PROBING and not b.allow()
    assert b.next_probe() is None and not b.probe_due(100.0)  # one probe at a time


def test_failed_probes_back_off_doubling_to_the_cap_then_a_success_closes() -> None:
    b = Breaker(probe_min=0.5, probe_max=2.0)
    b.failed("connection lost", 10.0)
    at, gaps = 10.0, []
    for _ in range(5):
        assert b.probe_due(at)
        b.probe_failed(at)
        due = b.next_probe()
        assert due is not None and not b.probe_due(due - 0.01)
        gaps.append(due - at)
        at = due
    assert gaps == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert b.probe_due(at)
    b.failed("connection lost", at)  # a caller's failure while probing changes nothing
    assert b.state is State.PROBING
    assert b.probe_succeeded(at + 0.1) == Closed(since=10.0, at=at + 0.1, probes=6)
    assert b.allow() and b.reason == "" and b.since is None
    # a new outage starts the back-off again
    assert b.failed("connection lost", 50.0) is not None and b.opened == 2
    assert b.probe_due(50.0)
    b.probe_failed(50.0)
    assert b.next_probe() == 50.5


@pytest.mark.parametrize("event", ["probe_failed", "probe_succeeded"])
def test_a_probe_result_without_a_probe_is_an_error_naming_state_and_event(
        event: str) -> None:
    b = Breaker()
    with pytest.raises(BreakerError, match=f"breaker: '{event}' not allowed in state 'closed'"):
        getattr(b, event)(1.0)


def test_bad_back_off_is_refused() -> None:
    with pytest.raises(ValueError, match="need 0 < probe_min <= probe_max, got 2, 1"):
        Breaker(probe_min=2, probe_max=1)
