"""Retention and legal hold through `controlroom purge` and `controlroom hold` run as a
user would (subprocesses), with the CAD system event on a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from controlroom.stack import toml_dump
from harness.mosquitto import Mosquitto
from harness.ports import free_tcp_port, free_udp_port

CLI = [sys.executable, "-m", "controlroom.cli"]
DAY = 86400.0
PASSWORD = "correct-horse-battery-staple"

pytestmark = pytest.mark.realparts

# call id -> (line, age in days, ended, words)
CALLS = {
    "a999-40d": ("999", 40, True, "aardvark"),     # 999: recording only (30 d)
    "b999-100d": ("999", 100, True, "bandicoot"),  # 999: everything (calls 90 d)
    "c101-15d": ("101", 15, True, "capybara"),     # 101: recording and transcript (10 d)
    "d999-held": ("999", 100, True, "dugong"),     # held: never
    "e101-1d": ("101", 1, True, "echidna"),        # young: nothing
    "f999-live": ("999", 100, False, "fossa"),     # not ended: nothing
}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def write_config(tmp_path: Path, mqtt_port: int, **retention: object) -> Path:
    data = {
        "sip": {"port": free_udp_port(), "rtp_port_min": 40100, "rtp_port_max": 40199},
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0},
                  {"name": "101", "numbers": ["101"], "priority": 1}],
        "handlers": [{"id": "h1", "phone": "sip:h1@controlroom.local", "skills": ["999"]}],
        "storage": {"data_dir": str(tmp_path / "data")},
        "mqtt": {"port": mqtt_port, "username": "controlroom", "password": "env:CR_TEST_MQTT",
                 "node": "fcr7"},
        "transcription": {"engine": "none"},
        "web": {"port": free_tcp_port()},
        "retention": retention or {
            "lines": {"999": {"recordings_days": 30, "transcripts_days": 60, "calls_days": 90},
                      "101": {"recordings_days": 10, "transcripts_days": 10, "calls_days": 20}}},
    }
    p = tmp_path / "controlroom.toml"
    p.write_text(toml_dump(data))
    return p


def seed(tmp_path: Path, calls: dict[str, tuple[str, float, bool, str]]) -> None:
    """Calls as the service leaves them: row, queue-log lines, CAD outbox rows (delivered),
    a sealed recording (two files for one), a transcript in the search index."""
    from store import Database, outbox, queuelog
    from store import calls as calls_table
    from transcription.store import Segment, migrate, save_transcript

    data = tmp_path / "data"
    rec = data / "recordings"
    rec.mkdir(parents=True, exist_ok=True)
    db = Database(data / "controlroom.sqlite3")
    for comp in (calls_table, ):
        db.migrate(comp.COMPONENT, comp.MIGRATIONS)
    db.migrate(calls_table.RECORDING_COMPONENT, calls_table.RECORDING_MIGRATIONS)
    db.migrate(outbox.COMPONENT, outbox.MIGRATIONS)
    db.migrate(queuelog.COMPONENT, queuelog.MIGRATIONS)
    migrate(db)
    now = time.time()
    for cid, (line, age, ended, word) in calls.items():
        at = now - age * DAY
        files = [rec / f"{cid}.wav"] + ([rec / f"{cid}.seg1-at800.wav"] if cid.startswith("a") else [])
        for f in files:
            f.write_bytes(b"RIFF" + os.urandom(64))
        with db.transaction() as conn:
            calls_table.insert(conn, call_id=cid, line=line, priority=0 if line == "999" else 1,
                               caller="07700900123", state="completed" if ended else "connected",
                               arrived_at=at, ended_at=at + 60 if ended else None,
                               recording_path=str(files[0]), recording_sha256="ab" * 32,
                               recording_segments=[{"path": str(f)} for f in files])
            conn.execute("INSERT INTO queue_log(at, call_id, line, event) VALUES (?, ?, ?, 'ENTERQUEUE')",
                         (at, cid, line))
            conn.execute("INSERT INTO outbox(call_id, seq, line, type, event_id, payload, created_at,"
                         " delivered_at) VALUES (?, 1, ?, 'call.arrived', ?, '{}', ?, ?)",
                         (cid, line, f"ev-{cid}", at, at + 0.01))
        save_transcript(db, cid, engine="whisper", model="tiny.en", language="en",
                        segments=[Segment("caller", 1.0, 2.0, f"the {word} is in the garden", 0.9, [])],
                        duration=60.0, recording_path=str(files[0]))
    db.close()


def state(tmp_path: Path) -> dict[str, dict[str, object]]:
    """What exists of each call: row, recording path, files on disk, transcript, index."""
    from store import Database
    from transcription import TranscriptSearch

    db = Database(tmp_path / "data" / "controlroom.sqlite3")
    rec = tmp_path / "data" / "recordings"
    out: dict[str, dict[str, object]] = {}
    for cid, (_, _, _, word) in CALLS.items() if (tmp_path / "calls.json").exists() is False \
            else json.loads((tmp_path / "calls.json").read_text()).items():
        row = db.query_one("SELECT recording_path FROM calls WHERE call_id=?", (cid,))
        out[cid] = {
            "row": row is not None,
            "recording_path": row["recording_path"] if row else None,
            "files": sorted(p.name for p in rec.glob(f"{cid}.*")),
            "transcript": db.query_one("SELECT 1 FROM transcription_transcripts WHERE call_id=?",
                                       (cid,)) is not None,
            "segments": db.query_one("SELECT COUNT(*) AS n FROM transcription_segments"
                                     " WHERE call_id=?", (cid,))["n"],
            "found": [h.call_id for h in TranscriptSearch(db).search(word)],
            "queue_log": db.query_one("SELECT COUNT(*) AS n FROM queue_log WHERE call_id=?",
                                      (cid,))["n"],
            "outbox": db.query_one("SELECT COUNT(*) AS n FROM outbox WHERE call_id=?",
                                   (cid,))["n"],
        }
    db.close()
    return out


@pytest.fixture
def broker():
    with Mosquitto(users={"controlroom": "mqtt-secret-1", "cad": "cad-secret-1"}) as m:
        os.environ["CR_TEST_MQTT"] = "mqtt-secret-1"
        yield m
        os.environ.pop("CR_TEST_MQTT", None)


async def _collect(port: int, out: list[dict], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, username="cad", password="cad-secret-1",
                              identifier="test-cad-system") as c:
        await c.subscribe("controlroom/+/system", qos=1)
        ready.set()
        async for msg in c.messages:
            out.append(json.loads(bytes(msg.payload)))  # type: ignore[arg-type]


async def test_purge_dry_run_then_real_run_with_legal_hold(tmp_path: Path, broker: Mosquitto) -> None:
    """Dry run lists exactly what is past each line's policy and changes nothing; an
    auditor's legal hold keeps a call (a handler may not set one); the real run deletes
    files, transcripts, index entries and rows per policy, logs each erasure in the
    access log and tells the CAD with one system.retention_purge event."""
    from cad.schema import validate
    from console.users import create_user
    from store import Database

    cfg = write_config(tmp_path, broker.port)
    seed(tmp_path, CALLS)
    db = Database(tmp_path / "data" / "controlroom.sqlite3")
    from console import users
    users.migrate(db)
    create_user(db, "aud", PASSWORD, ["auditor"])
    create_user(db, "h1", PASSWORD, ["handler"])
    from store import drafts
    drafts.migrate(db)   # unsaved gradings: the erased call's goes with it, others stay
    drafts.save(db, "b999-100d", "h1", {"notes": "never saved"}, 1.0)
    drafts.save(db, "e101-1d", "h1", {"notes": "still typing"}, 1.0)
    db.close()

    r = run("hold", "set", "d999-held", "--reason", "IOPC referral 2026/77", "--user", "h1",
            "--config", str(cfg))
    assert r.returncode == 2 and "auditor role" in r.stderr
    r = run("hold", "set", "d999-held", "--reason", "IOPC referral 2026/77", "--user", "aud",
            "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    r = run("hold", "list", "--config", str(cfg))
    assert "d999-held" in r.stdout and "IOPC referral 2026/77" in r.stdout and "aud" in r.stdout

    before = state(tmp_path)
    r = run("purge", "--config", str(cfg), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    assert {i["call_id"]: sorted(i["kinds"]) for i in dry["items"]} == {
        "a999-40d": ["recording"],
        "b999-100d": ["call", "recording", "transcript"],
        "c101-15d": ["recording", "transcript"]}
    assert dry["held"] == 1 and dry["deleted"] == {"recording": 3, "transcript": 2, "call": 1}
    assert state(tmp_path) == before  # nothing changed
    r = run("purge", "--config", str(cfg), "--dry-run")
    assert "would delete recording of call a999-40d (line 999" in r.stdout
    assert "recordings kept 30 days" in r.stdout

    got: list[dict] = []
    ready = asyncio.Event()
    task = asyncio.create_task(_collect(broker.port, got, ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        r = await asyncio.to_thread(run, "purge", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        assert "deleted: 3 recordings, 2 transcripts, 1 call records; 1 past retention kept" \
            in r.stdout
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
    after = state(tmp_path)
    a, b, c = after["a999-40d"], after["b999-100d"], after["c101-15d"]
    assert a["files"] == [] and a["recording_path"] == "" and a["row"]
    assert a["transcript"] and a["found"] == ["a999-40d"]  # transcript kept 60 days
    assert not b["row"] and b["files"] == [] and not b["transcript"] and b["segments"] == 0
    assert b["found"] == [] and b["queue_log"] == 0 and b["outbox"] == 0
    assert c["row"] and c["files"] == [] and not c["transcript"] and c["found"] == []
    for kept in ("d999-held", "e101-1d", "f999-live"):
        assert after[kept] == before[kept], kept

    with sqlite3.connect(tmp_path / "data" / "controlroom.sqlite3") as conn:
        erased = conn.execute("SELECT call_id, username, justification, filters FROM"
                              " console_access_log WHERE action='erase' ORDER BY call_id").fetchall()
        logged = conn.execute("SELECT call_id, kind FROM retention_log ORDER BY call_id, kind"
                              ).fetchall()
        events = conn.execute("SELECT type FROM system_events").fetchall()
    assert [e[0] for e in erased] == ["a999-40d", "b999-100d", "c101-15d"]
    assert all(e[1] == "retention" and "retention policy of line" in e[2] for e in erased)
    assert json.loads(erased[1][3])["kinds"] == ["recording", "transcript", "call"]
    assert logged == [("a999-40d", "recording"), ("b999-100d", "call"),
                      ("b999-100d", "recording"), ("b999-100d", "transcript"),
                      ("c101-15d", "recording"), ("c101-15d", "transcript")]
    assert events == [("system.retention_purge",)]
    with sqlite3.connect(tmp_path / "data" / "controlroom.sqlite3") as conn:
        left = conn.execute("SELECT call_id FROM grading_drafts ORDER BY call_id").fetchall()
    assert left == [("e101-1d",)]

    assert len(got) == 1, got
    validate(got[0])
    assert got[0]["type"] == "system.retention_purge" and got[0]["node"] == "fcr7"
    assert got[0]["deleted"] == {"recording": 3, "transcript": 2, "call": 1}
    assert sorted(got[0]["calls"]) == ["a999-40d", "b999-100d", "c101-15d"] and got[0]["held"] == 1

    # a second run finds nothing new; the held call stays after its hold is released
    r = run("purge", "--config", str(cfg), "--dry-run", "--json")
    assert json.loads(r.stdout)["items"] == []
    r = run("hold", "release", "d999-held", "--reason", "case closed", "--user", "aud",
            "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    r = run("purge", "--config", str(cfg), "--dry-run", "--json")
    assert [i["call_id"] for i in json.loads(r.stdout)["items"]] == ["d999-held"]


@pytest.mark.slow
async def test_purge_killed_half_way_leaves_a_consistent_state(tmp_path: Path,
                                                             broker: Mosquitto) -> None:
    """kill -9 of a running `controlroom purge`: every call is either untouched or
    entirely deleted (or has a pending intent); the next run finishes, with exactly one
    access-log erasure per call; an intent left between its steps is finished too."""
    calls = {f"k{i:02d}": ("999", 100, True, f"word{chr(97 + i % 26)}{chr(97 + i // 26)}x")
             for i in range(24)}
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    cfg = write_config(tmp_path, broker.port)
    seed(tmp_path, calls)
    db_path = tmp_path / "data" / "controlroom.sqlite3"
    proc = subprocess.Popen([*CLI, "purge", "--config", str(cfg), "--rate", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and done < 3:
        await asyncio.sleep(0.05)
        try:
            with sqlite3.connect(db_path) as conn:
                done = conn.execute("SELECT COUNT(DISTINCT call_id) FROM retention_log").fetchone()[0]
        except sqlite3.OperationalError:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert 3 <= done < len(calls)

    def check_consistent() -> tuple[int, int]:
        gone = untouched = 0
        with sqlite3.connect(db_path) as conn:
            pending = {r[0] for r in conn.execute("SELECT call_id FROM retention_pending")}
        for cid, s in state(tmp_path).items():
            if cid in pending:
                continue
            if not s["row"]:
                assert s["files"] == [] and not s["transcript"] and cid not in s["found"], (cid, s)
                gone += 1
            else:
                assert s["files"] and s["transcript"] and cid in s["found"], (cid, s)
                untouched += 1
        return gone, untouched

    gone, untouched = check_consistent()
    assert gone >= 3 and untouched >= 1

    # an intent left between step 1 and step 3 (as a kill there leaves it) is finished
    with sqlite3.connect(db_path) as conn:
        victim = conn.execute("SELECT call_id, recording_path FROM calls ORDER BY call_id"
                              " LIMIT 1").fetchone()
        conn.execute("INSERT OR IGNORE INTO retention_pending(call_id, kinds, files, reason,"
                     " started_at) VALUES (?, ?, ?, 'retention policy of line 999', ?)",
                     (victim[0], json.dumps(["recording", "transcript", "call"]),
                      json.dumps([victim[1]]), time.time()))
    r = run("purge", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resumed"] >= 1
    gone, untouched = check_consistent()
    assert (gone, untouched) == (len(calls), 0)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM retention_pending").fetchone()[0] == 0
        per_call = conn.execute("SELECT call_id, COUNT(*) FROM console_access_log"
                                " WHERE action='erase' GROUP BY call_id").fetchall()
    assert len(per_call) == len(calls) and all(n == 1 for _, n in per_call)
