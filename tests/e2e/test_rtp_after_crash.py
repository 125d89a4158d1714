"""Issue 12 defect 2 across a crash: the old call's media, still arriving after kill -9 and
restart, lands on the very port the next call gets, and is neither heard nor recorded."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from controlroom.stack import DOMAIN, Stack, StackOptions, toml_dump
from harness import scenarios, speech
from harness.kamailio import Kamailio
from harness.mosquitto import Mosquitto
from harness.ports import free_rtp_range, free_tcp_port, free_udp_port, release
from harness.sipp import Sipp

from .conftest import wait_until
from .test_crash import serve, wait_serving

pytestmark = [pytest.mark.realparts, pytest.mark.faults, pytest.mark.slow]

OLD_TEXT = "This is the old call. Nobody should ever hear these words again."
NEW_TEXT = "Police emergency. There is a fire at the garage on Mill Lane."


def _rows(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM calls ORDER BY rowid")]


async def test_old_calls_media_after_kill_9_never_reaches_the_next_call(tmp_path: Path) -> None:
    """kill -9 during a call, restart, and the old caller's media address keeps streaming to
    the old port. Two of the three pool ports are taken, so the next 999 call gets that very
    port after the restart (no memory of resting ports survives a crash): its recording holds
    the new caller bit-exactly and not one frame of the old stream, and /metrics counts the
    dropped packets (controlroom_engine{stat="rtp_foreign"})."""
    clips = tmp_path / "clips"
    clips.mkdir()
    old = speech.speech_clip(OLD_TEXT, "PCMA", clips / "old.pcap", pad_ms=200, repeat=3)
    new = speech.speech_clip(NEW_TEXT, "PCMA", clips / "new.pcap", lead_ms=300, pad_ms=200)
    lo, hi = free_rtp_range(6)
    release(*range(lo, hi + 1))
    blockers = []
    for port in (lo, lo + 2):  # someone else's sockets: the service can only use lo + 4
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.bind(("127.0.0.1", port))
        blockers.append(b)
    stale = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stale_sent = 0
    with Mosquitto() as mosq:
        sip_port = free_udp_port()
        with Kamailio({"999": f"127.0.0.1:{sip_port}"}, domain=DOMAIN, trace=False) as kam:
            stack = Stack(tmp_path, StackOptions(handlers=1, engine="none", handlers_available=False))
            web_port = free_tcp_port()
            data = stack.config(sip_port=sip_port, kamailio_port=kam.port,
                                mqtt_port=mosq.port, web_port=web_port)
            data["sip"].update(rtp_port_min=lo, rtp_port_max=lo + 4)
            cfg = tmp_path / "controlroom.toml"
            cfg.write_text(toml_dump(data))
            log = tmp_path / "serve.log"
            db = tmp_path / "data" / "controlroom.sqlite3"
            proc = serve(cfg, log)
            first = second = None
            try:
                await asyncio.to_thread(wait_serving, log, proc, 1)
                first = Sipp(scenarios.caller(dialled="999", caller_id="07700900111",
                                              pcap=old.pcap, hangup="remote",
                                              wait_bye_ms=60000),
                             target=kam.addr, timeout=60, name="old-caller").start()
                await wait_until(lambda: db.exists() and len(_rows(db)) == 1, 30, "first call")
                await asyncio.sleep(1.0)  # its media flows into port lo + 4
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = serve(cfg, log)
                await asyncio.to_thread(wait_serving, log, proc, 2)
                await asyncio.to_thread(first.stop)  # the old call's signalling is gone...
                # ... but its media address keeps sending to the old port (a stale stream)
                stale.bind(("127.0.0.1", first.media_port))
                stale.setblocking(False)

                async def stream_stale() -> None:
                    """The old clip in real time, each packet repeated about every
                    millisecond, so it reaches the port as soon as the new call binds it."""
                    nonlocal stale_sent
                    loop = asyncio.get_running_loop()
                    start = loop.time()
                    while (i := int((loop.time() - start) / 0.02)) < len(old.packets):
                        stale.sendto(old.packets[i].to_bytes(), ("127.0.0.1", lo + 4))
                        stale_sent += 1
                        await asyncio.sleep(0.001)

                streaming = asyncio.create_task(stream_stale())
                await asyncio.sleep(0.3)  # the stale stream is there before the next call
                second = Sipp(scenarios.caller(dialled="999", caller_id="07700900222",
                                               pcap=new.pcap,
                                               talk_ms=int(new.duration * 1000) + 600),
                              target=kam.addr, timeout=60, name="new-caller").start()
                assert await asyncio.to_thread(second.wait, 30) == 0, second.diagnostics()
                assert not streaming.done(), "the stale stream must outlast the new call"
                assert f"m=audio {lo + 4} RTP/AVP" in second.messages_text(), "not the old port"
                await wait_until(lambda: any(r["caller"] == "07700900222" and r["recording_sha256"]
                                             for r in _rows(db)), 30, "second call sealed")
                async with aiohttp.ClientSession() as http, \
                        http.get(f"http://127.0.0.1:{web_port}/metrics") as r:
                    metrics = await r.text()
                streaming.cancel()
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                for s in (first, second):
                    if s is not None:
                        await asyncio.to_thread(s.stop)
                for b in (*blockers, stale):
                    b.close()
    row = next(r for r in _rows(db) if r["caller"] == "07700900222")
    rec, channels, _ = speech.read_wav(Path(str(row["recording_path"])))
    left = rec[:, 0]
    n, found, _ = speech.frames_in_order(new.sent, left)
    assert found == n, f"new caller: {found}/{n} frames bit-exact"
    hay = left.tobytes()
    leaked = sum(1 for i in range(0, len(old.sent) - 159, 160)
                 if np.abs(old.sent[i:i + 160].astype(np.int32)).max() > 8
                 and old.sent[i:i + 160].tobytes() in hay)
    assert leaked == 0, f"{leaked} frames of the old call reached the new call's recording"
    foreign = next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith('controlroom_engine{stat="rtp_foreign"}'))
    assert foreign >= 100, (foreign, stale_sent)
