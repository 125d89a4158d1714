"""How many RTP legs one process keeps in real time on the shared media clock.

For each N (legs), N streams are allocated in pairs that send to each other over
loopback (each leg: 50 packets/s out, 50 in, G.711 encode/decode, jitter buffer), one
stereo recording per pair, for ``--seconds`` each. Prints per N: packets received per
leg per second (50 = real time), RFC 3550 loss, late packets, the largest gap between
media-clock ticks, ticks caught up, time spent in the tick, and process CPU %.

    .venv/bin/python bench/media_clock.py --legs 100 200 300 400 --seconds 10
    .venv/bin/python bench/media_clock.py --legs 200 --uvloop   # the same on uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from telephony.media import Codec, MediaEngine


async def run(legs: int, seconds: float, port_min: int, rec_dir: Path,
              read_in_tick: bool = True) -> dict[str, float]:
    eng = MediaEngine(bind="127.0.0.1", port_min=port_min, port_max=port_min + 4 * legs + 200,
                      recordings_dir=rec_dir, read_in_tick=read_in_tick)
    await eng.start()
    streams = [eng.allocate() for _ in range(legs)]
    recs = []
    for i in range(0, legs - 1, 2):
        a, b = streams[i], streams[i + 1]
        a.configure(remote=("127.0.0.1", b.local_port), codec=Codec.PCMA, dtmf_pt=101)
        b.configure(remote=("127.0.0.1", a.local_port), codec=Codec.PCMU, dtmf_pt=101)
        a.play("tone")
        b.play("tone")
        r = eng.create_recording(f"bench-{legs}-{i}")
        r.attach_caller(a)
        r.attach_handler(b)
        recs.append(r)
    await asyncio.sleep(1.0)  # warm-up: transports up, jitter buffers anchored
    eng.clock.reset_stats()
    in0 = sum(s.stats.packets_in for s in streams)
    ticks0 = eng.clock.ticks
    cpu0, t0, os0 = time.process_time(), time.monotonic(), os.times()
    await asyncio.sleep(seconds)
    cpu1, t1, os1 = time.process_time(), time.monotonic(), os.times()
    in1 = sum(s.stats.packets_in for s in streams)
    wall = t1 - t0
    res = {
        "legs": legs,
        "pps_per_leg": (in1 - in0) / wall / legs,
        "ticks_per_s": (eng.clock.ticks - ticks0) / wall,
        "lost": sum(s.stats.lost for s in streams),
        "late": sum(s.stats.late for s in streams),
        "send_errors": sum(s.stats.send_errors for s in streams),
        "max_tick_gap_ms": 1000 * eng.clock.max_gap,
        "max_lateness_ms": 1000 * eng.clock.max_lateness,
        "late_ticks": eng.clock.late_ticks,
        "tick_ms": 1000 * eng.clock.busy / max(1, eng.clock.ticks - ticks0),
        "us_per_leg_tick": 1e6 * eng.clock.busy_cpu / max(1, eng.clock.ticks - ticks0) / legs,
        "cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "sys_share": (os1.system - os0.system) / max(1e-9, cpu1 - cpu0),
    }
    # CPU cost is what scales: scale the measured CPU to a full 50 ticks/s (when the
    # machine starved us of CPU the clock ran slower) and project legs per core
    res["cpu_rt_pct"] = res["cpu_pct"] * 50.0 / max(1e-9, res["ticks_per_s"])
    res["legs_per_core"] = legs * 100.0 / max(1e-9, res["cpu_rt_pct"])
    t_seal = time.monotonic()
    await eng.stop()
    res["seal_ms_per_rec"] = 1000 * (time.monotonic() - t_seal) / max(1, len(recs))
    for r in recs:
        r.path.unlink(missing_ok=True)
    return res


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--legs", type=int, nargs="+", default=[100, 200, 300, 400])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--port-min", type=int, default=40000)
    ap.add_argument("--nice", type=int, default=0,
                    help="lower our nice value by this much (needs root): how a media process "
                         "is deployed (higher priority than batch work); 0 = as started")
    ap.add_argument("--uvloop", action="store_true",
                    help="run on uvloop instead of asyncio's standard loop (pip install uvloop)")
    ap.add_argument("--reader", action="store_true",
                    help="read sockets with one loop.add_reader callback each (not in the tick)")
    args = ap.parse_args()
    if args.nice:
        os.nice(-abs(args.nice))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, nice {os.nice(0)}, "
          f"loop {type(asyncio.get_running_loop()).__module__}")
    print(f"{'legs':>5} {'pkt/s/leg':>9} {'ticks/s':>7} {'lost':>6} {'late':>6} {'senderr':>7} "
          f"{'maxgap':>7} {'maxlate':>7} {'lateTk':>6} {'tick':>6} {'cpu%':>5} {'seal':>6}")
    with tempfile.TemporaryDirectory() as d:
        for n in args.legs:
            r = await run(n, min(args.seconds, 60.0), args.port_min, Path(d),
                          read_in_tick=not args.reader)
            print(f"{r['legs']:>5} {r['pps_per_leg']:>9.2f} {r['ticks_per_s']:>7.2f} "
                  f"{r['lost']:>6} {r['late']:>6} {r['send_errors']:>7} "
                  f"{r['max_tick_gap_ms']:>5.1f}ms {r['max_lateness_ms']:>5.1f}ms "
                  f"{r['late_ticks']:>6} {r['tick_ms']:>4.2f}ms {r['cpu_pct']:>5.1f} "
                  f"{r['seal_ms_per_rec']:>4.1f}ms {r['cpu_rt_pct']:>6.1f} {r['legs_per_core']:>9.0f} {r['us_per_leg_tick']:>11.1f} {100 * r['sys_share']:>5.0f}%", flush=True)
    print("pkt/s/leg: received per leg per second (50 = real time); maxgap: largest interval "
          "between ticks (ideal 20 ms); lateTk: ticks run >1 period late (caught up); tick: mean "
          "time in one tick; cpu%: this process; cpuRT%: CPU of one core needed at 50 ticks/s; "
          "legs/core: projected legs one core keeps in real time; us/leg/tick: CPU (thread time) "
          "in the tick per leg - with read_in_tick all RTP work is in the tick, so 20000 / "
          "this = legs per core, the figure least disturbed by other load; kernel: share of CPU "
          "in system calls (sendto/recvfrom on loopback also run the receive path). Other load on the machine "
          "inflates every figure: check `uptime` first.")


if __name__ == "__main__":
    if "--uvloop" in sys.argv[1:]:
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
