"""Generate a speech corpus for the transcription benchmarks (never commit the audio).

    .venv/bin/python bench/transcription_corpus.py [--out /tmp/controlroom-corpus] [--max 40]

espeak-ng speaks control-room sentences with several voices and speaking rates; each
utterance is written in three conditions, as the engines would receive it:

* ``ulaw8k``: 8 kHz, G.711 mu-law encoded and decoded back to 16-bit (PCMU call);
* ``alaw8k``: 8 kHz, G.711 A-law round trip (PCMA, the European norm);
* ``clean16k``: 16 kHz 16-bit (wideband reference, no telephone band limit).

Korean sentences (for the Vosk Korean model) are made the same way. Writes WAV files
and ``manifest.jsonl`` (path, text, language, voice, wpm, condition, duration).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony.media import g711  # noqa: E402

EN = [
    "There is a burglary at number twelve Station Road",
    "Someone is trying to break into my car outside",
    "My neighbour is shouting and I can hear glass breaking",
    "A man with a knife is standing outside the shop",
    "There has been a crash on the motorway near junction four",
    "My daughter has not come home from school",
    "I want to report a stolen bike from my garden",
    "The house next door is on fire and people are inside",
    "He hit me and now he has left in a blue van",
    "There is a fight outside the pub on the high street",
    "Please send an ambulance he is not breathing",
    "I can see smoke coming from the window upstairs",
]
KO = [
    "안녕하세요 경찰서입니다 무엇을 도와드릴까요",
    "집에 도둑이 들었어요 빨리 와 주세요",
    "차 사고가 났어요 사람이 다쳤어요",
    "주소를 말씀해 주세요",
]
EN_VOICES = ["en+f2", "en", "en-us", "en-gb-x-rp"]
KO_VOICES = ["ko"]
RATES = [120, 160]


def espeak(text: str, voice: str, wpm: int, rate: int) -> np.ndarray:
    tts = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-g", "6", "--stdout", text],
                         check=True, capture_output=True, timeout=60).stdout
    raw = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16",
                          "-c", "1", "-r", str(rate), "-"], input=tts, check=True,
                         capture_output=True, timeout=60).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def write(path: Path, rate: int, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/controlroom-corpus")
    ap.add_argument("--max", type=int, default=40, help="utterances per language at most")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for lang, sentences, voices in (("en", EN, EN_VOICES), ("ko", KO, KO_VOICES)):
        n = 0
        for i, text in enumerate(sentences):
            for voice in voices:
                for wpm in RATES:
                    if n >= a.max:
                        break
                    n += 1
                    stem = f"{lang}{i:02d}-{voice.replace('+', '_')}-{wpm}"
                    pad8, pad16 = np.zeros(2400, np.int16), np.zeros(4800, np.int16)
                    s8 = np.concatenate([pad8, espeak(text, voice, wpm, 8000), pad8])
                    s16 = np.concatenate([pad16, espeak(text, voice, wpm, 16000), pad16])
                    for cond, rate, pcm in (
                        ("ulaw8k", 8000, g711.ulaw_decode(g711.ulaw_encode(s8))),
                        ("alaw8k", 8000, g711.alaw_decode(g711.alaw_encode(s8))),
                        ("clean16k", 16000, s16),
                    ):
                        p = out / f"{stem}-{cond}.wav"
                        write(p, rate, pcm)
                        rows.append({"path": str(p), "text": text, "language": lang,
                                     "voice": voice, "wpm": wpm, "condition": cond,
                                     "duration": round(len(pcm) / rate, 3)})
    with open(out / "manifest.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    secs = sum(r["duration"] for r in rows)
    print(f"wrote {len(rows)} files ({secs:.0f} s of audio) and {out / 'manifest.jsonl'}")


if __name__ == "__main__":
    main()
