"""Consult, conference and transfer to another agency through the real parts (issue 17
item 5): Kamailio, a SIPp caller, a SIPp handler phone and a SIPp "ambulance" phone
(its number from config), each playing its own tone; what every phone received is
captured on the wire and the tones it heard are measured, step by step."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from console.backend import Conflict
from controlroom.desk import ServiceDesk
from controlroom.stack import DOMAIN, Stack, StackOptions
from harness import scenarios
from harness.sipp import RtpCapture, Sipp

from .conftest import wait_until
from .monitor_setup import heard as heard_tones
from .monitor_setup import received, tone

pytestmark = [pytest.mark.realparts]

CALLER_HZ, HANDLER_HZ, AGENCY_HZ, PROMPT_HZ = 600.0, 1000.0, 2200.0, 400.0
PHASE_S = 3.0


def heard(pcm: np.ndarray) -> set[float]:
    """The tones of this test present in ``pcm``: those carrying over 5 % of its energy."""
    return heard_tones(pcm, (CALLER_HZ, HANDLER_HZ, AGENCY_HZ, PROMPT_HZ))


async def test_consult_conference_and_transfer_to_the_ambulance(tmp_path: Path) -> None:
    """Consult: the caller hears the hold prompt (never silence), handler and ambulance
    hear each other only. Conference: all three hear each other. Transfer: caller and
    ambulance only, the handler's phone is released into wrap-up, the call stays
    recorded until it ends. Each step is in the call's queue log."""
    opts = StackOptions(handlers=1, engine="none", ring_ms=200,
                        handler_pcm=tone(HANDLER_HZ, 40),
                        consult_numbers={"ambulance": f"sip:ambulance@{DOMAIN}"})
    async with Stack(tmp_path, opts) as st:
        amb_clip = st.pcm_clip(tone(AGENCY_HZ, 40), name="ambulance")
        (tmp_path / "phone-ambulance").mkdir()
        amb = Sipp(scenarios.handler(user="ambulance", ring_ms=300, pcap=amb_clip.pcap,
                                     hangup="remote"),
                   calls=10, timeout=300, name="phone-ambulance", trace_msg=False,
                   workdir=tmp_path / "phone-ambulance")
        await asyncio.to_thread(lambda: st._exit.enter_context(amb))
        await asyncio.to_thread(st.kamailio.register, "ambulance", amb.contact("ambulance"))
        desk = ServiceDesk(st.service)
        assert desk.consult_numbers() == ["ambulance"]

        caller_clip = st.pcm_clip(tone(CALLER_HZ, 40), name="caller")
        caller = st.call("999", caller="07700900888", clip=caller_clip, talk_s=25)
        ports = {"caller": caller.media_port, "handler": st.phones["h1"].media_port,
                 "agency": amb.media_port}
        cap = await asyncio.to_thread(RtpCapture(list(ports.values()), workdir=tmp_path).start)
        try:
            await wait_until(lambda: any(c.state == "connected"
                                         for c in st.service.calls.values()), 15, "answered")
            call_id = next(iter(st.service.calls))
            with pytest.raises(Conflict, match="no consult number"):
                await desk.consult(call_id, "h1", "call", "spaceforce")
            marks: dict[str, tuple[float, float]] = {}
            await desk.consult(call_id, "h1", "call", "ambulance")
            await wait_until(lambda: (c := st.service.consults.of_call(call_id)) is not None
                             and c.step == "consult", 15, "ambulance answered")
            for step in ("consult", "conference", "transfer"):
                if step != "consult":
                    await desk.consult(call_id, "h1", step)
                start = time.time() + 0.5
                await asyncio.sleep(PHASE_S)
                marks[step] = (start, time.time())
                if step == "transfer":
                    h1 = st.service.router.handler_info("h1")
                    assert h1 is not None and h1["state"] in ("wrap_up", "available"), h1
            assert await asyncio.to_thread(caller.wait, 40) == 0, caller.diagnostics()
            await wait_until(lambda: st.service.db.query_one(
                "SELECT 1 FROM calls WHERE call_id=? AND ended_at IS NOT NULL", (call_id,)),
                15, "call ended")
        finally:
            await asyncio.to_thread(cap.stop)
        packets = await asyncio.to_thread(cap.packets)
        got = {s: {who: heard(received(packets, port, *marks[s]))
                   for who, port in ports.items()} for s in marks}
        assert got["consult"]["caller"] <= {PROMPT_HZ} and got["consult"]["caller"], got
        assert got["consult"]["handler"] == {AGENCY_HZ}, got
        assert got["consult"]["agency"] == {HANDLER_HZ}, got
        assert got["conference"] == {"caller": {HANDLER_HZ, AGENCY_HZ},
                                     "handler": {CALLER_HZ, AGENCY_HZ},
                                     "agency": {CALLER_HZ, HANDLER_HZ}}, got
        assert got["transfer"]["caller"] == {AGENCY_HZ}, got
        assert got["transfer"]["agency"] == {CALLER_HZ}, got
        assert got["transfer"]["handler"] == set(), got
        row = st.service.db.query_one("SELECT * FROM calls WHERE call_id=?", (call_id,))
        assert row["state"] == "completed" and row["handler_id"] == "h1", dict(row)
        assert row["recording_sha256"], dict(row)
        log = st.service.db.query("SELECT event, handler_id, data FROM queue_log "
                                  "WHERE call_id=? ORDER BY id", (call_id,))
        steps = [(r["event"], json.loads(r["data"]).get("agency")) for r in log
                 if r["event"].startswith(("CONSULT", "CONFERENCE"))]
        assert steps[:4] == [("CONSULT_RING", "ambulance"), ("CONSULT", "ambulance"),
                             ("CONFERENCE", "ambulance"), ("CONSULT_TRANSFER", "ambulance")]
        assert [r["event"] for r in log].count("COMPLETE") == 1
