"""Make the findability corpus: calls that sound like real ones (never commit the audio).

    .venv/bin/python bench/findability_corpus.py [--out /tmp/controlroom-findability] [--seed 13]

Each caller script of ``bench/findability_calls.json`` (addresses, numbers,
registrations, postcodes, West Midlands place names) is spoken sentence by sentence with
pauses of 0.6-2.5 s, 1-2 s of line noise before the caller speaks, then:

* ``natural``: hibari-tts, the neural voice inside its wheel (``heart``, American
  timbre), read with American and, for half the calls, British spelling-to-sound rules,
  at speeds 0.9-1.1;
* ``robotic``: espeak-ng en-gb variants (RP, West Midlands, Scotland, Lancaster, plain
  en-gb, a female variant), rates 140-175 wpm;
* ``noise15``: the natural call with street noise (pink + brown, made by ``sox -R``
  synth) mixed at 15 dB SNR over the speech;
* ``nonspeech``: 30 s of digital silence, comfort noise (-60 dBFS pink), DTMF digits
  (in-band, as a caller pressing keys) and line hum with noise: no words may come out.

All audio is band-limited to 300-3400 Hz by sox and passed through G.711, A-law and
mu-law alternately, as the service receives it. Deterministic for a seed (``sox -R``,
numpy's seeded generator); cached: a second run with the same seed does nothing.

Writes WAVs (8 kHz 16-bit) and ``manifest.jsonl``: call id, group, voice, codec, text,
query, misspelt, and for each query word the time (s) it starts in the audio (the
duration of its sentence's prefix synthesised alone, plus the sentence's offset).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.speech import write_wav  # noqa: E402
from telephony.media import g711  # noqa: E402

RATE = 8000
CALLS = Path(__file__).with_name("findability_calls.json")
ESPEAK_VOICES = ["en-gb-x-rp", "en-gb-x-gbcwmd", "en-gb-scotland", "en-gb-x-gbclan", "en-gb", "en-gb+f3"]
SPEECH_LEVEL = 10 ** (-22 / 20)
"""RMS of the caller's active speech (-22 dBFS, a usual level on a phone line)."""
NONSPEECH = ("silence", "comfort_noise", "dtmf", "hum")


def sox(args: list[str], data: bytes | None = None) -> bytes:
    return subprocess.run(["sox", "-R", *args], input=data, check=True, capture_output=True,
                          timeout=120).stdout


def to_phone(x: np.ndarray, rate: int) -> np.ndarray:
    """float audio at ``rate`` -> 8 kHz int16 through the telephone band (300-3400 Hz)."""
    pcm = np.clip(x * 32767, -32768, 32767).astype("<i2").tobytes()
    out = sox(["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(rate), "-",
               "-t", "raw", "-r", str(RATE), "-", "sinc", "300-3400"], pcm)
    return np.frombuffer(out, "<i2").astype(np.float32) / 32768


def noise(kind: str, seconds: float, seed: int) -> np.ndarray:
    """sox synth noise (repeatable with -R; the seed picks a different stretch)."""
    skip = seed % 97
    out = sox(["-n", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-r", str(RATE), "-",
               "synth", f"{seconds + skip:.2f}", kind, "vol", "0.5"])
    x = np.frombuffer(out, "<i2").astype(np.float32) / 32768
    return x[int(skip * RATE):][:int(seconds * RATE)]


class Voices:
    def __init__(self) -> None:
        self._hibari: dict[bool, object] = {}

    def hibari(self, text: str, *, british: bool, speed: float, seed: int) -> np.ndarray:
        if british not in self._hibari:
            from hibari import Hibari
            from hibari.g2p import G2P

            self._hibari[british] = Hibari(g2p=G2P(british=True) if british else None)
        tts = self._hibari[british]
        y = np.asarray(tts(text, speed=speed, seed=seed), dtype=np.float32)  # type: ignore[operator]
        return to_phone(_trim(y, 24000), 24000)

    @staticmethod
    def espeak(text: str, voice: str, wpm: int) -> np.ndarray:
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
                             check=True, capture_output=True, timeout=60).stdout
        raw = sox(["-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1",
                   "-r", str(RATE), "-", "sinc", "300-3400"], wav)
        return _trim(np.frombuffer(raw, "<i2").astype(np.float32) / 32768, RATE)


