"""Synthesised speech and RTP pcaps for real-peer tests.

* :func:`synthesise` - ``espeak-ng`` -> WAV -> ``sox`` to 8 kHz mono 16-bit (cached).
* :func:`encode` / :func:`decode` - G.711 A-law / u-law, bit-exact to ITU-T G.711
  (``telephony.media.g711`` when it exists, else the reference tables below, which
  follow the classic Sun/ITU reference implementation).
* :func:`audio_packets`, :func:`dtmf_packets`, :func:`write_rtp_pcap` - RTP streams
  written as pcap files (Ethernet/IPv4/UDP/RTP, written by hand with ``struct``) that
  SIPp's ``play_pcap_audio`` replays with the pcap's timing.
* :func:`read_rtp_pcap` - parse a pcap (ours or a ``dumpcap`` capture of loopback) back
  into RTP packets, to compare what a peer received bit for bit.
* :func:`speech_clip` - all of it at once: text -> :class:`Clip` (PCM, payload, pcap).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 8000
FRAME = 160  # samples per 20 ms packet
CODEC_PT = {"PCMU": 0, "PCMA": 8}
CACHE_DIR = Path(tempfile.gettempdir()) / "controlroom-harness-speech"


# --- G.711 -----------------------------------------------------------------------------

def _alaw_encode_one(pcm: int) -> int:
    pcm >>= 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    for seg, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)):  # noqa: B007
        if pcm <= end:
            break
    else:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0xF if seg < 2 else (pcm >> seg) & 0xF
    return aval ^ mask


def _alaw_decode_one(a: int) -> int:
    a ^= 0x55
    t = (a & 0xF) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def _ulaw_encode_one(pcm: int) -> int:
    bias, clip = 0x84, 8159
    pcm >>= 2
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, clip) + (bias >> 2)
    for seg, end in enumerate((0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)):  # noqa: B007
        if pcm <= end:
            break
    else:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask


def _ulaw_decode_one(u: int) -> int:
    u = ~u & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return 0x84 - t if u & 0x80 else t - 0x84


def _tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    lin = range(-32768, 32768)
    return {
        "PCMA": (np.array([_alaw_encode_one(v) for v in lin], dtype=np.uint8),
                 np.array([_alaw_decode_one(v) for v in range(256)], dtype=np.int16)),
        "PCMU": (np.array([_ulaw_encode_one(v) for v in lin], dtype=np.uint8),
                 np.array([_ulaw_decode_one(v) for v in range(256)], dtype=np.int16)),
    }


_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] | None = None


def _ref() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    global _TABLES
    if _TABLES is None:
        _TABLES = _tables()
    return _TABLES


def encode(pcm: np.ndarray, codec: str) -> bytes:
    """16-bit PCM -> G.711 bytes (``codec`` is ``PCMA`` or ``PCMU``)."""
    enc, _ = _ref()[codec]
    return enc[pcm.astype(np.int32) + 32768].tobytes()


def decode(payload: bytes, codec: str) -> np.ndarray:
    """G.711 bytes -> 16-bit PCM, the reference every recording is compared with."""
    _, dec = _ref()[codec]
    return dec[np.frombuffer(payload, dtype=np.uint8)]


def decode_via_media(payload: bytes, codec: str) -> np.ndarray | None:
    """The media layer's own decoder if it is importable (for a cross-check), else None."""
    try:
        from telephony.media import g711
    except ImportError:
        return None
    fn = getattr(g711, {"PCMA": "alaw_decode", "PCMU": "ulaw_decode"}[codec], None)
    if fn is None:
        return None
    return np.asarray(fn(payload), dtype=np.int16)


# --- WAV -------------------------------------------------------------------------------

def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    """``(samples, channels, rate)``; stereo samples have shape (n, 2)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit samples, got {8 * w.getsampwidth()}-bit")
        ch, rate = w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (data.reshape(-1, ch) if ch > 1 else data), ch, rate


def write_wav(path: Path, pcm: np.ndarray, *, rate: int = SAMPLE_RATE) -> Path:
    """Write mono (n,) or stereo (n, 2) int16 samples."""
    ch = 1 if pcm.ndim == 1 else pcm.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def synthesise(text: str, *, voice: str = "en-gb", speed: int = 160,
               out: Path | None = None) -> Path:
    """Speak ``text`` with espeak-ng into an 8 kHz mono 16-bit WAV (cached by content)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    key = hashlib.sha256(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    CACHE_DIR.mkdir(exist_ok=True)
    cached = CACHE_DIR / f"{key}.wav"
    if not cached.exists():
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
                           check=True, capture_output=True, timeout=60)
            part = Path(tmp) / "8k.wav"
            # -D: no dither, so the same text always gives the same samples.
            subprocess.run(["sox", str(raw), "-D", "-r", "8000", "-c", "1", "-b", "16",
                            "-e", "signed-integer", str(part)],
                           check=True, capture_output=True, timeout=60)
            shutil.move(str(part), cached)
    if out is None:
        return cached
    shutil.copyfile(cached, out)
    return out


