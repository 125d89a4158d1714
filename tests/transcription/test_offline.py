"""transcribe_file / retranscribe (CLI functions) and start-up model errors."""

from __future__ import annotations

import numpy as np
import pytest

from config.schema import TranscriptionSettings
from store import calls
from transcription import (
    ModelError,
    TranscriptionService,
    get_transcript,
    retranscribe,
    transcribe_file,
)
from transcription import store as tstore
from transcription.audio import write_wav

from .helpers import FakeEngine

VOICE = np.tile((3000 * np.sin(2 * np.pi * 300 * np.arange(160) / 8000)).astype(np.int16), 50)


def test_transcribe_file_both_channels(tmp_path):
    """A stereo file gives time-ordered segments of both channels and the engine's names."""
    handler = np.concatenate([np.zeros(8000, np.int16), VOICE[:4000]])
    write_wav(tmp_path / "r.wav", 8000, np.concatenate([VOICE, np.zeros(4000, np.int16)]), handler)
    out = transcribe_file(tmp_path / "r.wav", TranscriptionSettings(engine="vosk"), engine=FakeEngine())
    assert [(s["channel"], s["start"], s["text"]) for s in out["segments"]] == [
        ("caller", 0.0, "word0"), ("caller", 0.5, "word1"), ("handler", 1.0, "word0")]
    assert out["text"] == "caller: word0\ncaller: word1\nhandler: word0"
    assert (out["engine"], out["model"], out["duration"]) == ("fake", "fake-1", 1.5)
    assert out["confidence"] == pytest.approx(0.9)


def test_transcribe_file_engine_none():
    """engine none cannot transcribe: a clear ModelError."""
    with pytest.raises(ModelError, match="transcription.engine is 'none': nothing can be transcribed"):
        transcribe_file("x.wav", TranscriptionSettings(engine="none"))


def test_retranscribe_range(db, tmp_path):
    """Calls in [since, until) with a recording are re-transcribed; others are left alone;
    a missing recording counts as failed with its reason on the job."""
    write_wav(tmp_path / "a.wav", 8000, VOICE)
    with db.transaction() as conn:
        calls.insert(conn, call_id="in", line="999", state="ended", arrived_at=100.0,
                     recording_path=str(tmp_path / "a.wav"))
        calls.insert(conn, call_id="gone", line="999", state="ended", arrived_at=150.0,
                     recording_path=str(tmp_path / "missing.wav"))
        calls.insert(conn, call_id="late", line="999", state="ended", arrived_at=300.0,
                     recording_path=str(tmp_path / "a.wav"))
        calls.insert(conn, call_id="norec", line="101", state="abandoned", arrived_at=120.0)
    counts = retranscribe(db, TranscriptionSettings(engine="vosk"), 100.0, 200.0, engine=FakeEngine())
    assert counts == {"queued": 2, "done": 1, "failed": 1}
    assert [s["text"] for s in get_transcript(db, "in")["segments"]] == ["word0", "word1"]
    assert get_transcript(db, "late") is None
    assert tstore.job_state(db, "gone")["error"].startswith("recording not found")


async def test_service_start_reports_missing_model(db, tmp_path):
    """start() with an unusable Vosk model raises ModelError naming what is missing."""
    svc = TranscriptionService(settings=TranscriptionSettings(engine="vosk", model=str(tmp_path)),
                               db=db, publish=lambda e: None)
    with pytest.raises(ModelError) as e:
        await svc.start()
    assert e.value.missing[0] == "am/final.mdl"
    await svc.stop()


def test_get_transcript_unknown_call(db):
    """No transcript: None."""
    assert get_transcript(db, "nope") is None
