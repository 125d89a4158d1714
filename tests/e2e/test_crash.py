"""kill -9 in the middle of a call: nothing recorded is lost, the record is closed, the CAD hears everything."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from cad.schema import validate
from controlroom.stack import DOMAIN, Stack, StackOptions, toml_dump
from harness import scenarios
from harness.kamailio import Kamailio
from harness.mosquitto import Mosquitto
from harness.ports import free_tcp_port, free_udp_port
from harness.sipp import Sipp

from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]


def serve(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "controlroom.cli", "serve", "--config", str(cfg)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_serving(log: Path, proc: subprocess.Popen[bytes], count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.read_text().count("controlroom serving") >= count:
            return
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(log.read_text())


async def test_kill_9_mid_call_then_restart(tmp_path: Path, cad_subscriber_factory) -> None:
    """A service killed with SIGKILL during a connected call: on restart the recording
    is sealed readable with its SHA-256, the call is closed as interrupted, and the CAD
    receives every event of the call with no gap in the sequence."""
    with Mosquitto() as mosq:
        sip_port = free_udp_port()
        routes = {"999": f"127.0.0.1:{sip_port}"}
        with Kamailio(routes, domain=DOMAIN, trace=False) as kam, \
                Sipp(scenarios.handler(user="h1", ring_ms=200, hangup="remote"), calls=10,
                     timeout=120, name="phone-h1") as phone:
            kam.register("h1", phone.contact("h1"))
            stack = Stack(tmp_path, StackOptions(handlers=1, engine="none"))
            data = stack.config(sip_port=sip_port, kamailio_port=kam.port,
                                mqtt_port=mosq.port, web_port=free_tcp_port())
            data["logging"] = {"level": "info", "json": True}
            cfg = tmp_path / "controlroom.toml"
            cfg.write_text(toml_dump(data))
            log = tmp_path / "serve.log"
            cad = await cad_subscriber_factory("127.0.0.1", mosq.port)

            proc = serve(cfg, log)
            try:
                await asyncio.to_thread(wait_serving, log, proc, 1)
                caller = Sipp(scenarios.caller(dialled="999", caller_id="07700900777",
                                               hangup="remote", wait_bye_ms=60000),
                              target=kam.addr, calls=1, timeout=90, name="caller").start()
                db_path = tmp_path / "data" / "controlroom.sqlite3"

                def answered() -> bool:
                    with sqlite3.connect(db_path) as c:
                        return c.execute("SELECT COUNT(*) FROM calls WHERE answered_at IS NOT NULL"
                                         ).fetchone()[0] == 1
                await wait_until(answered, 30, "call answered by the handler")
                await asyncio.sleep(2.5)  # let the recording flush at least twice
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                caller.stop()

                proc = serve(cfg, log)
                await asyncio.to_thread(wait_serving, log, proc, 2)
                with sqlite3.connect(db_path) as c:
                    c.row_factory = sqlite3.Row
                    row = dict(c.execute("SELECT * FROM calls").fetchone())
                assert row["state"] == "interrupted"
                assert row["end_reason"] == "service restarted: call interrupted"
                rec = Path(row["recording_path"])
                assert rec.suffix == ".wav" and rec.exists()
                assert hashlib.sha256(rec.read_bytes()).hexdigest() == row["recording_sha256"]
                with wave.open(str(rec)) as w:
                    assert w.getnchannels() == 2 and w.getframerate() == 8000
                    assert w.getnframes() / 8000 >= 2.0  # audio up to the last flush
                await cad.wait_for(row["call_id"], "call.ended", 30)
                msgs = cad.for_call(row["call_id"])
                for m in msgs:
                    validate(m)
                seqs = sorted({m["seq"] for m in msgs})
                assert seqs == list(range(1, len(seqs) + 1))
                types = {m["type"] for m in msgs}
                assert {"call.arrived", "call.offered", "call.answered", "call.recording",
                        "call.ended"} <= types
                ended = next(m for m in msgs if m["type"] == "call.ended")
                assert row["recording_sha256"] in str(ended)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
