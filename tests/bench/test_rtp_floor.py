"""bench/rtp_floor.py keeps working, and cannot print a floor for packets nobody sent.

A tiny run (5 streams, 2 s) builds the C relay with the real gcc, relays real UDP over
loopback in every mode (C per packet, batched, one socket; Python; our MediaEngine) and
prints a figure line per mode; a far end that sends nothing makes the run exit 1 with a
FAILED line saying how many packets arrived; without gcc it says SKIPPED and exits 77.
No timing or CPU figure is asserted (a shared machine); the packet counts are.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "rtp_floor.py"

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def bench(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True,
                         timeout=180, cwd=ROOT, env=env)
    return out.returncode, out.stdout + out.stderr


@needs_gcc
def test_a_tiny_run_relays_every_packet_in_every_mode_and_prints_its_figures() -> None:
    code, text = bench("--streams", "5", "--seconds", "2", "--rounds", "1")
    assert code == 0, text[-3000:]
    assert re.search(r"^machine: \d+ CPUs .*; kernel .*; load avg ", text, re.M), text
    for mode in ("a", "b", "c", "py", "engine"):
        line = re.search(rf"^round 1 mode {mode} +N=5 +relay CPU (\d+\.\d+) ms per stream-second"
                         rf".*per stream per s rx (\d+\.\d) tx (\d+\.\d);.*; load \d+\.\d$",
                         text, re.M)
        assert line, f"no figure line for mode {mode}:\n{text[-3000:]}"
        rx, tx = float(line.group(2)), float(line.group(3))
        # 50 packets per stream per second each way (the odd stream out has no partner)
        assert 47.5 <= rx <= 52.5 and 0.95 * 40 <= tx <= 52.5, line.group(0)
        assert float(line.group(1)) > 0, line.group(0)
        assert re.search(rf"^{mode} N=5 relay ms/stream-s +\d", text, re.M), text[-3000:]
        assert re.search(rf"^floor {mode} N=5: median \d+\.\d+ ms per stream-second = \d+ % "
                         rf"of the engine's 2\.2 ms$", text, re.M), text[-3000:]
    assert "FAILED" not in text


@needs_gcc
def test_a_far_end_that_sends_nothing_fails_the_run() -> None:
    code, text = bench("--streams", "4", "--seconds", "1", "--rounds", "2", "--modes", "a,engine",
                       "--sender-seconds", "0")
    assert code == 1, text[-3000:]
    for mode in ("a", "engine"):
        assert re.search(rf"^FAILED: mode {mode} N=4 round 1: the relay received 0 of the 2\d\d "
                         rf"packets of its 1\.\d s window \(4 streams x 50/s; heard 0 of 4 far "
                         rf"ends; the far end sent 0\)", text, re.M), text[-3000:]
    assert "round 2" not in text  # a failed round ends the run
    assert not re.search(r"^floor ", text, re.M)


def test_without_gcc_it_says_skipped_and_exits_77(tmp_path: Path) -> None:
    code, text = bench("--streams", "5", "--seconds", "1", "--rounds", "1",
                       env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert code == 77, text
    assert "SKIPPED: no gcc on PATH" in text
