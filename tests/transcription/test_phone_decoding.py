"""Decoding for the phone line: no invented text, the gazetteer helps and never leaks,
words carry times and confidences (real Whisper, real espeak-ng speech, G.711)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from harness.speech import read_wav, synthesise
from telephony.media import g711
from transcription.decoding import (
    DecodeOptions,
    collapse_loops,
    echoes_prompt,
    guard,
    is_hallucination,
    prompt_text,
)
from transcription.engines import Hypothesis, WhisperEngine

RATE = 8000
GAZETTEER = ("Erdington", "Kings Heath", "Handsworth", "Edgbaston", "Kingstanding", "Selly Oak",
             "Acocks Green", "Sutton Coldfield", "Digbeth", "Tyseley", "Nechells", "Sparkbrook")
OPTS = DecodeOptions(hotwords=GAZETTEER)


# -- the guard (pure) -------------------------------------------------------------------

def test_looped_phrase_is_cut_to_one() -> None:
    """A phrase repeated three times or more in a row becomes one; twice is left alone."""
    assert collapse_loops("C-10, C-10, C-10, C-10, C-10, C-10") == "C-10,"
    assert collapse_loops("he said go away go away go away go away now") == "he said go away now"
    assert collapse_loops("no no I said no") == "no no I said no"


def test_known_silence_hallucinations() -> None:
    """Whole-segment YouTube endings are hallucinations; a sentence containing the words is not."""
    assert is_hallucination("See you in the next video.")
    assert is_hallucination(" Thank you for watching! Thank you for watching!")
    assert is_hallucination("You")
    assert not is_hallucination("Thank you, he is outside the shop now")


def test_prompt_echo_detection() -> None:
    """A run of the prompt (same word count, letters compared) is an echo; more said is not."""
    prompt = prompt_text("", GAZETTEER)
    assert echoes_prompt("Kings Heath.", prompt)
    assert echoes_prompt("kings heath", prompt)
    assert echoes_prompt("Erdington, Kings Heath, Handsworth.", prompt)
    assert not echoes_prompt("in Erdington", prompt)
    assert not echoes_prompt("my car was stolen", prompt)


def test_guard_keeps_a_clear_answer_and_drops_a_read_back() -> None:
    """One place name said clearly stays; the same over noise, or three prompt words, go."""
    prompt = OPTS.prompt
    assert guard("Kings Heath.", prompt=prompt, no_speech_prob=0.02, avg_logprob=-0.3,
                 options=OPTS).text == "Kings Heath."
    assert guard("Kings Heath.", prompt=prompt, no_speech_prob=0.55, avg_logprob=-0.8,
                 options=OPTS).reason == "prompt-echo"
    assert guard("Erdington, Kings Heath, Handsworth", prompt=prompt, no_speech_prob=0.01,
                 avg_logprob=-0.1, options=OPTS).reason == "prompt-echo"
    v = guard("beep, beep, beep, beep", prompt=prompt, no_speech_prob=0.1, avg_logprob=-0.5,
              options=OPTS)
    assert (v.text, v.reason) == ("beep,", "loop")


# -- real model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    """The default recogniser (Whisper base from its two PyPI packages) with the gazetteer."""
    yield WhisperEngine("base", options=OPTS)


def _phone(pcm: np.ndarray, law: str = "alaw") -> np.ndarray:
    x = np.clip(pcm, -32768, 32767).astype(np.int16)
    return g711.alaw_decode(g711.alaw_encode(x)) if law == "alaw" else g711.ulaw_decode(g711.ulaw_encode(x))


def _nonspeech(kind: str) -> np.ndarray:
    n = 30 * RATE
    rng = np.random.default_rng(7)
    if kind == "silence":
        return np.zeros(n, np.int16)
    if kind == "comfort_noise":  # white noise about -60 dBFS, as a gateway's CNG
        return _phone(rng.normal(0, 33, n), "ulaw")
    x = np.zeros(n)  # DTMF: a caller pressing keys (in-band tones)
    pairs = [(697, 1209), (770, 1336), (852, 1477), (941, 1336), (770, 1336), (770, 1336)]
    i, k = RATE // 2, 0
    while i < n - RATE:
        lo, hi = pairs[k % len(pairs)]
        m = int(0.2 * RATE)
        t = np.arange(m) / RATE
        x[i:i + m] = 6000 * (np.sin(2 * np.pi * lo * t) + np.sin(2 * np.pi * hi * t))
        i += m + int(rng.uniform(0.15, 1.2) * RATE)
        k += 1
    return _phone(x)


def _live(engine: WhisperEngine, pcm: np.ndarray) -> list[Hypothesis]:
    rec = engine.recogniser()
    out: list[Hypothesis] = []
    for i in range(0, len(pcm), 160 * 25):  # 0.5 s at a time, as a worker hands it over
        out += rec.accept(pcm[i:i + 160 * 25].tobytes())
    return out + rec.flush()


@pytest.mark.slow
@pytest.mark.realparts
@pytest.mark.parametrize("kind", ["silence", "comfort_noise", "dtmf"])
def test_thirty_seconds_without_speech_yield_no_words(engine: WhisperEngine, kind: str) -> None:
    """30 s of digital silence, comfort noise or DTMF: no words, final or live, and no
    gazetteer entry read back from the prompt."""
    pcm = _nonspeech(kind)
    finals = engine.transcribe(pcm, RATE)
    live = _live(engine, pcm)
    assert [h.text for h in finals] == []
    assert [h.text for h in live] == []


def _say(text: str, voice: str = "en-gb") -> np.ndarray:
    pcm, _, rate = read_wav(synthesise(text, voice=voice))
    assert rate == RATE
    pad = np.zeros(RATE // 2, np.int16)
    return _phone(np.concatenate([pad, pcm, pad]))


@pytest.mark.slow
@pytest.mark.realparts
def test_gazetteer_spells_a_place_name_and_words_carry_times(engine: WhisperEngine) -> None:
    """espeak-ng says "Kingstanding": without the gazetteer Whisper writes something
    else ("King's Landing"), with it the name is right; every word of the final has a
    start, an end and a confidence inside the audio, live finals too."""
    pcm = _say("Please send someone to Church Road in Kingstanding.")
    plain = WhisperEngine("base")
    without = " ".join(h.text for h in plain.transcribe(pcm, RATE))
    hyps = engine.transcribe(pcm, RATE)
    with_gaz = " ".join(h.text for h in hyps)
    assert "kingstanding" not in without.lower()
    assert "Kingstanding" in with_gaz
    dur = len(pcm) / RATE
    words = [w for h in hyps for w in h.words]
    assert len(words) >= 5
    for w in words:
        assert 0.0 <= w.start <= w.end <= dur + 0.05 and 0.0 < w.confidence <= 1.0
    assert [w.start for w in words] == sorted(w.start for w in words)
    name = next(w for w in words if "Kingstanding" in w.word)
    assert name.start > 1.0  # said at the end of the sentence, not at its start
    live = [h for h in _live(engine, pcm) if h.final]
    assert live and all(h.words for h in live)
    lw = [w for h in live for w in h.words]
    assert all(0.0 <= w.start <= w.end <= dur + 0.05 and 0.0 < w.confidence <= 1.0 for w in lw)
    def letters(t: str) -> str:
        return "".join(c for c in t.lower() if c.isalnum())
    assert letters("".join(w.word for w in lw)) == letters("".join(h.text for h in live))


@pytest.mark.slow
@pytest.mark.realparts
def test_prompt_never_appears_on_silence_around_speech(engine: WhisperEngine) -> None:
    """Speech between long silences: the words come out once, and no gazetteer name the
    caller did not say is written."""
    speech = _say("My car was stolen from outside the house.")
    pcm = np.concatenate([np.zeros(12 * RATE, np.int16), speech, _nonspeech("comfort_noise")[:12 * RATE]])
    text = " ".join(h.text for h in engine.transcribe(pcm, RATE)).lower()
    assert "outside the house" in text
    for name in GAZETTEER:
        assert name.lower() not in text
