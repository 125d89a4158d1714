"""PCM helpers: streaming resampling, recordings on disk, format conversion.

Audio reaches the engines as 16-bit signed little-endian PCM (telephony decodes G.711
first; we never feed 8-bit codes to a recogniser). Telephone audio is 8 kHz; Vosk models
are usually 16 kHz and Whisper always is, so each stream carries a :class:`Resampler`
with its own filter state (a stateless per-frame resampler would click at every 20 ms
frame boundary).
"""

from __future__ import annotations

import math
import struct
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import AudioError

Pcm = npt.NDArray[np.int16]


def _lowpass(cutoff: float, taps: int) -> npt.NDArray[np.float64]:
    """Windowed-sinc (Blackman) low-pass; ``cutoff`` in cycles per sample (< 0.5)."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    return np.asarray(h / h.sum(), dtype=np.float64)


class Resampler:
    """Streaming rational resampler (polyphase by zero-stuffing + FIR + decimation).

    Feed chunks of int16 samples at ``src`` Hz with :meth:`process`; the output is int16
    at ``dst`` Hz, continuous across chunk boundaries. Ratios whose terms are large
    (e.g. 22050 -> 16000 is 320/441) would need a huge filter, so those fall back to
    linear interpolation per chunk: good enough for odd-rate files handed to the CLI,
    never used on the telephone path (8 kHz -> 16 kHz is 2/1).
    """

    def __init__(self, src: int, dst: int, *, taps_per_phase: int = 24) -> None:
        if src <= 0 or dst <= 0:
            raise ValueError(f"sample rates must be positive, got {src} -> {dst}")
        g = math.gcd(src, dst)
        self.src, self.dst = src, dst
        self.up, self.down = dst // g, src // g
        self._linear = self.up * self.down > 64
        self._phase = 0
        if self.up == 1 and self.down == 1 or self._linear:
            self._h = np.ones(1)
        else:
            taps = taps_per_phase * max(self.up, self.down) | 1
            self._h = _lowpass(0.5 / max(self.up, self.down) * 0.95, taps) * self.up
        self._hist = np.zeros(len(self._h) - 1)
        self._pos = 0.0  # linear mode: fractional read position carried across chunks

    def process(self, pcm: Pcm | bytes) -> Pcm:
        x = np.frombuffer(pcm, dtype=np.int16) if isinstance(pcm, bytes | bytearray) else pcm
        if self.up == 1 and self.down == 1:
            return x.astype(np.int16, copy=False)
        if self._linear:
            return self._process_linear(x)
        stuffed = np.zeros(len(x) * self.up)
        stuffed[:: self.up] = x
        ext = np.concatenate([self._hist, stuffed])
        y = np.convolve(ext, self._h, mode="valid")
        self._hist = ext[len(ext) - (len(self._h) - 1):] if len(self._h) > 1 else self._hist
        start = (-self._phase) % self.down
        out = y[start:: self.down]
        self._phase = (self._phase + len(y)) % self.down
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def _process_linear(self, x: Pcm) -> Pcm:
        if len(x) == 0:
            return np.zeros(0, dtype=np.int16)
        step = self.src / self.dst
        pos = np.arange(self._pos, len(x) - 1 + 1e-9, step) if len(x) > 1 else np.array([0.0])
        out = np.interp(pos, np.arange(len(x)), x.astype(np.float64))
        self._pos = (pos[-1] + step) - len(x) if len(pos) else self._pos - len(x)
        self._pos = max(self._pos, 0.0)
        return np.asarray(np.clip(np.rint(out), -32768, 32767), dtype=np.int16)


def resample(pcm: Pcm, src: int, dst: int) -> Pcm:
    """Resample a whole signal (one-shot convenience around :class:`Resampler`)."""
    return Resampler(src, dst).process(pcm)


def to_float(pcm: Pcm) -> npt.NDArray[np.float32]:
    """int16 -> float32 in [-1, 1) (Whisper's input)."""
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


@dataclass(frozen=True)
class Recording:
    """A recording split into channels: ``caller`` (left) and ``handler`` (right)."""

    rate: int
    channels: dict[str, Pcm]

    @property
    def duration(self) -> float:
        return max((len(v) for v in self.channels.values()), default=0) / self.rate


WAVE_FORMAT_PCM, WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW, WAVE_FORMAT_EXTENSIBLE = 1, 6, 7, 0xFFFE


def _read_riff_wav(p: Path) -> tuple[int, int, int, bytes] | None:
    """(channels, sample width, rate, PCM) of a WAV that Python's ``wave`` cannot read:
    A-law or µ-law (format 6 or 7; decoded to 16-bit) or PCM inside
    WAVE_FORMAT_EXTENSIBLE (as sox writes 24-bit); None if the file is neither."""
    from telephony.media import g711

    data = p.read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt, nch, rate, bits, body = 12, None, 0, 0, 0, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunk = data[pos + 8:pos + 8 + size]
        if cid == b"fmt " and len(chunk) >= 16:
            fmt, nch, rate = struct.unpack("<HHI", chunk[:8])
            bits = struct.unpack("<H", chunk[14:16])[0]
            if fmt == WAVE_FORMAT_EXTENSIBLE and len(chunk) >= 26:
                fmt = struct.unpack("<H", chunk[24:26])[0]  # the sub-format GUID's first bytes
        elif cid == b"data":
            body = chunk
        pos += 8 + size + (size & 1)
    if body is None:
        return None
    if fmt == WAVE_FORMAT_PCM and bits in (8, 16, 24, 32):
        return nch, bits // 8, rate, body
    if fmt not in (WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW):
        return None
    if bits != 8:
        raise AudioError(f"recording {p} is G.711 with {bits}-bit samples; 8-bit is required")
    decode = g711.alaw_decode if fmt == WAVE_FORMAT_ALAW else g711.ulaw_decode
    return nch, 2, rate, decode(body).astype("<i2").tobytes()


def read_recording(path: str | Path) -> Recording:
    """Read a call recording: stereo WAV, caller left and handler right, 16-bit PCM (as
    the service records) or G.711 A-law / µ-law (as many PBXs and loggers export).

    A mono file is taken as the caller's channel only. Raises :class:`AudioError` with
    the reason when the file is missing or not such a WAV.
    """
    p = Path(path)
    try:
        with wave.open(str(p), "rb") as w:
            nch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except FileNotFoundError:
        raise AudioError(f"recording not found: {p}") from None
    except (wave.Error, EOFError, OSError) as exc:
        try:
            other = _read_riff_wav(p)
        except OSError:
            other = None
        if other is None:
            raise AudioError(f"recording {p} is not a readable WAV file: {exc}") from None
        nch, width, rate, raw = other
    if width == 1:  # 8-bit PCM WAV is unsigned
        raw = ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype("<i2").tobytes()
    elif width in (3, 4):  # keep the top 16 bits of 24- or 32-bit PCM
        b = np.frombuffer(raw[: len(raw) - len(raw) % width], dtype=np.uint8).reshape(-1, width)
        raw = b[:, width - 2:].copy().tobytes()
    elif width != 2:
        raise AudioError(f"recording {p} has {8 * width}-bit samples; 8/16/24/32-bit PCM,"
                         " A-law or µ-law is required")
    if nch not in (1, 2):
        raise AudioError(f"recording {p} has {nch} channels; expected 1 (caller) or 2 (caller, handler)")
    data = np.frombuffer(raw[: len(raw) - len(raw) % (2 * nch)], dtype="<i2")
    if nch == 1:
        return Recording(rate, {"caller": data.astype(np.int16)})
    frames = data.reshape(-1, 2)
    return Recording(rate, {"caller": frames[:, 0].copy(), "handler": frames[:, 1].copy()})


def write_wav(path: str | Path, rate: int, *channels: Pcm) -> None:
    """Write int16 channels (equal length) as a WAV file (tests and bench)."""
    if not channels:
        raise ValueError("at least one channel")
    n = max(len(c) for c in channels)
    stacked = np.zeros((n, len(channels)), dtype="<i2")
    for i, c in enumerate(channels):
        stacked[: len(c), i] = c
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(stacked.tobytes())
