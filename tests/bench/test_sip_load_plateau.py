"""bench/sip_load.py's plateau figures, on recorded engine samples, no process.

"N concurrent calls in real time" is read over the seconds the engines together held
>= 90 % of their peak, not averaged over the ramps: the peak is one taken at once across
workers (not a sum of per-worker peaks), packets per stream per second come from the
packets sent over exactly that span, and a worker that falls behind shows in the lowest
second and the verdict.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import sip_load as sl


def worker(shape: list[int], offset: float, rate: float = 50.0,
           slow: tuple[float, float, float] | None = None,
           lag_ms: float = 5.0, tick_gap_ms: float = 25.0) -> list[dict[str, Any]]:
    """1 s samples of one engine holding shape[i] calls (each with a handler leg) at
    t = 1000 + i + offset; it sends ``rate`` packets per stream per second, or
    ``slow[2]`` between t = slow[0] and slow[1]; CPU 0.3 s per second; loop lag and
    media-clock tick gap of each 1 s window as given."""
    out: list[dict[str, Any]] = []
    sent = 0.0
    for i, calls in enumerate(shape):
        t = 1000 + i + offset
        if i:
            prev = out[-1]
            streams = (prev["calls"] + prev["legs"] + 2 * calls) / 2
            r = slow[2] if slow and slow[0] <= t <= slow[1] else rate
            sent += streams * r
        out.append({"t": t, "calls": calls, "legs": calls, "rtp_out": round(sent),
                    "rtp_in": round(sent), "lost": 0, "late": 0, "cpu": 0.3 * i,
                    "rq_wait": 0.0, "lag_ms": lag_ms, "tick_gap_ms": tick_gap_ms,
                    "gap_ms": 30.0})
    return out


RAMP = [0, 25, 50, 75, 100, 125, 150, 150, 150, 150, 150, 150, 150, 150, 150, 150,
        125, 100, 75, 50, 25, 0]


def test_two_workers_in_real_time_hold_their_plateau_at_fifty_packets() -> None:
    a, b = worker(RAMP, 0.0), worker(RAMP, 0.5)
    p = sl.plateau_figures([a, b], 1000, 1000 + len(RAMP))
    assert p["peak_calls"] == 300 and p["peak_legs"] == 300
    # totals at each sample: 275 from t = 1006 (a full, b still at 125) to 1016
    assert p["min_calls"] == 275 and p["seconds"] == pytest.approx(10.0)
    assert p["pkts"] == pytest.approx(50.0, abs=0.05)
    assert p["low_1s"] == pytest.approx(50.0, abs=0.1)
    assert p["lost"] == p["late"] == 0 and p["real_time"] is True
    assert p["cpu_s"] == pytest.approx(2 * 0.3 * 11, abs=0.7)
    assert "real time: yes" in sl.plateau_line(p)


def test_the_peak_is_taken_at_once_not_summed_over_workers() -> None:
    """Each worker peaks at 150 while the other holds 0 or 50: 200 at once, not 300."""
    early = [0, 50, 100, 150, 100, 50, 0, 0, 0, 0]
    late = [0, 0, 0, 0, 50, 150, 50, 0, 0, 0]
    p = sl.plateau_figures([worker(early, 0.0), worker(late, 0.5)], 1000, 1010)
    assert p["peak_calls"] == 200


def test_a_worker_that_falls_behind_in_the_plateau_is_not_real_time() -> None:
    a = worker(RAMP, 0.0)
    b = worker(RAMP, 0.5, slow=(1008.0, 1010.0, 40.0))
    p = sl.plateau_figures([a, b], 1000, 1000 + len(RAMP))
    assert p["peak_calls"] == 300
    assert 47.0 < p["pkts"] < 49.5
    assert p["low_1s"] == pytest.approx(40.0, abs=0.5)
    assert p["real_time"] is False and "real time: NO" in sl.plateau_line(p)


def test_lost_packets_or_a_stalled_clock_in_the_plateau_are_not_real_time() -> None:
    a = worker(RAMP, 0.0)
    for s in a[9:]:
        s["lost"] = 3
    p = sl.plateau_figures([a], 1000, 1000 + len(RAMP))
    assert p["lost"] == 3 and p["real_time"] is False
    p = sl.plateau_figures([worker(RAMP, 0.0, tick_gap_ms=180.0)], 1000, 1000 + len(RAMP))
    assert p["tick_gap_ms"] == 180.0 and p["real_time"] is False
    # a late loop alone (the probe waits behind catch-up ticks) is printed, not judged
    p = sl.plateau_figures([worker(RAMP, 0.0, lag_ms=180.0)], 1000, 1000 + len(RAMP))
    assert p["lag_ms"] == 180.0 and p["real_time"] is True
    # samples from before the tick gap was recorded cannot show real time
    old = worker(RAMP, 0.0)
    for s in old:
        del s["tick_gap_ms"]
    assert sl.plateau_figures([old], 1000, 1000 + len(RAMP))["real_time"] is False


def test_no_samples_or_no_call_gives_no_plateau() -> None:
    assert sl.plateau_figures([], 0, 10) == {}
    assert sl.plateau_figures([worker([0, 0, 0], 0.0)], 1000, 1003) == {}
    assert sl.plateau_figures([worker(RAMP, 0.0), []], 1000, 1022) == {}


def test_a_peak_held_under_one_sample_is_no_plateau_to_judge() -> None:
    p = sl.plateau_figures([worker([0, 20, 0, 0], 0.0)], 1000, 1004)
    assert p["peak_calls"] == 20 and p["real_time"] is None
    assert "no plateau" in sl.plateau_line(p)


def test_cores_between_reads_the_span_and_names_the_rest_of_the_machine() -> None:
    series = [(100.0 + i / 2, {"engine0": 0.4 * i, "kamailio": 0.05 * i,
                               "sipp-callers-999": 0.2 * i, "handlers0": 0.1 * i,
                               "bench": 0.02 * i, "dumpcap": 0.01 * i,
                               "machine": 0.95 * i}) for i in range(40)]
    cores = sl.cores_between(series, 105.0, 115.0)
    assert cores["engine0"] == pytest.approx(0.8) and cores["machine"] == pytest.approx(1.9)
    parts = sl.plateau_cores({"cores": cores})
    assert parts["SIPp"] == pytest.approx(0.6) and parts["Kamailio"] == pytest.approx(0.1)
    assert parts["this script + capture"] == pytest.approx(0.06)
    assert parts["other"] == pytest.approx(0.34)
    assert sl.cores_between(series, 200.0, 210.0) == {}
