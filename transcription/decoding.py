"""Decoding for the phone line: what Whisper is told, and what it may never say.

Theory of operation: Whisper is a language model over audio. On a telephone line it
meets silence, comfort noise, DTMF and hold music, and there it invents text ("see you
in the next video", a word looped until the window ends), or, when it has been given a
gazetteer as its prompt, it repeats the prompt as if spoken. Three layers keep invented
text out of transcripts:

1. **Do not decode non-speech.** Voice-activity detection (Silero, bundled in
   faster-whisper) picks the speech out of a recording; the live path checks each window
   with the same detector before decoding it (:func:`speech_seconds`).
2. **Decode conservatively** (:class:`DecodeOptions`): no conditioning on previous
   text (a hallucination cannot feed the next window), temperature fallback when a
   decode looks like a loop (compression ratio) or is unsure (mean log-probability),
   and a segment whose no-speech probability is high and log-probability low is
   skipped.
3. **Check the text** (:func:`guard`, pure): a segment that repeats a run of the prompt
   without clear speech evidence is dropped, as is a known silence hallucination;
   a phrase looped three times or more is cut to one.

The prompt (:func:`prompt_text`) is the force's gazetteer (place and street names) and
police vocabulary from ``[transcription] hotwords``; Whisper reads it before every
window as "previous text", which biases spelling towards those names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher

import numpy as np

_WORD = re.compile(r"[a-z0-9']+")

HALLUCINATIONS = (
    "thank you for watching", "thanks for watching", "see you in the next video",
    "please subscribe", "subscribe to my channel", "like and subscribe",
    "subtitles by the amara org community", "transcribed by", "captions by",
    "see you next time", "you",
)
"""Whole-segment texts Whisper produces on silence and noise (YouTube captions in its
training data). A caller to 999 saying only one of these is vanishingly rare; a segment
that is nothing but one of them is dropped."""


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """How Whisper decodes telephone audio (faster-whisper's names where they exist)."""

    beam_size: int = 5
    """Beam search width for final transcripts (live captions decode greedily)."""
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    """Tried in order while a decode fails the two thresholds below."""
    compression_ratio_threshold: float = 2.4
    """gzip ratio above which a decode is a repetition loop (retry hotter)."""
    log_prob_threshold: float = -1.0
    """Mean token log-probability below which a decode is unsure (retry hotter)."""
    no_speech_threshold: float = 0.6
    """No-speech probability above which (with an unsure decode) a window is silence."""
    vad: bool = True
    """Silero voice-activity detection: only speech is decoded."""
    hotwords: tuple[str, ...] = ()
    """Gazetteer: place and street names, police vocabulary (the prompt)."""
    initial_prompt: str = ""
    """Free text put before the hot words in the prompt."""
    echo_no_speech: float = 0.3
    """A segment that is only a prompt entry (a caller answering "Kings Heath") is kept
    only if its no-speech probability is below this and its mean log-probability above
    ``echo_log_prob``; three or more prompt words in the prompt's order are always
    dropped (a read-back: callers do not recite the gazetteer)."""
    echo_log_prob: float = -1.0
    extra_hallucinations: tuple[str, ...] = field(default=())

    @property
    def prompt(self) -> str:
        return prompt_text(self.initial_prompt, self.hotwords)


def prompt_text(initial_prompt: str, hotwords: Sequence[str]) -> str:
    """The prompt Whisper sees: the free text, then the hot words as a list."""
    parts = [initial_prompt.strip()] if initial_prompt.strip() else []
    if hotwords:
        parts.append(", ".join(w.strip() for w in hotwords if w.strip()) + ".")
    return " ".join(parts)


def words_of(text: str) -> list[str]:
    """Lower-case words (letters, digits, apostrophes) for comparisons."""
    return _WORD.findall(text.lower())


def echoes_prompt(text: str, prompt: str, *, min_ratio: float = 0.9) -> bool:
    """True when ``text`` is (nearly) a contiguous run of the prompt's words: the same
    number of words, compared on their letters (case and punctuation ignored), at
    least ``min_ratio`` alike. ``"in Erdington"`` is not an echo
    of a prompt that lists ``Erdington`` (the caller said more than the name)."""
    seg = words_of(text)
    pw = words_of(prompt)
    n = len(seg)
    if not seg or len(pw) < n:
        return False
    target = "".join(seg)
    for i in range(0, len(pw) - n + 1):
        run = "".join(pw[i:i + n])
        if run == target or SequenceMatcher(None, run, target).ratio() >= min_ratio:
            return True
    return False


def collapse_loops(text: str, *, max_repeats: int = 2) -> str:
    """Cut a phrase (1-8 words) repeated more than ``max_repeats`` times in a row to one
    occurrence: ``"C-10, C-10, C-10, C-10"`` -> ``"C-10,"``. Other text is unchanged."""
    toks = text.split()
    low = [re.sub(r"[^\w']", "", t.lower()) for t in toks]
    out: list[str] = []
    i = 0
    while i < len(toks):
        cut = False
        for n in range(1, 9):
            if i + n * (max_repeats + 1) > len(toks):
                break
            unit = low[i:i + n]
            if not any(unit):
                continue
            reps = 1
            while low[i + reps * n:i + (reps + 1) * n] == unit:
                reps += 1
            if reps > max_repeats:
                out += toks[i:i + n]
                i += reps * n
                cut = True
                break
        if not cut:
            out.append(toks[i])
            i += 1
    return " ".join(out)


def is_hallucination(text: str, extra: Sequence[str] = ()) -> bool:
    """The segment is only a known silence hallucination (possibly repeated)."""
    w = " ".join(words_of(text))
    if not w:
        return True
    for phrase in (*HALLUCINATIONS, *extra):
        p = " ".join(words_of(phrase))
        if p and re.fullmatch(rf"(?:{re.escape(p)} ?)+", w + " "):
            return True
    return False


@dataclass(frozen=True)
class Verdict:
    """What :func:`guard` decided about one decoded segment."""

    text: str
    """The text to keep ('' when dropped)."""
    reason: str = ""
    """Why it was dropped or changed: ``prompt-echo``, ``hallucination``, ``loop``."""


def guard(text: str, *, prompt: str, no_speech_prob: float, avg_logprob: float,
          options: DecodeOptions) -> Verdict:
    """Decide whether a decoded segment may become transcript.

    * a known silence hallucination -> dropped;
    * an echo of the prompt -> dropped unless the audio is clearly speech
      (no-speech probability < ``echo_no_speech`` and log-probability >
      ``echo_log_prob``) and it is one or two words, so a caller who answers only "Kings Heath" keeps it, while
      the prompt read back over noise does not;
    * a looped phrase -> cut to one occurrence.
    """
    t = text.strip()
    if not t or is_hallucination(t, options.extra_hallucinations):
        return Verdict("", "hallucination")
    if prompt and echoes_prompt(t, prompt):
        clear = no_speech_prob < options.echo_no_speech and avg_logprob > options.echo_log_prob
        if not clear or len(words_of(t)) >= 3:
            return Verdict("", "prompt-echo")
    c = collapse_loops(t)
    if c != t:
        return Verdict(c, "loop")
    return Verdict(t)


def speech_seconds(audio16k: np.ndarray, *, threshold: float = 0.5) -> float:
    """Seconds of speech Silero VAD finds in 16 kHz int16 or float audio (ONNX, bundled
    with faster-whisper, ~3 ms per second of audio on one core)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    x = audio16k.astype(np.float32) / 32768.0 if audio16k.dtype == np.int16 else audio16k
    ts = get_speech_timestamps(x, VadOptions(threshold=threshold, min_speech_duration_ms=120,
                                             min_silence_duration_ms=300, speech_pad_ms=0))
    return sum(t["end"] - t["start"] for t in ts) / 16000.0


def options_from(settings: object) -> DecodeOptions:
    """Decoding options from ``[transcription]`` settings (hot words, initial prompt)."""
    return DecodeOptions(hotwords=tuple(getattr(settings, "hotwords", ()) or ()),
                         initial_prompt=str(getattr(settings, "initial_prompt", "") or ""))
