"""The load benchmark itself keeps working, and cannot report a load it did not offer.

Timing targets live in the benchmark's printout, never here; this checks that a short
run completes every call on both lines with every recording complete and prints the
figures the README quotes, and that a run whose SIPp cannot offer the load, or quits
before placing its calls, exits non-zero with a FAILED line saying why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.realparts, pytest.mark.slow]


def bench(*argv: str, timeout: float = 240) -> tuple[int, str]:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "sip_load.py"), *argv],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return out.returncode, out.stdout + out.stderr


def test_small_sip_load_run_completes_every_call_and_recording() -> None:
    """25 calls/s with a 30 % 101 share (7.5/s, which SIPp once rejected): all 20 calls;
    3 s calls so the 20 calls are up together for a plateau of ~2 s."""
    code, text = bench("--calls", "20", "--rounds", "1", "--rate-start", "25",
                       "--rate-max", "25", "--talk", "3", "--share-101", "0.3", "--no-pyvoip",
                       "--drain", "30", "--settle", "1",
                       "--rate-tolerance", "0.5")  # no timing asserted on a shared machine
    assert code == 0, text[-3000:]
    assert re.search(r"SIPp callers: ok 20 failed 0 exit 0", text), text[-3000:]
    assert re.search(r"line 999: ok 14 failed 0", text) and re.search(r"line 101: ok 6 failed 0", text)
    assert "offered 20 calls at 25.00 calls/s; SIPp placed 20 at" in text
    counters = json.loads(re.search(r"engine counters \(cumulative\): (\{.*\})", text)
                          .group(1).replace("'", '"'))
    assert counters["arrived"] == counters["legs_answered"] == counters["sealed"] == 20
    assert counters["complete"] == 20 and counters["rec_bad"] == []
    for figure in ("INVITE->200 via Kamailio p50", "RTP sent per stream per s",
                   "garbage collector:", "idle Python heap after start/rounds", "machine: ",
                   "completed / offered (%)", "load avg (1 min) at round end",
                   "SIPp CPU s (callers + handlers)", "Kamailio CPU s",
                   "peak concurrent calls (all engines at once)",
                   "plateau RTP sent per stream per s (50)", "plateau cores: whole machine",
                   "cores over the plateau: engine", "plateau kept real time",
                   "plateau (>= 90% of the peak of "):
        assert figure in text
    # every call's recording complete, counted for the round itself
    assert re.search(r"recordings complete / answered \(%\) +100\.0 +100\.0 +100\.0",
                     text), text[-3000:]
    assert "FAILED" not in text


def test_a_sipp_held_below_the_offered_rate_fails_the_run() -> None:
    """--limit 1 with 1 s calls caps SIPp near 1 call/s against 6 offered: exit 1, why."""
    code, text = bench("--calls", "6", "--rounds", "1", "--rate-start", "6", "--rate-max", "6",
                       "--talk", "1", "--limit", "1", "--share-101", "0", "--no-pyvoip",
                       "--drain", "20", "--settle", "0")
    assert code == 1, text[-3000:]
    assert re.search(r"FAILED: callers-engine-0 \(line 999\): offered 6\.00 calls/s but SIPp "
                     r"placed [0-2]\.\d+/s .*it sat at its limit of 1 concurrent calls", text), text[-3000:]


def test_a_sipp_that_quits_before_placing_its_calls_fails_the_run() -> None:
    """SIPp's own 2 s global timeout ends it after ~10 of 40 calls: exit 1, no 2nd round."""
    code, text = bench("--calls", "40", "--rounds", "2", "--rate-start", "5", "--rate-max", "5",
                       "--talk", "1", "--share-101", "0", "--no-pyvoip", "--phase-timeout", "2",
                       "--drain", "3", "--settle", "0")
    assert code == 1, text[-3000:]
    assert re.search(r"FAILED: callers-engine-0 \(line 999\): SIPp exited \(code \d+\) after "
                     r"placing \d+ of 40 calls: "
                     r"callers-engine-0-999 timed out after", text), text[-3000:]
    assert "no further round" in text and "engine round 2" not in text
