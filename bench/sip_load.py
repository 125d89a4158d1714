"""SIP load benchmark through real peers: SIPp callers -> Kamailio -> the Engine, which
answers, records, offers each call to a SIPp handler phone (through Kamailio) and bridges
it; then the same caller load against a pyVoIP 1.6.8 answering phone. Prints figures.

    .venv/bin/python bench/sip_load.py     # the target: 30 calls/s (30 % of them 101),
                                           # 6 s calls (~175 at once), 1,500 calls x 2
                                           # rounds, 2 engine processes, then 600 calls
                                           # against pyVoIP
    .venv/bin/python bench/sip_load.py --workers 1 --rounds 3 --no-pyvoip
                                           # the same with one engine process
    .venv/bin/python bench/sip_load.py --calls 2000 --rounds 5 --settle 45 --no-pyvoip
                                           # 10,000 calls: idle memory after each round

Bounded: every SIPp run has ``-m`` calls and a global timeout; each phase has a wall-clock
limit; all processes are stopped at the end (even on Ctrl-C).

Figures (targets on 2 cores: >= 150 bridged recorded calls = 300 legs in real time,
>= 30 new calls/s, INVITE->answer p99 <= 50 ms):
  calls completed / failed (SIPp's view), INVITE->200 p50/p99 as the caller measures it
  (through Kamailio) and as the engine measures it (INVITE in -> 200 out), peak concurrent
  calls and legs, CPU of each process, RTP packets sent per stream per second (50 = real
  time), largest send gap, event-loop lag, recordings sealed and complete, memory per
  concurrent call and idle RSS after each round (flat = no leak).

A run that does not count exits 1 after ``FAILED:`` lines saying why: a caller SIPp
quit before placing its calls, an engine round completed under ``--min-completed``
(95 %), or SIPp placed its calls more than ``--rate-tolerance`` (10 %) slower than
offered. The summary prints each figure as min / median / max over the rounds beside the
load average and the CPU SIPp and Kamailio used. The engine-vs-pyVoIP CPU ratio is CPU
per completed call-second, round paired with round, printed only when both completed
95 % of their calls; where both complete every call:

    .venv/bin/python bench/sip_load.py --calls 150 --rate-start 10 --rate-max 10 \
        --rounds 3 --pyvoip-calls 0 --pyvoip-rounds 3

N calls at once in real time: offer calls long enough that N are up together for a
while, e.g. 300 at once from 10 calls/s and 30 s calls (a ~30 s plateau):

    .venv/bin/python bench/sip_load.py --calls 600 --rate-start 10 --rate-max 10 \
        --talk 30 --rounds 2 --no-pyvoip --phase-timeout 240

Each round then prints its plateau (the span the engines together held >= 90 % of the
peak taken at once): RTP sent per stream per second over it and its lowest second, rx
lost/late, the media clock's largest tick gap, the cores of the engines, SIPp, Kamailio,
this script and the whole machine over it, and a real-time verdict (>= 49.5 packets per
stream per s, none lost or late, tick gap <= 100 ms).

The engine runs in a child process (``--serve-engine``, this same file) so its CPU and
memory are measured alone.

Secure transports (issue 16), one run, the same load per transport, printed side by side
(``bench/transport_rounds.py``): call set-up rate and INVITE->200 p99 over UDP, TCP and
TLS, and concurrent calls on plain RTP vs SRTP (CPU per call, kept in real time or not):

    .venv/bin/python bench/sip_load.py --transports udp,tcp,tls --srtp \
        --calls 300 --rate-max 10 --talk 2 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadcheck, transport_rounds  # noqa: E402 - after the path set-up above

DOMAIN = "controlroom.local"


# --- engine child process -------------------------------------------------------------

def run_queue_wait() -> float:
    """Seconds this process's threads spent runnable but waiting for a CPU (schedstat)."""
    try:
        return sum(int(Path(f"/proc/self/task/{t}/schedstat").read_text().split()[1])
                   for t in os.listdir("/proc/self/task")) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


