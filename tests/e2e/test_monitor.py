"""Supervisor listen, whisper and barge through the real parts (issue 17 item 5):
Kamailio, a SIPp caller, a SIPp handler phone and a SIPp supervisor phone, each playing
its own tone; what every phone received is captured on the wire (dumpcap) and the
tones it heard are measured, mode by mode."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from controlroom.desk import ServiceDesk
from controlroom.stack import DOMAIN, Stack, StackOptions
from harness.sipp import RtpCapture

from .conftest import wait_until
from .monitor_setup import (
    EXPECTED,
    HANDLER_HZ,
    call_in,
    hold,
    supervisor_phone,
    tone,
    tones_heard,
)

pytestmark = [pytest.mark.realparts]


async def test_listen_whisper_and_barge_mix_what_each_side_hears(tmp_path: Path) -> None:
    """Listen: the supervisor hears caller and handler, nobody hears the supervisor.
    Whisper: the handler hears the supervisor too, the caller does not. Barge: all three
    hear each other. Each step is in the call's queue log and on the wallboard."""
    opts = StackOptions(handlers=1, engine="none", ring_ms=200,
                        handler_pcm=tone(HANDLER_HZ, 40))
    async with Stack(tmp_path, opts) as st:
        sup = await supervisor_phone(st, tmp_path, user="sup1", name="phone-sup1", seconds=40)
        desk = ServiceDesk(st.service)
        caller, ports = call_in(st, sup, seconds=40, talk_s=30)
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
                await hold(marks, mode)
            await desk.monitor(call_id, "supervisor", "stop")
            await wait_until(lambda: not st.service.monitors.view(), 10, "monitor ended")
            await hold(marks, "after", 2.0)
        finally:
            await asyncio.to_thread(cap.stop)
        got = await tones_heard(cap, ports, marks)
        assert got == EXPECTED, got
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
