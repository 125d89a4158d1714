"""Does speech recognition in the same process delay the call path's event loop?

The service runs the SIP engine, the 20 ms media clock and every call's state on one
asyncio loop, and speech recognition (faster-whisper / Vosk) in worker threads of the
same process; CTranslate2 and Vosk release the GIL, so the recognisers compete with the
loop for the CPU like any other process would. This measures a 20 ms loop ticker's
lateness (p50 / p99 / max) in three phases of ``--seconds`` each:

1. idle (no recognition);
2. ``--threads`` threads decoding speech back to back (as busy live workers), all
   threads at the same priority (CPython's and Linux's defaults);
3. the same after ``telephony.runtime.prioritise_this_thread()`` (what ``controlroom
   serve`` calls once started): the recogniser threads at nice 10.

    .venv/bin/python bench/loop_priority.py --threads 2 --seconds 10

Figures are disturbed by other load on the machine: read ``load avg`` first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def ticker(seconds: float, work_ms: float, period: float = 0.02) -> list[float]:
    """Lateness (ms) of each tick of an absolute 20 ms schedule, like the media clock,
    each tick spending ``work_ms`` of CPU in Python (the media work of its calls)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    late = []
    n = 1
    while loop.time() - t0 < seconds:
        deadline = t0 + n * period
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        late.append(max(0.0, loop.time() - deadline) * 1000)
        end = time.thread_time() + work_ms / 1000
        while time.thread_time() < end:
            pass
        # next tick: skip ticks already missed (we measure lateness, not catch-up)
        n = max(n + 1, int((loop.time() - t0) / period) + 1)
    return late


def figures(name: str, late: list[float]) -> str:
    v = sorted(late)
    p = lambda q: v[min(len(v) - 1, int(q * (len(v) - 1)))]  # noqa: E731
    return (f"{name:<44} ticks {len(v):4d}  late p50 {p(0.5):6.2f} ms  p99 {p(0.99):7.2f} ms  "
            f"max {v[-1]:7.2f} ms  >20 ms: {sum(x > 20 for x in v)}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="recogniser threads")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--loop-work", type=float, default=6.0,
                    help="CPU ms per 20 ms tick on the loop (6: ~300 RTP legs, "
                    "bench/media_clock.py)")
    args = ap.parse_args()

    from harness import speech
    from telephony.runtime import prioritise_this_thread
    from transcription.audio import Resampler
    from transcription.engines import WhisperEngine

    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs; load avg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    engine = WhisperEngine(replicas=args.threads)
    wav = speech.synthesise("Police, which service? There has been a crash on the motorway "
                            "near junction four, two cars, one person is trapped.")
    pcm, _, rate = speech.read_wav(wav)
    pcm = np.asarray(pcm, dtype=np.int16)
    pcm16k = Resampler(rate, 16000).process(pcm)
    stop = threading.Event()
    decodes = [0] * args.threads

    def work(i: int) -> None:
        while not stop.is_set():
            engine.decode(pcm16k, word_timestamps=False, beam_size=1)
            decodes[i] += 1

    print(figures("1. idle", await ticker(args.seconds, args.loop_work)))
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(args.threads)]
    for t in threads:
        t.start()
    await asyncio.sleep(1.0)  # pools up, first decodes running
    d0 = sum(decodes)
    t0 = time.monotonic()
    print(figures(f"2. {args.threads} recogniser threads, same priority",
                  await ticker(args.seconds, args.loop_work)))
    rate_same = (sum(decodes) - d0) / (time.monotonic() - t0)
    moved = prioritise_this_thread()
    d0 = sum(decodes)
    t0 = time.monotonic()
    print(figures(f"3. same, others at nice 10 ({moved} threads)", await ticker(args.seconds, args.loop_work)))
    rate_bg = (sum(decodes) - d0) / (time.monotonic() - t0)
    stop.set()
    print(f"recognition throughput: {rate_same:.2f} vs {rate_bg:.2f} decodes/s of a "
          f"{len(pcm) / rate:.1f} s clip")


if __name__ == "__main__":
    asyncio.run(main())
