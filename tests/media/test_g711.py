"""G.711 tables checked exhaustively against the ITU-T G.191 reference algorithm."""

from __future__ import annotations

import numpy as np
import pytest

from telephony.media import g711

# --- scalar oracle: a transcription of ITU-T G.191 STL g711.c (alaw_/ulaw_compress/expand)


def ref_alaw_compress(x: int) -> int:
    ix = (~x) >> 4 if x < 0 else x >> 4  # one's complement for negative values
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55  # toggle even bits


def ref_alaw_expand(code: int) -> int:
    ix = code ^ 0x55
    ix &= 0x7F
    iexp = ix >> 4
    mant = ix & 0x0F
    if iexp > 0:
        mant = mant + 16
    mant = (mant << 4) + 0x08
    if iexp > 1:
        mant = mant << (iexp - 1)
    return mant if code > 127 else -mant


def ref_ulaw_compress(x: int) -> int:
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    if absno > 0x1FFF:
        absno = 0x1FFF
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high_nibble = 0x08 - segno
    low_nibble = 0x0F - ((absno >> segno) & 0x0F)
    out = (high_nibble << 4) | low_nibble
    if x >= 0:
        out |= 0x80
    return out


def ref_ulaw_expand(code: int) -> int:
    sign = -1 if code < 0x80 else 1
    mantissa = ~code
    exponent = (mantissa >> 4) & 0x07
    segment = exponent + 1
    mantissa = mantissa & 0x0F
    step = 4 << segment
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32)


def test_alaw_decode_all_256_codes_match_reference() -> None:
    """Every A-law code decodes to the G.191 value."""
    expected = [ref_alaw_expand(c) for c in range(256)]
    assert g711.ALAW_DECODE.tolist() == expected


def test_ulaw_decode_all_256_codes_match_reference() -> None:
    """Every mu-law code decodes to the G.191 value."""
    expected = [ref_ulaw_expand(c) for c in range(256)]
    assert g711.ULAW_DECODE.tolist() == expected


def test_alaw_encode_all_65536_inputs_match_reference() -> None:
    """Every 16-bit sample A-law-encodes exactly as G.191 (via the int16 API)."""
    expected = bytes(ref_alaw_compress(int(x)) for x in ALL_SAMPLES)
    assert g711.alaw_encode(ALL_SAMPLES.astype(np.int16)) == expected


def test_ulaw_encode_all_65536_inputs_match_reference() -> None:
    """Every 16-bit sample mu-law-encodes exactly as G.191 (via the int16 API)."""
    expected = bytes(ref_ulaw_compress(int(x)) for x in ALL_SAMPLES)
    assert g711.ulaw_encode(ALL_SAMPLES.astype(np.int16)) == expected


def test_known_values() -> None:
    """Well-known points: A-law silence 0xD5/0x55, mu-law 0xFF/0x7F, full scale."""
    assert g711.alaw_encode(np.array([0, -1, 32767, -32768], np.int16)) == bytes([0xD5, 0x55, 0xAA, 0x2A])
    assert g711.ulaw_encode(np.array([0, -1, 32767, -32768], np.int16)) == bytes([0xFF, 0x7F, 0x80, 0x00])
    assert g711.alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]
    assert g711.ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]


def test_alaw_even_bit_inversion() -> None:
    """A-law codes are the raw sign/segment/mantissa XOR 0x55 (not 0xD5, not 0xFF)."""
    raw = [0x80 | (3 << 4) | 9, (5 << 4) | 2]  # positive seg 3 mant 9; negative seg 5 mant 2
    decoded = g711.alaw_decode(bytes(c ^ 0x55 for c in raw)).tolist()
    assert decoded == [((16 + 9) << 4 | 8) << 2, -(((16 + 2) << 4 | 8) << 4)]


@pytest.mark.parametrize("law", ["alaw", "ulaw"])
def test_decode_encode_decode_is_identity(law: str) -> None:
    """decode(encode(decode(c))) == decode(c) for all codes; encode(decode(c)) == c except mu-law -0."""
    dec, enc = getattr(g711, f"{law}_decode"), getattr(g711, f"{law}_encode")
    codes = bytes(range(256))
    once = dec(codes)
    assert dec(enc(once)).tolist() == once.tolist()
    re = enc(once)
    differing = [c for c in range(256) if re[c] != c]
    assert differing == ([] if law == "alaw" else [0x7F])  # mu-law negative zero -> +0


def test_decode_is_monotonic_and_symmetric() -> None:
    """A-law and mu-law reconstruction levels are odd-symmetric around zero."""
    for table in (g711.ALAW_DECODE, g711.ULAW_DECODE):
        vals = table.astype(np.int32)
        pos = sorted(v for v in vals if v > 0)
        neg = sorted(-v for v in vals if v < 0)
        assert pos == neg


def test_transcoding_equals_decode_then_encode() -> None:
    """alaw_to_ulaw / ulaw_to_alaw are exactly PCM-mediated transcoding for all codes."""
    codes = bytes(range(256))
    assert g711.alaw_to_ulaw(codes) == g711.ulaw_encode(g711.alaw_decode(codes))
    assert g711.ulaw_to_alaw(codes) == g711.alaw_encode(g711.ulaw_decode(codes))


def test_tables_are_read_only() -> None:
    """The shared lookup tables cannot be corrupted by a caller."""
    with pytest.raises(ValueError):
        g711.ALAW_DECODE[0] = 1


@pytest.mark.realparts
@pytest.mark.parametrize(("law", "enc"), [("alaw", "a-law"), ("ulaw", "u-law")])
def test_sox_decodes_our_codes_like_we_do(tmp_path, law: str, enc: str) -> None:
    """An independent implementation (sox) decodes all 256 codes to the same 16-bit values."""
    import shutil
    import subprocess

    sox = shutil.which("sox")
    if sox is None:
        pytest.skip("sox not installed")
    src, dst = tmp_path / "in.raw", tmp_path / "out.raw"
    src.write_bytes(bytes(range(256)))
    subprocess.run([sox, "-t", "raw", "-r", "8000", "-c", "1", "-e", enc, "-b", "8", str(src),
                    "-t", "raw", "-e", "signed-integer", "-b", "16", "-L", str(dst)],
                   check=True, timeout=30)
    theirs = np.frombuffer(dst.read_bytes(), dtype="<i2")
    assert theirs.tolist() == getattr(g711, f"{law.upper()}_DECODE").tolist()