async def serve_engine(args: argparse.Namespace) -> None:
    """Run the Engine with a minimal router: offer each call to the next handler, bridge."""
    import gc
    import logging

    import psutil
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from config.schema import LineSettings
    from config.telephony import SipSettings
    from telephony import api
    from telephony.engine import Engine

    rtp_min, rtp_max = (int(x) for x in args.rtp.split("-"))
    settings = SipSettings(port=args.port, domain=DOMAIN, proxy=args.proxy,
                           rtp_port_min=rtp_min, rtp_port_max=rtp_max, max_calls=100000)
    lines = [LineSettings(name="999", numbers=["999"], priority=0),
             LineSettings(name="101", numbers=["101"], priority=1)]
    handlers = itertools.cycle(args.handlers.split(",")) if args.handlers else None
    st: dict[str, Any] = {"arrived": 0, "ended": 0, "legs_answered": 0, "legs_failed": 0,
                          "sealed": 0, "complete": 0, "stream_seconds": 0.0,
                          "answer_ms": [], "rec_bad": []}
    call_at: dict[str, float] = {}
    leg_at: dict[str, float] = {}
    engine: Engine

    def on_event(ev: Any) -> None:
        if isinstance(ev, api.CallArrived):
            st["arrived"] += 1
            st["answer_ms"].append((ev.at - ev.invite_at) * 1000)
            call_at[ev.call_id] = ev.at
            if handlers is not None:
                engine.offer(ev.call_id, f"sip:{next(handlers)}@{DOMAIN}", timeout=10)
        elif isinstance(ev, api.LegAnswered):
            st["legs_answered"] += 1
            leg_at[ev.leg_id] = ev.at
            engine.bridge(ev.call_id, ev.leg_id)
        elif isinstance(ev, api.LegFailed):
            st["legs_failed"] += 1
        elif isinstance(ev, api.LegEnded):
            st["stream_seconds"] += ev.at - leg_at.pop(ev.leg_id, ev.at)
        elif isinstance(ev, api.CallEnded):
            st["ended"] += 1
            st["stream_seconds"] += ev.at - call_at.pop(ev.call_id, ev.at)
        elif isinstance(ev, api.RecordingSealed):
            st["sealed"] += 1
            fut = asyncio.get_running_loop().run_in_executor(None, check_recording, ev)
            fut.add_done_callback(functools.partial(recording_checked, ev))

    def check_recording(ev: Any) -> int:
        """(worker thread) size of the sealed file, then delete it unless kept."""
        size = ev.path.stat().st_size if ev.path.exists() else -1
        if not args.keep_recordings:
            ev.path.unlink(missing_ok=True)
        return size

    def recording_checked(ev: Any, fut: asyncio.Future[int]) -> None:
        count_recording(ev, fut.result())

    def count_recording(ev: Any, size: int) -> None:
        # complete: a valid stereo 16-bit WAV whose data covers the whole call
        expect = 44 + round(ev.duration * 8000) * 4
        if ev.duration > 0 and size == ev.bytes and abs(size - expect) <= 4 * 160:
            st["complete"] += 1
        elif len(st["rec_bad"]) < 5:
            st["rec_bad"].append([str(ev.path), ev.duration, ev.bytes, size])

    snap0 = None
    if args.tracemalloc:
        import tracemalloc
        tracemalloc.start(6)
    profiler = None
    if args.profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    rec_dir = Path(args.recordings)
    await asyncio.to_thread(rec_dir.mkdir, parents=True, exist_ok=True)
    engine = Engine(settings=settings, lines=lines, recordings_dir=rec_dir, on_event=on_event)
    await engine.start()
    if not args.default_gc:
        from telephony.runtime import tune_gc
        tune_gc()  # as `controlroom serve` does once started
    proc = psutil.Process()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    out = await asyncio.to_thread(open, args.stats, "a", buffering=1)
    lag_max = 0.0
    lag_window = 0.0
    census_done = False

    async def lag_probe() -> None:
        nonlocal lag_max, lag_window
        while True:
            t = loop.time()
            if stalls is not None:
                stalls.beat = time.monotonic()
            await asyncio.sleep(0.01)
            lag = loop.time() - t - 0.01
            lag_max, lag_window = max(lag_max, lag), max(lag_window, lag)

    probe = asyncio.create_task(lag_probe())
    stalls = StallTracer(threading.get_ident()) if args.stalls else None
    gc_pauses: list[float] = []
    gc_slow: list[tuple[Any, ...]] = []
    gc_t0 = [0.0]

    def gc_cb(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            ms = (time.perf_counter() - gc_t0[0]) * 1000
            gc_pauses.append(ms)
            if ms > 20:
                gc_slow.append((round(ms, 1), info.get("generation"), info.get("collected"),
                                len(gc.get_objects(info.get("generation", 2)))))


    gc.callbacks.append(gc_cb)
    if args.tracemalloc:
        snap0 = tracemalloc.take_snapshot()
    print("engine ready", engine.sip_port, flush=True)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
        s = engine.stats
        if args.census and s.calls_active >= args.census and not census_done:
            census_done = True
            objs = gc.get_objects()
            counts = collections.Counter(type(o).__name__ for o in objs)
            text = (f"object census at {s.calls_active} calls: {len(objs)} tracked objects\n"
                    + "\n".join(f"{n:8d} {k}" for k, n in counts.most_common(25)))
            del objs
            await asyncio.to_thread(Path(args.stats + ".census").write_text, text)
        cpu = proc.cpu_times()
        rq_wait = await asyncio.to_thread(run_queue_wait)
        clock = getattr(getattr(engine, "_media", None), "clock", None)
        tick_gap = float(getattr(clock, "max_gap", 0.0))
        if clock is not None:
            clock.max_gap = 0.0  # so each sample holds its own window's largest tick gap
        line = json.dumps({
            "t": time.time(), "calls": s.calls_active, "legs": s.legs_active,
            "rss": proc.memory_info().rss, "blocks": sys.getallocatedblocks(),
            "tick_cpu": getattr(clock, "busy_cpu", 0.0), "tick_gap_ms": tick_gap * 1000,
            "tracked": len(gc.get_objects()) if s.calls_active == 0 else -1, "cpu": cpu.user + cpu.system, "rq_wait": rq_wait,
            "rtp_out": s.rtp_packets_out, "rtp_in": s.rtp_packets_in, "lost": s.rtp_lost,
            "late": s.rtp_late, "gap_ms": s.max_send_gap_ms, "lag_ms": lag_window * 1000,
            **{k: v for k, v in st.items() if k not in ("answer_ms",)},
        }) + "\n"
        await asyncio.to_thread(out.write, line)
        lag_window = 0.0
    probe.cancel()
    if args.census:
        objs = gc.get_objects()
        counts = collections.Counter(type(o).__name__ for o in objs)
        text = (f"\nobject census at the end (idle): {len(objs)} tracked objects\n"
                + "\n".join(f"{n:8d} {k}" for k, n in counts.most_common(25)))
        sample = [o for o in objs if type(o).__name__ == "_Call"][:1]
        ua = engine._ua
        if ua is not None:
            now_ = loop.time()
            text += (f"\nUA tables: server {len(ua._server)} server_alt {len(ua._server_alt)} "
                     f"client {len(ua._client)} owner {len(ua._owner)} tx_session "
                     f"{len(ua._tx_session)} dialogs {len(ua._dialogs)} heap {len(ua._heap)}; "
                     f"server tx states {collections.Counter(str(t.state) for t in ua._server.values())}; "
                     f"deadlines in (s) {sorted(round((t.deadline or 0) - now_, 1) for t in ua._server.values())[:5]}"
                     f"; engine calls {len(engine._calls)} legs {len(engine._legs)} streams "
                     f"{len(engine._streams)}")
        del objs
        if sample:
            holders = [type(r).__name__ for r in gc.get_referrers(sample[0])]
            text += f"\nan ended _Call is still referred to by: {holders}"
        await asyncio.to_thread(append_text, args.stats + ".census", text)
    if stalls is not None:
        stalls.stop = True
        await asyncio.to_thread(Path(args.stalls).write_text, stalls.report())
    if snap0 is not None:
        # What the engine still holds after the calls, by allocation site (leak hunting).
        diff = tracemalloc.take_snapshot().compare_to(snap0, "traceback")
        found = ["tracemalloc: growth since start, top 8 sites"]
        for stat in diff[:8]:
            found.append(f"  +{stat.size_diff / 1024:.0f} KiB in {stat.count_diff} blocks")
            found += [f"      {ln}" for ln in stat.traceback.format()[-6:]]
        # Who still holds RtpStream objects (should be none once every call ended)?
        import gc
        alive = [o for o in gc.get_objects() if type(o).__name__ in ("RtpStream", "JitterBuffer")]
        found.append(f"RtpStream+JitterBuffer objects alive: {len(alive)} (engine reports "
                     f"{engine.stats.calls_active} calls, {engine.stats.legs_active} legs)")
        for obj in alive[:2]:
            for ref in gc.get_referrers(obj):
                if ref is alive:
                    continue
                desc = type(ref).__name__
                if isinstance(ref, dict | list | tuple):
                    owners = [type(o).__name__ for o in gc.get_referrers(ref)
                              if o is not alive and o is not found][:4]
                    desc += f" held by {owners}"
                found.append(f"  referrer: {desc}")
        await asyncio.to_thread(Path(args.tracemalloc).write_text, "\n".join(found))
    line = json.dumps({"final": True, "lag_max_ms": lag_max * 1000,
                       "gc_max_ms": max(gc_pauses or [0.0]), "gc_total_ms": sum(gc_pauses),
                       "gc_count": len(gc_pauses), "gc_slow": sorted(gc_slow)[-6:],
                       "answer_ms": st["answer_ms"]}) + "\n"
    await asyncio.to_thread(out.write, line)
    await asyncio.to_thread(out.close)
    await engine.stop(drain_timeout=0)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)


def append_text(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


class StallTracer(threading.Thread):
    """Samples the event-loop thread's stack whenever the loop is >50 ms late (diagnosis).

    The loop stamps ``beat`` every 10 ms; this thread checks every 5 ms and, while the
    stamp is stale, records where the loop thread is (innermost project frames).
    """

    def __init__(self, loop_thread: int) -> None:
        super().__init__(daemon=True, name="stall-tracer")
        self.loop_thread = loop_thread
        self.beat = time.monotonic()
        self.stop = False
        self.samples: collections.Counter[str] = collections.Counter()
        self.start()

    def run(self) -> None:
        import traceback
        while not self.stop:
            time.sleep(0.005)
            if time.monotonic() - self.beat < 0.05:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)[-6:]
            key = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                              for f in reversed(stack))
            self.samples[key] += 1

    def report(self) -> str:
        total = sum(self.samples.values())
        out = [f"stall samples (loop >50 ms late, 5 ms each): {total}"]
        for key, n in self.samples.most_common(12):
            out.append(f"{n:5d}  {key}")
        return "\n".join(out)


