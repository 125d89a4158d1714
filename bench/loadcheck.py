"""Did the load generator offer the load a benchmark claims? And figures over rounds.

A benchmark that prints "ok 0 failed 0" and exits 0 after SIPp quit on a bad argument, or
that quotes a rate SIPp never reached because it sat at its concurrent-call limit, lies.
These pure functions (no process, no clock) read a SIPp statistics CSV and say whether a
caller SIPp placed every call at the offered rate and how many completed; the benchmarks
turn each reason into a ``FAILED`` line and a non-zero exit.

* :func:`placement_seconds`: how long SIPp's rate ramp takes to place N calls.
* :func:`placement_from_stats`: how long it actually took (from ``-trace_stat`` rows).
* :func:`shortfalls`: the reasons a caller run does not count (empty: it does).
* :func:`spread` / :func:`table`: each figure as min / median / max over rounds.
"""

from __future__ import annotations

import csv
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

RATE_TOLERANCE = 0.10
"""Default: the placement rate may fall this far (10 %) below the offered rate."""

MIN_COMPLETED = 0.95
"""Default: a round (and a CPU ratio) counts only if this share of offered calls completed."""


def placement_seconds(calls: int, rate: float, step: float = 0.0, interval: float = 1.0,
                      rate_max: float | None = None) -> float:
    """Seconds SIPp needs to place ``calls`` at ``rate`` calls/s, raised by ``step`` every
    ``interval`` s up to ``rate_max`` (SIPp's ``-rate_increase`` / ``-rate_max``)."""
    if calls <= 0:
        return 0.0
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    t, placed, r = 0.0, 0.0, rate
    while True:
        now = min(r, rate_max) if rate_max else r
        if placed + now * interval >= calls:
            return t + (calls - placed) / now
        placed += now * interval
        t += interval
        r += step


@dataclass(frozen=True)
class Placement:
    """What a caller SIPp did, read from its statistics CSV."""

    created: int
    """Calls SIPp placed (``OutgoingCall(C)``)."""
    seconds: float | None
    """Seconds from SIPp's start until it had placed the calls asked for (None: never)."""
    peak_current: int
    """Most calls SIPp held at once (a peak at ``-l`` means the far end throttled it)."""


def read_stats(path: Path) -> list[dict[str, str]]:
    """The rows of a SIPp ``-trace_stat`` CSV (empty if SIPp never wrote one)."""
    try:
        rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    except OSError:
        return []
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:]] if rows else []


