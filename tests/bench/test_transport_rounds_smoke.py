"""``bench/sip_load.py --transports udp,tcp,tls --srtp`` keeps working: a short run puts
every call through on each transport and prints the issue 16 figures side by side (no
timing asserted here: the printout carries them, with the load average)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import transport_rounds  # noqa: E402


def test_unknown_transport_is_refused_and_cells_show_rounds() -> None:
    """A transport outside udp/tcp/tls stops the run naming it; a figure over several
    rounds prints its median with each round in brackets."""
    with pytest.raises(SystemExit, match="--transports: unknown sctp"):
        transport_rounds._parse_transports("udp,sctp")
    assert transport_rounds._parse_transports(" UDP, tls ") == ["udp", "tls"]
    assert transport_rounds._cell([3.0, 1.0, 2.0], ".1f") == "2.0 [3.0 1.0 2.0]"
    assert transport_rounds._cell([], ".1f") == "-"
    ap = argparse.ArgumentParser()
    transport_rounds.add_arguments(ap)
    assert not transport_rounds.wanted(ap.parse_args([]))
    assert transport_rounds.wanted(ap.parse_args(["--srtp"]))


@pytest.mark.realparts
@pytest.mark.slow
def test_short_transport_run_prints_the_figures_side_by_side() -> None:
    """10 calls on each of UDP, TCP and TLS, then 4 calls on RTP and each SRTP suite:
    every call completes and both tables are printed; a FAILED line, if any, may only
    be a real-time verdict of the media phases (the machine is shared)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sip_load.py"), "--transports", "udp,tcp,tls",
         "--srtp", "--calls", "10", "--rate-max", "10", "--talk", "1", "--rounds", "1",
         "--settle", "0.5", "--handshakes", "3", "--srtp-calls", "4", "--srtp-seconds", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    text = out.stdout + out.stderr
    assert re.search(r"calls completed\s+10/10\s+10/10\s+10/10", text), text[-3000:]
    for figure in ("set-up rate (calls/s)", "INVITE->200 p99 (ms)", "engine CPU per call (ms)",
                   "round 1: TLS p99", "fresh TLS handshakes to the engine: n=3",
                   "SRTP AEAD_AES_128_GCM", "SRTP AES_CM_128_HMAC_SHA1_80",
                   "CPU per call-second (ms)", "CPU vs RTP (median)", "load average"):
        assert figure in text, (figure, text[-3000:])
    failed = [line for line in text.splitlines() if line.startswith("FAILED")]
    assert all("not kept in real time" in line for line in failed), failed
    assert out.returncode == (1 if failed else 0)