# --- orchestration --------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def cpu_of(pid: int) -> float:
    import psutil
    try:
        p = psutil.Process(pid)
        total = p.cpu_times().user + p.cpu_times().system
        for c in p.children(recursive=True):
            try:
                t = c.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (every process, all cores)."""
    import psutil
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


RATE_PERIOD_MS = 100_000
"""SIPp rates are given in calls per 100 s: ``-rate_max`` and ``-rate_increase`` take only
integers, so a 30 % share of 25 calls/s (7.5) becomes 750 calls per 100 s instead of an
argument SIPp rejects at start (it used to exit at once, and the round printed ok 0)."""


def run_callers(args: argparse.Namespace, kam: Any, dialled: str | list[tuple[str, float]],
                clip: Any, watch: dict[str, int], name: str, work: Path,
                min_completed: float | None = loadcheck.MIN_COMPLETED) -> dict[str, Any]:
    """One round of caller load; returns SIPp's figures and CPU seconds of watched processes.

    ``dialled`` is one number, or ``[(number, share), ...]``: one SIPp per number, each
    with its share of ``--calls`` and of the rates, all running at once (a 999/101 mix).
    ``res["failures"]`` lists why the round does not count (see :mod:`loadcheck`).
    """
    import psutil

    from harness import scenarios
    from harness.sipp import Sipp

    mix = [(dialled, 1.0)] if isinstance(dialled, str) else [(d, f) for d, f in dialled if f > 0]
    per_s = 1000 / RATE_PERIOD_MS
    sipps: list[tuple[str, Sipp]] = []
    offered: dict[str, dict[str, float]] = {}
    for number, share in mix:
        scen = scenarios.caller(dialled=number, pcap=clip.pcap, talk_ms=int(args.talk * 1000),
                                dtmf_pt=None)
        n = max(1, round(args.calls * share))
        rate = max(1, round(args.rate_start * share / per_s))
        rate_max = max(rate, round(args.rate_max * share / per_s))
        step = max(1, round(args.rate_step * share / per_s)) if rate_max > rate else None
        limit = max(1, round(args.limit * share))
        offered[number] = {
            "calls": n, "limit": limit, "final_rate": rate_max * per_s,
            "seconds": loadcheck.placement_seconds(n, rate * per_s, (step or 0) * per_s, 1.0,
                                                   rate_max * per_s)}
        sipps.append((number, Sipp(
            scen, target=kam.addr, calls=n, rate=rate, rate_period_ms=RATE_PERIOD_MS,
            rate_increase=step, rate_interval=1.0, rate_max=rate_max if step else None,
            limit=limit, trace_msg=False, timeout=args.phase_timeout, name=f"{name}-{number}",
            workdir=work / f"{name}-{number}")))
        (work / f"{name}-{number}").mkdir()
    cpu0 = {k: cpu_of(pid) for k, pid in watch.items()}
    t0 = time.monotonic()
    for _, sipp in sipps:
        sipp.start()
    for number, sipp in sipps:
        key = "sipp-callers" if len(sipps) == 1 else f"sipp-callers-{number}"
        watch = {**watch, key: sipp._proc.pid}  # type: ignore[union-attr]
        cpu0[key] = 0.0
    cpu_last = dict(cpu0)
    series: list[tuple[float, dict[str, float]]] = []  # for the plateau's cores
    me = psutil.Process()
    while any(sp.alive() for _, sp in sipps) and time.monotonic() - t0 < args.phase_timeout + 10:
        time.sleep(0.5)
        for k, pid in watch.items():
            c = cpu_of(pid)
            if c:
                cpu_last[k] = c
        own = me.cpu_times()  # this script alone (cpu_of would add every child)
        series.append((time.time(), {**cpu_last, "machine": machine_busy(),
                                     "bench": own.user + own.system}))
    codes = []
    for _, sipp in sipps:
        codes.append(sipp.stop() if sipp.alive() else sipp.wait(5))
        sipp.stop()
    wall = time.monotonic() - t0
    rtd: list[float] = []
    lines = {}
    failures: list[str] = []
    for (number, sipp), code in zip(sipps, codes, strict=True):
        r = sipp.response_times_ms()
        rtd += r
        o = offered[number]
        placed = loadcheck.placement_from_stats(
            loadcheck.read_stats(sipp.dir / "stats.csv"), int(o["calls"]),
            loadcheck.read_sent_ms(sorted(sipp.dir.glob("*_rtt.csv"))))
        said = loadcheck.read_text(sipp.dir / "sipp.out")
        failures += loadcheck.shortfalls(
            f"{name} (line {number})", calls=int(o["calls"]), completed=sipp.successful,
            placement=placed, offered_s=o["seconds"], final_rate=o["final_rate"],
            limit=int(o["limit"]), exit_code=code, output=said, tolerance=args.rate_tolerance,
            min_completed=min_completed)
        lines[number] = {"ok": sipp.successful, "failed": sipp.failed, "rtd_p50": pct(r, 50),
                         "rtd_p99": pct(r, 99), "rtd_max": max(r or [0]),
                         "offered": int(o["calls"]), "created": placed.created,
                         "offered_cps": o["calls"] / o["seconds"],
                         "placed_cps": (o["calls"] / placed.seconds if placed.seconds
                                        else float("nan")),
                         "peak_current": placed.peak_current, "limit": int(o["limit"])}
    return {"exit": max(codes, key=lambda c: c != 0), "ok": sum(v["ok"] for v in lines.values()),
            "failed": sum(v["failed"] for v in lines.values()), "wall": wall,
            "offered": sum(v["offered"] for v in lines.values()),
            "offered_cps": sum(v["offered_cps"] for v in lines.values()),
            "placed_cps": sum(v["placed_cps"] for v in lines.values()),
            "rtd_p50": pct(rtd, 50), "rtd_p99": pct(rtd, 99), "rtd_max": max(rtd or [0]),
            "lines": lines, "failures": failures,
            "cpu": {k: (cpu_last[k] - cpu0.get(k, 0.0)) / wall for k in watch},
            "cpu_s": {k: cpu_last[k] - cpu0.get(k, 0.0) for k in watch},
            "load1": os.getloadavg()[0], "cpu_series": series,
            "errors": "\n".join(sp.errors_text(1500) for _, sp in sipps if sp.failed)}


def engine_round_figures(samples: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    win = [s for s in samples if "t" in s and t0 <= s["t"] <= t1 + 2]
    if not win:
        return {}
    first, last = win[0], win[-1]
    # active stream-seconds over the window, integrated from the 1 s samples (trapezoid)
    streams = sum((a["calls"] + a["legs"] + b["calls"] + b["legs"]) / 2 * (b["t"] - a["t"])
                  for a, b in zip(win, win[1:], strict=False))
    return {"streams_s": streams, "cpu_s": last["cpu"] - first["cpu"],
            "tick_cpu_s": last.get("tick_cpu", 0.0) - first.get("tick_cpu", 0.0),
            "rq_wait_s": last.get("rq_wait", 0.0) - first.get("rq_wait", 0.0),
            "wall_s": last["t"] - first["t"],
            "peak_calls": max(s["calls"] for s in win), "peak_legs": max(s["legs"] for s in win),
            "peak_rss": max(s["rss"] for s in win), "lag_ms": max(s["lag_ms"] for s in win),
            "gap_ms": last["gap_ms"], "rtp_out": last["rtp_out"] - first["rtp_out"],
            "lost": last["lost"] - first["lost"], "late": last["late"] - first["late"]}


REAL_TIME_PKTS = 50.0
"""G.711 with 20 ms packets: 50 packets per second per stream is real time."""
REAL_TIME_SHARE = 0.99
REAL_TIME_MAX_GAP_MS = 100.0  # five ticks: beyond it the clock sends in bursts
PLATEAU_SHARE = 0.9


def plateau_figures(per_worker: list[list[dict[str, Any]]], t0: float, t1: float,
                    share: float = PLATEAU_SHARE) -> dict[str, Any]:
    """The round's plateau: every second the engines together held >= ``share`` of their
    peak concurrent calls, and what the media did over exactly that span.

    ``per_worker`` are each engine's 1 s samples (``t`` wall time, ``calls``, ``legs``,
    cumulative ``rtp_out``/``rtp_in``/``lost``/``late``/``cpu``/``rq_wait``, ``lag_ms`` of
    the last window). Workers sample at their own instants, so the concurrent total is
    the sum of each worker's latest sample (the peak is one taken at once, not a sum of
    per-worker peaks). Packets per stream per second = packets sent over the span divided
    by the stream-seconds integrated over it (streams = calls + handler legs); the lowest
    1 s interval of any worker is printed beside the mean. Real time: >= 99 % of 50
    packets per stream per s sent, no packet received lost or late, and no interval
    between two media-clock ticks over 100 ms (``tick_gap_ms``, each sample's window; a
    sample without it counts as not measured, so not real time).
    """
    wins = [[s for s in sm if "t" in s and t0 <= s["t"] <= t1 + 2] for sm in per_worker]
    if not wins or not all(wins):
        return {}
    cur: dict[int, dict[str, Any]] = {}
    totals: list[tuple[float, int, int]] = []
    for _, w, s in sorted((s["t"], w, s) for w, sm in enumerate(wins) for s in sm):
        cur[w] = s
        if len(cur) == len(wins):
            totals.append((s["t"], sum(x["calls"] for x in cur.values()),
                           sum(x["legs"] for x in cur.values())))
    if not totals:
        return {}
    peak = max(c for _, c, _ in totals)
    if peak <= 0:
        return {}
    above = [t for t, c, _ in totals if c >= share * peak]
    start, end = above[0], above[-1]
    held = [c for t, c, _ in totals if start <= t <= end]
    out: dict[str, Any] = {
        "peak_calls": peak, "peak_legs": max(lg for _, _, lg in totals),
        "start": start, "end": end, "seconds": end - start, "share": share,
        "min_calls": min(held), "mean_calls": sum(held) / len(held),
        "streams_s": 0.0, "rtp_out": 0, "rtp_in": 0, "lost": 0, "late": 0, "cpu_s": 0.0,
        "rq_wait_s": 0.0, "lag_ms": 0.0, "tick_gap_ms": 0.0, "gap_ms": 0.0,
        "low_1s": float("nan")}
    lows: list[float] = []
    for sm in wins:
        span = [s for s in sm if start - 0.5 <= s["t"] <= end + 0.5]
        if len(span) < 2:
            continue
        a, b = span[0], span[-1]
        for k in ("rtp_out", "rtp_in", "lost", "late"):
            out[k] += b.get(k, 0) - a.get(k, 0)
        out["cpu_s"] += b["cpu"] - a["cpu"]
        out["rq_wait_s"] += b.get("rq_wait", 0.0) - a.get("rq_wait", 0.0)
        out["lag_ms"] = max(out["lag_ms"], *(s["lag_ms"] for s in span[1:]))
        if any("tick_gap_ms" not in s for s in span[1:]):
            out["tick_gap_ms"] = float("nan")  # not measured: stays nan, never real time
        elif out["tick_gap_ms"] == out["tick_gap_ms"]:
            out["tick_gap_ms"] = max(out["tick_gap_ms"], *(s["tick_gap_ms"] for s in span[1:]))
        out["gap_ms"] = max(out["gap_ms"], b.get("gap_ms", 0.0))
        for x, y in zip(span, span[1:], strict=False):
            streams = (x["calls"] + x["legs"] + y["calls"] + y["legs"]) / 2 * (y["t"] - x["t"])
            out["streams_s"] += streams
            if streams > 0:
                lows.append((y["rtp_out"] - x["rtp_out"]) / streams)
    if out["streams_s"] <= 0:  # held for less than one sample: a peak, no plateau
        out.update(pkts=float("nan"), pkts_in=float("nan"), real_time=None)
        return out
    out["pkts"] = out["rtp_out"] / out["streams_s"]
    out["pkts_in"] = out["rtp_in"] / out["streams_s"]
    out["low_1s"] = min(lows)
    out["real_time"] = (out["pkts"] >= REAL_TIME_SHARE * REAL_TIME_PKTS and out["lost"] == 0
                        and out["late"] == 0 and out["tick_gap_ms"] <= REAL_TIME_MAX_GAP_MS)
    return out


def cores_between(series: list[tuple[float, dict[str, float]]], start: float,
                  end: float) -> dict[str, float]:
    """Cores each watched process used between two wall-clock instants, from cumulative
    CPU-second samples ``(t, {name: seconds})`` (the nearest samples inside the span)."""
    span = [(t, c) for t, c in series if start <= t <= end]
    if len(span) < 2 or span[-1][0] <= span[0][0]:
        return {}
    (ta, a), (tb, b) = span[0], span[-1]
    return {k: (b[k] - a.get(k, 0.0)) / (tb - ta) for k in b if k in a}


def sip_wire_delays(pcap: Path, ports: set[int]) -> dict[str, float]:
    """INVITE in -> 200 out and BYE in -> 200 out at the engine's SIP sockets, from a
    loopback capture: includes time queued in the socket, unlike the engine's own figure."""
    from harness.speech import read_udp_pcap

    def header(msg: bytes, name: bytes) -> bytes:
        for line in msg.split(b"\r\n"):
            if line[:len(name) + 1].lower() == name.lower() + b":":
                return line[len(name) + 1:].strip()
        return b""

    first_in: dict[tuple[bytes, bytes], float] = {}
    delays: dict[bytes, list[float]] = {b"INVITE": [], b"BYE": []}
    seen: set[tuple[bytes, bytes]] = set()
    for t, src, dst, payload in read_udp_pcap(pcap):
        method = payload.split(b" ", 1)[0]
        if dst[1] in ports and method in delays and b"tag=" not in header(payload, b"To") \
                or dst[1] in ports and method == b"BYE":
            key = (header(payload, b"Call-ID"), method)
            first_in.setdefault(key, t)
        elif src[1] in ports and payload.startswith(b"SIP/2.0 200"):
            cseq = header(payload, b"CSeq").split()
            key = (header(payload, b"Call-ID"), cseq[-1] if cseq else b"")
            if key in first_in and key not in seen:
                seen.add(key)
                delays[key[1]].append((t - first_in[key]) * 1000)
    inv, bye = delays[b"INVITE"], delays[b"BYE"]
    return {"invite_n": len(inv), "invite_p50": pct(inv, 50), "invite_p99": pct(inv, 99),
            "bye_n": len(bye), "bye_p50": pct(bye, 50), "bye_p99": pct(bye, 99),
            "bye_max": max(bye or [float("nan")])}


