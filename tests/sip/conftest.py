"""Fixtures for the engine tests: an Engine on port 0 with the fake media layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.telephony import SipSettings
from telephony.engine import Engine

from .fake_media import FakeMedia
from .peer import Peer
from .rigs import LINES, Rig


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest):
    overrides = getattr(request, "param", {})
    settings = SipSettings(port=0, **overrides.get("settings", {}))
    events: list = []
    engine = Engine(settings=settings, lines=overrides.get("lines", LINES), recordings_dir=tmp_path,
                    on_event=events.append, media_factory=FakeMedia)
    await engine.start()
    peer = await Peer().open()
    try:
        yield Rig(engine, events, peer)
    finally:
        peer.close()
        await engine.stop(drain_timeout=0, bye_grace=0)


@pytest.fixture
async def legrig(tmp_path: Path, request: pytest.FixtureRequest):
    """Engine + caller peer + handler peer; settings overrides via indirect param."""
    handler = await Peer().open()
    overrides = getattr(request, "param", {})
    kw = dict(overrides)
    if kw.pop("proxy", False):
        kw["proxy"] = f"sip:127.0.0.1:{handler.port}"
    events: list = []
    engine = Engine(settings=SipSettings(port=0, **kw), lines=LINES, recordings_dir=tmp_path,
                    on_event=events.append, media_factory=FakeMedia)
    await engine.start()
    caller = await Peer().open()
    rig = Rig(engine, events, caller)
    rig.handler = handler  # type: ignore[attr-defined]
    try:
        yield rig
    finally:
        caller.close()
        handler.close()
        await engine.stop(drain_timeout=0, bye_grace=0)


