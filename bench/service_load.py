"""The whole service under call load, through the real parts: does every call get
answered, queued, offered, bridged, recorded, published to the CAD and transcribed?

The loopback system of ``controlroom demo`` / the end-to-end tests (``controlroom.stack``:
Kamailio, Mosquitto, the service with its router, SQLite store, CAD outbox and
transcription, and one SIPp handler phone per handler), with two SIPp callers dialling
999 and 101 at a steady rate, each caller speaking an espeak-ng sentence over G.711.
An MQTT client stands in for the CAD. The service runs in this process, so a probe on
its event loop measures the loop's lag directly.

    .venv/bin/python bench/service_load.py                       # 240 calls at 2/s, 30 handlers
    .venv/bin/python bench/service_load.py --calls 60 --rate 1 --engine none

Prints, per line: calls answered / failed (SIPp's view), INVITE->200 p50/p99 at the
caller, queue wait p50/p95/max and talk (from the call records); then recordings whose
SHA-256 matches the file, calls whose CAD messages arrived complete and gap-free, final
transcripts stored and the time from call end to transcript, event-loop lag, CPU and
memory of the service process. Bounded: fixed call counts, SIPp global timeouts, a
deadline on every wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadcheck  # noqa: E402 - after the path set-up above

SENTENCE = ("Hello, I need the police. Someone has broken into the car outside my house "
            "and they are still there.")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


class Cad:
    """A real MQTT subscriber standing in for the CAD."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", self.port, identifier="bench-cad") as client:
            await client.subscribe("controlroom/+/calls/#", qos=1)
            self._ready.set()
            async for msg in client.messages:
                with contextlib.suppress(ValueError):
                    self.messages.append(json.loads(bytes(msg.payload)))  # type: ignore[arg-type]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def run(args: argparse.Namespace) -> list[str]:
    """Run the load and print the figures; returns why the run does not count."""
    import psutil

    from controlroom.stack import Stack, StackOptions
    from harness import scenarios
    from harness.sipp import Sipp

    work = Path(tempfile.mkdtemp(prefix="service-load-"))
    load = os.getloadavg()
    print(f"work dir {work}; {os.cpu_count()} CPUs; load avg {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}")
    opts = StackOptions(handlers=args.handlers, engine=args.engine, ring_ms=args.ring_ms,
                        wrapup=args.wrapup, offer_timeout=10.0,
                        engine_workers=args.engine_workers)
    proc = psutil.Process()
    async with Stack(work / "stack", opts) as st:
        loop = asyncio.get_running_loop()
        lags: list[float] = []

        async def probe() -> None:
            while True:
                t = loop.time()
                await asyncio.sleep(0.01)
                lags.append((loop.time() - t - 0.01) * 1000)

        prober = asyncio.create_task(probe())
        cad = Cad(st.mosquitto.port)
        await cad.start()
        clip = await asyncio.to_thread(st.clip, SENTENCE, lead_s=0.5, voice="en-gb")
        talk = max(args.talk, clip.duration + 0.5)
        mix = [("999", 1.0 - args.share_101), ("101", args.share_101)]
        sipps: list[tuple[str, Any]] = []
        for number, share in mix:
            n = round(args.calls * share)
            if n <= 0:
                continue
            scen = scenarios.caller(dialled=number, codecs=(clip.codec,),
                                    caller_id=f"0770{'0' if number == '999' else '1'}[call_number]",
                                    pcap=clip.pcap, talk_ms=int(talk * 1000), dtmf_pt=None)
            (work / f"callers-{number}").mkdir()
            sipps.append((number, Sipp(scen, target=st.kamailio.addr, calls=n,
                                       rate=args.rate * share, limit=args.handlers * 4,
                                       trace_msg=False, timeout=args.calls / args.rate + 300,
                                       name=f"callers-{number}", workdir=work / f"callers-{number}")))
        # sip.engine_workers >= 2: the engines' CPU is in their own processes
        workers = [psutil.Process(w.pid) for w in getattr(st.service.engine, "workers", [])]
        wcpu0 = [sum(w.cpu_times()[:2]) for w in workers]
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        for _, sp in sipps:
            sp.start()
        for _, sp in sipps:
            await asyncio.to_thread(sp.wait, args.calls / args.rate + 300)
        wall = time.monotonic() - t0
        cpu1 = proc.cpu_times()
        wcpu = [(sum(w.cpu_times()[:2]) - c0) / wall for w, c0 in zip(workers, wcpu0, strict=True)]
        failures: list[str] = []
        for number, sp in sipps:
            placed = loadcheck.placement_from_stats(
                loadcheck.read_stats(sp.dir / "stats.csv"), sp.calls,
                loadcheck.read_sent_ms(sorted(sp.dir.glob("*_rtt.csv"))))
            said = await asyncio.to_thread(loadcheck.read_text, sp.dir / "sipp.out")
            failures += loadcheck.shortfalls(
                f"callers-{number}", calls=sp.calls, completed=sp.successful, placement=placed,
                offered_s=loadcheck.placement_seconds(sp.calls, sp.rate), final_rate=sp.rate,
                limit=sp.limit, exit_code=sp.exit_code, output=said,
                tolerance=args.rate_tolerance, min_completed=args.min_completed)
            print(f"line {number}: offered {sp.calls} calls at {sp.rate:.2f} calls/s; SIPp "
                  f"placed {placed.created}" + (f" at {sp.calls / placed.seconds:.2f}/s"
                                                if placed.seconds else ""))
        total = sum(sp.successful for _, sp in sipps)
        db = st.service.db

        async def settle(what: str, pred: Any, limit: float) -> float:
            t = time.monotonic()
            while time.monotonic() - t < limit:
                if await asyncio.to_thread(pred):
                    return time.monotonic() - t
                await asyncio.sleep(0.5)
            print(f"  (gave up waiting for {what} after {limit:.0f} s)")
            return float("nan")

        await settle("every call record closed", lambda: db.query_one(
            "SELECT COUNT(*) AS n FROM calls WHERE ended_at IS NOT NULL")["n"] >= total, 120)
        await settle("the CAD to receive every call.ended", lambda: len(
            {m["call_id"] for m in cad.messages if m.get("type") == "call.ended"}) >= total, 120)
        if args.engine != "none":
            t_tr = await settle("every final transcript", lambda: db.query_one(
                "SELECT COUNT(*) AS n FROM transcription_transcripts")["n"] >= total,
                args.transcript_wait)
        rows = [dict(r) for r in db.query("SELECT * FROM calls")]
        prober.cancel()

        print(f"\n=== service under load: {args.calls} calls at {args.rate:g}/s "
              f"({100 * args.share_101:.0f} % 101), {args.handlers} handlers, talk "
              f"{talk:.1f} s, wrap-up {args.wrapup:g} s, engine {args.engine}; wall "
              f"{wall:.0f} s, load avg now {os.getloadavg()[0]:.1f} ===")
        for number, sp in sipps:
            rtd = sp.response_times_ms()
            mine = [r for r in rows if r["line"] == number]
            waits = [r["wait"] for r in mine if r.get("wait") is not None]
            talks = [r["talk"] for r in mine if r.get("talk") is not None]
            states: dict[str, int] = {}
            for r in mine:
                states[r["state"]] = states.get(r["state"], 0) + 1
            print(f"line {number}: answered {sp.successful} failed {sp.failed}; INVITE->200 p50 "
                  f"{pct(rtd, 50):.0f} ms p99 {pct(rtd, 99):.0f} ms max {max(rtd or [0]):.0f} ms; "
                  f"queue wait p50 {pct(waits, 50):.1f} s p95 {pct(waits, 95):.1f} s max "
                  f"{max(waits or [0]):.1f} s; talk p50 {pct(talks, 50):.1f} s; records {states}")
        def digest(p: str | None) -> str | None:
            return hashlib.sha256(Path(p).read_bytes()).hexdigest() if p and Path(p).exists() else None

        ok_rec = 0
        for r in rows:
            ok_rec += await asyncio.to_thread(digest, r.get("recording_path")) == r.get("recording_sha256")
        by_call: dict[str, list[dict[str, Any]]] = {}
        for m in cad.messages:
            if m.get("call_id"):
                by_call.setdefault(m["call_id"], []).append(m)
        complete = 0
        for r in rows:
            msgs = by_call.get(r["call_id"], [])
            seqs = sorted({m["seq"] for m in msgs if "seq" in m})
            types = {m.get("type") for m in msgs}
            if seqs and seqs == list(range(1, len(seqs) + 1)) and "call.ended" in types:
                complete += 1
        print(f"recordings: {ok_rec}/{len(rows)} present with a matching SHA-256")
        print(f"CAD: {complete}/{len(rows)} calls with every message, in order, no gap "
              f"({len(cad.messages)} messages)")
        if args.engine != "none":
            lat = [r2["created_at"] - r["ended_at"] for r in rows
                   for r2 in [db.query_one("SELECT created_at FROM transcription_transcripts "
                                           "WHERE call_id=?", (r["call_id"],))]
                   if r2 is not None and r.get("ended_at")]
            print(f"final transcripts: {len(lat)}/{len(rows)} stored; call end -> transcript "
                  f"p50 {pct(lat, 50):.1f} s p95 {pct(lat, 95):.1f} s max {max(lat or [0]):.1f} s"
                  f" (all done {t_tr:.0f} s after the last caller hung up)")
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
        print(f"service process: CPU {cpu:.2f} cores during the calls; RSS "
              f"{proc.memory_info().rss / 2**20:.0f} MB; event-loop lag p99 {pct(lags, 99):.1f} ms "
              f"max {max(lags or [0]):.1f} ms")
        if wcpu:
            print(f"engine workers ({len(wcpu)}): CPU {' + '.join(f'{c:.2f}' for c in wcpu)} "
                  f"= {sum(wcpu):.2f} cores; service + workers {cpu + sum(wcpu):.2f} cores")
        await cad.stop()
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=240)
    ap.add_argument("--rate", type=float, default=2.0, help="new calls per second")
    ap.add_argument("--share-101", type=float, default=0.3)
    ap.add_argument("--handlers", type=int, default=30)
    ap.add_argument("--talk", type=float, default=6.0, help="seconds from answer to caller BYE")
    ap.add_argument("--wrapup", type=float, default=1.0)
    ap.add_argument("--ring-ms", type=int, default=300)
    ap.add_argument("--engine", default="whisper", choices=["whisper", "vosk", "none"])
    ap.add_argument("--engine-workers", type=int, default=1,
                    help="sip.engine_workers: engine processes behind Kamailio's dispatcher")
    ap.add_argument("--transcript-wait", type=float, default=600.0,
                    help="seconds to wait for the final transcripts after the last call")
    ap.add_argument("--rate-tolerance", type=float, default=loadcheck.RATE_TOLERANCE,
                    help="the run fails if a caller SIPp places its calls this much slower "
                    "than offered (0.10 = 10 %%)")
    ap.add_argument("--min-completed", type=float, default=loadcheck.MIN_COMPLETED,
                    help="the run fails if a line answers fewer than this share of its calls")
    failures = asyncio.run(run(ap.parse_args()))
    for f in failures:
        print(f"FAILED: {f}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
