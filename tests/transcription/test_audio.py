"""PCM helpers: streaming resampler, recording reader, G.711 helper."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from transcription.audio import Resampler, read_recording, write_wav
from transcription.errors import AudioError

from .helpers import _ulaw_decode, _ulaw_encode


def _tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_resampler_chunked_equals_one_shot():
    """Feeding 20 ms frames gives exactly the one-shot output (state carried across frames)."""
    x = _tone(440, 8000, 1.0)
    one = Resampler(8000, 16000).process(x)
    r = Resampler(8000, 16000)
    chunked = np.concatenate([r.process(x[i:i + 160]) for i in range(0, len(x), 160)])
    assert len(one) == 16000
    assert np.array_equal(one, chunked)


@pytest.mark.parametrize("src,dst", [(8000, 16000), (16000, 8000), (8000, 8000), (48000, 16000)])
def test_resampler_keeps_frequency_and_length(src, dst):
    """A 1 kHz tone stays 1 kHz at the new rate, with the right number of samples."""
    y = Resampler(src, dst).process(_tone(1000, src, 1.0))
    assert abs(len(y) - dst) <= 1
    spec = np.abs(np.fft.rfft(y[dst // 10:].astype(float)))
    peak_hz = np.argmax(spec) * dst / len(y[dst // 10:])
    assert abs(peak_hz - 1000) < 5


def test_resampler_removes_image_when_upsampling():
    """8 -> 16 kHz leaves < 1 % energy in the 4-8 kHz image band."""
    y = Resampler(8000, 16000).process(_tone(3000, 8000, 1.0)).astype(float)
    spec = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    assert spec[freqs > 4200].sum() / spec.sum() < 0.01


def test_resampler_odd_ratio_falls_back_to_linear():
    """22050 -> 16000 (a 320/441 ratio) is handled by interpolation with the right length."""
    r = Resampler(22050, 16000)
    y = np.concatenate([r.process(np.zeros(2205, np.int16)) for _ in range(10)])
    assert abs(len(y) - 16000) <= 10


def test_resampler_rejects_bad_rate():
    """A zero rate is refused with its message."""
    with pytest.raises(ValueError, match="sample rates must be positive, got 0 -> 16000"):
        Resampler(0, 16000)


def test_read_recording_splits_stereo(tmp_path):
    """Left is the caller, right the handler."""
    left, right = _tone(300, 8000, 0.5), _tone(600, 8000, 0.5)
    write_wav(tmp_path / "r.wav", 8000, left, right)
    rec = read_recording(tmp_path / "r.wav")
    assert rec.rate == 8000 and rec.duration == 0.5
    assert np.array_equal(rec.channels["caller"], left)
    assert np.array_equal(rec.channels["handler"], right)


def test_read_recording_mono_is_caller(tmp_path):
    """A mono recording has only a caller channel."""
    write_wav(tmp_path / "m.wav", 8000, _tone(300, 8000, 0.1))
    assert list(read_recording(tmp_path / "m.wav").channels) == ["caller"]


def test_read_recording_errors(tmp_path):
    """Missing, non-WAV and 4-channel files raise AudioError with exact reasons."""
    with pytest.raises(AudioError, match=r"^recording not found: .*nope\.wav$"):
        read_recording(tmp_path / "nope.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(AudioError, match=r"is not a readable WAV file"):
        read_recording(tmp_path / "junk.wav")
    with wave.open(str(tmp_path / "quad.wav"), "wb") as w:
        w.setnchannels(4)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    with pytest.raises(AudioError, match="has 4 channels; expected 1 .caller. or 2"):
        read_recording(tmp_path / "quad.wav")


def _riff(fmt_tag: int, channels: int, bits: int, body: bytes, *, extensible: bool = False) -> bytes:
    import struct
    block = channels * bits // 8
    if extensible:  # WAVE_FORMAT_EXTENSIBLE with the real format in the sub-format GUID
        fmt = struct.pack("<HHIIHHHHIH14s", 0xFFFE, channels, 8000, 8000 * block, block, bits,
                          22, bits, 0, fmt_tag, bytes(14))
    else:
        fmt = struct.pack("<HHIIHH", fmt_tag, channels, 8000, 8000 * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("law,tag", [("alaw", 6), ("ulaw", 7)])
@pytest.mark.parametrize("extensible", [False, True])
def test_read_g711_wav(tmp_path, law, tag, extensible):
    """A-law and µ-law WAVs (stereo, also as WAVE_FORMAT_EXTENSIBLE) decode as the phone
    path decodes G.711: caller left, handler right."""
    from telephony.media import g711
    x = (np.sin(np.arange(1600) / 8) * 12000).astype(np.int16)
    enc = g711.alaw_encode if law == "alaw" else g711.ulaw_encode
    dec = g711.alaw_decode if law == "alaw" else g711.ulaw_decode
    left, right = np.frombuffer(enc(x), np.uint8), np.frombuffer(enc(x // 4), np.uint8)
    body = np.stack([left, right], axis=1).tobytes()
    (tmp_path / "g.wav").write_bytes(_riff(tag, 2, 8, body, extensible=extensible))
    rec = read_recording(tmp_path / "g.wav")
    assert rec.rate == 8000 and rec.duration == 0.2
    assert np.array_equal(rec.channels["caller"], dec(left.tobytes()))
    assert np.array_equal(rec.channels["handler"], dec(right.tobytes()))


def test_read_8_and_24_bit_pcm(tmp_path):
    """8-bit (unsigned) and 24-bit PCM become 16-bit samples."""
    with wave.open(str(tmp_path / "u8.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes([128, 255, 0]))
    assert read_recording(tmp_path / "u8.wav").channels["caller"].tolist() == [0, 127 << 8, -32768]
    body = b"".join(v.to_bytes(3, "little", signed=True) for v in (0, 0x123456, -0x123456))
    (tmp_path / "s24.wav").write_bytes(_riff(1, 1, 24, body, extensible=True))
    assert read_recording(tmp_path / "s24.wav").channels["caller"].tolist() == [0, 0x1234, -0x1235]


def test_ulaw_helper_round_trip_error_is_small():
    """The test helper's mu-law codec is within G.711's quantisation error."""
    x = np.arange(-32000, 32000, 7, dtype=np.int16)
    y = _ulaw_decode(_ulaw_encode(x))
    err = np.abs(y.astype(int) - x.astype(int))
    assert (err <= np.maximum(np.abs(x.astype(int)) // 16, 8)).all()
