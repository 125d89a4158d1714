"""How many simultaneous calls does the transcription service keep up with on this machine?

    .venv/bin/python bench/transcription_capacity.py [--steps 2,4,6,8,10,12] [--window 90]
        [--min-dur 30] [--max-dur 90] [--set live_partials=0.5] [--stop-after-fail 1]
        [--final-nice 0]
    .venv/bin/python bench/transcription_capacity.py --cost [--partials 0.5,1,2,0] [--beam 5]

The real :class:`~transcription.service.TranscriptionService` (the configured defaults:
Whisper base for finals, tiny.en for live captions, ``[transcription]`` settings from
``config/schema.py``, overridden with ``--set key=value``), on an SQLite store, driven
the way calls drive it:

* N call slots, started a staggered ``window/N`` apart; each slot places calls back to
  back (1 s apart) until ``--window`` s have passed, so N calls are in progress at once
  for most of the window. A call lasts 30-90 s: turns of a handler and a caller, each
  an utterance (speech runs of ``bench/findability_corpus.py``: natural, robotic and
  15 dB-noise voices through G.711) with pauses between them; 30 % are 999 calls
  (priority 0), the rest 101 (priority 1).
* Both channels are fed at real time as 20 ms frames (``TranscriptionService.feed``,
  one pacing task like the media tick), live captions on (``live_start`` at the call's
  start). At the end: ``live_stop``, the stereo recording is written as the service
  writes it and ``enqueue_final`` queues its final transcript.
* After the window the bench waits for every final (at most until the last call's
  bound has passed), then the next step starts with an idle service.

Per step: live caption lag (wall time of each published caption minus the wall time at
which the audio it ends with was fed; p50/p95, partials and finals), live streams shed
(999 and 101), final-transcript delay after the call ended (p95 and max, and how many
calls exceeded ``2 x duration + 10 s``), CPU used (cores: process CPU time / wall time,
and the live workers' and final thread's share), peak RSS. A step passes when no final
misses its bound, every final arrives and no call loses (or is refused) live captions. The last line:
``capacity: N simultaneous calls (finals <= 2 x dur + 10 s, live captions on)``.

The machine is shared: each step prints the 1-minute load average beside its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.findability_corpus import build  # noqa: E402
from callevents import CallFlagged, TranscriptFinal, TranscriptSegment  # noqa: E402
from config.schema import TranscriptionSettings  # noqa: E402
from store import calls as store_calls  # noqa: E402
from store.db import Database  # noqa: E402
from telephony.api import AudioFrame  # noqa: E402
from transcription import LIVE_OFF_FLAG, TranscriptionService  # noqa: E402
from transcription import store as tstore  # noqa: E402
from transcription.audio import read_recording, write_wav  # noqa: E402

RATE = 8000
FRAME = 160


def utterances(pcm: np.ndarray, *, min_gap: float = 0.5) -> list[np.ndarray]:
    """Speech runs of a recording (20 ms frames over -45 dBFS, split at >= min_gap s of
    quiet), each with 0.1 s of its surroundings."""
    n = len(pcm) // FRAME
    f = pcm[:n * FRAME].astype(np.float64).reshape(n, FRAME)
    loud = 20 * np.log10(np.sqrt((f ** 2).mean(axis=1)) / 32768 + 1e-12) > -45
    runs, start, quiet = [], None, 0
    for i, v in enumerate(loud):
        if v:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * 0.02 >= min_gap:
                runs.append((start, i - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        runs.append((start, n))
    return [pcm[max(0, (a - 5) * FRAME):min(len(pcm), (b + 5) * FRAME)]
            for a, b in runs if (b - a) * 0.02 >= 0.4]


def make_call(pool: list[np.ndarray], rng: np.random.Generator, seconds: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """A conversation of about ``seconds``: the handler says one utterance, the caller
    one to three, pauses of 0.3-1.5 s between turns (0.5-2 s within the caller's)."""
    caller: list[np.ndarray] = []
    handler: list[np.ndarray] = []
    t = 0

    def put(ch: list[np.ndarray], other: list[np.ndarray], x: np.ndarray) -> None:
        nonlocal t
        ch.append(x)
        other.append(np.zeros(len(x), np.int16))
        t += len(x)

    def pause(lo: float, hi: float) -> None:
        nonlocal t
        z = np.zeros(int(rng.uniform(lo, hi) * RATE), np.int16)
        caller.append(z)
        handler.append(z)
        t += len(z)

    pause(0.2, 0.6)
    while t < seconds * RATE:
        put(handler, caller, pool[rng.integers(len(pool))])
        pause(0.3, 1.5)
        for k in range(int(rng.integers(1, 4))):
            if k:
                pause(0.5, 2.0)
            put(caller, handler, pool[rng.integers(len(pool))])
        pause(0.3, 1.5)
    c, h = np.concatenate(caller), np.concatenate(handler)
    n = int(seconds * RATE) // FRAME * FRAME
    return c[:n], h[:n]


@dataclasses.dataclass
class Call:
    cid: str
    priority: int
    caller: np.ndarray
    handler: np.ndarray
    start: float = 0.0  # wall (monotonic) of its first frame
    end: float = 0.0
    final_at: float = 0.0
    shed: bool = False

    @property
    def duration(self) -> float:
        return len(self.caller) / RATE

    @property
    def bound(self) -> float:
        return 2 * self.duration + 10.0


ENGINE_THREADS: dict[int, str] = {}
"""Native ids of the threads each engine load started (CTranslate2 computes in its own
threads, not the caller's): 'live' or 'final', by the model loaded."""


def _tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def tag_engine_threads(settings: TranscriptionSettings) -> None:
    """Wrap the service's ``load_engine`` to learn which threads each model owns."""
    import transcription.service as service_mod

    orig = service_mod.load_engine

    def load(engine: str, model: str, **kw: Any) -> Any:
        before = _tids()
        e = orig(engine, model, **kw)
        group = "live" if model == settings.live_model and model != settings.model else "final"
        for t in _tids() - before:
            ENGINE_THREADS[t] = group
        return e

    service_mod.load_engine = load  # type: ignore[assignment]


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread group: live (worker threads and the live model's compute
    threads), final (job thread and the final model's), other (loop, VAD, feeding)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    loop = threading.main_thread().native_id
    out = {"live": 0.0, "final": 0.0, "other": 0.0, "loop": 0.0}
    for t in psutil.Process().threads():
        name = names.get(t.id, "")
        group = "live" if name.startswith("transcription-live") else \
            "final" if name.startswith("transcription-final") else \
            "loop" if t.id == loop else ENGINE_THREADS.get(t.id, "other")
        out[group] += t.user_time + t.system_time
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return float(np.percentile(xs, q))


async def run_step(svc: TranscriptionService, events: list[tuple[float, Any]], n: int, *,
                   pool: list[np.ndarray], rng: np.random.Generator, window: float,
                   min_dur: float, max_dur: float, out: Path, step_no: int) -> dict[str, Any]:
    events.clear()
    calls: dict[str, Call] = {}
    active: list[Call] = []
    seq = 0

    def new_call() -> Call:
        nonlocal seq
        seq += 1
        c, h = make_call(pool, rng, float(rng.uniform(min_dur, max_dur)))
        call = Call(f"s{step_no}n{n}c{seq}", 0 if rng.random() < 0.3 else 1, c, h)
        calls[call.cid] = call
        return call

    def end_call(call: Call, now: float) -> None:
        call.end = now
        svc.live_stop(call.cid)
        path = out / f"{call.cid}.wav"
        write_wav(path, RATE, call.caller, call.handler)
        svc.enqueue_final(call.cid, str(path), priority=call.priority)

    cpu0, th0 = resource.getrusage(resource.RUSAGE_SELF), thread_cpu()
    rss_peak = psutil.Process().memory_info().rss
    t0 = time.monotonic()
    next_start = [t0 + i * window / n for i in range(n)]
    slot_call: list[Call | None] = [None] * n
    tick = 0
    while True:
        now = time.monotonic()
        for i in range(n):
            c = slot_call[i]
            if c is None and now >= next_start[i] and now < t0 + window:
                c = slot_call[i] = new_call()
                c.start = now
                svc.live_start(c.cid, priority=c.priority)
                active.append(c)
        for c in list(active):
            k = int((now - c.start) / 0.02)  # frames due by now (catch up when late)
            done = getattr(c, "_fed", 0)
            last = len(c.caller) // FRAME
            for j in range(done, min(k + 1, last)):
                sl = slice(j * FRAME, (j + 1) * FRAME)
                svc.feed(AudioFrame(c.cid, "caller", c.caller[sl].tobytes(), j * 0.02))
                svc.feed(AudioFrame(c.cid, "handler", c.handler[sl].tobytes(), j * 0.02))
            c._fed = max(done, min(k + 1, last))  # type: ignore[attr-defined]
            if c._fed >= last:  # type: ignore[attr-defined]
                end_call(c, now)
                active.remove(c)
                i = next(i for i, s in enumerate(slot_call) if s is c)
                slot_call[i] = None
                next_start[i] = now + 1.0
        tick += 1
        if tick % 50 == 0:
            rss_peak = max(rss_peak, psutil.Process().memory_info().rss)
        if not active and now >= t0 + window:
            break
        await asyncio.sleep(max(0.0, t0 + tick * 0.02 - time.monotonic()))
    t_fed = time.monotonic()
    # Wait for every final, at most until the last call's bound has passed (+ 5 s).
    deadline = max(c.end + c.bound for c in calls.values()) + 5.0
    while time.monotonic() < deadline:
        done = {e.call_id for _, e in events if isinstance(e, TranscriptFinal)}
        if all(cid in done for cid in calls):
            break
        await asyncio.sleep(0.5)
        rss_peak = max(rss_peak, psutil.Process().memory_info().rss)
    t_end = time.monotonic()
    cpu1, th1 = resource.getrusage(resource.RUSAGE_SELF), thread_cpu()
    wall = t_end - t0
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    lags: list[float] = []
    for at, e in events:
        if isinstance(e, TranscriptSegment) and e.call_id in calls:
            c = calls[e.call_id]
            lags.append(at - (c.start + e.end))
        elif isinstance(e, TranscriptFinal) and e.call_id in calls:
            calls[e.call_id].final_at = at
        elif isinstance(e, CallFlagged) and e.flag == LIVE_OFF_FLAG and e.call_id in calls:
            calls[e.call_id].shed = True
    delays = [c.final_at - c.end for c in calls.values() if c.final_at]
    missing = [c for c in calls.values() if not c.final_at]
    late = [c for c in calls.values() if c.final_at and c.final_at - c.end > c.bound]
    shed999 = sum(1 for c in calls.values() if c.shed and c.priority == 0)
    shed101 = sum(1 for c in calls.values() if c.shed and c.priority == 1)
    worst = max((c.final_at - c.end) / c.bound for c in calls.values() if c.final_at) \
        if delays else float("nan")
    audio = sum(c.duration for c in calls.values())
    res = {
        "n": n, "calls": len(calls), "audio_s": round(audio, 1),
        "mean_dur_s": round(audio / max(1, len(calls)), 1),
        "lag_p50": round(pct(lags, 50), 2), "lag_p95": round(pct(lags, 95), 2),
        "captions": len(lags), "shed999": shed999, "shed101": shed101,
        "final_p95": round(pct(delays, 95), 1), "final_max": round(max(delays, default=float("nan")), 1),
        "worst_of_bound": round(worst, 2), "late": len(late), "missing": len(missing),
        "cores": round(cpu / wall, 2),
        "cpu_live_s_per_call_min": round((th1["live"] - th0["live"]) / (audio / 60), 1),
        "cpu_final_s_per_call_min": round((th1["final"] - th0["final"]) / (audio / 60), 1),
        "cpu_other_s_per_call_min": round((th1["other"] - th0["other"]) / (audio / 60), 1),
        "cpu_loop_s_per_call_min": round((th1["loop"] - th0["loop"]) / (audio / 60), 1),
        "wall_s": round(wall, 1), "fed_s": round(t_fed - t0, 1),
        "rss_mb": round(rss_peak / 1e6), "load1": round(os.getloadavg()[0], 2),
    }
    res["ok"] = not late and not missing and shed999 + shed101 == 0
    for p in out.glob(f"s{step_no}n{n}c*.wav"):  # noqa: ASYNC240 - the service is idle
        p.unlink()
    return res


def cost(a: argparse.Namespace, pool: list[np.ndarray]) -> None:
    """``--cost``: CPU per call-minute of each part alone (no real-time pacing, so the
    machine's load hardly matters): the live recogniser at each partial schedule (both
    channels, 40 ms chunks as a worker at real time gets them) and the final transcript
    per channel, on ``--cost-calls`` generated 60 s calls."""
    from transcription.decoding import DecodeOptions
    from transcription.engines import WhisperEngine

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    rng = np.random.default_rng([a.seed, 60])
    calls = [make_call(pool, rng, 60.0) for _ in range(a.cost_calls)]
    s = settings_from(a.set)
    live = WhisperEngine(s.live_model, options=DecodeOptions())
    for every in (float(x) for x in a.partials.split(",")):
        c0, captions = cpu(), 0
        for pair in calls:
            for ch in pair:
                rec = live.recogniser(partial_every=every)
                for i in range(0, len(ch), 320):
                    captions += len(rec.accept(ch[i:i + 320].tobytes()))
                captions += len(rec.flush())
        print(f"live {s.live_model} partials every {every:g} s: {(cpu() - c0) / len(calls):.1f}"
              f" CPU-s per call-minute, {captions / len(calls):.0f} captions", flush=True)
    final = WhisperEngine(s.model, options=DecodeOptions(beam_size=a.beam))
    final.transcribe(calls[0][0][:5 * RATE], RATE)  # warm up
    t_c = t_h = 0.0
    for c, h in calls:
        c0 = cpu()
        final.transcribe(c, RATE)
        c1 = cpu()
        final.transcribe(h, RATE)
        t_c, t_h = t_c + c1 - c0, t_h + cpu() - c1
    n = len(calls)
    print(f"final {s.model} beam {a.beam}: {(t_c + t_h) / n:.1f} CPU-s per call-minute"
          f" (caller {t_c / n:.1f}, handler {t_h / n:.1f}); load1 {os.getloadavg()[0]:.2f}")


def settings_from(pairs: list[str]) -> TranscriptionSettings:
    kw: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(TranscriptionSettings)}
    for p in pairs:
        k, _, v = p.partition("=")
        if k not in fields:
            raise SystemExit(f"--set: no transcription setting {k!r}")
        cur = getattr(TranscriptionSettings(), k)
        kw[k] = (v.lower() in ("1", "true", "yes")) if isinstance(cur, bool) else \
            type(cur)(v) if isinstance(cur, int | float) else v
    return TranscriptionSettings(**kw)


async def main_async(a: argparse.Namespace) -> None:
    manifest = build(Path(a.corpus), 13, limit=12)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    pool = [u for r in rows if r["group"] != "nonspeech"
            for u in utterances(read_recording(r["path"]).channels["caller"])]
    if a.cost:
        cost(a, pool)
        return
    settings = settings_from(a.set)
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        out = Path(tmp)
        db = Database(out / "t.sqlite3")
        db.migrate(store_calls.COMPONENT, store_calls.MIGRATIONS)
        tstore.migrate(db)
        events: list[tuple[float, Any]] = []
        tag_engine_threads(settings)
        if a.final_nice is not None:
            import transcription.offline as offline_mod
            import transcription.service as service_mod

            def renice() -> None:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), a.final_nice)
            offline_mod.FINAL_NICE = a.final_nice
            service_mod.lower_thread_priority = renice  # type: ignore[assignment]
        svc = TranscriptionService(settings=settings, db=db, job_poll=0.5,
                                   publish=lambda e: events.append((time.monotonic(), e)))
        await svc.start()
        s = settings
        print(f"# transcription capacity: engine={s.engine} model={s.model} live_model={s.live_model}"
              f" workers={s.workers} max_live_streams={s.max_live_streams}"
              f" {' '.join(a.set)}; {len(pool)} utterances;"
              f" calls {a.min_dur:.0f}-{a.max_dur:.0f} s for {a.window:.0f} s per step;"
              f" {os.cpu_count()} CPUs", flush=True)
        print(f"{'N':>3} {'calls':>5} {'lag p50/p95':>12} {'shed 999/101':>12} {'final p95/max':>14}"
              f" {'worst/bound':>11} {'late':>4} {'miss':>4} {'cores':>5} {'cpu-s/call-min live/final/loop/other':>36}"
              f" {'RSS MB':>6} {'load1':>5}", flush=True)
        best = 0
        fails = 0
        results = []
        try:
            for step_no, n in enumerate(int(x) for x in a.steps.split(",")):
                r = await run_step(svc, events, n, pool=pool, rng=np.random.default_rng([a.seed, n]),
                                   window=a.window, min_dur=a.min_dur, max_dur=a.max_dur,
                                   out=out, step_no=step_no)
                results.append(r)
                print(f"{n:>3} {r['calls']:>5} {r['lag_p50']:>5.2f}/{r['lag_p95']:<6.2f}"
                      f" {r['shed999']:>5}/{r['shed101']:<6} {r['final_p95']:>6.1f}/{r['final_max']:<7.1f}"
                      f" {r['worst_of_bound']:>11.2f} {r['late']:>4} {r['missing']:>4} {r['cores']:>5.2f}"
                      f" {r['cpu_live_s_per_call_min']:>15.1f}/{r['cpu_final_s_per_call_min']:.1f}/{r['cpu_loop_s_per_call_min']:.1f}/{r['cpu_other_s_per_call_min']:<6.1f}"
                      f" {r['rss_mb']:>6} {r['load1']:>5.2f}  {'ok' if r['ok'] else 'FAIL'}", flush=True)
                if r["ok"]:
                    best = max(best, n)
                else:
                    fails += 1
                    if fails >= a.stop_after_fail:
                        break
                # idle between steps: a leftover final must not count against the next
                done = sum(x["calls"] for x in results)
                while svc.stats["finals_done"] + svc.stats["finals_failed"] < done:  # noqa: ASYNC110
                    await asyncio.sleep(1.0)
        finally:
            await svc.stop()
            db.close()
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))  # noqa: ASYNC240
        # CPU per call-minute of the last step that kept up (else the last step): what 2
        # otherwise idle cores could carry, whatever the machine's load during the run.
        ref = next((r for r in reversed(results) if r["ok"]), results[-1] if results else None)
        if ref is not None:
            per = ref["cpu_live_s_per_call_min"] + ref["cpu_final_s_per_call_min"] + \
                ref["cpu_loop_s_per_call_min"] + ref["cpu_other_s_per_call_min"]
            print(f"cpu: {per:.1f} cpu-s per call-minute at N={ref['n']} (live"
                  f" {ref['cpu_live_s_per_call_min']:.1f}, final {ref['cpu_final_s_per_call_min']:.1f});"
                  f" 2 idle cores: at most {120 / per:.1f} calls")
        print(f"capacity: {best} simultaneous calls (finals <= 2 x dur + 10 s, live captions on;"
              f" load1 {os.getloadavg()[0]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", default="2,4,6,8,10,12")
    ap.add_argument("--window", type=float, default=90.0, help="s during which calls are placed")
    ap.add_argument("--min-dur", type=float, default=30.0)
    ap.add_argument("--max-dur", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--corpus", default="/tmp/controlroom-findability")
    ap.add_argument("--set", action="append", default=[], help="transcription setting key=value")
    ap.add_argument("--stop-after-fail", type=int, default=1)
    ap.add_argument("--final-nice", type=int, default=None,
                    help="niceness of the final-job threads (default: the service's, +10;"
                         " on a machine shared with other work +10 starves them)")
    ap.add_argument("--json", default="")
    ap.add_argument("--cost", action="store_true",
                    help="CPU per call-minute of live captions and finals alone, then exit")
    ap.add_argument("--cost-calls", type=int, default=3)
    ap.add_argument("--partials", default="0.5,1,2,0", help="--cost: live schedules to try")
    ap.add_argument("--beam", type=int, default=5, help="--cost: beam of the final decode")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
