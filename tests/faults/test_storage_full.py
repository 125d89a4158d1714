"""The database's file system fails under live calls, through the real parts: Kamailio,
SIPp 999/101 callers and handler phones, Mosquitto as the CAD broker, SQLite on a real
tmpfs filled to the last block, or on a real ext4 the kernel turned read-only.

Life before paperwork: calls are answered, queued, offered and bridged while nothing can
be written; /healthz says degraded (still 200: the node takes calls) and why; the metric
and the CAD's system topic name the fault; when space returns the spool is written in
order and the CAD gets every call event, gap-free.
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from cad.schema import validate
from controlroom.desk import ServiceDesk
from controlroom.stack import Stack, StackOptions
from harness.fs import can_mount, ext4_image, fill, tmpfs
from store import outbox, systemlog
from tests.e2e.audio import frames_found_in_order
from tests.e2e.conftest import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.realparts, pytest.mark.slow,
              pytest.mark.skipif(not can_mount(), reason="mounting file systems needs root")]

FILTERS = ("controlroom/+/calls/#", "controlroom/+/system")


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body


def right_channel(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        a = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    return a[:, 1].copy()


async def calls_connected(st: Stack, n: int) -> list[Any]:
    svc = st.service
    await wait_until(lambda: sum(c.state == "connected" for c in svc.calls.values()) == n,
                     20, f"{n} calls bridged")
    return sorted(svc.calls.values(), key=lambda c: c.priority)


async def test_database_disk_full_calls_go_on_and_every_record_follows(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """Database on an 8 MB tmpfs filled up: a 999 and a 101 call are answered, queued,
    offered and bridged (the handlers' audio is in the recordings); /healthz is 200
    ``degraded`` naming 'disk full'; the metric shows the fault and the spool; the CAD
    gets system.storage_fault and no call message yet; the desk still pops the call.
    Filler deleted: the spool is written, both calls' rows and every event are in the
    database and reach the CAD in order, gap-free; the fault is on the record."""
    with tmpfs(tmp_path / "dbfs", "8m") as mnt:
        opts = StackOptions(handlers=2, engine="none", ring_ms=300,
                            storage={"database": str(mnt / "controlroom.sqlite3")})
        async with Stack(tmp_path / "stack", opts) as st:
            svc = st.service
            cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port, *FILTERS)
            await asyncio.wait_for(svc.publisher.wait_connected(), 10)
            base = f"http://127.0.0.1:{svc.web_port}"
            # An empty WAL, then not one free block: the next commit needs space.
            svc.db.checkpoint()
            await asyncio.to_thread(fill, mnt / "filler")
            assert (mnt / "controlroom.sqlite3-wal").stat().st_size == 0

            # One after the other: starting SIPp runs on this loop, and a loop held up
            # for 250 ms sheds new 101 calls by design (overload), which is not this test.
            c999 = st.call("999", caller="07700900401", talk_s=6.0, name="c999")
            await calls_connected(st, 1)
            c101 = st.call("101", caller="01214960402", talk_s=5.0, name="c101")
            calls = await calls_connected(st, 2)
            ids = {c.line: c.call_id for c in calls}
            assert {c.handler_id for c in calls} == {"h1", "h2"}
            assert svc.storage.degraded and svc.storage.fault.reason == "disk full"

            async with aiohttp.ClientSession() as http:
                status, health = await get(http, f"{base}/healthz")
                assert status == 200 and health["status"] == "degraded", health
                assert "disk full" in health["reasons"][0], health
                assert health["storage"]["spooled"] > 0 and health["storage"]["lost"] == 0
                _, metrics = await get(http, f"{base}/metrics")
            assert 'controlroom_storage_degraded{reason="disk full"} 1' in metrics
            depth = next(float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith("controlroom_storage_spool_depth "))
            assert depth >= 8  # arrived, queued, offered, answered + queue log, two calls
            await wait_until(lambda: any(m.get("type") == "system.storage_fault"
                                         for m in cad.messages), 10, "system event on MQTT")
            fault = next(m for m in cad.messages if m.get("type") == "system.storage_fault")
            validate(fault)
            assert fault["reason"] == "disk full" and fault["component"] == "database"
            assert not cad.for_call(ids["999"]) and not cad.for_call(ids["101"])
            # The screen-pop does not depend on the call's row being on disk.
            view = await ServiceDesk(svc).handler_view(calls[0].handler_id)
            assert view["call"]["caller"] == "07700900401"

            for c in (c999, c101):
                assert await asyncio.to_thread(c.wait, 30) == 0, c.diagnostics()
            await wait_until(lambda: not svc.calls, 15, "both calls over")
            assert svc.storage.degraded and not svc.db.query("SELECT 1 FROM calls")

            # Space returns: the spool is written in order, the CAD gets everything.
            (mnt / "filler").unlink()
            await wait_until(lambda: not svc.storage.degraded, 15, "spool written")
            async with aiohttp.ClientSession() as http:
                assert await get(http, f"{base}/healthz") == (200, {"status": "ok"})
            for line, caller in (("999", "07700900401"), ("101", "01214960402")):
                cid = ids[line]
                row = svc.db.query_one("SELECT * FROM calls WHERE call_id=?", (cid,))
                assert row["caller"] == caller and row["state"] == "completed"
                assert row["answered_at"] and row["ended_at"] and row["handler_id"]
                assert row["recording_sha256"]
                found = frames_found_in_order(st.handler_clip.sent,
                                              right_channel(Path(row["recording_path"])))[1]
                assert found > 0, "handler audio in the recording: the legs were bridged"
                stored = [r.type for r in outbox.for_call(svc.db, cid)]
                for a, b in [("call.arrived", "call.queued"), ("call.queued", "call.offered"),
                             ("call.offered", "call.answered"), ("call.answered", "call.ended")]:
                    assert stored.index(a) < stored.index(b), stored
                await cad.wait_for(cid, "call.ended", 20)
                await wait_until(lambda c=cid, n=len(stored): len(cad.for_call(c)) >= n, 10,  # noqa: B008 (binds now)
                                 "every event on MQTT")
                got = {m["seq"]: m for m in cad.for_call(cid)}
                assert sorted(got) == list(range(1, len(stored) + 1))
                assert [got[s]["type"] for s in sorted(got)] == stored
                arrival = [m for m in cad.messages if m.get("call_id") == cid]
                assert [m["seq"] for m in arrival][:len(stored)] == sorted(got)  # wire order
            queue_log = [r["event"] for r in svc.db.query(
                "SELECT event FROM queue_log WHERE call_id=? ORDER BY id", (ids["999"],))]
            assert [e for e in queue_log if e in ("ENTER", "OFFER", "CONNECT", "COMPLETE")] == [
                "ENTER", "OFFER", "CONNECT", "COMPLETE"], queue_log
            await wait_until(lambda: any(m.get("type") == "system.storage_recovered"
                                         for m in cad.messages), 10, "recovery on MQTT")
            rec = next(m for m in cad.messages if m.get("type") == "system.storage_recovered")
            validate(rec)
            assert rec["lost"] == 0 and rec["flushed"] >= depth
            recorded = [e["type"] for e in systemlog.load(svc.db)]
            assert recorded == ["system.storage_fault", "system.storage_recovered"]
            assert svc.storage.lost == 0


async def test_database_file_system_turned_read_only_calls_go_on(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """Database on an ext4 that the kernel turns read-only (errors=remount-ro after a
    file system error): a 999 and a 101 call are still answered and bridged, /healthz
    is 200 ``degraded`` naming 'read-only file system', the CAD gets the system event,
    and the records wait in the spool in order. Such a file system returns only after
    unmount and fsck, so the records still waiting at stop are counted and logged lost."""
    with ext4_image(tmp_path / "dbfs", 16) as fs:
        opts = StackOptions(handlers=2, engine="none", ring_ms=300,
                            storage={"database": str(fs.mountpoint / "controlroom.sqlite3")})
        async with Stack(tmp_path / "stack", opts) as st:
            svc = st.service
            cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port, *FILTERS)
            await asyncio.wait_for(svc.publisher.wait_connected(), 10)
            fs.fail()
            assert fs.read_only()

            c999 = st.call("999", caller="07700900501", talk_s=4.0, name="c999")
            await calls_connected(st, 1)
            c101 = st.call("101", caller="01214960502", talk_s=3.0, name="c101")
            await calls_connected(st, 2)
            assert svc.storage.fault.reason == "read-only file system"
            async with aiohttp.ClientSession() as http:
                status, health = await get(http, f"http://127.0.0.1:{svc.web_port}/healthz")
            assert status == 200 and health["status"] == "degraded"
            assert "read-only file system" in health["reasons"][0], health
            await wait_until(lambda: any(m.get("type") == "system.storage_fault"
                                         for m in cad.messages), 10, "system event on MQTT")
            for c in (c999, c101):
                assert await asyncio.to_thread(c.wait, 30) == 0, c.diagnostics()
            await wait_until(lambda: not svc.calls, 15, "both calls over")
            spooled = svc.storage.depth
            assert spooled >= 10 and svc.storage.lost == 0
            lost = svc.storage.close()
            assert lost == spooled and svc.storage.lost == spooled
            assert f"controlroom_storage_writes_lost_total {spooled}" in svc.metrics.render()
