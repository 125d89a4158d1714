"""The service load benchmark keeps working: a small run through the real parts.

Checks what the benchmark must show for every call (answered, recorded with a matching
SHA-256, every CAD message in order); no timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.realparts, pytest.mark.slow]


def test_small_service_load_run_answers_records_and_publishes_every_call() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "service_load.py"), "--calls", "10", "--rate", "1",
         "--handlers", "8", "--talk", "2", "--engine", "none"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert re.search(r"line 999: answered 7 failed 0", text), text[-3000:]
    assert re.search(r"line 101: answered 3 failed 0", text), text[-3000:]
    assert "recordings: 10/10 present with a matching SHA-256" in text
    assert "CAD: 10/10 calls with every message, in order, no gap" in text
    assert "event-loop lag p99" in text
    assert "line 999: offered 7 calls at 0.70 calls/s; SIPp placed 7 at" in text
    assert "FAILED" not in text