# --- RTP and pcap ----------------------------------------------------------------------

@dataclass(frozen=True)
class RtpPacket:
    """One RTP packet (no CSRC, no extension) and its send time offset in seconds."""

    pt: int
    seq: int
    ts: int
    ssrc: int
    payload: bytes
    marker: bool = False
    at: float = 0.0

    def to_bytes(self) -> bytes:
        return struct.pack("!BBHII", 0x80, (0x80 if self.marker else 0) | self.pt,
                           self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc) + self.payload

    @classmethod
    def parse(cls, data: bytes, at: float = 0.0) -> RtpPacket:
        if len(data) < 12 or data[0] >> 6 != 2:
            raise ValueError("not an RTP version 2 packet")
        b0, b1, seq, ts, ssrc = struct.unpack("!BBHII", data[:12])
        off = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:  # header extension
            if len(data) < off + 4:
                raise ValueError("truncated RTP header extension")
            off += 4 + 4 * struct.unpack("!H", data[off + 2:off + 4])[0]
        end = len(data)
        if b0 & 0x20:  # padding
            end -= data[-1]
        return cls(pt=b1 & 0x7F, seq=seq, ts=ts, ssrc=ssrc, payload=data[off:end],
                   marker=bool(b1 & 0x80), at=at)


def audio_packets(pcm: np.ndarray, codec: str, *, ssrc: int = 0x1234ABCD, seq0: int = 1000,
                  ts0: int = 16000, t0: float = 0.0, ptime: int = 20) -> list[RtpPacket]:
    """Packetise 16-bit PCM into G.711 RTP packets every ``ptime`` ms (last one padded)."""
    n = SAMPLE_RATE * ptime // 1000
    pad = (-len(pcm)) % n
    if pad:
        pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    payload = encode(pcm, codec)
    pt = CODEC_PT[codec]
    return [RtpPacket(pt=pt, seq=(seq0 + i) & 0xFFFF, ts=(ts0 + i * n) & 0xFFFFFFFF, ssrc=ssrc,
                      payload=payload[i * n:(i + 1) * n], marker=(i == 0),
                      at=t0 + i * ptime / 1000)
            for i in range(len(payload) // n)]


_EVENT = {d: i for i, d in enumerate("0123456789*#ABCD")}


def dtmf_packets(digits: str, codec: str, *, event_pt: int = 101, ssrc: int = 0x5EED0001,
                 seq0: int = 2000, ts0: int = 32000, lead_ms: int = 400, tone_ms: int = 160,
                 gap_ms: int = 300, tail_ms: int = 400, volume: int = 10) -> list[RtpPacket]:
    """A stream of G.711 silence with RFC 4733 events for ``digits`` in it.

    Each digit: ``tone_ms / 20`` event packets sharing the event's start timestamp, the
    first with the marker bit, duration growing by 160, then the end packet sent three
    times (same seq progression, same duration) as RFC 4733 section 2.5.1.4 recommends.
    Audio packets resume after ``gap_ms``. Sequence numbers are continuous throughout.
    """
    silence = encode(np.zeros(FRAME, dtype=np.int16), codec)
    pt = CODEC_PT[codec]
    out: list[RtpPacket] = []
    seq, ts, at = seq0, ts0, 0.0

    def audio(ms: int) -> None:
        nonlocal seq, ts, at
        for _ in range(ms // 20):
            out.append(RtpPacket(pt=pt, seq=seq & 0xFFFF, ts=ts, ssrc=ssrc, payload=silence,
                                 marker=not out, at=at))
            seq, ts, at = seq + 1, ts + FRAME, at + 0.02

    audio(lead_ms)
    for d in digits:
        if d not in _EVENT:
            raise ValueError(f"not a DTMF digit: {d!r}")
        start = ts
        steps = max(1, tone_ms // 20)
        for k in range(1, steps + 1):
            end = k == steps
            body = struct.pack("!BBH", _EVENT[d], (0x80 if end else 0) | (volume & 0x3F),
                               k * FRAME)
            for _ in range(3 if end else 1):
                out.append(RtpPacket(pt=event_pt, seq=seq & 0xFFFF, ts=start, ssrc=ssrc,
                                     payload=body, marker=(k == 1), at=at))
                seq += 1
            at += 0.02
            ts += FRAME
        audio(gap_ms)
    audio(tail_ms)
    return out


def _ip_checksum(header: bytes) -> int:
    s = sum(struct.unpack("!10H", header))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def write_rtp_pcap(path: Path, packets: Iterable[RtpPacket], *,
                   src: tuple[str, int] = ("127.0.0.1", 40000),
                   dst: tuple[str, int] = ("127.0.0.1", 40002),
                   start: float = 1_700_000_000.0) -> Path:
    """Write RTP packets as a pcap (DLT_EN10MB) with their ``at`` offsets as timestamps.

    SIPp's ``play_pcap_audio`` keeps only the UDP payload and the timing; addresses and
    ports are replaced by the call's.
    """
    import socket

    src_ip, dst_ip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ident, p in enumerate(packets):
            rtp = p.to_bytes()
            udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(rtp), 0) + rtp
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xB8, 20 + len(udp), ident & 0xFFFF, 0x4000,
                             64, 17, 0, src_ip, dst_ip)
            ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            t = start + p.at
            sec = int(t)
            usec = int(round((t - sec) * 1e6))
            if usec >= 1_000_000:
                sec, usec = sec + 1, usec - 1_000_000
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            f.write(frame)
    return path


@dataclass(frozen=True)
class CapturedRtp:
    """An RTP packet as seen in a capture, with addresses."""

    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    rtp: RtpPacket


def read_udp_pcap(path: Path) -> list[tuple[float, tuple[str, int], tuple[str, int], bytes]]:
    """Every IPv4 UDP datagram in a pcap (Ethernet, Linux cooked v1/v2, null, raw):
    ``(time, src, dst, payload)``."""
    import socket

    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file (pcapng is not supported; use dumpcap -P)")
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    link = struct.unpack(endian + "I", data[20:24])[0]
    l2 = {1: 14, 113: 16, 276: 20, 0: 4, 101: 0}.get(link)
    if l2 is None:
        raise ValueError(f"{path}: unsupported link type {link}")
    out = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = frame[l2:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        sport, dport, ulen = struct.unpack("!HHH", ip[ihl:ihl + 6])
        out.append((sec + frac / (1e9 if nano else 1e6),
                    (socket.inet_ntoa(ip[12:16]), sport), (socket.inet_ntoa(ip[16:20]), dport),
                    ip[ihl + 8:ihl + ulen]))
    return out


def read_rtp_pcap(path: Path) -> list[CapturedRtp]:
    """The RTP packets of a pcap (see :func:`read_udp_pcap`); SIP and RTCP are skipped."""
    out: list[CapturedRtp] = []
    for t, src, dst, payload in read_udp_pcap(path):
        if len(payload) < 12 or payload[0] >> 6 != 2 or 72 <= (payload[1] & 0x7F) <= 79:
            continue  # not RTP, or RTCP (PT 200-207 shows as 72-79 once the marker is masked)
        if payload[:3].isalpha():
            continue  # SIP text
        try:
            rtp = RtpPacket.parse(payload)
        except ValueError:
            continue
        out.append(CapturedRtp(time=t, src=src, dst=dst, rtp=rtp))
    return out


# --- Clips -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Clip:
    """A spoken clip ready to be played by SIPp: what is sent, bit for bit."""

    text: str
    codec: str
    pcm: np.ndarray
    """The synthesised 16-bit PCM (before G.711)."""
    payload: bytes
    """The G.711 bytes sent, in order (padded to whole packets)."""
    sent: np.ndarray
    """``decode(payload)``: what a receiver's recording must contain, bit-exact."""
    pcap: Path
    packets: Sequence[RtpPacket]

    @property
    def duration(self) -> float:
        return len(self.payload) / SAMPLE_RATE


def speech_clip(text: str, codec: str, pcap: Path, *, voice: str = "en-gb", speed: int = 160,
                ssrc: int = 0x1234ABCD, pad_ms: int = 0, lead_ms: int = 0,
                repeat: int = 1) -> Clip:
    """Synthesise ``text``, G.711-encode it and write ``pcap`` for ``play_pcap_audio``.

    ``lead_ms`` of digital silence goes first (so speech starts after, e.g., a bridge),
    ``pad_ms`` last (so the stream's end is unambiguous); ``repeat`` loops the speech.
    """
    pcm, _, rate = read_wav(synthesise(text, voice=voice, speed=speed))
    if rate != SAMPLE_RATE:
        raise ValueError(f"synthesised audio is {rate} Hz, expected 8000")
    pcm = np.concatenate([np.zeros(SAMPLE_RATE * lead_ms // 1000, dtype=np.int16),
                          np.tile(pcm, repeat),
                          np.zeros(SAMPLE_RATE * pad_ms // 1000, dtype=np.int16)])
    packets = audio_packets(pcm, codec, ssrc=ssrc)
    write_rtp_pcap(pcap, packets)
    payload = b"".join(p.payload for p in packets)
    return Clip(text=text, codec=codec, pcm=pcm, payload=payload,
                sent=decode(payload, codec), pcap=pcap, packets=packets)


def tone_clip(freq: float, seconds: float, codec: str, pcap: Path, *, amplitude: int = 8000,
              ssrc: int = 0x70E0001, lead_ms: int = 0) -> Clip:
    """A sine tone clip (no espeak needed) - a distinct, easy-to-spot handler signal.

    The tone's amplitude ramps up over its first 100 ms so no two 20 ms frames of its
    start are alike (alignment is unambiguous); ``lead_ms`` of silence goes first.
    """
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    env = np.minimum(1.0, (np.arange(n) + 1) / 800)
    pcm = (amplitude * env * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    pcm = np.concatenate([np.zeros(SAMPLE_RATE * lead_ms // 1000, dtype=np.int16), pcm])
    packets = audio_packets(pcm, codec, ssrc=ssrc)
    write_rtp_pcap(pcap, packets)
    payload = b"".join(p.payload for p in packets)
    return Clip(text=f"{freq} Hz tone", codec=codec, pcm=pcm, payload=payload,
                sent=decode(payload, codec), pcap=pcap, packets=packets)


def find_alignment(needle: np.ndarray, haystack: np.ndarray) -> int | None:
    """Offset where ``needle`` occurs bit-exactly in ``haystack``, ignoring its leading and
    trailing digital silence; None if it does not occur.

    Recordings start at answer time and end at seal time, so the sent audio sits at some
    fixed offset; this finds it without any tolerance.
    """
    # Digital silence decodes to 0 (u-law) or +-8 (A-law): trim both kinds at the edges.
    nz = np.flatnonzero(np.abs(needle.astype(np.int32)) > 8)
    if len(nz) == 0:
        raise ValueError("needle is all silence")
    core = needle[nz[0]:nz[-1] + 1]
    probe = core[:64]
    cands = np.flatnonzero(haystack[: len(haystack) - len(core) + 1] == probe[0])
    for c in cands:
        if np.array_equal(haystack[c:c + len(probe)], probe) and \
                np.array_equal(haystack[c:c + len(core)], core):
            return int(c - nz[0])
    return None



def frames_in_order(sent: np.ndarray, recorded: np.ndarray, *,
                    silence: int = 8) -> tuple[int, int, int]:
    """Every 20 ms speech frame of ``sent`` must occur in ``recorded`` bit for bit, in
    order, at a non-decreasing offset: the jitter buffer may stretch playout under load
    (a late packet is heard one tick later, silence fills the gap), which a contiguous
    alignment would wrongly call corruption. Nothing is compared with a tolerance.

    Returns (speech frames sent, frames found exactly in order, playout shifts)."""
    frames = [sent[i:i + FRAME] for i in range(0, len(sent) - FRAME + 1, FRAME)]
    speech = [(i, f) for i, f in enumerate(frames) if np.abs(f.astype(np.int32)).max() > silence]
    if not speech:
        raise ValueError("nothing but silence was sent")
    first_i, first = speech[0]
    starts = np.flatnonzero(recorded[: len(recorded) - FRAME + 1] == first[0])
    base = next((int(s) for s in starts if np.array_equal(recorded[s:s + FRAME], first)), None)
    if base is None:
        return len(speech), 0, 0
    found, shift, shifts, last_pos = 0, 0, 0, -1
    for i, f in speech:
        expect = base + (i - first_i) * FRAME + shift
        for extra in range(0, 50 * FRAME + 1, FRAME):  # up to 1 s of added delay
            pos = expect + extra
            if pos > last_pos and np.array_equal(recorded[pos:pos + FRAME], f):
                if extra:
                    shifts += 1
                    shift += extra
                found += 1
                last_pos = pos
                break
    return len(speech), found, shifts
