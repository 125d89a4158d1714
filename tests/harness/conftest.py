"""Fixtures for the harness's own tests: a Kamailio per module, clips per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import speech
from harness.kamailio import Kamailio


@pytest.fixture(scope="module")
def kamailio() -> Iterator[Kamailio]:
    with Kamailio() as k:
        yield k


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def caller_clip(clip_dir: Path) -> speech.Clip:
    return speech.speech_clip("Police emergency. Someone is breaking into the house next door.",
                              "PCMA", clip_dir / "caller_pcma.pcap")


@pytest.fixture(scope="session")
def handler_clip(clip_dir: Path) -> speech.Clip:
    return speech.tone_clip(440.0, 2.0, "PCMA", clip_dir / "handler_tone.pcap")
