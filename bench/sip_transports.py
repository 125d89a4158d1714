"""SIP over UDP, TCP and TLS side by side in one run (issue 16 figures).

One Kamailio (UDP, TCP and TLS listening, its TLS module, certificates from a throw-away
CA made here) relays 999 calls to one engine three ways: the number ``999`` over UDP,
``998`` over TCP, ``997`` over TLS. SIPp callers reach Kamailio over UDP in every phase,
so only the Kamailio <-> engine hop differs. Each phase places ``--calls`` calls at
``--rate`` calls/s; the engine answers at once (real media: RTP both ways, caller audio
recorded), the caller talks ``--talk`` s and hangs up. Phases run in turn, ``--rounds``
times (udp, tcp, tls, udp, tcp, tls...), so a noisy neighbour hits every transport.

Figures per transport: calls completed, set-up rate achieved, INVITE->200 p50/p99/max as
the caller measures it through Kamailio, the engine's own INVITE-in -> 200-out p99, and
(TLS) the cost of fresh TLS handshakes to the engine (``--handshakes`` sequential new
connections from Python: p50/p99 ms). Target: TLS set-up p99 <= 2 x UDP's at 10 calls/s.

    .venv/bin/python bench/sip_transports.py --calls 300 --rate 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NUMBERS = {"udp": "999", "tcp": "998", "tls": "997"}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


async def handshakes(port: int, ca: Path, n: int) -> list[float]:
    """Times (ms) of ``n`` fresh TLS handshakes to the engine, one after another."""
    ctx = ssl.create_default_context(cafile=str(ca))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname="127.0.0.1")
        out.append((time.perf_counter() - t0) * 1000)
        w.close()
        try:
            await asyncio.wait_for(w.wait_closed(), 2)
        except (OSError, TimeoutError, ssl.SSLError):
            pass
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from config.schema import LineSettings
    from config.telephony import SipSettings
    from harness import scenarios
    from harness.certs import CertAuthority
    from harness.kamailio import Kamailio
    from harness.ports import free_rtp_range, free_tcp_port, free_udp_port
    from harness.sipp import Sipp
    from telephony import api
    from telephony.engine import Engine

    work = Path(tempfile.mkdtemp(prefix="sip-transports-"))
    ca = CertAuthority(work / "tls")
    eng_cert = ca.issue("engine", "controlroom.local")
    kam_cert = ca.issue("kamailio", "kamailio.local")
    port, tls_port = free_udp_port(), free_tcp_port()
    routes = {"999": f"127.0.0.1:{port}", "998": f"127.0.0.1:{port};transport=tcp",
              "997": f"127.0.0.1:{tls_port};transport=tls"}
    kam = Kamailio(routes, trace=False, children=4, workdir=work / "kamailio",
                   tls=(kam_cert.cert, kam_cert.key, ca.cert))
    kam.start()
    answer_ms: dict[str, list[float]] = {t: [] for t in NUMBERS}
    by_number = {v: k for k, v in NUMBERS.items()}

    def on_event(ev: Any) -> None:
        if isinstance(ev, api.CallArrived):
            answer_ms[by_number.get(ev.dialled, "udp")].append((ev.at - ev.invite_at) * 1000)

    rtp_lo, rtp_hi = free_rtp_range(max(200, 4 * args.limit + 40))
    settings = SipSettings(port=port, tcp=True, tls=True, tls_port=tls_port,
                           tls_cert=str(eng_cert.cert), tls_key=str(eng_cert.key),
                           tls_ca=str(ca.cert), rtp_port_min=rtp_lo, rtp_port_max=rtp_hi,
                           max_calls=100000)
    lines = [LineSettings(name="999", numbers=list(NUMBERS.values()), priority=0,
                          queue_prompt="silence")]
    engine = Engine(settings=settings, lines=lines, recordings_dir=work / "rec",
                    on_event=on_event)
    await engine.start()
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in NUMBERS}
    hs: list[float] = []
    try:
        for rnd in range(args.rounds):
            for transport in args.transports:
                before = len(answer_ms[transport])
                name = f"{transport}-{rnd}"
                (work / name).mkdir()
                scen = scenarios.caller(dialled=NUMBERS[transport], talk_ms=int(args.talk * 1000),
                                        dtmf_pt=None)
                sipp = Sipp(scen, target=kam.addr, calls=args.calls, rate=args.rate,
                            limit=args.limit, trace_msg=False, name=name, workdir=work / name,
                            timeout=args.calls / args.rate + args.talk + 60)
                t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
                sipp.start()
                code = await asyncio.to_thread(sipp.wait, args.calls / args.rate + args.talk + 90)
                wall, r1 = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_SELF)
                # the engine runs in this process (SIPp and Kamailio are children, not in
                # RUSAGE_SELF): its CPU for the phase, SIP and media, per completed call
                cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                rtd = sipp.response_times_ms()
                eng = answer_ms[transport][before:]
                results[transport].append({
                    "exit": code, "ok": sipp.successful, "failed": sipp.failed,
                    "setup_cps": sipp.successful / max(wall - args.talk, 1e-9),
                    "rtd_p50": pct(rtd, 50), "rtd_p99": pct(rtd, 99), "rtd_max": max(rtd or [0]),
                    "engine_p99": pct(eng, 99),
                    "engine_cpu_ms_per_call": 1000 * cpu / max(sipp.successful, 1)})
                sipp.stop()
                await asyncio.sleep(args.settle)
        if "tls" in args.transports and args.handshakes:
            hs = await handshakes(tls_port, ca.cert, args.handshakes)
        counters = engine.sip_counters
    finally:
        await engine.stop(drain_timeout=0, bye_grace=0.5)
        kam.stop()
    return {"results": results, "handshake_ms": hs,
            "counters": {k: v for k, v in counters.items() if k.startswith(("stream_", "tls_"))},
            "work": str(work)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300, help="calls per phase")
    ap.add_argument("--rate", type=float, default=10.0, help="new calls per second")
    ap.add_argument("--talk", type=float, default=2.0, help="seconds each caller talks")
    ap.add_argument("--limit", type=int, default=200, help="most calls at once per phase")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--settle", type=float, default=2.0, help="pause between phases (s)")
    ap.add_argument("--handshakes", type=int, default=50)
    ap.add_argument("--transports", nargs="+", default=["udp", "tcp", "tls"],
                    choices=["udp", "tcp", "tls"])
    ap.add_argument("--json", default="", help="append the figures as one JSON line here")
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(f"SIP transports, {args.calls} calls per phase at {args.rate:g}/s, {args.talk:g} s "
          f"calls, {args.rounds} round(s); callers UDP -> Kamailio -> engine over:")
    for t, rows in out["results"].items():
        for i, r in enumerate(rows):
            print(f"  {t.upper():3} round {i + 1}: {r['ok']}/{args.calls} completed "
                  f"({r['failed']} failed), set-up {r['setup_cps']:.1f} calls/s, INVITE->200 "
                  f"p50 {r['rtd_p50']:.1f} ms p99 {r['rtd_p99']:.1f} ms max {r['rtd_max']:.1f} ms;"
                  f" engine p99 {r['engine_p99']:.2f} ms, engine CPU "
                  f"{r['engine_cpu_ms_per_call']:.1f} ms per call")
    res = out["results"]
    # each round's TLS phase against the same round's UDP phase (minutes apart at most,
    # so a neighbour's load spike hits one round rather than one transport)
    for i, (u, t) in enumerate(zip(res.get("udp", []), res.get("tls", []), strict=False)):
        verdict = "OK" if t["rtd_p99"] <= 2 * max(u["rtd_p99"], 1.0) else "OVER"
        print(f"  round {i + 1}: TLS p99 {t['rtd_p99']:.1f} ms vs 2 x UDP p99 "
              f"{2 * u['rtd_p99']:.1f} ms: {verdict} (a UDP p99 under 1 ms counts as 1 ms)")
    print(f"  load average (1 min) at the end: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    if out["handshake_ms"]:
        hs = out["handshake_ms"]
        print(f"  fresh TLS handshakes to the engine: n={len(hs)} p50 {pct(hs, 50):.1f} ms "
              f"p99 {pct(hs, 99):.1f} ms")
    print(f"  engine stream counters: {out['counters']}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"at": time.time(), "host": socket.gethostname(),
                                "load1": os.getloadavg()[0], **vars(args), **out}) + "\n")


if __name__ == "__main__":
    main()
