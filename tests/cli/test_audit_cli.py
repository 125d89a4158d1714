"""`controlroom search`, `transcribe` and `retranscribe` run as a user would (subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from .test_cli import CLI, config

PASSWORD = "correct-horse-battery"
WORDS = [["There", 2.0, 2.2, 0.9], ["is", 2.2, 2.3, 0.9], ["a", 2.3, 2.4, 0.9],
         ["burglary", 2.4, 2.9, 0.95], ["at", 2.9, 3.0, 0.9], ["twelve", 3.0, 3.3, 0.9],
         ["Station", 3.3, 3.7, 0.9], ["Road.", 3.7, 4.0, 0.3]]


def run(*args: str, timeout: float = 60, tz: str = "Europe/London") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": tz, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def setup(tmp_path: Path):
    """A config, an auditor and a handler user, and two transcribed calls."""
    from store import Database
    from store import calls as calls_table
    from transcription.store import Segment, migrate, save_transcript

    cfg = config(tmp_path)
    for name, role in (("aud", "auditor"), ("h1", "handler")):
        r = run("user", "add", name, "--role", role, "--config", str(cfg), "--password", PASSWORD)
        assert r.returncode == 0, r.stderr
    db = Database(tmp_path / "data" / "controlroom.sqlite3")
    db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS)
    migrate(db)
    # 2026-07-01 09:30 UTC is 10:30 BST in London
    with db.transaction() as conn:
        calls_table.insert(conn, call_id="c1", line="999", priority=0, caller="07700900123",
                           state="completed", arrived_at=1782898200.0, handler_id="h1",
                           incident_number="INC-7")
        calls_table.insert(conn, call_id="c2", line="101", priority=1, caller="07700900999",
                           state="completed", arrived_at=1782898200.0 + 86400 * 3, handler_id="h2")
    save_transcript(db, "c1", engine="whisper", model="tiny.en", language="en",
                    segments=[Segment("caller", 2.0, 4.0, "There is a burglary at twelve Station Road.",
                                      0.85, WORDS),
                              Segment("handler", 4.5, 6.0, "which colour is the car", 0.9, [])],
                    duration=6.0, recording_path=None)
    save_transcript(db, "c2", engine="whisper", model="tiny.en", language="en",
                    segments=[Segment("caller", 1.0, 3.0, "a burglary last week", 0.9, [])],
                    duration=4.0, recording_path=None)
    yield cfg, db
    db.close()


def _log(db):
    from console.users import access_log
    return access_log(db)


def test_search_needs_a_reason(setup) -> None:
    """Without --reason the search does not run (argparse error, exit 2), nothing is logged."""
    cfg, db = setup
    r = run("search", "burglary", "--config", str(cfg), "--user", "aud")
    assert r.returncode == 2 and "--reason" in r.stderr and r.stdout == ""
    r = run("search", "burglary", "--config", str(cfg), "--user", "aud", "--reason", "  ")
    assert r.returncode == 2 and "a justification is required" in r.stderr
    assert _log(db) == []


def test_search_only_for_auditors(setup) -> None:
    """A handler, or a name that is no console user, is refused before anything is read."""
    cfg, db = setup
    r = run("search", "burglary", "--config", str(cfg), "--user", "h1", "--reason", "complaint 42")
    assert r.returncode == 2 and "does not have the auditor role" in r.stderr and r.stdout == ""
    r = run("search", "burglary", "--config", str(cfg), "--user", "nobody", "--reason", "complaint 42")
    assert r.returncode == 2 and "'nobody' is not an enabled console user" in r.stderr
    assert _log(db) == []


def test_search_prints_local_times_marked_words_and_logs_access(setup) -> None:
    """Hits show local time, rank, score, the snippet with [matched] words (no HTML) and
    low-confidence words marked, the matched words with their offsets; the access log
    gets the same row as a web search (action, query, filters, justification, user)."""
    cfg, db = setup
    r = run("search", "burglary road", "--config", str(cfg), "--user", "aud",
            "--reason", "complaint ref 42", "--line", "999", "--since", "2026-07-01",
            "--until", "2026-07-01")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("  1. 2026-07-01 10:30:00 BST  line 999  caller 07700900123"
                               "  handler h1  incident INC-7  call c1  score ")
    assert lines[1] == "     caller @ 0:02.4: There is a [burglary] at twelve Station [Road.](?)"
    assert lines[2] == ("     matched: burglary @ 0:02.4 caller,"
                        " Road. @ 0:03.7 caller (low confidence)")
    assert "<mark>" not in r.stdout and len(lines) == 3
    [entry] = _log(db)
    assert (entry["username"], entry["action"], entry["query"], entry["justification"]) == (
        "aud", "search", "burglary road", "complaint ref 42")
    assert entry["roles"] == ["auditor"] and entry["client"].startswith("cli ")
    midnight = datetime(2026, 7, 1, tzinfo=ZoneInfo("Europe/London")).timestamp()  # local
    assert entry["filters"] == {"line": "999", "limit": 20, "date_from": midnight,
                                "date_to": midnight + 86400 - 0.001}


def test_search_filters_each_narrow(setup) -> None:
    """--line, --caller, --handler, --incident and the time range each select the call."""
    cfg, _ = setup
    base = ("search", "burglary", "--config", str(cfg), "--user", "aud", "--reason", "audit 2026/7",
            "--json")

    def ids(*extra: str) -> list[str]:
        r = run(*base, *extra)
        assert r.returncode in (0, 1), r.stderr
        return [json.loads(x)["call_id"] for x in r.stdout.splitlines()]

    assert sorted(ids()) == ["c1", "c2"]
    assert ids("--line", "101") == ["c2"]
    assert ids("--caller", "07700900123") == ["c1"]
    assert ids("--handler", "h2") == ["c2"]
    assert ids("--incident", "INC-7") == ["c1"]
    assert ids("--since", "2026-07-02 00:00") == ["c2"]
    assert ids("--until", "2026-07-02") == ["c1"]
    assert ids("--line", "101", "--incident", "INC-7") == []
    hit = json.loads(run(*base, "--incident", "INC-7").stdout)
    assert hit["offset"] == 2.4 and hit["text"].startswith("There is a [burglary]")
    assert hit["arrived_local"] == "2026-07-01 10:30:00 BST" and hit["rank"] == 1


@pytest.mark.parametrize("query,why", [
    ('"', "query has no words to search for"),
    ("AND", "'AND' needs a word on each side"),
    ("*", "a prefix needs at least 2 letters before '*'"),
    ("(burglary OR knife", "unbalanced parentheses: '(' without ')'"),
    ("burglary)", "unbalanced parentheses: ')' without '('"),
])
def test_malformed_query_is_a_clear_error(setup, query, why) -> None:
    """A malformed query exits 2 with one line saying what is wrong: no traceback, no FTS5
    syntax, nothing logged (nothing was consulted)."""
    cfg, db = setup
    r = run("search", query, "--config", str(cfg), "--user", "aud", "--reason", "complaint 42")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"search refused: query {query!r} cannot be searched: {why}")
    assert "Traceback" not in r.stderr and "fts5" not in r.stderr.lower()
    assert _log(db) == []


def test_bad_time_is_a_clear_error(setup) -> None:
    cfg, _ = setup
    r = run("search", "burglary", "--config", str(cfg), "--user", "aud", "--reason", "complaint 42",
            "--since", "01/07/2026")
    assert r.returncode == 2
    assert r.stderr.strip() == ("search refused: date_from must be YYYY-MM-DD, YYYY-MM-DD HH:MM"
                                " or epoch seconds")


# -- transcribe / retranscribe with real speech and real Whisper ------------------------

needs_speech = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                  reason="espeak-ng and sox are needed")


def _speech_wav(tmp_path: Path, text: str, name: str, *sox_args: str) -> Path:
    """espeak-ng speech converted by sox to an 8 kHz WAV in the given encoding."""
    raw = tmp_path / f"{name}-tts.wav"
    subprocess.run(["espeak-ng", "-v", "en-gb", "-s", "140", "-w", str(raw), text], check=True,
                   timeout=60)
    out = tmp_path / f"{name}.wav"
    subprocess.run(["sox", str(raw), "-r", "8000", *sox_args, str(out)], check=True, timeout=60)
    return out


@pytest.mark.realparts
@needs_speech
@pytest.mark.parametrize("encoding,channels", [("a-law", "2"), ("u-law", "1")])
def test_transcribe_g711_wav(tmp_path: Path, encoding: str, channels: str) -> None:
    """`transcribe` reads A-law (stereo) and µ-law (mono) WAV files and transcribes them."""
    wav = _speech_wav(tmp_path, "A car has crashed into a wall on the high street.", encoding,
                      "-c", channels, "-e", encoding)
    head = wav.read_bytes()[:64]
    assert head[20] == (6 if encoding == "a-law" else 7)  # WAVE_FORMAT_ALAW / _MULAW
    r = run("transcribe", str(wav), "--engine", "whisper", timeout=180)
    assert r.returncode == 0, r.stderr
    text = json.loads(r.stdout)["text"].lower()
    assert "crashed" in text and "wall" in text


def test_transcribe_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"not a wav at all")
    r = run("transcribe", str(bad), "--engine", "whisper")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"cannot transcribe {bad}: recording {bad} is not a readable WAV file")


@pytest.mark.realparts
@needs_speech
def test_retranscribe_keeps_the_previous_version(tmp_path: Path) -> None:
    """`retranscribe --call` re-runs Whisper on the call's recording: the new transcript
    is searchable, the one it replaced is kept as a version; calls not named are untouched."""
    from store import Database
    from store import calls as calls_table
    from transcription.store import (
        Segment,
        get_transcript,
        migrate,
        save_transcript,
        transcript_versions,
    )

    cfg = config(tmp_path)
    wav = _speech_wav(tmp_path, "Someone has stolen my bicycle from the garden.", "rec",
                      "-c", "2", "-b", "16")
    db = Database(tmp_path / "data" / "controlroom.sqlite3")
    db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS)
    migrate(db)
    with db.transaction() as conn:
        for cid in ("r1", "r2"):
            calls_table.insert(conn, call_id=cid, line="101", priority=1, caller="0111",
                               state="completed", arrived_at=time.time(), recording_path=str(wav))
    for cid in ("r1", "r2"):
        save_transcript(db, cid, engine="vosk", model="old-model", language="en",
                        segments=[Segment("caller", 0.5, 2.0, "someone has stolen my bicycle", 0.4)],
                        duration=3.0, recording_path=str(wav))
    r = run("retranscribe", "--config", str(cfg), "--call", "r1", "--engine", "whisper", timeout=240)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"queued": 1, "done": 1, "failed": 0}
    now = get_transcript(db, "r1")
    assert now is not None and now["engine"] == "whisper" and "garden" in now["text"].lower()
    [old] = transcript_versions(db, "r1")
    assert (old["engine"], old["model"], old["text"]) == ("vosk", "old-model",
                                                          "caller: someone has stolen my bicycle")
    assert old["segments"][0]["confidence"] == 0.4 and old["replaced_at"] >= old["created_at"]
    assert get_transcript(db, "r2")["engine"] == "vosk" and transcript_versions(db, "r2") == []
    r = run("retranscribe", "--config", str(cfg))
    assert r.returncode == 2 and "needs --since/--until or --call" in r.stderr
    db.close()


def test_reindex_command(setup) -> None:
    cfg, _ = setup
    r = run("reindex", "--config", str(cfg))
    assert r.returncode == 0 and r.stdout.strip() == "reindexed 2 transcripts"


def test_module_runs(tmp_path: Path) -> None:
    """The CLI's help lists the commands."""
    r = subprocess.run([sys.executable, "-m", "controlroom.cli", "--help"], capture_output=True,
                       text=True, timeout=30)
    for cmd in ("search", "transcribe", "retranscribe", "reindex"):
        assert cmd in r.stdout
