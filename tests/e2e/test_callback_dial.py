"""Click-to-dial a call-back through the real parts (issue 17 item 2): a 999 caller hangs
up while queued; the handler takes the call-back and dials it; the engine calls the
caller (a SIPp phone registered under the caller's number) through Kamailio, rings the
handler's phone, bridges them; the new call is recorded (both sides bit-exact), linked
to the abandoned one and published to the CAD."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from cad.schema import validate
from console.backend import Conflict
from controlroom.desk import ServiceDesk
from controlroom.stack import Stack, StackOptions
from harness import scenarios
from harness.sipp import Sipp

from .audio import frames_found_in_order
from .conftest import wait_until
from .test_service_e2e import read_stereo

pytestmark = [pytest.mark.realparts]

NUMBER = "07700900555"


async def test_handler_dials_a_call_back_and_it_is_a_linked_recorded_call(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """Abandoned 999 -> call-back taken -> Dial: caller's phone rings and answers, the
    handler's phone rings and is bridged; the new call has linked_call_id, a recording
    with both sides bit-exact, CAD call.arrived/answered/ended, DIAL in the queue log."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False, ring_ms=200)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        desk = ServiceDesk(st.service)
        gone = st.call("999", caller=NUMBER, talk_s=1.5)
        assert await asyncio.to_thread(gone.wait, 30) == 0, gone.diagnostics()
        await wait_until(lambda: bool(st.service.router.callbacks()), 15, "call-back listed")
        cb = st.service.router.callbacks()[0]
        with pytest.raises(Conflict, match="take the call-back first"):
            await desk.dial_callback(cb.cb_id, "h1")
        await desk.set_handler_state("h1", "available")
        await desk.take_callback(cb.cb_id, "h1")

        # The caller's phone: registered under their number, plays its own speech.
        clip = await asyncio.to_thread(st.clip, "Hello, yes, I called about the crash.",
                                       lead_s=0.5, name="callee")
        (tmp_path / "callee").mkdir()
        callee = Sipp(scenarios.handler(user=NUMBER, ring_ms=300, pcap=clip.pcap,
                                        hangup="handler", talk_ms=7000),
                      calls=1, timeout=120, name="callee", trace_msg=False,
                      workdir=tmp_path / "callee")
        await asyncio.to_thread(lambda: st._exit.enter_context(callee))
        await asyncio.to_thread(st.kamailio.register, NUMBER, callee.contact(NUMBER))

        call_id = await desk.dial_callback(cb.cb_id, "h1")
        assert st.service.router.handler_info("h1")["state"] == "not_ready"
        await wait_until(lambda: st.service.db.query_one(
            "SELECT 1 FROM calls WHERE call_id=? AND ended_at IS NOT NULL AND "
            "recording_sha256 IS NOT NULL", (call_id,)), 40, "call-back call ended")
        row = dict(st.service.db.query_one("SELECT * FROM calls WHERE call_id=?", (call_id,)))
        assert row["linked_call_id"] == cb.call_id and row["caller"] == NUMBER, row
        assert row["state"] == "completed" and row["handler_id"] == "h1", row
        assert row["ended_by"] == "caller", row
        path = Path(row["recording_path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["recording_sha256"]
        left, right = read_stereo(path)
        sent, found, _ = frames_found_in_order(clip.sent, left)
        assert found == sent, f"callee: {found}/{sent} frames bit-exact"
        sent, found, _ = frames_found_in_order(st.handler_clip.sent, right)
        assert found == sent, f"handler: {found}/{sent} frames bit-exact"
        for t in ("call.arrived", "call.answered", "call.ended"):
            validate(await cad.wait_for(call_id, t, 15))
        arrived = await cad.wait_for(call_id, "call.arrived", 1)
        assert arrived["call"]["linked_call_id"] == cb.call_id, arrived
        log = st.service.db.query("SELECT event, data FROM queue_log WHERE call_id=? "
                                  "ORDER BY id", (call_id,))
        dial = next(json.loads(r["data"]) for r in log if r["event"] == "DIAL")
        assert dial["linked_call_id"] == cb.call_id and dial["cb_id"] == cb.cb_id
        assert "DIAL_CONNECT" in [r["event"] for r in log]
        await wait_until(lambda: st.service.router.handler_info("h1")["state"] == "available",
                         10, "h1 available again")