def _trim(x: np.ndarray, rate: int, db: float = -45.0) -> np.ndarray:
    """Cut leading and trailing silence (the TTS's own padding)."""
    frame = rate // 100
    n = len(x) // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-9
    loud = np.nonzero(20 * np.log10(rms) > db)[0]
    if len(loud) == 0:
        return x[:0]
    return x[loud[0] * frame:(loud[-1] + 1) * frame]


def g711_round_trip(x: np.ndarray, law: str) -> np.ndarray:
    pcm = np.clip(x * 32767, -32768, 32767).astype(np.int16)
    if law == "alaw":
        return g711.alaw_decode(g711.alaw_encode(pcm))
    return g711.ulaw_decode(g711.ulaw_encode(pcm))


def speak_call(voices: Voices, sentences: list[str], query: list[str], *, group: str, rng: np.random.Generator,
               seed: int, voice: str, speed: float) -> tuple[np.ndarray, list[float | None]]:
    """The caller's audio and the start time (s) of each query word (first occurrence)."""
    def say(text: str) -> np.ndarray:
        if group == "robotic":
            return voices.espeak(text, voice, int(speed))
        return voices.hibari(text, british=voice.endswith("gb"), speed=speed, seed=seed)

    parts = [np.zeros(int(rng.uniform(1.0, 2.0) * RATE), np.float32)]
    starts: list[float | None] = [None] * len(query)
    t = len(parts[0]) / RATE
    for s in sentences:
        y = say(s)
        words = s.split()
        for qi, q in enumerate(query):
            if starts[qi] is not None:
                continue
            idx = next((i for i, w in enumerate(words) if q.lower() in w.lower().strip(".,")), None)
            if idx is None:
                continue
            prefix = " ".join(words[:idx])
            starts[qi] = round(t + (len(say(prefix)) / RATE + 0.08 if prefix else 0.0), 2)
        parts.append(y)
        t += len(y) / RATE
        gap = np.zeros(int(rng.uniform(0.6, 2.5) * RATE), np.float32)
        parts.append(gap)
        t += len(gap) / RATE
    return np.concatenate(parts), starts


def nonspeech(kind: str, seconds: float, rng: np.random.Generator, seed: int) -> np.ndarray:
    n = int(seconds * RATE)
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind == "comfort_noise":
        x = noise("pinknoise", seconds, seed)
        return x / (np.sqrt(np.mean(x ** 2)) + 1e-9) * 10 ** (-60 / 20)
    if kind == "hum":
        t = np.arange(n) / RATE
        h = 0.02 * np.sin(2 * np.pi * 50 * t) + 0.01 * np.sin(2 * np.pi * 150 * t)
        return (h + 0.003 * noise("brownnoise", seconds, seed)).astype(np.float32)
    # DTMF: digits of 0.15-0.3 s with 0.1-1.5 s gaps, like a caller pressing keys
    lo = {"1": 697, "2": 697, "3": 697, "4": 770, "5": 770, "6": 770, "7": 852, "8": 852, "9": 852,
          "*": 941, "0": 941, "#": 941}
    hi = {"1": 1209, "2": 1336, "3": 1477, "4": 1209, "5": 1336, "6": 1477, "7": 1209, "8": 1336,
          "9": 1477, "*": 1209, "0": 1336, "#": 1477}
    x = np.zeros(n, np.float32)
    i = int(0.5 * RATE)
    while i < n - RATE:
        d = str(rng.choice(list(lo)))
        m = int(rng.uniform(0.15, 0.3) * RATE)
        t = np.arange(m) / RATE
        x[i:i + m] = 0.2 * (np.sin(2 * np.pi * lo[d] * t) + np.sin(2 * np.pi * hi[d] * t))
        i += m + int(rng.uniform(0.1, 1.5) * RATE)
    return x


