"""The scheduled retention job inside `controlroom serve` (issue 18 item 3), through the
real parts: a real 999 call's recording is deleted once past its line's policy, with
an access-log erasure and a CAD system event; a call an auditor put under legal hold
(`controlroom hold set`, while the service runs) is never deleted."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cad.schema import validate
from controlroom.stack import DOMAIN, Stack, StackOptions, toml_dump
from harness import scenarios
from harness.kamailio import Kamailio, Process
from harness.mosquitto import Mosquitto
from harness.ports import free_tcp_port, free_udp_port
from harness.sipp import Sipp

from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

CLI = [sys.executable, "-m", "controlroom.cli"]
PASSWORD = "auditor-Pa55phrase-42"


async def test_scheduled_purge_deletes_a_real_recording_and_spares_a_held_call(
        tmp_path: Path, cad_subscriber_factory) -> None:
    """Two real 999 calls; the second is put under legal hold by an auditor; with 999
    recordings kept 12 s and the job every second, the first call's recording file goes,
    its row says so, the access log has its erasure and the CAD a system.retention_purge
    naming it; the held call keeps its recording through several more runs."""
    with Mosquitto() as mosq:
        sip_port = free_udp_port()
        with Kamailio({"999": f"127.0.0.1:{sip_port}"}, domain=DOMAIN, trace=False) as kam, \
                Sipp(scenarios.handler(user="h1", ring_ms=200, hangup="remote"), calls=10,
                     timeout=120, name="phone-h1") as phone:
            kam.register("h1", phone.contact("h1"))
            data = Stack(tmp_path, StackOptions(handlers=1, engine="none")).config(
                sip_port=sip_port, kamailio_port=kam.port, mqtt_port=mosq.port,
                web_port=free_tcp_port())
            data["retention"] = {"interval": 1.0, "lines": {"999": {"recordings_days": 12 / 86400}}}
            cfg = tmp_path / "controlroom.toml"
            cfg.write_text(toml_dump(data))
            r = subprocess.run([*CLI, "user", "add", "aud", "--role", "auditor", "--config",
                                str(cfg), "--password", PASSWORD], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            cad = await cad_subscriber_factory("127.0.0.1", mosq.port, "controlroom/+/system")
            serve = Process([*CLI, "serve", "--config", str(cfg)], log_path=tmp_path / "serve.log",
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
            db = tmp_path / "data" / "controlroom.sqlite3"

            def rows() -> dict[str, dict]:
                with sqlite3.connect(db) as c:
                    c.row_factory = sqlite3.Row
                    return {r["call_id"]: dict(r) for r in c.execute(
                        "SELECT call_id, caller, recording_path, recording_sha256 FROM calls")}
            try:
                await wait_until(lambda: "controlroom serving" in serve.log_text(), 60, "serving")
                # the call to be held goes first (so it is the older one), put under
                # hold by an auditor while it is still in progress
                held_caller = Sipp(scenarios.caller(dialled="999", caller_id="07700900002",
                                                    talk_ms=5000, hangup="caller"),
                                   target=kam.addr, calls=1, timeout=60, name="caller-held").start()
                await wait_until(lambda: len(rows()) == 1, 20, "the first call's row")
                held = next(iter(rows().values()))
                r = subprocess.run([*CLI, "hold", "set", held["call_id"], "--reason",
                                    "complaint 2026/4411: preserve", "--user", "aud",
                                    "--config", str(cfg)], capture_output=True, text=True)
                assert r.returncode == 0, r.stderr
                await asyncio.to_thread(held_caller.wait, 60)
                assert held_caller.successful == 1, held_caller.diagnostics()
                c = Sipp(scenarios.caller(dialled="999", caller_id="07700900001", talk_ms=1500,
                                          hangup="caller"),
                         target=kam.addr, calls=1, timeout=60, name="caller-first")
                await asyncio.to_thread(lambda: (c.start(), c.wait(60)))
                assert c.successful == 1, c.diagnostics()
                await wait_until(lambda: len(rows()) == 2 and all(
                    r["recording_sha256"] for r in rows().values()), 30, "both recorded")
                by_caller = {r["caller"]: r for r in rows().values()}
                first, held = by_caller["07700900001"], by_caller["07700900002"]
                first_file, held_file = Path(first["recording_path"]), Path(held["recording_path"])

                await wait_until(lambda: rows()[first["call_id"]]["recording_path"] == "",
                                 30, "the first recording deleted by the scheduled job")
                assert not first_file.exists()
                await wait_until(lambda: any(m.get("type") == "system.retention_purge"
                                             for m in cad.messages), 10, "the CAD system event")
                msg = next(m for m in cad.messages if m.get("type") == "system.retention_purge")
                validate(msg)
                assert first["call_id"] in msg["calls"] and held["call_id"] not in msg["calls"]
                assert msg["deleted"]["recording"] >= 1
                await asyncio.sleep(4)  # several more runs
                assert held_file.exists() and rows()[held["call_id"]]["recording_path"] == str(held_file)
                with sqlite3.connect(db) as c:
                    erased = [r[0] for r in c.execute(
                        "SELECT call_id FROM console_access_log WHERE action='erase'")]
                assert erased == [first["call_id"]]
                assert "Traceback" not in serve.log_text()
            finally:
                serve.stop(timeout=20)
