"""Test helpers: synthesised speech (espeak-ng + sox), G.711 round trip, fake engines."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import numpy as np

from transcription.engines import Hypothesis

HAVE_ESPEAK = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def speak(text: str, *, voice: str = "en", rate: int = 8000, wpm: int = 150,
          gap: int = 0) -> np.ndarray:
    """espeak-ng speech resampled by sox to ``rate`` Hz, int16 mono."""
    tts = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-g", str(gap), "--stdout", text],
                         check=True, capture_output=True, timeout=60).stdout
    out = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16",
                          "-c", "1", "-r", str(rate), "-"], input=tts, check=True,
                         capture_output=True, timeout=60).stdout
    return np.frombuffer(out, dtype="<i2").astype(np.int16)


def _ulaw_encode(x: np.ndarray) -> np.ndarray:
    # ITU-T G.711 mu-law (bias 0x84, clip 32635), vectorised
    s = x.astype(np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    mant = (mag >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8)


def _ulaw_decode(c: np.ndarray) -> np.ndarray:
    u = ~c.astype(np.int32) & 0xFF
    exp = (u >> 4) & 7
    mag = (((u & 0x0F) << 3) + 0x84) << exp
    return np.where(u & 0x80, 0x84 - mag, mag - 0x84).astype(np.int16)


def g711_roundtrip(pcm: np.ndarray, law: str = "ulaw") -> np.ndarray:
    """Encode to G.711 and decode back to 16-bit, as the phone path does."""
    try:
        from telephony.media import g711  # the engine's codec when present
        if law == "ulaw":
            return g711.ulaw_decode(g711.ulaw_encode(pcm))
        return g711.alaw_decode(g711.alaw_encode(pcm))
    except ImportError:
        if law != "ulaw":
            raise
        return _ulaw_decode(_ulaw_encode(pcm))


class FakeRecogniser:
    """Deterministic recogniser: a final 'word<N>' per 0.5 s of non-silent audio and a
    partial every 0.1 s; ``cost`` seconds of sleep per second of audio (simulated CPU)."""

    def __init__(self, cost: float) -> None:
        self.cost = cost
        self.t = 0
        self.voiced = 0
        self.n = 0

    def accept(self, pcm: bytes) -> list[Hypothesis]:
        x = np.frombuffer(pcm, np.int16)
        if self.cost:
            time.sleep(self.cost * len(x) / 8000)
        out = []
        for i in range(0, len(x), 160):
            self.t += 160
            if np.abs(x[i:i + 160]).max(initial=0) > 100:
                self.voiced += 160
                if self.voiced % 800 == 0 and self.voiced % 4000:
                    out.append(Hypothesis(f"word{self.n}", (self.t - self.voiced % 4000) / 8000,
                                          self.t / 8000, False))
                if self.voiced % 4000 == 0:
                    out.append(Hypothesis(f"word{self.n}", (self.t - 4000) / 8000, self.t / 8000,
                                          True, 0.9))
                    self.n += 1
        return out

    def flush(self) -> list[Hypothesis]:
        return [Hypothesis("tail", self.t / 8000, self.t / 8000, True, 0.5)] if self.voiced % 4000 else []


class FakeEngine:
    """Engine double for service/policy tests (the real engines have their own tests)."""

    name = "fake"
    model = "fake-1"
    language = "en"

    def __init__(self, cost: float = 0.0) -> None:
        self.cost = cost
        self.made = 0
        self.lock = threading.Lock()
        self.transcribed: list[int] = []

    def recogniser(self) -> FakeRecogniser:
        with self.lock:
            self.made += 1
        return FakeRecogniser(self.cost)

    def transcribe(self, pcm, rate, *, should_stop=None):
        self.transcribed.append(len(pcm))
        r = FakeRecogniser(0.0)
        out = []
        for i in range(0, len(pcm), 800):
            if should_stop is not None and should_stop():
                from transcription.engines import Interrupted
                raise Interrupted()
            out += [h for h in r.accept(pcm[i:i + 800].tobytes()) if h.final]
        return out + r.flush()
