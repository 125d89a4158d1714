"""Prompts a stream can play: the queue tone and looped WAV files, frames pre-encoded.

A prompt is a list of read-only 20 ms PCM frames shared by every stream playing it;
each stream keeps only its own position (:class:`PromptLoop`). The G.711 payloads of a
prompt are encoded once per codec on first use, so sending a prompt costs no encoding
per tick.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .errors import MediaError
from .g711 import ALAW_ENCODE, ULAW_ENCODE

if TYPE_CHECKING:
    from .codec import Codec

__all__ = ["PromptLoop", "load_wav", "queue_tone"]

Pcm = npt.NDArray[np.int16]


class PromptLoop:
    """Plays a list of frames round and round (tone cadence, WAV prompt).

    The frames are encoded once per codec (cached by the engine, shared by every stream
    playing the prompt), so sending a prompt costs no G.711 work per tick.
    """

    __slots__ = ("frames", "encoded", "i")

    def __init__(self, frames: list[Pcm], encoded: dict[Codec, list[bytes]]) -> None:
        self.frames = frames
        self.encoded = encoded
        self.i = 0

    def next_index(self) -> int:
        i = self.i
        self.i = i + 1 if i + 1 < len(self.frames) else 0
        return i

    def payloads(self, codec: Codec) -> list[bytes]:
        enc = self.encoded.get(codec)
        if enc is None:
            table = ALAW_ENCODE if codec.value == 8 else ULAW_ENCODE
            enc = self.encoded[codec] = [table[f.view(np.uint16)].tobytes() for f in self.frames]
        return enc


def queue_tone(frame: int) -> list[Pcm]:
    """UK-style comfort tone: 400 Hz, 0.4 on / 0.2 off / 0.4 on / 2.0 off, about -18 dBFS."""
    rate, amp, ramp = 8000, 4000.0, 40  # 5 ms raised-cosine edges: no click at cadence steps
    on = np.sin(2 * math.pi * 400 * np.arange(int(0.4 * rate)) / rate) * amp
    edge = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, ramp))
    on[:ramp] *= edge
    on[-ramp:] *= edge[::-1]
    cycle = np.concatenate([on, np.zeros(int(0.2 * rate)), on, np.zeros(int(2.0 * rate))])
    return frames(np.round(cycle).astype(np.int16), frame)


def frames(pcm: Pcm, frame: int) -> list[Pcm]:
    pad = (-len(pcm)) % frame
    if pad:
        pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    out = [pcm[i:i + frame].copy() for i in range(0, len(pcm), frame)]
    for f in out:
        f.setflags(write=False)
    return out


def load_wav(path: Path, frame: int) -> list[Pcm]:
    """Read an 8 kHz mono 16-bit WAV prompt; MediaError if it is missing or another format."""
    try:
        with wave.open(str(path), "rb") as w:
            fmt = (w.getframerate(), w.getnchannels(), w.getsampwidth())
            if fmt != (8000, 1, 2):
                raise MediaError(f"prompt {path} must be 8 kHz mono 16-bit WAV, got "
                                 f"{fmt[0]} Hz, {fmt[1]} channel(s), {8 * fmt[2]}-bit")
            data = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError) as e:
        raise MediaError(f"cannot read prompt {path}: {e}") from e
    pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
    if len(pcm) == 0:
        raise MediaError(f"prompt {path} is empty")
    return frames(pcm, frame)
