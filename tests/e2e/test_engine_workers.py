"""``sip.engine_workers = 2`` end to end: two engine processes behind Kamailio's
dispatcher, commanded by the service through the same event/command interface.
Real Kamailio, SIPp callers and handler phones with RTP, Mosquitto, SQLite."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import signal
import wave
from pathlib import Path

import numpy as np
import pytest

from controlroom.stack import Stack, StackOptions
from telephony.workers import WORKER_DIED, EngineWorkers

from .audio import frames_found_in_order
from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]


def _worker_of(call_id: str) -> int:
    return int(call_id.split("-w", 1)[1].split("-", 1)[0])


async def test_calls_spread_over_two_workers_offered_bridged_recorded_published(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """999 and 101 calls land on both worker processes, are offered to handler phones,
    bridged and recorded in full (caller audio bit-exact), and the CAD gets every event."""
    opts = StackOptions(handlers=4, engine="none", ring_ms=300, engine_workers=2)
    async with Stack(tmp_path, opts) as st:
        engine = st.service.engine
        assert isinstance(engine, EngineWorkers)
        pids = [w.pid for w in engine.workers]
        assert len(set(pids)) == 2 and os.getpid() not in pids
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        clip = await asyncio.to_thread(st.clip, "Help, there is a fire in the kitchen.",
                                       lead_s=1.5, voice="en-us")
        # Kamailio's dispatcher takes a worker into its rotation once it answered an
        # OPTIONS probe (every 1 s): give both workers two probes.
        await asyncio.sleep(2.5)
        callers = []
        for i, dialled in enumerate(("999", "101", "999", "101")):
            callers.append(st.call(dialled, caller=f"0770090010{i}", clip=clip,
                                   talk_s=clip.duration + 1.5, name=f"c{i}"))
            await asyncio.sleep(0.3)
        for c in callers:
            assert await asyncio.to_thread(c.wait, 90) == 0, c.diagnostics()
        await wait_until(lambda: len(st.service.db.query(
            "SELECT 1 FROM calls WHERE ended_at IS NOT NULL AND recording_sha256 IS NOT NULL"))
            == 4, 30, "four calls ended and recorded")
        rows = [dict(r) for r in st.service.db.query("SELECT * FROM calls")]
        assert sorted(r["line"] for r in rows) == ["101", "101", "999", "999"]
        assert {_worker_of(r["call_id"]) for r in rows} == {0, 1}, [r["call_id"] for r in rows]
        for r in rows:
            assert r["state"] == "completed" and r["handler_id"] in ("h1", "h2", "h3", "h4"), r
            path = Path(r["recording_path"])
            assert path.parent.name == f"w{_worker_of(r['call_id'])}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == r["recording_sha256"]
            with wave.open(str(path)) as w:
                assert (w.getnchannels(), w.getframerate()) == (2, 8000)
                a = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
            assert abs(len(a) / 8000 - r["talk"] - r["wait"]) < 1.0
            sent, found, _ = frames_found_in_order(clip.sent, a[:, 0].copy())
            assert found == sent, f"{r['call_id']}: {found}/{sent} caller frames bit-exact"
            await cad.wait_for(r["call_id"], "call.ended", 30)
            types = [m["type"] for m in sorted(cad.for_call(r["call_id"]),
                                               key=lambda m: m["seq"])]
            for t in ("call.arrived", "call.offered", "call.answered", "call.recording",
                      "call.ended"):
                assert t in types, (r["call_id"], types)
        assert engine.stats.invites >= 4


async def test_killed_worker_ends_its_calls_others_go_on_and_it_restarts(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """kill -9 of one worker: its connected call is ended in the store (and on the CAD)
    as the worker's death, the other worker's call goes on to a normal end, the dead
    worker is restarted, and the next call is answered and handled."""
    opts = StackOptions(handlers=4, engine="none", ring_ms=300, engine_workers=2)
    async with Stack(tmp_path, opts) as st:
        engine = st.service.engine
        assert isinstance(engine, EngineWorkers)
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        # Calls until each worker holds one (Kamailio's dispatcher takes the workers into
        # its rotation as their OPTIONS probes are answered, so the first calls after
        # start may all land on one).
        callers = {}
        for i in range(4):
            number = f"0770090020{i}"
            callers[number] = st.call("999", caller=number, talk_s=20, name=f"long{i}")
            await wait_until(lambda n=i: sum(c.state == "connected"
                                             for c in st.service.calls.values()) == n + 1,
                             30, f"call {i} connected")
            if {_worker_of(c) for c in st.service.calls} == {0, 1}:
                break
        live = {c.call_id: c.caller for c in st.service.calls.values()}
        assert {_worker_of(c) for c in live} == {0, 1}, live
        victim = engine.workers[0]
        victim_call = next(c for c in live if _worker_of(c) == 0)
        survivors = [c for c in live if _worker_of(c) == 1]
        old_pid = victim.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await wait_until(lambda: st.service.db.query_one(
            "SELECT 1 FROM calls WHERE call_id = ? AND ended_at IS NOT NULL", (victim_call,)),
            15, "the dead worker's call ended on the record")
        row = dict(st.service.db.query_one("SELECT * FROM calls WHERE call_id = ?",
                                           (victim_call,)))
        assert row["ended_by"] == "system" and row["end_reason"] == WORKER_DIED, row
        ended = await cad.wait_for(victim_call, "call.ended", 15)
        assert WORKER_DIED in str(ended), ended
        # the other worker's calls are untouched and end normally
        for cid in survivors:
            assert st.service.calls[cid].state == "connected"
            sipp = callers[live[cid]]
            assert await asyncio.to_thread(sipp.wait, 60) == 0, sipp.diagnostics()
            await wait_until(lambda c=cid: st.service.db.query_one(
                "SELECT 1 FROM calls WHERE call_id = ? AND state = 'completed'", (c,)),
                15, "a survivor's call completed")
        # restarted, under a new pid, on the same SIP port; the restarted engine seals
        # the dead one's recording, which reaches the record
        await wait_until(lambda: victim.up and victim.pid != old_pid, 20, "worker restarted")
        await wait_until(lambda: st.service.db.query_one(
            "SELECT 1 FROM calls WHERE call_id = ? AND recording_sha256 IS NOT NULL",
            (victim_call,)), 20, "the dead worker's recording on the record")
        row = dict(st.service.db.query_one("SELECT * FROM calls WHERE call_id = ?",
                                           (victim_call,)))
        path = Path(row["recording_path"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["recording_sha256"]
        await asyncio.to_thread(callers[live[victim_call]].stop)
        # the next calls are answered and handled, whichever worker they land on
        nexts = [st.call("999", caller=f"0770090030{i}", talk_s=3, name=f"next{i}")
                 for i in range(2)]
        for c in nexts:
            assert await asyncio.to_thread(c.wait, 60) == 0, c.diagnostics()
        await wait_until(lambda: len(st.service.db.query(
            "SELECT 1 FROM calls WHERE caller LIKE '077009003%' AND state = 'completed'")) == 2,
            20, "next calls completed")


async def test_call_back_dial_with_two_workers(tmp_path: Path, cad_subscriber_factory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The call-back flow (tests/e2e/test_callback_dial.py, every assertion of it) with
    the engine in two worker processes: dial-out through a worker, handler rung,
    bridged, recorded bit-exact, linked and published."""
    from tests.e2e import test_callback_dial as mod

    monkeypatch.setattr(mod, "StackOptions", functools.partial(StackOptions, engine_workers=2))
    await mod.test_handler_dials_a_call_back_and_it_is_a_linked_recorded_call(
        tmp_path, cad_subscriber_factory)


async def test_monitor_with_two_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Supervisor listen / whisper / barge (tests/e2e/test_monitor.py, every assertion
    of it: the tones each phone hears) with the engine in two worker processes."""
    from tests.e2e import test_monitor as mod

    monkeypatch.setattr(mod, "StackOptions", functools.partial(StackOptions, engine_workers=2))
    await mod.test_listen_whisper_and_barge_mix_what_each_side_hears(tmp_path)


async def test_consult_with_two_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Consult, conference and transfer to another agency (tests/e2e/test_consult.py,
    every assertion of it) with the engine in two worker processes."""
    from tests.e2e import test_consult as mod

    monkeypatch.setattr(mod, "StackOptions", functools.partial(StackOptions, engine_workers=2))
    await mod.test_consult_conference_and_transfer_to_the_ambulance(tmp_path)
