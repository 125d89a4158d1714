"""RTP packet parse/build (RFC 3550) and receive statistics."""

from __future__ import annotations

import pytest

from telephony.media import rtp
from telephony.media.errors import RtpError


def test_round_trip_minimal() -> None:
    """A plain packet builds to the expected 12-byte header and parses back."""
    data = rtp.build(8, 0x1234, 0xDEADBEEF, 0x01020304, b"\xd5" * 160, marker=True)
    assert data[:12] == bytes.fromhex("80881234deadbeef01020304")
    p = rtp.parse(data)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker) == (8, 0x1234, 0xDEADBEEF, 0x01020304, True)
    assert p.payload == b"\xd5" * 160 and p.csrc == () and p.extension is None and p.padding == 0


def test_round_trip_csrc_extension_padding() -> None:
    """CSRC list, header extension and padding are parsed and stripped from the payload."""
    data = rtp.build(0, 65535, 0, 7, b"abc", csrc=(1, 2, 3), extension=(0xBEDE, b"\x10\x01\x00\x00"), padding=5)
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    p = rtp.parse(data)
    assert p.csrc == (1, 2, 3)
    assert p.extension == (0xBEDE, b"\x10\x01\x00\x00")
    assert p.payload == b"abc" and p.padding == 5


def test_build_fast_matches_build() -> None:
    """The send path's header equals the general builder's."""
    assert rtp.build_fast(8, 70000, 2**32 + 5, 9, b"x", True) == rtp.build(8, 70000, 2**32 + 5, 9, b"x", marker=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "packet too short: 0 bytes < 12"),
        (bytes(11), "packet too short: 11 bytes < 12"),
        (b"\x40" + bytes(11), "unsupported RTP version 1"),
        (b"\x82" + bytes(11) + bytes(4), "CSRC list (2 entries) exceeds packet length 16"),
        (b"\x90" + bytes(11) + b"\x00\x00", "header extension truncated"),
        (b"\x90" + bytes(11) + b"\x00\x00\x00\x02" + bytes(4), "header extension length 2 words exceeds packet"),
        (b"\xa0" + bytes(11) + b"ab\x00", "padding bit set but padding length is 0"),
        (b"\xa0" + bytes(11) + b"ab\x09", "padding length 9 exceeds payload"),
    ],
)
def test_malformed_packets_raise_with_reason(data: bytes, reason: str) -> None:
    """Each malformation raises RtpError carrying an exact reason."""
    with pytest.raises(RtpError) as e:
        rtp.parse(data)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"payload_type": 128}, "payload type 128 out of range 0..127"),
        ({"csrc": tuple(range(16))}, "too many CSRCs: 16 > 15"),
        ({"extension": (1, b"abc")}, "extension data length must be a multiple of 4"),
        ({"padding": 256}, "padding 256 out of range 0..255"),
    ],
)
def test_build_rejects_bad_fields(kwargs: dict, msg: str) -> None:
    """build() refuses fields that cannot be encoded."""
    args = {"payload_type": 8, "sequence": 1, "timestamp": 1, "ssrc": 1, "payload": b""} | kwargs
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        rtp.build(**args)


def test_reception_stats_loss_wrap_and_ssrc_change() -> None:
    """Loss is counted across seq wrap-around and kept when the SSRC changes."""
    st = rtp.ReceptionStats()
    seqs = [65530, 65531, 65533, 65535, 0, 1, 4]  # lost: 65532, 65534, 2, 3
    for i, s in enumerate(seqs):
        st.update(1, s, 160 * i, 0.02 * i)
    assert st.expected == 11 and st.received == 7 and st.lost == 4
    st.update(2, 100, 0, 1.0)
    st.update(2, 102, 320, 1.04)
    assert st.lost == 5


def test_reception_stats_jitter() -> None:
    """Perfectly paced packets have zero jitter; alternating 10 ms offsets give ~10 ms."""
    st = rtp.ReceptionStats()
    for i in range(100):
        st.update(1, i, 160 * i, 0.02 * i)
    assert st.jitter_ms == pytest.approx(0.0, abs=1e-6)
    st2 = rtp.ReceptionStats()
    for i in range(400):
        st2.update(1, i, 160 * i, 0.02 * i + (0.01 if i % 2 else 0.0))
    assert st2.jitter_ms == pytest.approx(10.0, abs=0.5)
