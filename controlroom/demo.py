"""``controlroom demo``: the real service on loopback with calls flowing.

Calls are spread over the whole run; some callers hang up while a phone rings or while
queued (abandoned calls, the call-back list, one caller trying twice), some press 5 5
without a word (Silent Solution flags), so the wallboard and the desk have something
to show.

Starts Kamailio, Mosquitto, the service (SIP engine, router, recorder, transcription,
CAD publisher, console) and SIPp handler phones, then places 999 and 101 calls whose
callers speak synthesised English over G.711 through Kamailio. A CAD stand-in
subscribes to the broker and counts what it receives. Stops cleanly on Ctrl-C or after
``--duration`` and leaves nothing running; the data stays in ``--keep`` if given, so the
calls can then be found with ``controlroom search WORDS --config DIR/controlroom.toml
--user auditor --reason WHY`` (every search is access-logged with its reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from controlroom.logs import configure
from controlroom.stack import Stack, StackOptions

SCRIPT: list[tuple[str, str, str]] = [
    # (line, caller number, what the caller says)
    ("999", "07700900101", "There is a burglary at number twelve Station Road. Two men are in the garden."),
    ("101", "07700900202", "I want to report that my bicycle was stolen from outside the library yesterday."),
    ("999", "07700900303", "A car has crashed into a wall on the high street and the driver is not moving."),
    ("101", "07700900404", "My neighbours are playing very loud music again and it is two in the morning."),
    ("999", "07700900505", "My husband has hit me and he is still in the kitchen with a knife."),
    ("101", "07700900606", "I found a wallet in the park with cards in it and I want to hand it in."),
    ("999", "07700900101", "The men from the burglary have come back and they are trying the back door."),
    ("101", "07700900707", "Someone has been sending threatening messages to my daughter online."),
    ("999", "07700900808", "There is a fire in the flats on Mill Lane and people are shouting inside."),
    ("101", "07700900909", "I would like an update on the crime report about my stolen car."),
    ("999", "07700900111", "A child has gone missing in the shopping centre. She is five years old."),
    ("101", "07700900222", "There is a van parked across my driveway and I cannot get out."),
]

# What each placed call does, by its index modulo 6: most callers talk; one hangs up as
# soon as a handler's phone rings (abandoned while ringing), one waits for both handlers
# to be busy and gives up after 4 s in the queue (abandoned while queued: on 999 it goes
# on the call-back list, and the caller tries again later), one presses 5 5 silently.
KINDS = ("talk", "talk", "ring-quit", "talk", "queue-quit", "silent55")


def plan(calls: int, duration: float) -> list[float]:
    """When each call is placed (s from the start): spread evenly over the whole run,
    leaving the last call time to be answered, spoken and wrapped up before the end."""
    span = max(1.0, duration - min(30.0, duration * 0.3))
    return [span * i / max(calls, 1) for i in range(calls)]


USERS = [("h1", ["handler"]), ("h2", ["handler"]),
         ("supervisor", ["supervisor"]), ("auditor", ["auditor"]), ("admin", ["admin"])]
DEMO_PASSWORD = "demo-password"


async def _cad_listener(host: str, port: int, counts: dict[str, int]) -> None:
    """The CAD stand-in: counts every message on the service's topics."""
    while True:
        try:
            async with aiomqtt.Client(host, port, identifier="demo-cad") as client:
                await client.subscribe("controlroom/#", qos=1)
                async for msg in client.messages:
                    try:
                        body = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                    except ValueError:
                        continue
                    counts[body.get("type", "summary")] = counts.get(body.get("type", "summary"), 0) + 1
        except aiomqtt.MqttError:
            await asyncio.sleep(1.0)


