"""The harness's pure parts: port finder, G.711 tables, RTP/pcap writer and reader."""

from __future__ import annotations

import socket
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from harness import ports, speech


def test_free_rtp_range_is_even_bindable_and_not_reissued() -> None:
    """An RTP block starts even, has the size asked (rounded to pairs), and is never handed out twice."""
    first, last = ports.free_rtp_range(5)
    assert first % 2 == 0 and last - first + 1 == 6
    for p in range(first, last + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", p))
        s.close()
    again = {ports.free_udp_port() for _ in range(50)}
    assert not again & set(range(first, last + 1))
    assert all(10000 <= p <= 32767 for p in again)
    ports.release(*range(first, last + 1), *again)


def test_g711_tables_match_the_reference_implementation() -> None:
    """Every 16-bit sample encodes, and every byte decodes, exactly as CPython's audioop (ITU G.711)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    every = bytes(range(256))
    assert speech.encode(pcm, "PCMA") == audioop.lin2alaw(pcm.tobytes(), 2)
    assert speech.encode(pcm, "PCMU") == audioop.lin2ulaw(pcm.tobytes(), 2)
    assert speech.decode(every, "PCMA").tobytes() == audioop.alaw2lin(every, 2)
    assert speech.decode(every, "PCMU").tobytes() == audioop.ulaw2lin(every, 2)


def test_speech_clip_pcap_round_trips_bit_exactly(tmp_path: Path) -> None:
    """A synthesised clip's pcap holds 20 ms PCMU packets, continuous seq/ts, the exact payload."""
    clip = speech.speech_clip("Which service do you need?", "PCMU", tmp_path / "c.pcap")
    assert 0.5 < clip.duration < 5.0 and len(clip.payload) % 160 == 0
    got = speech.read_rtp_pcap(clip.pcap)
    assert [c.rtp for c in got] == [
        speech.RtpPacket(pt=p.pt, seq=p.seq, ts=p.ts, ssrc=p.ssrc, payload=p.payload, marker=p.marker)
        for p in clip.packets]
    assert all(c.rtp.pt == 0 and len(c.rtp.payload) == 160 for c in got)
    assert [c.rtp.seq for c in got] == list(range(1000, 1000 + len(got)))
    assert [c.rtp.ts for c in got] == [16000 + 160 * i for i in range(len(got))]
    gaps = np.diff([c.time for c in got])
    assert np.allclose(gaps, 0.02, atol=2e-6)
    assert got[0].rtp.marker and not any(c.rtp.marker for c in got[1:])
    assert np.array_equal(speech.decode(clip.payload, "PCMU"), clip.sent)
    # the pcap is a plain DLT_EN10MB file
    assert struct.unpack("<IHHiIII", clip.pcap.read_bytes()[:24]) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def test_dtmf_packets_follow_rfc4733() -> None:
    """Digits 5 5: one event per digit, marker on the first packet, end bit sent 3 times, seq continuous."""
    pk = speech.dtmf_packets("55", "PCMA", tone_ms=100)
    ev = [p for p in pk if p.pt == 101]
    assert [p.seq for p in pk] == list(range(2000, 2000 + len(pk)))
    starts = sorted({p.ts for p in ev})
    assert len(starts) == 2
    for ts in starts:
        group = [p for p in ev if p.ts == ts]
        assert [p.payload[0] for p in group] == [5] * 7
        assert group[0].marker and not any(p.marker for p in group[1:])
        ends = [p for p in group if p.payload[1] & 0x80]
        assert len(ends) == 3 and {struct.unpack("!H", p.payload[2:])[0] for p in ends} == {800}
    with pytest.raises(ValueError, match="not a DTMF digit"):
        speech.dtmf_packets("5x", "PCMA")


def test_find_alignment_is_exact() -> None:
    """The aligner finds a clip at its true offset ignoring edge silence, and refuses a one-sample change."""
    rng = np.random.default_rng(1)
    core = rng.integers(-3000, 3000, 800, dtype=np.int16)
    needle = np.concatenate([np.zeros(100, np.int16), core, np.zeros(50, np.int16)])
    hay = np.concatenate([np.zeros(1234, np.int16), core, np.zeros(10, np.int16)])
    assert speech.find_alignment(needle, hay) == 1234 - 100
    hay[1234 + 400] += 1
    assert speech.find_alignment(needle, hay) is None


def test_frames_in_order_tolerates_playout_shifts_but_not_corruption() -> None:
    """A silence frame inserted by the jitter buffer is a shift, not a failure; one changed
    sample, or a lost frame, is a failure."""
    import numpy as np

    from harness.speech import FRAME, frames_in_order

    rng = np.random.default_rng(7)
    sent = rng.integers(-3000, 3000, FRAME * 50).astype(np.int16)
    recorded = np.concatenate([np.full(FRAME * 3, 8, np.int16), sent[:FRAME * 20],
                               np.full(FRAME, 8, np.int16), sent[FRAME * 20:]])
    assert frames_in_order(sent, recorded) == (50, 50, 1)
    corrupt = recorded.copy()
    corrupt[FRAME * 30 + 5] ^= 1
    assert frames_in_order(sent, corrupt)[1] == 49
    lost = np.concatenate([recorded[:FRAME * 10], recorded[FRAME * 11:]])
    assert frames_in_order(sent, lost)[1] < 50
