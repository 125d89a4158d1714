"""Transfer rules through the real parts (issue 17 item 5): a call moved to another
queue is not offered back to the handler who moved it, and a 999 keeps its line and
priority when it goes to the 101 queue (the desk must confirm that move first)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from console.backend import Conflict
from controlroom.desk import ServiceDesk
from controlroom.stack import Stack, StackOptions

from .conftest import wait_until

pytestmark = [pytest.mark.realparts]


async def test_999_to_101_queue_keeps_priority_and_skips_the_transferor(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """h1 answers a 999 and moves it to the 101 queue: refused until confirmed; then it
    waits ahead of an older 101 caller, is not offered back to h1 (free again after
    wrap-up), is answered by h2, and stays a 999 call in the records."""
    opts = StackOptions(handlers=2, engine="none", handlers_available=False, ring_ms=200,
                        wrapup=1.0)
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        desk = ServiceDesk(st.service)
        await desk.set_handler_state("h1", "available")
        caller = st.call("999", caller="07700900321", talk_s=20)
        await wait_until(lambda: any(c.state == "connected" for c in st.service.calls.values()),
                         15, "999 answered by h1")
        call = next(iter(st.service.calls.values()))
        assert call.handler_id == "h1"
        waiting_101 = st.call("101", caller="01214960321", talk_s=20)
        await wait_until(lambda: len(st.service.calls) == 2, 15, "101 caller queued")
        with pytest.raises(Conflict, match="needs confirming"):
            await desk.transfer(call.call_id, to_line="101")
        assert call.state == "connected" and call.handler_id == "h1"
        await desk.transfer(call.call_id, to_line="101", confirm=True)
        assert call.state == "queued" and call.priority == 0
        assert st.service.router.position(call.call_id) == 1
        # h1's wrap-up (1 s) ends and h1 is free again: the 101 caller behind goes to h1,
        # the 999 does not come back to whoever transferred it.
        await wait_until(lambda: st.service.router.handler_info("h1")["state"]
                         in ("offered", "on_call"), 15, "h1 offered the next call")
        other = next(c for c in st.service.calls.values() if c.call_id != call.call_id)
        await wait_until(lambda: other.handler_id == "h1", 10, "the 101 call offered to h1")
        await asyncio.sleep(1.0)
        assert call.state == "queued" and call.handler_id is None
        await desk.set_handler_state("h2", "available")
        await wait_until(lambda: call.state == "connected" and call.handler_id == "h2", 15,
                         "the 999 answered by h2")
        await cad.wait_for(call.call_id, "call.transferred", 10)
        row = st.service.db.query_one("SELECT line, priority FROM calls WHERE call_id=?",
                                      (call.call_id,))
        assert row["line"] == "999", dict(row)
        log = st.service.db.query(
            "SELECT event, handler_id, data FROM queue_log WHERE call_id=? ORDER BY id",
            (call.call_id,))
        events = [(r["event"], r["handler_id"]) for r in log]
        assert [e for e in events if e[0] == "OFFER"] == [("OFFER", "h1"), ("OFFER", "h2")]
        xfer = next(json.loads(r["data"]) for r in log if r["event"] == "TRANSFER")
        assert xfer["to_line"] == "101" and xfer["kept_priority"] == 0
        for c in (caller, waiting_101):
            await asyncio.to_thread(c.stop)
