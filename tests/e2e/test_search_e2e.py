"""Whole-call search through the real parts: the handler and the caller speak (espeak-ng
over G.711 A-law, SIPp through Kamailio) seconds apart; the call is recorded,
transcribed by Whisper, and one search finds words from two segments together, at the
time of the first matched word."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest

from controlroom.stack import Stack, StackOptions
from harness import speech
from transcription import TranscriptSearch, get_transcript

from .conftest import wait_until

pytestmark = [pytest.mark.realparts, pytest.mark.slow]

HANDLER = "Police. What is your emergency?"  # Stack: voice en-gb+f3, speed 150, 0.5 s lead
CALLER_PREFIX = "There is a"
CALLER = f"{CALLER_PREFIX} fire at the corner shop on the high street."
CALLER_LEAD_S = 6.0  # the caller speaks after the handler's question, a pause apart


def _spoken_seconds(text: str, voice: str, speed: int) -> float:
    """How long espeak-ng takes to say ``text`` (leading and trailing quiet trimmed)."""
    pcm, _, _ = speech.read_wav(speech.synthesise(text, voice=voice, speed=speed))
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)
    return (loud[-1] - loud[0]) / speech.SAMPLE_RATE if len(loud) else 0.0


def _onset(path: Path, channel: int) -> float:
    """Where speech first starts on a channel of the recording (0 left/caller, 1 right)."""
    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, 2)[:, channel]
    frame = 160
    energy = np.abs(x[: len(x) // frame * frame].reshape(-1, frame).astype(np.int32)).mean(axis=1)
    return float(np.flatnonzero(energy > 300)[0] * frame / 8000)


async def test_words_from_two_segments_found_at_the_first_word(tmp_path: Path) -> None:
    """"emergency" (handler) and "fire" (caller, 5 s later) are in different segments;
    one search for both finds the call; its offset is where "emergency" starts in the
    recording (the handler's speech onset plus how long "Police. What is your" takes,
    within 1 s) and "fire" is listed at its own time, within 1 s."""
    opts = StackOptions(handlers=1, engine="whisper", ring_ms=300, handler_text=HANDLER)
    async with Stack(tmp_path, opts) as st:
        clip = await asyncio.to_thread(st.clip, CALLER, lead_s=CALLER_LEAD_S, voice="en-us")
        caller = st.call("999", caller="07700900777", clip=clip, talk_s=clip.duration + 1.0)
        assert await asyncio.to_thread(caller.wait, 90) == 0, caller.diagnostics()
        db = st.service.db
        await wait_until(lambda: db.query_one("SELECT 1 FROM calls WHERE ended_at IS NOT NULL"),
                         20, "call ended")
        call_id = db.query_one("SELECT call_id FROM calls")[0]
        await wait_until(lambda: get_transcript(db, call_id) is not None, 180, "final transcript")
        path = Path(db.query_one("SELECT recording_path FROM calls")[0])
        segs = get_transcript(db, call_id)["segments"]
        where = {w: [i for i, s in enumerate(segs) if w in s["text"].lower()]
                 for w in ("emergency", "fire")}
        assert where["emergency"] and where["fire"], segs
        assert not set(where["emergency"]) & set(where["fire"]), segs  # two segments

        hits = await TranscriptSearch(db).asearch("fire emergency")
        assert [h.call_id for h in hits] == [call_id]
        hit = hits[0]
        emergency_at = _onset(path, 1) + _spoken_seconds("Police. What is your", "en-gb+f3", 150)
        fire_at = _onset(path, 0) + _spoken_seconds(CALLER_PREFIX, "en-us", 150)
        assert (hit.channel, hit.match, hit.rank) == ("handler", "exact", 1)
        assert abs(hit.offset - emergency_at) <= 1.0, (hit.offset, emergency_at, segs)
        words = {m["word"].lower().strip(".,?"): (m["at"], m["channel"]) for m in hit.matches}
        assert words["emergency"] == (hit.offset, "handler")
        assert words["fire"][1] == "caller" and abs(words["fire"][0] - fire_at) <= 1.0, (words, fire_at)
        assert "<mark>emergency" in hit.snippet
