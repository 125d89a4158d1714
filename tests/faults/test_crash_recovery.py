"""kill -9 of the whole service, then a restart, through the real parts: SIPp callers and
handler phones via Kamailio, Mosquitto as the CAD broker, the service as a process.

* every far end of a dialog that was up gets a BYE from the restarted service (through
  Kamailio's route set), caller and handler phone alike;
* a kill during the sealing of many recordings loses none: every call has its path, a
  SHA-256 matching the file, a valid WAV and a ``call.recording`` message on the broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sqlite3
import struct
import subprocess
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from controlroom.stack import DOMAIN, Stack, StackOptions, toml_dump
from harness import scenarios
from harness.kamailio import Kamailio
from harness.mosquitto import Mosquitto
from harness.ports import free_tcp_port, free_udp_port
from harness.sipp import Sipp
from tests.e2e.conftest import wait_until
from tests.e2e.test_crash import serve, wait_serving

pytestmark = [pytest.mark.faults, pytest.mark.realparts, pytest.mark.slow]


def _config(tmp_path: Path, *, sip_port: int, kam: Kamailio, mosq: Mosquitto,
            handlers: int) -> Path:
    stack = Stack(tmp_path, StackOptions(handlers=handlers, engine="none"))
    data = stack.config(sip_port=sip_port, kamailio_port=kam.port, mqtt_port=mosq.port,
                        web_port=free_tcp_port())
    data["logging"] = {"level": "info", "json": True}
    cfg = tmp_path / "controlroom.toml"
    cfg.write_text(toml_dump(data))
    return cfg


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM calls ORDER BY arrived_at")]


def assert_valid_wav(path: Path) -> int:
    """A canonical WAV whose RIFF and data sizes match the file; returns its frames."""
    raw = path.read_bytes()
    riff, data = struct.unpack_from("<I", raw, 4)[0], struct.unpack_from("<I", raw, 40)[0]
    assert raw[:4] == b"RIFF" and raw[36:40] == b"data", path
    assert riff == len(raw) - 8 and data == len(raw) - 44, (path, riff, data, len(raw))
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        return w.getnframes()


async def test_kill_9_then_restart_sends_bye_to_caller_and_handler_phone(tmp_path: Path) -> None:
    """A 999 call connected to h1's phone, service killed with SIGKILL: after the restart
    both far ends - the SIPp caller and the SIPp handler phone, each waiting for a BYE -
    get one through Kamailio and answer it, and the dialog journal is empty."""
    with Mosquitto() as mosq:
        sip_port = free_udp_port()
        with Kamailio({"999": f"127.0.0.1:{sip_port}"}, domain=DOMAIN, trace=False) as kam, \
                Sipp(scenarios.handler(user="h1", ring_ms=200, hangup="remote",
                                       wait_bye_ms=120000),
                     calls=1, timeout=120, name="phone-h1") as phone:
            kam.register("h1", phone.contact("h1"))
            cfg = _config(tmp_path, sip_port=sip_port, kam=kam, mosq=mosq, handlers=1)
            log = tmp_path / "serve.log"
            db = tmp_path / "data" / "controlroom.sqlite3"
            journal = tmp_path / "data" / "dialogs"
            proc = serve(cfg, log)
            caller: Sipp | None = None
            try:
                await asyncio.to_thread(wait_serving, log, proc, 1)
                caller = Sipp(scenarios.caller(dialled="999", caller_id="07700900777",
                                               hangup="remote", wait_bye_ms=120000),
                              target=kam.addr, calls=1, timeout=120, name="caller").start()
                await wait_until(lambda: any(r["answered_at"] for r in _rows(db)), 30,
                                 "call answered by the handler")
                # both dialogs are in the journal: the caller's and the handler leg's
                assert len(list(journal.glob("*.dialog.json"))) == 2
                await asyncio.sleep(0.5)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                await asyncio.sleep(1.0)
                assert caller.alive() and phone.alive()  # nobody told them: still up

                started = time.monotonic()
                proc = serve(cfg, log)
                await asyncio.to_thread(wait_serving, log, proc, 2)
                assert await asyncio.to_thread(caller.wait, 20) == 0, caller.diagnostics()
                assert await asyncio.to_thread(phone.wait, 20) == 0, phone.diagnostics()
                took = time.monotonic() - started
                assert caller.successful == 1 and phone.successful == 1
                assert "BYE" in caller.messages_text() and "BYE" in phone.messages_text()
                assert list(journal.glob("*.dialog.json*")) == []
                text = log.read_text()
                assert text.count("interrupted_dialog_bye") >= 2
                print(f"both far ends hung up {took:.2f} s after the restart began")
            finally:
                if caller is not None:
                    caller.stop()
                _stop(proc)


async def test_kill_9_while_many_recordings_seal_loses_none(
        tmp_path: Path, cad_subscriber_factory: Any) -> None:
    """30 callers hang up within a fraction of a second; the service is killed with
    SIGKILL once a quarter of the recordings are renamed into place (mid-sealing).
    After the restart every call has a recording path, a SHA-256 equal to the file's,
    a valid WAV, and one ``call.recording`` CAD message with that SHA-256; no
    ``.part`` file is left."""
    n = 30
    with Mosquitto() as mosq:
        sip_port = free_udp_port()
        with Kamailio({"999": f"127.0.0.1:{sip_port}"}, domain=DOMAIN, trace=False) as kam:
            cfg = _config(tmp_path, sip_port=sip_port, kam=kam, mosq=mosq, handlers=1)
            log = tmp_path / "serve.log"
            db = tmp_path / "data" / "controlroom.sqlite3"
            recs = tmp_path / "data" / "recordings"
            cad = await cad_subscriber_factory("127.0.0.1", mosq.port)
            proc = serve(cfg, log)
            callers: Sipp | None = None
            try:
                await asyncio.to_thread(wait_serving, log, proc, 1)
                # all 30 within 0.3 s, each talks 4 s: they hang up together
                callers = Sipp(scenarios.caller(dialled="999", caller_id="07700900555",
                                                hangup="caller", talk_ms=4000),
                               target=kam.addr, calls=n, rate=100, limit=n, timeout=60,
                               name="callers", trace_msg=False).start()
                await wait_until(lambda: len(_rows(db)) == n, 20, f"{n} calls answered")

                def sealing() -> bool:
                    return len(list(recs.glob("*.wav"))) >= n // 4
                deadline = time.monotonic() + 20
                while not sealing():  # poll tightly: kill in the middle of the sealing
                    assert time.monotonic() < deadline, "no recording sealed"
                    await asyncio.sleep(0.0005)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                wavs = {p.stem for p in recs.glob("*.wav")}
                parts = list(recs.glob("*.part"))
                recorded = {r["call_id"] for r in _rows(db) if r["recording_path"]}
                unrecorded_wavs = wavs - recorded
                print(f"at the kill: {len(parts)} .part, {len(wavs)} sealed .wav, "
                      f"{len(recorded)} recorded, {len(unrecorded_wavs)} sealed not recorded")
                assert parts or unrecorded_wavs  # the kill did cut sealing short
                callers.stop()

                proc = serve(cfg, log)
                await asyncio.to_thread(wait_serving, log, proc, 2)
                rows = _rows(db)
                assert len(rows) == n
                assert list(recs.glob("*.part")) == []
                for r in rows:
                    assert r["recording_path"], r
                    path = Path(r["recording_path"])
                    assert hashlib.sha256(path.read_bytes()).hexdigest() == r["recording_sha256"]
                    frames = assert_valid_wav(path)
                    # sealed: the whole call; cut short by the kill: up to its last flush
                    assert frames >= 8000
                    assert r["ended_at"] is not None
                for r in rows:
                    msg = await cad.wait_for(r["call_id"], "call.recording", 30)
                    assert msg["recording"]["sha256"] == r["recording_sha256"]
                await asyncio.sleep(1.0)  # a second message would have come by now
                for r in rows:  # exactly one (QoS 1 may deliver it twice: same event_id)
                    assert len({m["event_id"] for m in cad.for_call(r["call_id"])
                                if m["type"] == "call.recording"}) == 1, r["call_id"]
            finally:
                if callers is not None:
                    callers.stop()
                _stop(proc)
