"""The load benchmark itself keeps working: a small run through the real parts.

Timing targets live in the benchmark's printout, never here; this checks that a short
run completes every call on both lines with every recording complete, and that the
figures the README quotes are printed.
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


def test_small_sip_load_run_completes_every_call_and_recording() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sip_load.py"), "--calls", "20", "--rounds", "1",
         "--rate-start", "10", "--rate-max", "10", "--talk", "1", "--share-101", "0.3",
         "--no-pyvoip", "--drain", "30"],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert re.search(r"SIPp callers: ok 20 failed 0 exit 0", text), text[-3000:]
    assert re.search(r"line 999: ok 14 failed 0", text) and re.search(r"line 101: ok 6 failed 0", text)
    counters = json.loads(re.search(r"engine counters \(cumulative\): (\{.*\})", text)
                          .group(1).replace("'", '"'))
    assert counters["arrived"] == counters["legs_answered"] == counters["sealed"] == 20
    assert counters["complete"] == 20 and counters["rec_bad"] == []
    for figure in ("INVITE->200 via Kamailio p50", "RTP sent per stream per s",
                   "garbage collector:", "idle Python heap after start/rounds"):
        assert figure in text
