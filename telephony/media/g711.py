"""ITU-T G.711 A-law and mu-law, bit-exact, vectorised with numpy lookup tables.

Theory of operation: G.711 maps 13-bit (A-law) or 14-bit (mu-law) linear samples to
8-bit codes. We take 16-bit PCM (the 13/14 significant bits left-justified, as the
ITU-T G.191 reference software does), so encoding is a pure function of the 16-bit
sample and decoding a pure function of the 8-bit code. Both are therefore tabulated
once at import:

* decode: a 256-entry ``int16`` table indexed by the code;
* encode: a 65536-entry ``uint8`` table indexed by the int16 sample viewed as uint16.

A frame is then one numpy fancy-indexing operation, with no Python per sample. The
tables are built here by a vectorised formulation of the standard (segment = bit
length of the magnitude); ``tests/media/test_g711.py`` checks every entry against the
scalar G.191 reference algorithm (``alaw_compress``/``ulaw_compress``...).

Negative samples use the one's complement magnitude (``~x``) exactly as G.191 does, so
-1 encodes like 0 in magnitude: the quantiser is symmetric and has no bias at zero.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "A2U_TRANSLATE",
    "U2A_TRANSLATE",
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "alaw_decode",
    "alaw_encode",
    "alaw_to_ulaw",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_to_alaw",
]

PcmArray = npt.NDArray[np.int16]


def _bit_length(v: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Number of significant bits of each non-negative value (0 for 0), vectorised."""
    out = np.zeros(v.shape, dtype=np.int32)
    w = v.copy()
    for shift in (16, 8, 4, 2, 1):
        big = w >= (1 << shift)
        out[big] += shift
        w[big] >>= shift
    out[w > 0] += 1
    return out


def _build_alaw_decode() -> PcmArray:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    mag = code & 0x7F
    exp = mag >> 4
    mant = mag & 0x0F
    # Segment 0 has no implicit leading one; others do. Reconstruct at mid-step (+8 in
    # 16-bit units == +1/2 step of the 12-bit magnitude).
    mant = np.where(exp > 0, mant | 0x10, mant)
    val = (mant << 4) + 8
    val = np.where(exp > 1, val << np.maximum(exp - 1, 0), val)
    return np.where(code & 0x80, val, -val).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 32768, x - 65536, x)  # the int16 sample the index stands for
    mag = np.where(x < 0, ~x, x) >> 4  # 12-bit magnitude, one's complement for negatives
    # Segment e >= 1 holds magnitudes [16 << (e-1), 32 << (e-1)); bit_length - 4 is e.
    exp = np.clip(_bit_length(mag) - 4, 0, 7)
    mant = np.where(exp > 0, (mag >> np.maximum(exp - 1, 0)) & 0x0F, mag & 0x0F)
    code = (exp << 4) | mant
    code = np.where(x >= 0, code | 0x80, code)
    return (code ^ 0x55).astype(np.uint8)


_ULAW_BIAS = 33  # in 14-bit units (0x84 >> 2): shifts segment edges to powers of two


def _build_ulaw_decode() -> PcmArray:
    code = np.arange(256, dtype=np.int32)
    inv = ~code & 0xFF
    exp = (inv >> 4) & 0x07
    mant = inv & 0x0F
    # 14-bit magnitude left-justified into 16 bits (x4): ((2*mant + 33) << exp) - 33.
    val = ((((mant << 1) + _ULAW_BIAS) << exp) - _ULAW_BIAS) << 2
    return np.where(code & 0x80, val, -val).astype(np.int16)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 32768, x - 65536, x)
    mag = (np.where(x < 0, ~x, x) >> 2) + _ULAW_BIAS
    mag = np.minimum(mag, 0x1FFF)  # clip at the top of segment 7
    exp = np.clip(_bit_length(mag) - 6, 0, 7)
    mant = (mag >> (exp + 1)) & 0x0F
    code = 0x7F - ((exp << 4) | mant)  # mu-law transmits the bits inverted
    code = np.where(x >= 0, code | 0x80, code)
    out: npt.NDArray[np.uint8] = code.astype(np.uint8)
    return out


ALAW_DECODE: PcmArray = _build_alaw_decode()
"""code (0..255) -> 16-bit PCM sample, A-law."""
ULAW_DECODE: PcmArray = _build_ulaw_decode()
"""code (0..255) -> 16-bit PCM sample, mu-law."""
ALAW_ENCODE: npt.NDArray[np.uint8] = _build_alaw_encode()
"""int16 sample viewed as uint16 (0..65535) -> A-law code."""
ULAW_ENCODE: npt.NDArray[np.uint8] = _build_ulaw_encode()
"""int16 sample viewed as uint16 (0..65535) -> mu-law code."""
for _t in (ALAW_DECODE, ULAW_DECODE, ALAW_ENCODE, ULAW_ENCODE):
    _t.setflags(write=False)

# Direct code->code transcoding through 16-bit PCM (what a bridge does), tabulated.
_A2U: npt.NDArray[np.uint8] = ULAW_ENCODE[ALAW_DECODE.view(np.uint16)]
_U2A: npt.NDArray[np.uint8] = ALAW_ENCODE[ULAW_DECODE.view(np.uint16)]
A2U_TRANSLATE: bytes = _A2U.tobytes()
"""``bytes.translate`` table: A-law code -> mu-law code via 16-bit PCM (fastest path)."""
U2A_TRANSLATE: bytes = _U2A.tobytes()
"""``bytes.translate`` table: mu-law code -> A-law code via 16-bit PCM."""


def alaw_decode(payload: bytes | bytearray | memoryview) -> PcmArray:
    """Decode A-law bytes to 16-bit PCM (new array, one sample per byte)."""
    return ALAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def ulaw_decode(payload: bytes | bytearray | memoryview) -> PcmArray:
    """Decode mu-law bytes to 16-bit PCM (new array, one sample per byte)."""
    return ULAW_DECODE[np.frombuffer(payload, dtype=np.uint8)]


def alaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode 16-bit PCM to A-law bytes."""
    return ALAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode 16-bit PCM to mu-law bytes."""
    return ULAW_ENCODE[np.asarray(pcm, dtype=np.int16).view(np.uint16)].tobytes()


def alaw_to_ulaw(payload: bytes | bytearray | memoryview) -> bytes:
    """Transcode A-law to mu-law via 16-bit PCM (identical to decode then encode)."""
    return bytes(payload).translate(A2U_TRANSLATE)


def ulaw_to_alaw(payload: bytes | bytearray | memoryview) -> bytes:
    """Transcode mu-law to A-law via 16-bit PCM (identical to decode then encode)."""
    return bytes(payload).translate(U2A_TRANSLATE)
