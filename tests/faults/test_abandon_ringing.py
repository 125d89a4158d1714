"""Callers who hang up while a handler's phone rings, through the real parts: SIPp
callers and a SIPp handler phone registered to Kamailio, Mosquitto as the CAD broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controlroom.stack import Stack, StackOptions
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.realparts, pytest.mark.slow]


async def test_abandons_while_ringing_never_take_the_handler_out_of_service(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """Three 999 callers hang up while h1's phone rings: the phone gets CANCEL each time,
    the CAD gets exactly one call.abandoned per call and no offer failure, the queue log
    says ABANDON, each is on the call-back list, h1 stays available, and the fourth 999
    call is offered to h1 at once."""
    opts = StackOptions(handlers=1, engine="none", offer_timeout=20.0,
                        ring_ms_by_handler={"h1": 60000})
    async with Stack(tmp_path, opts) as st:
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        svc = st.service
        phone = st.phones["h1"]
        for i in range(3):
            caller = st.call("999", caller=f"0770090000{i}", talk_s=2.0, name=f"abandon{i}")
            assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()
            await wait_until(lambda: not svc.calls, 10, "abandoned call closed")
            await wait_until(lambda n=i + 1: phone.successful >= n, 10,
                             f"handler phone saw CANCEL #{i + 1}")
            assert svc.router.handler_info("h1")["state"] == "available"

        rows = svc.db.query("SELECT call_id, state FROM calls ORDER BY arrived_at")
        assert [r["state"] for r in rows] == ["abandoned"] * 3
        for r in rows:
            await cad.wait_for(r["call_id"], "call.ended", 15)
            types = [m["type"] for m in sorted(cad.for_call(r["call_id"]),
                                               key=lambda m: m["seq"])]
            assert types.count("call.abandoned") == 1, types
            assert "call.offer_failed" not in types, types
            assert types.index("call.offered") < types.index("call.abandoned"), types
            assert "call.queued" not in types[types.index("call.abandoned"):], types
        log = [r["event"] for r in svc.db.query("SELECT event FROM queue_log")]
        assert log.count("ABANDON") == 3 and "OFFERFAIL" not in log, log
        assert log.count("RINGCANCELED") == 3, log
        assert len(svc.router.callbacks()) == 3
        assert phone.failed == 0, phone.diagnostics()

        # The room is still in service: the next 999 call rings h1 straight away.
        nxt = st.call("999", caller="07700900009", talk_s=3.0, name="next")
        await wait_until(lambda: svc.router.handler_info("h1")["state"] == "offered", 5,
                         "fourth call offered to h1")
        await asyncio.to_thread(nxt.wait, 30)