def read_text(path: Path) -> str:
    """A file's text, or "" if it is missing (SIPp's output when it never started)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _epoch(row: dict[str, str]) -> float:
    # CurrentTime is "date<TAB>time<TAB>epoch"
    return float(row["CurrentTime"].split("\t")[-1])


def _int(row: dict[str, str], key: str) -> int:
    try:
        return int(row.get(key, "") or 0)
    except ValueError:
        return 0


def read_sent_ms(paths: list[Path]) -> list[float]:
    """When SIPp sent each answered INVITE, in ms since it started, from its ``-trace_rtt``
    files (``Date_ms`` is when the 200 came, ``response_time_ms`` how long it took)."""
    out = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split(";")
            try:
                if len(parts) >= 3 and parts[2].strip() == "1":
                    out.append(float(parts[0]) - float(parts[1]))
            except ValueError:
                pass
    return out


def placement_from_stats(rows: list[dict[str, str]], calls: int,
                         sent_ms: list[float] | None = None) -> Placement:
    """When the ``calls``-th call was placed.

    The 1 s stats rows bracket it (after the last row counting fewer, at or before the
    first counting all); within that second, the last answered INVITE's send time
    (``sent_ms``, :func:`read_sent_ms`) places it exactly when every call was answered,
    and is a lower bound otherwise.
    """
    if not rows:
        return Placement(created=0, seconds=None, peak_current=0)
    t0 = _epoch(rows[0])
    created = max(_int(r, "OutgoingCall(C)") for r in rows)
    peak = max(_int(r, "CurrentCall") for r in rows)
    seconds = None
    prev_t = t0
    for r in rows:
        t = _epoch(r)
        if _int(r, "OutgoingCall(C)") >= calls:
            last = max(sent_ms) / 1000 if sent_ms else 0.0
            seconds = min(max(prev_t - t0, last), t - t0)
            break
        prev_t = t
    return Placement(created=created, seconds=seconds, peak_current=peak)


def shortfalls(name: str, *, calls: int, completed: int, placement: Placement,
               offered_s: float, final_rate: float, limit: int, exit_code: int | None,
               output: str = "", tolerance: float = RATE_TOLERANCE,
               min_completed: float | None = MIN_COMPLETED) -> list[str]:
    """Why this caller run does not count; empty if it placed every call at the offered
    rate (within ``tolerance``) and completed at least ``min_completed`` of them.

    ``offered_s`` is :func:`placement_seconds` for the run; one call's spacing at
    ``final_rate`` is allowed on top, for the 1 s granularity of SIPp's statistics.
    ``min_completed=None`` measures the system under test rather than requiring it to
    keep up (pyVoIP): no completion check, and a slow placement while SIPp sat at its
    ``limit`` of concurrent calls is the far end's doing, not the generator's.
    """
    out: list[str] = []
    if placement.created < calls:
        said = _first_words(output)
        out.append(f"{name}: SIPp exited (code {exit_code}) after placing "
                   f"{placement.created} of {calls} calls" + (f": {said}" if said else ""))
    elif placement.seconds is not None and placement.seconds > 0:
        offered = calls / offered_s if offered_s > 0 else float("inf")
        achieved = calls / placement.seconds
        allowed = offered_s * (1 + tolerance) + 1 / max(final_rate, 1e-9)
        throttled = placement.peak_current >= limit
        if placement.seconds > allowed and not (throttled and min_completed is None):
            why = (f"; it sat at its limit of {limit} concurrent calls (calls did not end "
                   f"as fast as new ones were due)" if throttled else "")
            out.append(f"{name}: offered {offered:.2f} calls/s but SIPp placed "
                       f"{achieved:.2f}/s ({calls} calls in {placement.seconds:.1f} s, "
                       f"allowed {allowed:.1f} s at {tolerance:.0%} tolerance){why}")
    if min_completed is not None and placement.created > 0:
        if completed == 0:
            out.append(f"{name}: completed nothing ({completed} of {calls} calls)")
        elif completed < min_completed * calls:
            out.append(f"{name}: completed {completed} of {calls} calls "
                       f"({completed / calls:.0%} < {min_completed:.0%})")
    return out


def _first_words(output: str) -> str:
    """SIPp's own complaint: its first lines before any statistics screen."""
    lines = []
    for line in output.splitlines():
        if line.startswith("-----"):
            break
        line = re.sub(r"^\S+\t\S+\t[\d.]+: ", "", line.strip())  # SIPp's time stamp
        if line and not line.startswith(_CHATTER):
            lines.append(line)
    return " / ".join(lines)[:300]


_CHATTER = ("Resolving remote host", "In pcap ", "npkts ", "max pkt length ", "base port ")


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """(min, median, max) of the finite values, or None if there is none."""
    v = [x for x in values if x == x and x not in (float("inf"), float("-inf"))]
    return (min(v), statistics.median(v), max(v)) if v else None


def table(rows: list[tuple[str, list[float], str]]) -> list[str]:
    """Lines of a figure table: name, min / median / max, every round's value.

    ``rows`` are ``(figure, values per round, format)``, e.g. ``("p99 ms", [16, 20], ".1f")``.
    """
    width = max((len(name) for name, _, _ in rows), default=10)
    out = [f"{'figure':<{width}}  {'min':>9} {'median':>9} {'max':>9}  per round"]
    for name, values, fmt in rows:
        s = spread(values)
        cells = (" ".join(f"{x:>9{fmt}}" for x in s) if s
                 else f"{'-':>9} {'-':>9} {'-':>9}")
        out.append(f"{name:<{width}}  {cells}  {', '.join(format(x, fmt) for x in values)}")
    return out


def machine() -> str:
    """CPU count and model, for the line every benchmark prints beside its figures."""
    import os
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model})"