def build(out: Path, seed: int, *, limit: int | None = None) -> Path:
    """Make the corpus in ``out`` (skipped when its manifest for this seed exists)."""
    spec = json.loads(CALLS.read_text())
    key = hashlib.sha256(CALLS.read_bytes() + Path(__file__).read_bytes() + str((seed, limit)).encode()
                         ).hexdigest()[:12]
    out = out / key
    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    voices = Voices()
    rows = []
    calls = spec["calls"][:limit] if limit else spec["calls"]
    for i, c in enumerate(calls):
        rng = np.random.default_rng([seed, i])
        variants = [
            ("natural", "heart-gb" if i % 2 else "heart-us", float(rng.choice([0.9, 1.0, 1.1]))),
            ("robotic", ESPEAK_VOICES[i % len(ESPEAK_VOICES)], float(rng.choice([140, 160, 175]))),
        ]
        for group, voice, speed in variants:
            x, starts = speak_call(voices, c["text"], c["query"], group=group, rng=rng, seed=seed + i,
                                   voice=voice, speed=speed)
            tail = np.zeros(RATE, np.float32)
            x = np.concatenate([x, tail])
            x *= SPEECH_LEVEL / (np.sqrt(np.mean(x[np.abs(x) > 1e-3] ** 2)) + 1e-9)
            conds = [(group, x)]
            if group == "natural":  # the same call again in street noise at 15 dB SNR
                secs = len(x) / RATE + 0.1
                n = 0.6 * noise("pinknoise", secs, seed + i)[:len(x)] + \
                    0.4 * noise("brownnoise", secs, seed + 31 * i)[:len(x)]
                n = np.resize(n, len(x))  # sox may give a few samples short
                speech_rms = np.sqrt(np.mean(x[np.abs(x) > 1e-3] ** 2))
                n *= speech_rms / (np.sqrt(np.mean(n ** 2)) + 1e-9) * 10 ** (-15 / 20)
                conds.append(("noise15", x + n))
            for cond, audio in conds:
                law = "alaw" if (i + len(rows)) % 2 == 0 else "ulaw"
                pcm = g711_round_trip(audio, law)
                cid = f"{c['id']}-{cond}"
                path = write_wav(out / f"{cid}.wav", pcm)
                rows.append({"call_id": cid, "script": c["id"], "group": cond, "voice": voice,
                             "speed": speed, "codec": law, "path": str(path),
                             "text": " ".join(c["text"]), "query": c["query"],
                             "misspelt": c["misspelt"], "starts": starts,
                             "duration": round(len(pcm) / RATE, 2)})
    for j, kind in enumerate(NONSPEECH):
        rng = np.random.default_rng([seed, 1000 + j])
        law = "alaw" if j % 2 == 0 else "ulaw"
        pcm = g711_round_trip(nonspeech(kind, 30.0, rng, seed + j), law)
        cid = f"n{j:02d}-{kind}"
        path = write_wav(out / f"{cid}.wav", pcm)
        rows.append({"call_id": cid, "script": None, "group": "nonspeech", "voice": kind,
                     "speed": None, "codec": law, "path": str(path), "text": "", "query": [],
                     "misspelt": [], "starts": [], "duration": 30.0})
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(manifest)
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/controlroom-findability")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--limit", type=int, default=None, help="first N caller scripts only")
    a = ap.parse_args()
    m = build(Path(a.out), a.seed, limit=a.limit)
    rows = [json.loads(line) for line in m.read_text().splitlines()]
    print(f"{len(rows)} calls, {sum(r['duration'] for r in rows) / 60:.1f} min of audio: {m}")


if __name__ == "__main__":
    main()
