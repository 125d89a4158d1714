"""Random interleavings of caller hang-up, handler answer, reject, ring-out, handler
hang-up and transfer, through the real service and engine on loopback UDP.

Whatever the order, afterwards: no call is left alive (service, router and engine), every
phone that rang got CANCEL or a final answer, every wait in a queue has exactly one
outcome in the CAD outbox (answered, or abandoned) with nothing after the end, abandons are
ABANDON in the queue log (999: on the call-back list), and every handler is in the state
the rules say: not ready only for something that handler did (rejected, or let an offer
ring out), never for a caller who left.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config import from_dict
from controlroom.service import Service
from harness.ports import free_tcp_port, free_udp_port

from .phones import Caller, HandlerPhone

pytestmark = [pytest.mark.faults, pytest.mark.realparts, pytest.mark.slow]

OFFER_TIMEOUT = 1.0
WRAPUP = 0.3
STEP = 0.15
HANDLERS = ("h1", "h2")

OPS = st.sampled_from(["call999", "call101", "hangup", "answer", "reject", "ringout",
                       "transfer", "handler_hangup", "settle"])


def config(workdir: Path, sip_port: int, phones: dict[str, HandlerPhone]) -> dict[str, Any]:
    rtp = free_udp_port() // 2 * 2
    rtp = max(20000, min(rtp, 60000))
    return {
        "drain_timeout": 1.0,
        "sip": {"bind": "127.0.0.1", "port": sip_port, "domain": "fcr.test",
                "rtp_bind": "127.0.0.1", "rtp_port_min": rtp, "rtp_port_max": rtp + 199},
        "lines": [
            {"name": "999", "numbers": ["999"], "priority": 0, "skill": "999",
             "trusted_sources": ["127.0.0.1"], "wrapup": WRAPUP, "callback_on_abandon": True},
            {"name": "101", "numbers": ["101"], "priority": 1, "skill": "101",
             "trusted_sources": ["127.0.0.1"], "wrapup": WRAPUP},
        ],
        "handlers": [{"id": h, "name": h, "phone": p.uri, "skills": ["999", "101"]}
                     for h, p in phones.items()],
        "routing": {"offer_timeout": OFFER_TIMEOUT, "rona_not_ready": True,
                    "handlers_start_available": True},
        "storage": {"data_dir": str(workdir)},
        "mqtt": {"host": "127.0.0.1", "port": free_tcp_port(), "node": "prop"},
        "transcription": {"engine": "none", "live": False},
        "web": {"enabled": False},
    }


async def scenario(workdir: Path, ops: list[tuple[str, int]]) -> None:
    phones = {h: await HandlerPhone(h).start() for h in HANDLERS}
    settings_ = from_dict(config(workdir, free_udp_port(), phones))
    service = Service(settings_)
    await service.start()
    callers: list[Caller] = []
    # What each phone did that the rules may hold against its handler.
    rejected: dict[str, int] = dict.fromkeys(HANDLERS, 0)
    try:
        for op, k in ops:
            live = [c for c in callers if c.ok is not None and not getattr(c, "gone", False)]
            ringing = [(p, cid) for p in phones.values() for cid in p.ringing()]
            answered = [(p, cid) for p in phones.values() for cid in p.answered()]
            connected = [c for c in service.calls.values() if c.state == "connected"]
            if op in ("call999", "call101"):
                c = Caller(service.engine.sip_port, number=op[4:])
                await c.dial()
                callers.append(c)
            elif op == "hangup" and live:
                c = live[k % len(live)]
                c.hangup()
                c.gone = True  # type: ignore[attr-defined]
            elif op == "answer" and ringing:
                p, cid = ringing[k % len(ringing)]
                p.answer(cid)
            elif op == "reject" and ringing:
                p, cid = ringing[k % len(ringing)]
                p.reject(cid)
                rejected[p.handler_id] += 1
            elif op == "ringout":
                await asyncio.sleep(OFFER_TIMEOUT + 0.3)
            elif op == "transfer" and connected:
                call = connected[k % len(connected)]
                other = "101" if call.line == "999" else "999"
                service.transfer(call, to_line=other, to_handler=None)
            elif op == "handler_hangup" and answered:
                p, cid = answered[k % len(answered)]
                p.hangup(cid)
            await asyncio.sleep(STEP)

        # Everyone still on the line hangs up; then the room must be quiet.
        for c in callers:
            if c.ok is not None and not getattr(c, "gone", False):
                c.hangup()
        deadline = time.monotonic() + 10
        while (service.calls or service.engine._calls or service.engine._legs) and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(WRAPUP + 0.5)  # wrap-ups end; late CANCEL/BYE land
        service._apply(service.router.tick(time.time()))

        assert not service.calls, f"calls left alive: {list(service.calls)}"
        assert not service.engine._calls and not service.engine._legs, "engine calls/legs left"
        assert not service.router.calls, f"router calls left: {list(service.router.calls)}"

        # Every phone that rang was told the outcome: no offer left ringing.
        for p in phones.values():
            assert not p.ringing(), f"{p.handler_id}: offers never cancelled {p.ringing()}"
            assert not p.answered(), f"{p.handler_id}: answered legs never hung up"

        # Handler states: not ready only for something the handler itself did.
        for h, p in phones.items():
            info = service.router.handler_info(h)
            assert info is not None
            rang_out = sum(1 for o in p.offers.values() if o.state == "cancelled")
            if info["state"] == "not_ready":
                assert info["reason"] in ("rejected", "missed call"), info
                if info["reason"] == "rejected":
                    assert rejected[h], f"{h} not ready (rejected) but never rejected"
                else:
                    assert rang_out, f"{h} not ready (missed call) but no offer rang out"
            else:
                assert info["state"] == "available", info

        # The record: one outcome per call, nothing after the end, abandons logged.
        rows = service.db.query("SELECT call_id, line FROM calls")
        for row in rows:
            cid, line = row["call_id"], row["line"]
            types = [r["type"] for r in service.db.query(
                "SELECT type FROM outbox WHERE call_id=? ORDER BY seq", (cid,))]
            assert types.count("call.ended") == 1, (cid, types)
            after_end = types[types.index("call.ended") + 1:]
            assert set(after_end) <= {"call.recording", "call.transcript", "call.wrapup"}, types
            # Each wait in a queue (arrival, or after a ring-out, reject or transfer: a
            # call.queued) ends in exactly one outcome: answered, or abandoned by the
            # caller (a transferred caller who hangs up while waiting again abandons).
            last_wait = len(types) - 1 - types[::-1].index("call.queued")
            outcomes = [t for t in types[last_wait:] if t in ("call.answered",
                                                               "call.abandoned")]
            assert len(outcomes) == 1, (cid, types)
            abandoned = types.count("call.abandoned")
            assert abandoned <= 1, (cid, types)
            if abandoned:
                i = types.index("call.abandoned")
                assert not {"call.offer_failed", "call.queued", "call.offered"} & \
                    set(types[i + 1:]), types
                log = [(r["event"], json.loads(r["data"])) for r in service.db.query(
                    "SELECT event, data FROM queue_log WHERE call_id=? ORDER BY id", (cid,))]
                events = [e for e, _ in log]
                assert events.count("ABANDON") == 1, events
                assert not any(e == "OFFERFAIL" and d.get("reason") in ("cancelled",
                                                                        "caller-gone")
                               for e, d in log), log
                if line == "999" and not any(t == "call.transferred" for t in types):
                    assert "CALLBACK_ADD" in events, events
    finally:
        await service.stop()
        for c in callers:
            await c.close()
        for p in phones.values():
            await p.stop()


@settings(max_examples=int(__import__("os").environ.get("INTERLEAVINGS", "8")),
          deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(st.tuples(OPS, st.integers(0, 5)), min_size=3, max_size=12))
@example(ops=[("answer", 0), ("transfer", 0), ("settle", 0)])  # answered, transferred, left
def test_random_interleavings_leave_no_call_alive_and_no_handler_blamed(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    """Any order of hang-ups, answers, rejects, ring-outs and transfers: no call left
    alive, one outcome per call, handlers not ready only for what they did."""
    ops = [("call999", 0), *ops]
    asyncio.run(scenario(tmp_path_factory.mktemp("prop"), ops))


def test_caller_hangs_up_while_phone_rings_keeps_handler_available(
        tmp_path: Path) -> None:
    """The defect as reported, three times in a row: each abandon CANCELs the ringing
    phone, the handler stays available, and the next 999 call is offered to them."""
    ops = [("call999", 0), ("settle", 0), ("hangup", 0)] * 3 + [("call999", 0), ("settle", 0)]

    async def run() -> None:
        phones = {h: await HandlerPhone(h).start() for h in ("h1",)}
        service = Service(from_dict(config(tmp_path, free_udp_port(), phones)))
        await service.start()
        callers: list[Caller] = []
        try:
            for op, _ in ops:
                if op == "call999":
                    c = Caller(service.engine.sip_port)
                    await c.dial()
                    callers.append(c)
                elif op == "hangup":
                    callers[-1].hangup()
                await asyncio.sleep(0.3)
            p = phones["h1"]
            assert p.cancels == 3, f"CANCELs received: {p.cancels}"
            assert len(p.ringing()) == 1, "the fourth call is ringing h1"
            assert service.router.handler_info("h1")["state"] == "offered"
            log = [r["event"] for r in service.db.query("SELECT event FROM queue_log")]
            assert log.count("ABANDON") == 3 and "OFFERFAIL" not in log, log
            assert log.count("CALLBACK_ADD") == 3, log
            types = [r["type"] for r in service.db.query("SELECT type FROM outbox")]
            assert types.count("call.abandoned") == 3 and "call.offer_failed" not in types
        finally:
            await service.stop()
            for c in callers:
                await c.close()
            await phones["h1"].stop()

    asyncio.run(run())
