"""Supervisor listen, whisper and barge through the real parts (issue 17 item 5):
Kamailio, a SIPp caller, a SIPp handler phone and a SIPp supervisor phone, each playing
its own tone; what every phone received is captured on the wire (dumpcap) and the
tones it heard are measured, mode by mode."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from controlroom.desk import ServiceDesk
from controlroom.stack import DOMAIN, Stack, StackOptions
from harness import scenarios, speech
from harness.sipp import RtpCapture, Sipp

from .conftest import wait_until

pytestmark = [pytest.mark.realparts]

CALLER_HZ, HANDLER_HZ, SUPERVISOR_HZ = 440.0, 1000.0, 2200.0
PHASE_S = 3.0


def tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000.0
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def heard(pcm: np.ndarray) -> set[float]:
    """The tones present in ``pcm``: those carrying over 5 % of its energy."""
    if len(pcm) < 800:
        return set()
    spec = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 8000)
    total = spec.sum() or 1.0
    return {hz for hz in (CALLER_HZ, HANDLER_HZ, SUPERVISOR_HZ)
            if spec[(freqs > hz - 20) & (freqs < hz + 20)].sum() / total > 0.05}


def received(packets: list, port: int, start: float, end: float) -> np.ndarray:
    """What the phone on RTP ``port`` was sent between ``start`` and ``end`` (wall clock)."""
    got = sorted((p for p in packets if p.dst[1] == port and start <= p.time < end
                  and p.rtp.pt in (0, 8)), key=lambda p: p.time)
    if not got:
        return np.zeros(0, dtype=np.int16)
    codec = "PCMA" if got[0].rtp.pt == 8 else "PCMU"
    return speech.decode(b"".join(p.rtp.payload for p in got), codec)


async def test_listen_whisper_and_barge_mix_what_each_side_hears(tmp_path: Path) -> None:
    """Listen: the supervisor hears caller and handler, nobody hears the supervisor.
    Whisper: the handler hears the supervisor too, the caller does not. Barge: all three
    hear each other. Each step is in the call's queue log and on the wallboard."""
    opts = StackOptions(handlers=1, engine="none", ring_ms=200,
                        handler_pcm=tone(HANDLER_HZ, 40))
    async with Stack(tmp_path, opts) as st:
        sup_clip = st.pcm_clip(tone(SUPERVISOR_HZ, 40), name="supervisor")
        (tmp_path / "phone-sup1").mkdir()
        sup = Sipp(scenarios.handler(user="sup1", ring_ms=200, pcap=sup_clip.pcap,
                                     hangup="remote"),
                   calls=10, timeout=300, name="phone-sup1", trace_msg=False,
                   workdir=tmp_path / "phone-sup1")
        await asyncio.to_thread(lambda: st._exit.enter_context(sup))
        await asyncio.to_thread(st.kamailio.register, "sup1", sup.contact("sup1"))
        desk = ServiceDesk(st.service)

        caller_clip = st.pcm_clip(tone(CALLER_HZ, 40), name="caller")
        caller = st.call("999", caller="07700900777", clip=caller_clip, talk_s=30)
        ports = {"caller": caller.media_port, "handler": st.phones["h1"].media_port,
                 "supervisor": sup.media_port}
        cap = await asyncio.to_thread(
            RtpCapture(list(ports.values()), workdir=tmp_path).start)
        try:
            await wait_until(lambda: any(c.state == "connected"
                                         for c in st.service.calls.values()), 15, "answered")
            call_id = next(iter(st.service.calls))
            marks: dict[str, tuple[float, float]] = {}
            for mode in ("listen", "whisper", "barge"):
                await desk.monitor(call_id, "supervisor", mode, phone=f"sip:sup1@{DOMAIN}")
                await wait_until(lambda m=mode: any(
                    x["mode"] == m and x["state"] == "on" for x in st.service.monitors.view()),
                    15, f"{mode} on")
                if mode == "listen":
                    snap = await desk.snapshot()
                    assert [(m["supervisor"], m["mode"]) for m in snap["monitors"]] == \
                        [("supervisor", "listen")]
                start = time.time() + 0.5
                await asyncio.sleep(PHASE_S)
                marks[mode] = (start, time.time())
            await desk.monitor(call_id, "supervisor", "stop")
            await wait_until(lambda: not st.service.monitors.view(), 10, "monitor ended")
            start = time.time() + 0.5
            await asyncio.sleep(2.0)
            marks["after"] = (start, time.time())
        finally:
            await asyncio.to_thread(cap.stop)
        packets = await asyncio.to_thread(cap.packets)
        got = {mode: {who: heard(received(packets, port, *marks[mode]))
                      for who, port in ports.items()} for mode in marks}
        assert got["listen"] == {"caller": {HANDLER_HZ}, "handler": {CALLER_HZ},
                                 "supervisor": {CALLER_HZ, HANDLER_HZ}}, got
        assert got["whisper"] == {"caller": {HANDLER_HZ},
                                  "handler": {CALLER_HZ, SUPERVISOR_HZ},
                                  "supervisor": {CALLER_HZ, HANDLER_HZ}}, got
        assert got["barge"] == {"caller": {HANDLER_HZ, SUPERVISOR_HZ},
                                "handler": {CALLER_HZ, SUPERVISOR_HZ},
                                "supervisor": {CALLER_HZ, HANDLER_HZ}}, got
        # the call goes on as before: the caller talks to the handler only again
        assert got["after"] == {"caller": {HANDLER_HZ}, "handler": {CALLER_HZ},
                                "supervisor": set()}, got
        assert st.service.calls[call_id].state == "connected"
        rows = st.service.db.query("SELECT event, handler_id, data FROM queue_log "
                                   "WHERE call_id=? AND event LIKE 'MONITOR%' ORDER BY id",
                                   (call_id,))
        steps = [(r["event"], r["handler_id"], json.loads(r["data"])["mode"]) for r in rows]
        assert steps == [("MONITOR_RING", "supervisor", "listen"),
                         ("MONITOR", "supervisor", "listen"),
                         ("MONITOR", "supervisor", "whisper"),
                         ("MONITOR", "supervisor", "barge"),
                         ("MONITOR_END", "supervisor", "barge")], steps
        await asyncio.to_thread(caller.stop)