def _status(stack: Stack, cad: dict[str, int]) -> str:
    s = stack.service
    snap = s.snapshot()
    waiting = {name: sum(1 for c in s.calls.values() if c.line == name and c.state in ("queued", "offered"))
               for name in s.lines}
    connected = sum(1 for c in s.calls.values() if c.state == "connected")
    states: dict[str, int] = {}
    from console.backend import desk_state_name

    for h in snap.get("handlers", {}).values():
        st = desk_state_name(h.get("state"))
        states[st] = states.get(st, 0) + 1
    done = s.db.query("SELECT COUNT(*) n FROM calls WHERE ended_at IS NOT NULL")[0]["n"]
    return (f"waiting 999={waiting.get('999', 0)} 101={waiting.get('101', 0)} | connected={connected} "
            f"| ended={done} | handlers {states} | CAD msgs={sum(cad.values())}")


async def run_demo(*, duration: float = 120.0, calls: int = 12, web_port: int = 8080,
                   engine: str = "whisper", keep: str | None = None) -> int:
    configure("warning", json=False)
    tmp = None
    if keep:
        workdir = await asyncio.to_thread(Path(keep).resolve)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="controlroom-demo-")
        workdir = Path(tmp.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.monotonic()
    print("controlroom demo: starting Kamailio, Mosquitto, the service and 2 handler phones...",
          flush=True)
    # Two handler phones for a dozen calls: a queue forms, so 999-before-101 and
    # abandoned calls can be seen on the wallboard.
    options = StackOptions(handlers=2, engine=engine, web_port=web_port, ring_ms=1200,
                           wrapup=3.0, phone_timeout=duration + 300)
    try:
        async with Stack(workdir, options) as stack:
            from console.users import create_user

            for name, roles in USERS:
                create_user(stack.service.db, name, DEMO_PASSWORD, roles)
            started = time.monotonic() - t0
            print(f"""
  ready in {started:.1f} s
  console     http://127.0.0.1:{stack.service.web_port}/   (users h1 h2 supervisor auditor admin,
              password '{DEMO_PASSWORD}')
  SIP         Kamailio udp 127.0.0.1:{stack.kamailio.port} -> service udp 127.0.0.1:{stack.service.engine.sip_port}
  CAD broker  mqtt://127.0.0.1:{stack.mosquitto.port}  topics controlroom/fcr1/#
  data        {workdir}
  placing {calls} calls over {duration:.0f} s (Ctrl-C stops early)
""", flush=True)
            cad: dict[str, int] = {}
            listener = asyncio.create_task(_cad_listener("127.0.0.1", stack.mosquitto.port, cad))
            callers = []
            rng = random.Random(999)
            start = time.monotonic()
            times = plan(calls, duration)
            next_status = time.monotonic() + 5
            placed = 0
            held_since: float | None = None
            deadline = time.monotonic() + duration
            while not stop.is_set() and time.monotonic() < deadline:
                now = time.monotonic()
                if placed < calls and now - start >= times[placed]:
                    kind = KINDS[placed % len(KINDS)]
                    if kind == "queue-quit" and not _all_busy(stack):
                        # Wait (up to 15 s) until nobody is free, so this caller queues.
                        held_since = held_since or now
                        if now - held_since < 15.0:
                            await asyncio.sleep(0.2)
                            continue
                    held_since = None
                    callers.append(await _place(stack, placed, kind, rng, workdir))
                    placed += 1
                if now >= next_status:
                    print("  " + _status(stack, cad), flush=True)
                    next_status = now + 5
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
            print("  stopping callers; waiting up to 30 s for calls to end and transcripts...", flush=True)
            for c in callers:
                await asyncio.to_thread(c.stop)
            end = time.monotonic() + 30
            while time.monotonic() < end and not stop.is_set():
                pending = stack.service.db.query(
                    "SELECT COUNT(*) n FROM calls c WHERE c.recording_path IS NOT NULL AND NOT EXISTS "
                    "(SELECT 1 FROM outbox o WHERE o.call_id=c.call_id AND o.type='call.transcript')")[0]
                if not stack.service.calls and (engine == "none" or pending["n"] == 0):
                    break
                await asyncio.sleep(1.0)
            listener.cancel()
            _summary(stack, cad, workdir, keep is not None)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _all_busy(stack: Stack) -> bool:
    """Every handler is on a call (not free, not about to be free after a short wrap-up)."""
    return all(h.get("state") in ("on_call", "offered")
               for h in stack.service.snapshot().get("handlers", {}).values())


async def _place(stack: Stack, i: int, kind: str, rng: random.Random, workdir: Path) -> Any:
    """Start caller ``i`` of the given kind (see KINDS)."""
    line, number, text = SCRIPT[i % len(SCRIPT)]
    if kind == "silent55":
        from harness import scenarios, speech
        from harness.sipp import Sipp

        packets = speech.dtmf_packets("55", stack.options.codec)
        pcap = speech.write_rtp_pcap(workdir / "clips" / f"dtmf55-{i}.pcap", packets)
        name = f"caller-silent-{i}"
        (workdir / "callers" / name).mkdir(parents=True, exist_ok=True)
        number = f"0770090{i:04d}"
        print(f"  -> call {i + 1}: 999 from {number}: says nothing, presses 5 5", flush=True)
        return Sipp(scenarios.caller(dialled="999", caller_id=number, pcap=pcap,
                                     talk_ms=12000), target=stack.kamailio.addr, calls=1,
                    timeout=140, name=name, workdir=workdir / "callers" / name).start()
    if kind == "queue-quit":
        line, number = "999", "07700900777"   # the same caller each time: one call-back
    clip = await asyncio.to_thread(stack.clip, text, speed=rng.choice([140, 155, 170]))
    talk = {"ring-quit": 1.0, "queue-quit": 2.5}.get(kind, clip.duration + 6.0)
    what = {"ring-quit": " (hangs up while it rings)",
            "queue-quit": " (gives up in the queue)"}.get(kind, "")
    print(f"  -> call {i + 1}: {line} from {number}{what}: \"{text[:50]}...\"", flush=True)
    return stack.call(line, caller=number, clip=clip, talk_s=talk)


def _summary(stack: Stack, cad: dict[str, int], workdir: Path, kept: bool) -> None:
    db = stack.service.db
    rows = db.query("SELECT call_id, line, caller, state, handler_id, wait, talk, recording_sha256 "
                    "FROM calls ORDER BY arrived_at")
    print("\n  calls:")
    for r in rows:
        wait = f"{r['wait']:.1f}s" if r["wait"] is not None else "-"
        print(f"    {r['call_id']:<12} {r['line']:>3} {r['caller']:<12} {r['state']:<10} "
              f"handler={r['handler_id'] or '-':<3} wait={wait:<6} "
              f"sha256={(r['recording_sha256'] or '-')[:12]}")
    cb = stack.service.router.callbacks()
    print(f"  call-back list (abandoned 999): {len(cb)} callers, "
          f"{sum(len(c.attempts) for c in cb)} abandoned calls")
    flagged = db.query("SELECT COUNT(*) n FROM calls WHERE flags LIKE '%dtmf55%'")[0]["n"]
    print(f"  silent calls flagged (5 5 pressed): {flagged}")
    print(f"  CAD messages received: {dict(sorted(cad.items()))}")
    try:
        from transcription import TranscriptSearch

        for word in ("station road", "crashed wall", "stolen"):
            hits = TranscriptSearch(db).search(word, limit=3)
            found = [(h.call_id if hasattr(h, 'call_id') else h['call_id']) for h in hits]
            print(f"  search {word!r}: {found}")
    except Exception as exc:  # the demo's summary must not hide the shutdown
        print(f"  search unavailable: {exc}")
    if kept:
        print(f"\n  data kept in {workdir}; try:\n    controlroom search burglary --config"
              f" {workdir}/controlroom.toml --user auditor --reason 'demo: trying the search'")


