"""bench/loadcheck.py: when a caller SIPp's run counts, on recorded statistics, no process.

Pins the reasons a benchmark prints as FAILED (exited early with SIPp's own complaint,
completed nothing or too little, placed its calls slower than offered) and when a slow
placement is the system under test's doing rather than the generator's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import loadcheck as lc


def rows(*points: tuple[float, int, int]) -> list[dict[str, str]]:
    """SIPp stats rows from (seconds since start, calls placed, calls open)."""
    return [{"CurrentTime": f"2026-12-04\t14:00:00\t{1000 + t:.6f}", "OutgoingCall(C)": str(n),
             "CurrentCall": str(c)} for t, n, c in points]


def test_placement_seconds_follows_the_ramp_up_to_its_cap() -> None:
    """Rate 10, +5 every second, capped at 20: 10 + 15 + 20 ... calls per second."""
    assert lc.placement_seconds(60, 10) == pytest.approx(6.0)
    assert lc.placement_seconds(45, 10, 5, 1.0, 20) == pytest.approx(3.0)
    assert lc.placement_seconds(55, 10, 5, 1.0, 20) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="rate must be > 0, got 0"):
        lc.placement_seconds(5, 0)


def test_placement_is_the_last_answered_invite_within_the_bracketing_second() -> None:
    """30 calls at 25/s: the stats rows say between 1 s and 2 s, the RTDs say 1.2 s."""
    st = rows((0, 0, 0), (1, 24, 24), (2, 30, 30), (3, 30, 0))
    assert lc.placement_from_stats(st, 30, [40.0, 1204.0, 800.0]) == lc.Placement(
        created=30, seconds=pytest.approx(1.204), peak_current=30)
    # no answered call: only the lower bound (the last row counting fewer) is known
    assert lc.placement_from_stats(st, 30).seconds == pytest.approx(1.0)
    assert lc.placement_from_stats([], 30) == lc.Placement(0, None, 0)


def test_read_sent_ms_takes_invite_rtds_from_the_rtt_files(tmp_path: Path) -> None:
    """Date_ms minus response_time_ms of RTD 1 is when the INVITE left."""
    f = tmp_path / "c_1_rtt.csv"
    f.write_text("Date_ms;response_time_ms;rtd_no\n1332;1288;1\n2252;1048;1\n900;5;2\n")
    assert lc.read_sent_ms([f, tmp_path / "missing.csv"]) == [44.0, 1204.0]


def test_a_sipp_that_quit_on_its_arguments_is_a_failure_with_its_own_words() -> None:
    """The --rate-start 25 bug: SIPp rejected -rate_max 7.5, placed nothing, exit 1."""
    out = lc.shortfalls("callers-engine-0 (line 101)", calls=450, completed=0,
                        placement=lc.Placement(0, None, 0), offered_s=60.0, final_rate=7.5,
                        limit=120, exit_code=1,
                        output='2026-12-04\t14:07:30.668638\t1796393250.668638: -rate_max, '
                               '"7.5" is not a valid integer!\n')
    assert out == ["callers-engine-0 (line 101): SIPp exited (code 1) after placing 0 of 450 "
                   'calls: -rate_max, "7.5" is not a valid integer!']


def test_completing_nothing_or_too_little_fails_an_engine_round() -> None:
    """Every call placed on time, but none / 90 % completed."""
    placed = lc.Placement(created=100, seconds=9.9, peak_current=20)
    kw = dict(calls=100, placement=placed, offered_s=10.0, final_rate=10.0, limit=400,
              exit_code=1)
    assert lc.shortfalls("r", completed=0, **kw) == ["r: completed nothing (0 of 100 calls)"]
    assert lc.shortfalls("r", completed=90, **kw) == ["r: completed 90 of 100 calls (90% < 95%)"]
    assert lc.shortfalls("r", completed=95, **kw) == []
    # the system under test's completions are a result, not a generator fault
    assert lc.shortfalls("r", completed=0, min_completed=None, **kw) == []


def test_placing_calls_slower_than_offered_fails_unless_the_far_end_throttled_it() -> None:
    """6/s offered, 1/s placed: a failure; at the -l limit it says so; for pyVoIP it is not."""
    slow = lc.Placement(created=6, seconds=6.0, peak_current=1)
    kw = dict(calls=6, completed=6, placement=slow, offered_s=1.0, final_rate=6.0, limit=1,
              exit_code=0)
    assert lc.shortfalls("r", **kw) == [
        "r: offered 6.00 calls/s but SIPp placed 1.00/s (6 calls in 6.0 s, allowed 1.3 s at "
        "10% tolerance); it sat at its limit of 1 concurrent calls (calls did not end as "
        "fast as new ones were due)"]
    assert lc.shortfalls("r", min_completed=None, **kw) == []
    kw["limit"] = 400
    assert len(lc.shortfalls("r", min_completed=None, **kw)) == 1
    # within tolerance plus one call's spacing: counts
    kw["placement"] = lc.Placement(created=6, seconds=1.25, peak_current=1)
    assert lc.shortfalls("r", **kw) == []


def test_figures_are_printed_as_min_median_max_with_every_round() -> None:
    """NaN rounds are shown but left out of the spread; no value at all prints dashes."""
    assert lc.spread([3.0, 1.0, float("nan"), 2.0]) == (1.0, 2.0, 3.0)
    assert lc.spread([float("nan")]) is None
    lines = lc.table([("p99 ms", [16.0, 20.0, 18.0], ".1f"), ("ratio", [], ".1f")])
    assert lines[1].split() == ["p99", "ms", "16.0", "18.0", "20.0", "16.0,", "20.0,", "18.0"]
    assert lines[2].split() == ["ratio", "-", "-", "-"]
    assert "CPUs (" in lc.machine()
