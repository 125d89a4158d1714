"""The controlroom command line, run as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from controlroom.stack import toml_dump
from harness.ports import free_tcp_port, free_udp_port

CLI = [sys.executable, "-m", "controlroom.cli"]


def config(tmp_path: Path, **extra: object) -> Path:
    data = {
        "sip": {"port": free_udp_port(), "rtp_port_min": 40000, "rtp_port_max": 40099},
        "lines": [{"name": "999", "numbers": ["999"], "priority": 0},
                  {"name": "101", "numbers": ["101"], "priority": 1}],
        "handlers": [{"id": "h1", "phone": "sip:h1@controlroom.local", "skills": ["999"]}],
        "storage": {"data_dir": str(tmp_path / "data")},
        "mqtt": {"port": free_tcp_port()},
        "transcription": {"engine": "none"},
        "web": {"port": free_tcp_port()},
    }
    data.update(extra)
    p = tmp_path / "controlroom.toml"
    p.write_text(toml_dump(data))
    return p


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    """--version prints the package version."""
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == "controlroom 0.1.0"


def test_user_add_creates_first_admin(tmp_path: Path) -> None:
    """`user add` creates a user whose password verifies; a short password is refused."""
    cfg = config(tmp_path)
    r = run("user", "add", "chief", "--role", "admin", "--config", str(cfg),
            "--password", "correct-horse-battery")
    assert r.returncode == 0, r.stderr
    assert "user chief created with roles admin" in r.stdout
    from console.users import verify_password as authenticate
    from store import Database

    db = Database(tmp_path / "data" / "controlroom.sqlite3")
    user = authenticate(db, "chief", "correct-horse-battery")
    assert user is not None and "admin" in user.roles
    assert authenticate(db, "chief", "wrong-password-here") is None
    r = run("user", "add", "x", "--role", "admin", "--config", str(cfg), "--password", "short")
    assert r.returncode == 2 and "at least 12 characters" in r.stderr


def test_serve_starts_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`serve` listens, answers /healthz, and on SIGTERM drains and exits 0."""
    cfg = config(tmp_path, drain_timeout=2.0)
    port = json.loads(json.dumps(__import__("tomllib").loads(cfg.read_text())))["web"]["port"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*CLI, "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if "controlroom serving" in line:
                break
            assert proc.poll() is None, "".join(lines)
        else:
            pytest.fail("no 'serving' line:\n" + "".join(lines))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_with_bad_config_says_which_key(tmp_path: Path) -> None:
    """`serve` refuses a bad configuration with exit 2 and the key named."""
    p = tmp_path / "bad.toml"
    p.write_text('[[lines]]\nname = "999"\nnumbers = ["999"]\npriority = 0\n[sip]\nport = "x"\n')
    r = run("serve", "--config", str(p))
    assert r.returncode == 2
    assert "sip.port: expected an integer, got 'x'" in r.stderr


@pytest.mark.realparts
def test_transcribe_a_recording_file(tmp_path: Path) -> None:
    """`transcribe` runs the Whisper engine offline on a stereo 8 kHz recording."""
    import wave

    import numpy as np

    from harness import speech

    pcm, _, _ = speech.read_wav(speech.synthesise(
        "A car has crashed into a wall on the high street.", voice="en-us", speed=150))
    stereo = np.stack([pcm, np.zeros_like(pcm)], axis=1)
    rec = tmp_path / "call.wav"
    with wave.open(str(rec), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(stereo.astype("<i2").tobytes())
    r = run("transcribe", str(rec), "--engine", "whisper", timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    text = json.dumps(out).lower()
    assert "crashed" in text and "wall" in text


def test_user_add_duplicate_is_a_clear_error(tmp_path: Path) -> None:
    """Adding the same user twice exits 2 with a message, not a traceback."""
    cfg = config(tmp_path)
    args = ("user", "add", "chief", "--role", "admin", "--config", str(cfg),
            "--password", "correct-horse-battery")
    assert run(*args).returncode == 0
    r = run(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("cannot add user:") and "Traceback" not in r.stderr


def test_search_finds_a_call_by_its_words_with_filters(tmp_path: Path) -> None:
    """`search --json` prints one JSON hit per call with the highlighted words and the
    first matched word's offset; a filter that excludes it prints nothing and exits 1.
    (More in test_audit_cli.py: reason, access log, local times, malformed queries.)"""
    from store import Database
    from store import calls as calls_table
    from transcription.store import Segment, migrate, save_transcript

    cfg = config(tmp_path)
    assert run("user", "add", "aud", "--role", "auditor", "--config", str(cfg),
               "--password", "correct-horse-battery").returncode == 0
    db = Database(tmp_path / "data" / "controlroom.sqlite3")
    db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS)
    migrate(db)
    with db.transaction() as conn:
        calls_table.insert(conn, call_id="c1", line="999", priority=0, caller="07700900123",
                           state="completed", arrived_at=time.time())
    save_transcript(db, "c1", engine="whisper", model="tiny.en", language="en",
                    segments=[Segment("caller", 2.5, 5.0, "a car crashed into the wall", 0.9)],
                    duration=6.0, recording_path=None)
    db.close()
    audit = ("--config", str(cfg), "--user", "aud", "--reason", "test of the search", "--json")
    r = run("search", "crashed wall", *audit)
    assert r.returncode == 0, r.stderr
    [hit] = [json.loads(line) for line in r.stdout.splitlines()]
    assert (hit["call_id"], hit["line"], hit["offset"]) == ("c1", "999", 3.333)
    assert "<mark>crashed</mark>" in hit["snippet"] and "[crashed]" in hit["text"]
    r = run("search", "crashed", "--line", "101", *audit)
    assert r.returncode == 1 and r.stdout == "" and "no matches" in r.stderr
