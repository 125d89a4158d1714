"""Live policy (who keeps captions): pure, no threads."""

from __future__ import annotations

from transcription.live import LivePolicy


def test_admission_up_to_max():
    """Calls are admitted until max_live_streams, spread over workers."""
    p = LivePolicy(max_streams=3)
    infos = [p.admit(f"c{i}", 1, workers=2)[0] for i in range(3)]
    assert [i.live for i in infos] == [True, True, True]
    assert [i.worker for i in infos] == [0, 1, 0]


def test_urgent_call_takes_slot_of_least_urgent_newest():
    """A 999 call at the limit displaces the newest 101 call, which is told why."""
    p = LivePolicy(max_streams=2)
    p.admit("old101", 1, workers=1)
    p.admit("new101", 1, workers=1)
    info, victim = p.admit("e999", 0, workers=1)
    assert info.live and victim is not None and victim.call_id == "new101"
    assert not p.streams["new101"].live and p.streams["old101"].live
    assert "a more urgent call (priority 0) needed the slot" in victim.reason


def test_equal_priority_at_limit_is_refused():
    """A 101 call at the limit (all 101) starts without captions; nobody is displaced."""
    p = LivePolicy(max_streams=1)
    p.admit("a", 1, workers=1)
    info, victim = p.admit("b", 1, workers=1)
    assert victim is None and not info.live
    assert info.reason.startswith("no live captions: max_live_streams (1) reached")


def test_overload_sheds_101_before_999_with_cooldown():
    """Lag over the limit sheds the 101 call first; within the cooldown, or while the lag
    is not growing, nothing more is shed; then the newest 999 call goes."""
    p = LivePolicy(max_streams=8, max_lag=1.5, cooldown=1.0, sustain=0.0)
    p.admit("e1", 0, workers=1)
    p.admit("n1", 1, workers=1)
    p.admit("e2", 0, workers=1)
    assert p.overloaded(0, lag=1.0, now=10.0) is None
    v = p.overloaded(0, lag=2.0, now=10.0)
    assert v is not None and v.call_id == "n1"
    assert "CPU overload (lag 2.0 s > 1.5 s)" in v.reason
    assert p.overloaded(0, lag=2.0, now=10.5) is None
    assert p.overloaded(0, lag=1.8, now=11.1) is None  # recovering: leave it
    v2 = p.overloaded(0, lag=2.5, now=11.2)
    assert v2 is not None and v2.call_id == "e2"  # newest 999 before the older one
    assert p.live_count() == 1


def test_full_inbox_sheds_even_below_lag():
    """A full inbox is overload whatever the measured lag."""
    p = LivePolicy(max_streams=8)
    p.admit("n1", 1, workers=1)
    v = p.overloaded(0, lag=0.0, now=1.0, full=True)
    assert v is not None and "inbox full" in v.reason


def test_overload_only_sheds_on_that_worker():
    """Shedding picks among the lagging worker's calls."""
    p = LivePolicy(max_streams=8, sustain=0.0)
    p.admit("w0", 0, workers=2)
    p.admit("w1", 5, workers=2)
    v = p.overloaded(0, lag=3.0, now=0.0)
    assert v is not None and v.call_id == "w0"


def test_zero_streams_means_live_off():
    """max_streams 0: every call is refused live captions with the reason."""
    p = LivePolicy(max_streams=0)
    info, _ = p.admit("x", 0, workers=1)
    assert not info.live and "max_live_streams = 0" in info.reason


def test_recovery_resets_shed_memory():
    """Once the lag is back under the limit, a new overload sheds at once."""
    p = LivePolicy(max_streams=8, max_lag=1.0, cooldown=1.0, sustain=0.0)
    p.admit("a", 1, workers=1)
    p.admit("b", 1, workers=1)
    assert p.overloaded(0, lag=3.0, now=0.0).call_id == "b"
    assert p.overloaded(0, lag=0.2, now=2.0) is None
    assert p.overloaded(0, lag=1.5, now=2.1).call_id == "a"


def test_lag_must_be_sustained():
    """A lag spike shorter than ``sustain`` sheds nothing; a sustained one does."""
    p = LivePolicy(max_streams=8, max_lag=1.0, sustain=1.0)
    p.admit("a", 1, workers=1)
    assert p.overloaded(0, lag=2.0, now=0.0) is None
    assert p.overloaded(0, lag=0.5, now=0.5) is None  # spike over
    assert p.overloaded(0, lag=2.0, now=0.75) is None
    assert p.overloaded(0, lag=2.0, now=1.5) is None
    assert p.overloaded(0, lag=2.1, now=1.8).call_id == "a"
