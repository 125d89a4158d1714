"""Baseline for bench/sip_load.py: a pyVoIP 1.6.8 phone that answers and records every call.

    python bench/pyvoip_phone.py --registrar 127.0.0.1:5060 --user pyvoip --sip-port 5090 \
        --rtp 30000-31000 --out /tmp/pyvoip --stats /tmp/pyvoip.json

It registers at the proxy as ``sip:<user>@<domain>`` (pyVoIP insists on a registrar),
answers each INVITE (pyVoIP's own call thread, started by a 1 s timer in the library),
reads the caller's audio 20 ms at a time into an 8 kHz mono WAV until the call ends, and
on SIGTERM writes its counters as JSON to ``--stats``. This is the "obvious" way to build
the service on pyVoIP: one thread per call, blocking reads.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
import wave
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registrar", required=True)
    ap.add_argument("--user", default="pyvoip")
    ap.add_argument("--sip-port", type=int, required=True)
    ap.add_argument("--rtp", default="30000-31000")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stats", type=Path, required=True)
    args = ap.parse_args()

    from pyVoIP.VoIP import CallState, InvalidStateError, VoIPPhone

    host, port = args.registrar.rsplit(":", 1)
    low, high = (int(x) for x in args.rtp.split("-"))
    args.out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    stats = {"answered": 0, "ended": 0, "errors": 0, "recorded_seconds": 0.0,
             "answer_delay_ms": []}

    def on_call(call) -> None:  # pyVoIP runs this in its own thread per call
        t0 = time.monotonic()
        try:
            call.answer()
        except InvalidStateError:
            with lock:
                stats["errors"] += 1
            return
        with lock:
            stats["answered"] += 1
            stats["answer_delay_ms"].append((time.monotonic() - t0) * 1000)
            n = stats["answered"]
        frames = 0
        path = args.out / f"call-{n}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(1)  # pyVoIP hands out 8-bit unsigned linear audio
            w.setframerate(8000)
            while call.state == CallState.ANSWERED:
                data = call.read_audio(160, blocking=True)
                w.writeframes(data)
                frames += 1
        with lock:
            stats["ended"] += 1
            stats["recorded_seconds"] += frames * 0.02

    phone = VoIPPhone(host, int(port), args.user, "", myIP="127.0.0.1", callCallback=on_call,
                      sipPort=args.sip_port, rtpPortLow=low, rtpPortHigh=high)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    phone.start()
    print("pyvoip phone started", flush=True)
    done.wait()
    with lock:
        args.stats.write_text(json.dumps(stats))
    try:
        phone.stop()
    except Exception:  # noqa: BLE001 - pyVoIP's stop may raise on calls mid-flight
        pass


if __name__ == "__main__":
    main()