def combine(figs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum (or max) per-worker round figures."""
    figs = [f for f in figs if f]
    if not figs:
        return {}
    out = {k: sum(f[k] for f in figs) for k in ("streams_s", "cpu_s", "peak_calls", "peak_legs",
                                                 "peak_rss", "rtp_out", "lost", "late",
                                                 "rq_wait_s", "tick_cpu_s")}
    out["wall_s"] = max(f["wall_s"] for f in figs)
    out.update({k: max(f[k] for f in figs) for k in ("lag_ms", "gap_ms")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="SIP load benchmark (engine vs pyVoIP)")
    ap.add_argument("--serve-engine", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--proxy", default="", help=argparse.SUPPRESS)
    ap.add_argument("--rtp", default="", help=argparse.SUPPRESS)
    ap.add_argument("--handlers", default="", help=argparse.SUPPRESS)
    ap.add_argument("--recordings", default="", help=argparse.SUPPRESS)
    ap.add_argument("--stats", default="", help=argparse.SUPPRESS)
    ap.add_argument("--keep-recordings", action="store_true")
    ap.add_argument("--profile", default="", help="cProfile the engine into this file")
    ap.add_argument("--stalls", default="", help="sample the engine's stack whenever its "
                    "event loop is >50 ms late; write the top sites to this file")
    ap.add_argument("--census", type=int, default=0, help="count the engine's GC-tracked "
                    "objects by type once this many calls are up (printed at the end)")
    ap.add_argument("--tracemalloc", default="", help="write the engine's memory growth "
                    "by allocation site (tracemalloc) to this file at the end")
    ap.add_argument("--calls", type=int, default=1500, help="calls per round")
    ap.add_argument("--rounds", type=int, default=2, help="engine rounds (idle RSS after each)")
    ap.add_argument("--rate-start", type=float, default=30.0)
    ap.add_argument("--rate-step", type=float, default=5.0, help="cps added every second")
    ap.add_argument("--rate-max", type=float, default=30.0)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="the engine's event loop (uvloop must be installed for 'uvloop')")
    ap.add_argument("--default-gc", action="store_true",
                    help="leave the engine's garbage collector at CPython's defaults "
                    "(not telephony.runtime.tune_gc, as controlroom serve uses)")
    ap.add_argument("--engine-nice", type=int, default=0,
                    help="run the engine process(es) at this nice value (e.g. -10; needs "
                    "root): the call path ahead of other work on the machine")
    ap.add_argument("--share-101", type=float, default=0.3,
                    help="share of the calls (and of the rates) that dial 101 instead of "
                    "999, from a second SIPp (0..1)")
    ap.add_argument("--talk", type=float, default=6.0, help="seconds each caller talks")
    ap.add_argument("--limit", type=int, default=400, help="max concurrent calls per SIPp")
    ap.add_argument("--handler-phones", type=int, default=2, help="SIPp handler processes")
    ap.add_argument("--phase-timeout", type=float, default=120.0)
    ap.add_argument("--drain", type=float, default=75.0,
                    help="seconds to wait after a round for the engine to hold no call")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds idle after the drain before idle RSS is read (use 40 to "
                         "let completed SIP transactions expire)")
    ap.add_argument("--no-bridge", action="store_true", help="engine answers only (like pyVoIP)")
    ap.add_argument("--workers", type=int, default=2,
                    help="engine processes, each a whole engine (SIP, media clock, "
                    "recordings); Kamailio spreads calls by Call-ID hash. 2 on 2 cores: "
                    "a tick or a preemption in one never delays the other's INVITEs")
    ap.add_argument("--no-pyvoip", action="store_true")
    ap.add_argument("--pyvoip-calls", type=int, default=600,
                    help="calls against pyVoIP (0: same as --calls)")
    ap.add_argument("--pyvoip-rounds", type=int, default=1,
                    help="rounds against pyVoIP (each paired with the engine round of the "
                    "same number for the CPU ratio)")
    ap.add_argument("--rate-tolerance", type=float, default=loadcheck.RATE_TOLERANCE,
                    help="the run fails if a caller SIPp places its calls this much slower "
                    "than the offered rate (0.10 = 10 %%)")
    ap.add_argument("--min-completed", type=float, default=loadcheck.MIN_COMPLETED,
                    help="the run fails if an engine round completes fewer than this share "
                    "of its offered calls; also the share both sides must complete for the "
                    "engine-vs-pyVoIP CPU ratio to be printed")
    transport_rounds.add_arguments(ap)  # --transports udp,tcp,tls / --srtp (issue 16)
    args = ap.parse_args()
    if args.serve_engine:
        if args.loop == "uvloop":
            import uvloop  # (optional: pip install uvloop)
            uvloop.run(serve_engine(args))
        else:
            asyncio.run(serve_engine(args))
        return
    if transport_rounds.wanted(args):  # UDP/TCP/TLS and RTP/SRTP side by side, then stop
        failures = transport_rounds.main(args)
        for f in failures:
            print(f"FAILED: {f}")
        sys.exit(1 if failures else 0)
    if args.rate_start > args.rate_max:
        ap.error(f"--rate-start {args.rate_start:g} is above --rate-max {args.rate_max:g}")
    failures = orchestrate(args)
    for f in failures:
        print(f"FAILED: {f}")
    if failures:
        sys.exit(1)


def orchestrate(args: argparse.Namespace) -> list[str]:
    """Run the rounds and print the figures; returns why the run does not count."""
    import psutil

    from harness import scenarios, speech
    from harness.kamailio import Kamailio, Process, sip_options
    from harness.ports import free_rtp_range, free_udp_port
    from harness.sipp import RtpCapture, Sipp

    work = Path(tempfile.mkdtemp(prefix="sip-load-"))
    load = os.getloadavg()
    print(f"work dir {work}; machine: {loadcheck.machine()}; load avg {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f}")
    if load[0] > (psutil.cpu_count() or 1):
        print("WARNING: the machine is already busy; figures below include CPU contention")
    clip = speech.speech_clip("Police, which service? There has been a crash on the motorway, "
                              "two cars, one person is trapped.", "PCMA", work / "caller.pcap",
                              repeat=max(1, int(args.talk // 5) + 1))
    tone = speech.tone_clip(440.0, args.talk + 2, "PCMA", work / "handler.pcap")
    nw = max(1, args.workers)
    engine_ports = [free_udp_port() for _ in range(nw)]
    pyvoip_port = free_udp_port()
    per_worker = 2 * 2 * (args.limit // nw + 50)
    rtp_ranges = [free_rtp_range(per_worker) for _ in range(nw)]
    py_rtp = free_rtp_range(2 * (args.limit + 50))
    stack: list[Any] = []
    results: dict[str, Any] = {}
    failures: list[str] = []
    engine_rounds: list[dict[str, Any]] = []
    py_rounds: list[dict[str, Any]] = []
    try:
        kam = Kamailio(routes={n: [f"127.0.0.1:{p}" for p in engine_ports] for n in ("999", "101")}, domain=DOMAIN,
                       trace=False, debug=1, children=4, workdir=work / "kamailio")
        (work / "kamailio").mkdir()
        kam.start()
        stack.append(kam)
        users = [f"h{i}" for i in range(1, 21)]
        phones = []
        for n in range(args.handler_phones):
            ph = Sipp(scenarios.handler(user=f"hp{n}", ring_ms=50, pcap=tone.pcap,
                                        dtmf_pt=None, wait_bye_ms=600000),
                      calls=10**6, trace_msg=False, timeout=3600, name=f"handlers{n}",
                      workdir=work / f"handlers{n}")
            (work / f"handlers{n}").mkdir()
            ph.start()
            stack.append(ph)
            phones.append(ph)
        for i, u in enumerate(users):
            kam.register(u, phones[i % len(phones)].contact(u))
        engines, stats_paths = [], []
        for w, (port, (lo, hi)) in enumerate(zip(engine_ports, rtp_ranges, strict=True)):
            stats_path = work / f"engine{w}-stats.jsonl"
            prof = ["--profile", f"{args.profile}.{w}"] if args.profile else []
            if args.tracemalloc:
                prof += ["--tracemalloc", f"{args.tracemalloc}.{w}"]
            if args.stalls:
                prof += ["--stalls", f"{args.stalls}.{w}"]
            if args.census:
                prof += ["--census", str(args.census)]
            if args.default_gc:
                prof += ["--default-gc"]
            prof += ["--loop", args.loop]
            eng = Process([sys.executable, __file__, "--serve-engine", "--port", str(port),
                           "--proxy", kam.uri, "--rtp", f"{lo}-{hi}",
                           "--handlers", "" if args.no_bridge else ",".join(users),
                           "--recordings", str(work / f"recordings{w}"),
                           "--stats", str(stats_path), *prof],
                          log_path=work / f"engine{w}.log", cwd=ROOT)
            stack.append(eng)
            engines.append(eng)
            stats_paths.append(stats_path)
            if args.engine_nice:
                # how a control room deploys the call path (systemd Nice=, or a container
                # with SYS_NICE): ahead of batch work on the host; needs root
                os.setpriority(os.PRIO_PROCESS, eng.pid, args.engine_nice)
        deadline = time.monotonic() + 30
        for eng, port in zip(engines, engine_ports, strict=True):
            while sip_options(("127.0.0.1", port), timeout=0.3) is None:
                if not eng.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"engine did not start:\n{eng.log_text()}")
        time.sleep(1.5)
        idle_rss = [sum(read_jsonl(p)[-1]["rss"] for p in stats_paths)]
        idle_blocks = [sum(read_jsonl(p)[-1]["blocks"] for p in stats_paths)]
        idle_tracked = [sum(read_jsonl(p)[-1]["tracked"] for p in stats_paths)]
        watch = {**{f"engine{w}": e.pid for w, e in enumerate(engines)},
                 "kamailio": kam._proc.pid,  # type: ignore[union-attr]
                 **{f"handlers{i}": p._proc.pid for i, p in enumerate(phones)}}  # type: ignore[union-attr]
        for r in range(args.rounds):
            t0 = time.time()
            cap = RtpCapture(engine_ports, workdir=work / f"sipcap{r}")
            (work / f"sipcap{r}").mkdir()
            cap.start()
            mix = [("999", 1.0 - args.share_101), ("101", args.share_101)]
            res = run_callers(args, kam, mix, clip,
                              {**watch, "dumpcap": cap._proc.pid},  # type: ignore[union-attr]
                              f"callers-engine-{r}", work)
            t1 = time.time()
            # Drain: wait (bounded) until no call or leg is left, so idle RSS means idle.
            drain_end = time.monotonic() + args.drain
            while time.monotonic() < drain_end:
                time.sleep(1.0)
                last = [read_jsonl(p)[-1] for p in stats_paths]
                if all(x["calls"] == 0 and x["legs"] == 0 for x in last):
                    break
            time.sleep(args.settle)  # recordings sealed, SIP transactions' Timer J/H (32 s)
            cap.stop()
            res["wire"] = sip_wire_delays(cap.path, set(engine_ports))
            per = [read_jsonl(p) for p in stats_paths]
            res["engine"] = combine([engine_round_figures(sm, t0, t1) for sm in per])
            res["cpu"]["engine"] = sum(v for k, v in res["cpu"].items() if k.startswith("engine"))
            res["cpu_s"]["engine"] = sum(v for k, v in res["cpu_s"].items()
                                         if k.startswith("engine"))
            res["idle_rss"] = sum(sm[-1]["rss"] for sm in per)
            keys = ("arrived", "ended", "legs_answered", "legs_failed", "sealed", "complete",
                    "rtp_out")
            res["counters"] = {k: sum(sm[-1][k] for sm in per) for k in keys}
            res["counters"]["rec_bad"] = [b for sm in per for b in sm[-1]["rec_bad"]]
            before = engine_rounds[-1]["counters"] if engine_rounds else {}
            res["this_round"] = {k: res["counters"][k] - before.get(k, 0) for k in keys}
            res["plateau"] = plateau_figures(per, t0, t1)
            series = res.pop("cpu_series", [])
            if res["plateau"]:
                res["plateau"]["cores"] = cores_between(
                    series, res["plateau"]["start"], res["plateau"]["end"])
            idle_rss.append(res["idle_rss"])
            idle_blocks.append(sum(sm[-1].get("blocks", 0) for sm in per))
            idle_tracked.append(sum(sm[-1].get("tracked", 0) for sm in per))
            results[f"engine round {r + 1}"] = res
            engine_rounds.append(res)
            report_round(f"engine round {r + 1} ({nw} worker{'s' * (nw > 1)})", res,
                         idle_rss[0], args)
            failures += res["failures"]
            if any(v["created"] < v["offered"] for v in res["lines"].values()):
                print("(no further round: the load generator did not place its calls)")
                break
        ans: list[float] = []
        gcs: list[dict[str, Any]] = []
        lag = 0.0
        for w, (eng, sp) in enumerate(zip(engines, stats_paths, strict=True)):
            eng.stop(timeout=20)
            if args.profile and Path(f"{args.profile}.{w}").exists():
                import pstats
                print(f"\n--- engine {w} profile (top 15 by own time) ---")
                pstats.Stats(f"{args.profile}.{w}").sort_stats("tottime").print_stats(15)
            if args.tracemalloc and Path(f"{args.tracemalloc}.{w}").exists():
                print(Path(f"{args.tracemalloc}.{w}").read_text())
            if args.stalls and Path(f"{args.stalls}.{w}").exists():
                print(Path(f"{args.stalls}.{w}").read_text())
            if Path(f"{sp}.census").exists():
                print(Path(f"{sp}.census").read_text())
            final = [s for s in read_jsonl(sp) if s.get("final")]
            if final:
                ans += final[-1]["answer_ms"]
                lag = max(lag, final[-1]["lag_max_ms"])
                gcs.append(final[-1])
        if gcs:
            print(f"garbage collector: {sum(g['gc_count'] for g in gcs)} collections, "
                  f"{sum(g['gc_total_ms'] for g in gcs):.0f} ms in all, "
                  f"longest pause {max(g['gc_max_ms'] for g in gcs):.1f} ms; slowest (ms, "
                  f"generation, collected, objects in it after): "
                  f"{[x for g in gcs for x in g.get('gc_slow', [])]}")
        print(f"engine INVITE-in -> 200-out (all rounds): p50 {pct(ans, 50):.2f} ms, "
              f"p99 {pct(ans, 99):.2f} ms, max {max(ans or [0]):.2f} ms; "
              f"event-loop lag max {lag:.1f} ms")
        print(f"idle RSS after start/rounds (MB, all workers): "
              f"{', '.join(f'{x / 2**20:.1f}' for x in idle_rss)}")
        print(f"idle Python heap after start/rounds (allocated blocks, thousands): "
              f"{', '.join(f'{x / 1000:.0f}' for x in idle_blocks)}; GC-tracked objects: "
              f"{', '.join(str(x) for x in idle_tracked)}")

        print_summary(engine_rounds, args)
        if not args.no_pyvoip and not failures:
            for j in range(args.pyvoip_rounds):
                res = pyvoip_round(args, kam, clip, work, pyvoip_port, py_rtp, j)
                results[f"pyvoip round {j + 1}"] = res
                py_rounds.append(res)
                failures += res["failures"]
            compare(engine_rounds, py_rounds, args)
    finally:
        for item in reversed(stack):
            try:
                item.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print("stop failed:", exc)
    (work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {work / 'results.json'}")
    return failures


def report_round(name: str, r: dict[str, Any], rss0: int, args: argparse.Namespace) -> None:
    e, c = r.get("engine", {}), r.get("counters", {})
    print(f"\n=== {name}: {args.calls} calls, rate {args.rate_start:g}->{args.rate_max:g} cps, "
          f"talk {args.talk:g} s, wall {r['wall']:.1f} s, load avg now "
          f"{os.getloadavg()[0]:.1f} ===")
    print(f"SIPp callers: ok {r['ok']} failed {r['failed']} exit {r['exit']}; "
          f"INVITE->200 via Kamailio p50 {r['rtd_p50']:.1f} ms p99 {r['rtd_p99']:.1f} ms "
          f"max {r['rtd_max']:.1f} ms")
    print(f"offered {r['offered']} calls at {r['offered_cps']:.2f} calls/s; SIPp placed "
          f"{sum(v['created'] for v in r['lines'].values())} at {r['placed_cps']:.2f}/s")
    if len(r.get("lines", {})) > 1:
        for number, v in r["lines"].items():
            print(f"  line {number}: ok {v['ok']} failed {v['failed']}; INVITE->200 p50 "
                  f"{v['rtd_p50']:.1f} ms p99 {v['rtd_p99']:.1f} ms max {v['rtd_max']:.1f} ms")
    w = r.get("wire")
    if w:
        print(f"at the engine's socket (capture): INVITE->200 p50 {w['invite_p50']:.1f} ms "
              f"p99 {w['invite_p99']:.1f} ms (n={w['invite_n']}); BYE->200 p50 "
              f"{w['bye_p50']:.1f} ms p99 {w['bye_p99']:.1f} ms max {w['bye_max']:.1f} ms "
              f"(n={w['bye_n']})")
    if e:
        rate = e["rtp_out"] / e["streams_s"] if e["streams_s"] > 0 else float("nan")
        print(f"peak concurrent: {e['peak_calls']} calls, {e['peak_legs']} handler legs; "
              f"RTP sent per stream per s: {rate:.1f} (50 = real time); "
              f"largest send gap {e['gap_ms']:.1f} ms; loop lag max {e['lag_ms']:.1f} ms; "
              f"rx lost {e['lost']} late {e['late']}")
        if e.get("wall_s"):
            print(f"engine process(es): on CPU {e['cpu_s'] / e['wall_s']:.2f} cores, runnable "
                  f"but waiting for a CPU {e['rq_wait_s'] / e['wall_s']:.2f} cores-worth "
                  f"(from /proc schedstat: > 0.1 means the machine starved the engine)")
        if e["streams_s"] > 0:
            per = e["cpu_s"] / e["streams_s"]
            print(f"engine CPU per RTP stream: {per * 1000:.2f} ms per stream-second -> "
                  f"300 streams (150 bridged calls) would need {per * 300:.2f} cores "
                  f"(CPU time, so contention from other processes barely skews it)")
        per_call = (e["peak_rss"] - rss0) / max(1, e["peak_calls"])
        print(f"memory: peak RSS {e['peak_rss'] / 2**20:.1f} MB, "
              f"{per_call / 1024:.0f} KiB per concurrent call; idle after round "
              f"{r['idle_rss'] / 2**20:.1f} MB")
    p = r.get("plateau")
    if p:
        print(plateau_line(p))
    print(f"engine counters (cumulative): {c}")
    print("CPU (cores busy): " + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"].items()))
    if r["errors"]:
        print("SIPp errors (tail):", r["errors"][-800:])


def plateau_cores(p: dict[str, Any]) -> dict[str, float]:
    """The plateau's cores by part: engine(s), SIPp (callers + handler phones), Kamailio,
    this script with its SIP capture, the whole machine, and the rest of it (whatever
    else runs there)."""
    cores = p.get("cores", {})
    if not cores:
        return {}
    out = {"engine": sum(v for k, v in cores.items() if k.startswith("engine")),
           "SIPp": sum(v for k, v in cores.items() if k.startswith(("sipp", "handlers"))),
           "Kamailio": cores.get("kamailio", 0.0),
           "this script + capture": cores.get("bench", 0.0) + cores.get("dumpcap", 0.0),
           "machine": cores.get("machine", 0.0)}
    out["other"] = out["machine"] - sum(v for k, v in out.items() if k != "machine")
    return out


def plateau_line(p: dict[str, Any]) -> str:
    """One round's plateau in words (see :func:`plateau_figures`)."""
    if p["real_time"] is None:
        return (f"peak {p['peak_calls']} calls at once, held under one sample (1 s): no "
                f"plateau to judge real time on (make --calls / --rate-max longer than --talk)")
    cores = ", ".join(f"{k} {v:.2f}" for k, v in plateau_cores(p).items())
    return (f"plateau (>= {p['share']:.0%} of the peak of {p['peak_calls']} calls at once): "
            f"{p['seconds']:.0f} s holding {p['min_calls']}-{p['peak_calls']} calls "
            f"(mean {p['mean_calls']:.0f}); RTP sent per stream per s {p['pkts']:.2f}, lowest "
            f"1 s {p['low_1s']:.1f}, received {p['pkts_in']:.2f}; rx lost {p['lost']} late "
            f"{p['late']}; largest media-clock tick gap {p['tick_gap_ms']:.0f} ms; loop lag "
            f"max {p['lag_ms']:.0f} ms; largest send gap of a stream since start "
            f"{p['gap_ms']:.0f} ms; real time: {'yes' if p['real_time'] else 'NO'} (sent >= "
            f"{REAL_TIME_SHARE * REAL_TIME_PKTS:.1f}/s, none lost or late, tick gap <= "
            f"{REAL_TIME_MAX_GAP_MS:.0f} ms)\n  cores over the plateau: {cores or 'n/a'}")


def generator_cpu(r: dict[str, Any]) -> tuple[float, float]:
    """CPU seconds SIPp (callers and handler phones) and Kamailio used during a round."""
    cs = r.get("cpu_s", {})
    return (sum(v for k, v in cs.items() if k.startswith(("sipp", "handlers"))),
            cs.get("kamailio", 0.0))


def print_summary(rounds: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Each engine figure as min / median / max over the rounds, with the load beside it."""
    if not rounds:
        return
    def col(f: Any) -> list[float]:
        out = []
        for r in rounds:
            try:
                out.append(float(f(r)))
            except (KeyError, ZeroDivisionError, TypeError):
                out.append(float("nan"))
        return out

    def ms_per(r: dict[str, Any], per: float) -> float:
        return r["engine"]["cpu_s"] / per * 1000
    print(f"\n=== summary: {len(rounds)} engine round(s) of {args.calls} calls, "
          f"{args.rate_start:g}->{args.rate_max:g} calls/s offered, talk {args.talk:g} s; "
          f"machine: {loadcheck.machine()} ===")
    for line in loadcheck.table([
        ("completed / offered (%)", col(lambda r: 100 * r["ok"] / r["offered"]), ".1f"),
        ("calls/s placed by SIPp", col(lambda r: r["placed_cps"]), ".2f"),
        ("INVITE->200 p50 (ms, via Kamailio)", col(lambda r: r["rtd_p50"]), ".1f"),
        ("INVITE->200 p99 (ms)", col(lambda r: r["rtd_p99"]), ".1f"),
        ("INVITE->200 max (ms)", col(lambda r: r["rtd_max"]), ".1f"),
        ("peak concurrent calls (all engines at once)",
         col(lambda r: r["plateau"]["peak_calls"]), ".0f"),
        (f"plateau s (>= {PLATEAU_SHARE:.0%} of the peak)", col(lambda r: r["plateau"]["seconds"]),
         ".0f"),
        ("plateau RTP sent per stream per s (50)", col(lambda r: r["plateau"]["pkts"]), ".2f"),
        ("plateau lowest 1 s per stream", col(lambda r: r["plateau"]["low_1s"]), ".1f"),
        ("plateau rx lost + late", col(lambda r: r["plateau"]["lost"] + r["plateau"]["late"]),
         ".0f"),
        ("plateau media-clock tick gap max (ms)", col(lambda r: r["plateau"]["tick_gap_ms"]),
         ".0f"),
        ("plateau loop lag max (ms)", col(lambda r: r["plateau"]["lag_ms"]), ".0f"),
        ("plateau cores: engine", col(lambda r: plateau_cores(r["plateau"])["engine"]), ".2f"),
        ("plateau cores: SIPp", col(lambda r: plateau_cores(r["plateau"])["SIPp"]), ".2f"),
        ("plateau cores: Kamailio", col(lambda r: plateau_cores(r["plateau"])["Kamailio"]),
         ".2f"),
        ("plateau cores: whole machine", col(lambda r: plateau_cores(r["plateau"])["machine"]),
         ".2f"),
        ("calls the engines answered", col(lambda r: r["this_round"]["arrived"]), ".0f"),
        ("recordings complete / answered (%)",
         col(lambda r: 100 * r["this_round"]["complete"] / r["this_round"]["arrived"]), ".1f"),
        ("engine CPU (cores)", col(lambda r: r["cpu"]["engine"]), ".2f"),
        ("engine CPU ms per stream-second", col(lambda r: ms_per(r, r["engine"]["streams_s"])),
         ".2f"),
        ("  of which the media clock's ticks", col(
            lambda r: r["engine"]["tick_cpu_s"] / r["engine"]["streams_s"] * 1000), ".2f"),
        ("engine CPU ms per completed call-second",
         col(lambda r: r["cpu_s"]["engine"] / (r["ok"] * args.talk) * 1000), ".2f"),
        ("load avg (1 min) at round end", col(lambda r: r["load1"]), ".1f"),
        ("SIPp CPU s (callers + handlers)", col(lambda r: generator_cpu(r)[0]), ".1f"),
        ("Kamailio CPU s", col(lambda r: generator_cpu(r)[1]), ".1f"),
    ]):
        print(line)
    verdicts = [{True: "yes", False: "NO", None: "no plateau"}[r.get("plateau", {}).get(
        "real_time")] for r in rounds]
    print(f"plateau kept real time (sent >= {REAL_TIME_SHARE * REAL_TIME_PKTS:.1f} packets per "
          f"stream per s, none lost or late, media-clock tick gap <= "
          f"{REAL_TIME_MAX_GAP_MS:.0f} ms): "
          f"{', '.join(verdicts)}")


def compare(engine: list[dict[str, Any]], py: list[dict[str, Any]],
            args: argparse.Namespace) -> None:
    """Engine vs pyVoIP on equal completed work: CPU seconds over the caller window per
    completed call-second (same scenario, same talk time, same offered rate), paired round
    by round; no ratio unless both completed ``--min-completed`` of their offered calls."""
    if not py:
        return
    print("\n=== engine vs pyVoIP (same caller scenario and offered rate) ===")
    rows, ratios, why = [], [], []
    for i, (e, p) in enumerate(zip(engine, py, strict=False)):
        ce = e["cpu_s"].get("engine", 0.0) / max(e["ok"] * args.talk, 1e-9) * 1000
        cp = p["cpu_s"].get("pyvoip", 0.0) / max(p["ok"] * args.talk, 1e-9) * 1000
        short = [f"{n} completed {r['ok']}/{r['offered']}" for n, r in (("engine", e),
                 ("pyVoIP", p)) if r["ok"] < args.min_completed * r["offered"]]
        rows.append((i, e, p, ce, cp))
        if not short and (ce <= 0 or cp <= 0):
            short = ["no CPU time measured"]
        if short:
            why.append(f"round {i + 1}: " + ", ".join(short))
        else:
            ratios.append(cp / ce)
    for line in loadcheck.table([
        ("engine completed (%)", [100 * e["ok"] / e["offered"] for _, e, _, _, _ in rows], ".1f"),
        ("pyVoIP completed (%)", [100 * p["ok"] / p["offered"] for _, _, p, _, _ in rows], ".1f"),
        ("engine INVITE->200 p50 (ms)", [e["rtd_p50"] for _, e, _, _, _ in rows], ".1f"),
        ("pyVoIP INVITE->200 p50 (ms)", [p["rtd_p50"] for _, _, p, _, _ in rows], ".1f"),
        ("engine INVITE->200 p99 (ms)", [e["rtd_p99"] for _, e, _, _, _ in rows], ".1f"),
        ("pyVoIP INVITE->200 p99 (ms)", [p["rtd_p99"] for _, _, p, _, _ in rows], ".1f"),
        ("engine CPU ms per completed call-s", [ce for *_, ce, _ in rows], ".2f"),
        ("pyVoIP CPU ms per completed call-s", [cp for *_, cp in rows], ".2f"),
        ("load avg (1 min), pyVoIP round end", [p["load1"] for _, _, p, _, _ in rows], ".1f"),
        ("SIPp CPU s, pyVoIP round", [generator_cpu(p)[0] for _, _, p, _, _ in rows], ".1f"),
        ("Kamailio CPU s, pyVoIP round", [generator_cpu(p)[1] for _, _, p, _, _ in rows], ".1f"),
    ]):
        print(line)
    print("(engine: answers, records both directions and bridges a handler leg; pyVoIP: "
          "answers and records the caller; CPU over each round's caller window)")
    recorded = [p.get("phone", {}).get("recorded_seconds", 0.0) / max(p["ok"] * args.talk, 1e-9)
                for p in py]
    print("pyVoIP recorded caller audio (% of completed talk time): "
          + ", ".join(f"{100 * x:.0f}" for x in recorded))
    if ratios:
        lo, mid, hi = loadcheck.spread(ratios) or (0.0, 0.0, 0.0)
        print(f"CPU ratio pyVoIP/engine per completed call-second: min {lo:.1f}x median "
              f"{mid:.1f}x max {hi:.1f}x over {len(ratios)} paired round(s)")
    for w in why:
        print(f"no CPU ratio for {w} (< {args.min_completed:.0%}): not equal completed work; "
              f"rerun at a rate both complete, e.g. --rate-start 10 --rate-max 10")


def pyvoip_round(args: argparse.Namespace, kam: Any, clip: Any, work: Path, port: int,
                 rtp: tuple[int, int], j: int) -> dict[str, Any]:
    """One round against a fresh pyVoIP phone. Its completions are a result (no
    ``--min-completed`` check); its SIPp must still place every call at the offered rate
    unless pyVoIP held it at its concurrent-call limit."""
    from harness.kamailio import Process, sip_options

    stats = work / f"pyvoip{j}.json"
    ph = Process([sys.executable, str(ROOT / "bench" / "pyvoip_phone.py"),
                  "--registrar", f"{kam.addr[0]}:{kam.addr[1]}", "--user", "pyvoip",
                  "--sip-port", str(port), "--rtp", f"{rtp[0]}-{rtp[1]}",
                  "--out", str(work / f"pyvoip-rec{j}"), "--stats", str(stats)],
                 log_path=work / f"pyvoip{j}.log", cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        # The proxy says 404 at once until pyVoIP has registered; after that the OPTIONS is
        # relayed to pyVoIP, which ignores it (so no answer within the probe's timeout).
        while sip_options(kam.addr, timeout=0.5, user="pyvoip") == 404:
            if not ph.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"pyVoIP phone did not register:\n{ph.log_text()}")
            time.sleep(0.3)
        calls = args.pyvoip_calls or args.calls
        a2 = argparse.Namespace(**{**vars(args), "calls": calls})
        res = run_callers(a2, kam, "pyvoip", clip, {"pyvoip": ph.pid, "kamailio": kam._proc.pid},
                          f"callers-pyvoip-{j}", work, min_completed=None)
        time.sleep(2)
    finally:
        ph.stop(timeout=10)
    try:
        res["phone"] = json.loads(stats.read_text())
        res["phone"]["answer_delay_ms"] = pct(res["phone"]["answer_delay_ms"], 50)
    except (OSError, ValueError):
        res["phone"] = {}
    print(f"\n=== pyVoIP 1.6.8 phone, round {j + 1}: {calls} calls, same rate ramp, load avg "
          f"now {res['load1']:.1f} ===")
    print(f"SIPp callers: ok {res['ok']} of {res['offered']} failed {res['failed']} exit "
          f"{res['exit']}; offered {res['offered_cps']:.2f} calls/s, placed "
          f"{res['placed_cps']:.2f}/s; INVITE->200 p50 {res['rtd_p50']:.1f} ms "
          f"p99 {res['rtd_p99']:.1f} ms")
    print(f"phone counters: {res['phone']}")
    print("CPU (cores busy): " + ", ".join(f"{k} {v:.2f}" for k, v in res["cpu"].items()))
    return res


if __name__ == "__main__":
    main()
