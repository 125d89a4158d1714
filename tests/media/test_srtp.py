"""SRTP on a stream (libsrtp via pylibsrtp): the bridge and the recording get the decrypted
audio, the far end gets SRTP it can decrypt; replayed, forged and foreign packets are
dropped and counted; plain streams are untouched."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from pylibsrtp import Policy, Session

from telephony.media import Codec, MediaEngine, g711, rtp
from telephony.media.errors import MediaError
from telephony.media.srtp import SrtpContext

from .test_session import free_even_range

SUITE = "AES_CM_128_HMAC_SHA1_80"


class Phone:
    """A far end on loopback with its own SRTP sessions (its key / the engine's key)."""

    def __init__(self, own_key: bytes, engine_key: bytes, profile: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = self.sock.getsockname()
        self.tx = Session(Policy(key=own_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                 srtp_profile=profile))
        self.rx = Session(Policy(key=engine_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                 srtp_profile=profile))
        self.sent: list[bytes] = []

    def send(self, seq: int, payload: bytes, port: int, ssrc: int = 0x5EC0) -> bytes:
        packet = self.tx.protect(rtp.build(8, seq, 160 * seq, ssrc, payload))
        self.sent.append(packet)
        self.sock.sendto(packet, ("127.0.0.1", port))
        return packet

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(2048))
            except BlockingIOError:
                return out


@pytest.fixture
async def engine(tmp_path: Path):
    lo, hi = free_even_range(8)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path)
    await eng.start()
    yield eng
    await eng.stop()


@pytest.mark.parametrize(("suite", "profile", "tag_len"), [
    ("AES_CM_128_HMAC_SHA1_80", Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 10),
    ("AES_CM_128_HMAC_SHA1_32", Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 4),
])
async def test_bridged_srtp_call_is_decrypted_for_bridge_and_recording(
        engine: MediaEngine, suite: str, profile: int, tag_len: int) -> None:
    """Caller -> SRTP -> stream A -> bridge -> stream B -> SRTP -> handler: the handler
    decrypts the caller's exact A-law bytes; the recording and the transcription feed
    hold the decoded audio."""
    heard: list = []
    engine.on_audio = heard.append
    keys = {n: os.urandom(30) for n in ("a_ours", "a_theirs", "b_ours", "b_theirs")}
    caller = Phone(keys["a_theirs"], keys["a_ours"], profile)
    handler = Phone(keys["b_theirs"], keys["b_ours"], profile)
    a, b = engine.allocate(), engine.allocate()
    a.configure(remote=caller.addr, codec=Codec.PCMA, dtmf_pt=None)
    b.configure(remote=handler.addr, codec=Codec.PCMA, dtmf_pt=None)
    a.set_srtp(suite, local_key=keys["a_ours"], remote_key=keys["a_theirs"])
    b.set_srtp(suite, local_key=keys["b_ours"], remote_key=keys["b_theirs"])
    rec = engine.create_recording("srtp-call")
    rec.attach_caller(a)
    rec.attach_handler(b)
    engine.bridge(a, b)
    speech = bytes(range(0x10, 0x10 + 160))  # distinct A-law codes
    packets: list[bytes] = []
    for seq in range(1, 61):
        caller.send(seq, speech, a.local_port)
        packets += handler.received()
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    packets += handler.received()
    assert packets and all(len(p) == 12 + 160 + tag_len for p in packets)
    got = [handler.rx.unprotect(p) for p in packets]  # (raises if one is not valid SRTP)
    assert sum(1 for p in got if p[12:] == speech) >= 20  # the caller's codes, untouched
    assert a.stats.srtp == suite and a.stats.packets_in >= 50
    assert (a.stats.srtp_replayed, a.stats.srtp_forged, a.stats.malformed) == (0, 0, 0)
    a.close()
    b.close()
    info = await rec.seal_async()
    with wave.open(str(info.path)) as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    expected = g711.ALAW_DECODE[np.frombuffer(speech, dtype=np.uint8)]
    left = frames[:, 0]
    hits = sum(1 for i in range(0, len(left) - 160, 160)
               if np.array_equal(left[i:i + 160], expected))
    assert hits >= 30  # the caller's audio, decrypted, frame-exact in the recording
    assert engine._srtp_streams == 0
    # live transcription is fed the same decrypted audio
    caller_frames = [np.frombuffer(f.pcm, dtype=np.int16) for f in heard
                     if f.channel == "caller"]
    assert sum(np.array_equal(f, expected) for f in caller_frames) >= 30


async def test_replayed_forged_and_foreign_packets_are_dropped_and_counted(
        engine: MediaEngine) -> None:
    """A replayed packet, a forged one and noise are counted; a copy sent from another
    address is foreign and does not use up the real packet's place in the replay window."""
    ours, theirs = os.urandom(30), os.urandom(30)
    phone = Phone(theirs, ours, Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    s = engine.allocate()
    s.configure(remote=phone.addr, codec=Codec.PCMA, dtmf_pt=None)
    s.set_srtp(SUITE, local_key=ours, remote_key=theirs)
    first = phone.tx.protect(rtp.build(8, 1, 160, 0x5EC0, b"\xd5" * 160))
    stranger.sendto(first, ("127.0.0.1", s.local_port))  # a captured copy, elsewhere first
    await asyncio.sleep(0.05)
    phone.sock.sendto(first, ("127.0.0.1", s.local_port))  # the real one is still taken
    await asyncio.sleep(0.05)
    assert (s.stats.foreign, s.stats.packets_in) == (1, 1)
    phone.sock.sendto(first, ("127.0.0.1", s.local_port))  # replayed
    forged = bytearray(phone.tx.protect(rtp.build(8, 2, 320, 0x5EC0, b"\xd5" * 160)))
    forged[20] ^= 0x01
    phone.sock.sendto(bytes(forged), ("127.0.0.1", s.local_port))
    phone.sock.sendto(rtp.build(8, 3, 480, 0x5EC0, b"\xd5" * 160), ("127.0.0.1", s.local_port))
    phone.sock.sendto(b"\x80\x08", ("127.0.0.1", s.local_port))
    await asyncio.sleep(0.05)
    st = s.stats
    assert (st.srtp_replayed, st.srtp_forged, st.malformed, st.packets_in) == (1, 2, 1, 1)
    stranger.close()


async def test_rtcp_is_srtcp_both_ways(engine: MediaEngine) -> None:
    """Our reports leave as SRTCP the far end can decrypt; its SRTCP reports are read."""
    ours, theirs = os.urandom(30), os.urandom(30)
    phone = Phone(theirs, ours, Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    rtcp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp_sock.bind(("127.0.0.1", phone.addr[1] + 1))
    rtcp_sock.setblocking(False)
    engine.rtcp_interval = 0.05
    s = engine.allocate()
    s.configure(remote=phone.addr, codec=Codec.PCMA, dtmf_pt=None)
    s.set_srtp(SUITE, local_key=ours, remote_key=theirs)
    await asyncio.sleep(0.3)
    report = phone.rx.unprotect_rtcp(rtcp_sock.recv(2048))
    assert report[1] in (200, 201)  # SR or RR
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x5EC0)
    rtcp_sock.sendto(phone.tx.protect_rtcp(rr), ("127.0.0.1", s.local_port + 1))
    await asyncio.sleep(0.1)
    assert s.stats.rtcp_in == 1
    rtcp_sock.close()


def test_context_refuses_unknown_suites_and_bad_keys() -> None:
    with pytest.raises(MediaError, match="unsupported SRTP crypto suite 'NULL'"):
        SrtpContext("NULL", local_key=b"x" * 30, remote_key=b"x" * 30)
    with pytest.raises(MediaError, match="remote SRTP key for AES_CM_128_HMAC_SHA1_80 must be 30"):
        SrtpContext(SUITE, local_key=b"x" * 30, remote_key=b"x" * 16)


async def test_same_keys_keep_the_context_new_keys_replace_it(engine: MediaEngine) -> None:
    """A re-INVITE with unchanged keys keeps the replay window; new keys start afresh;
    ``set_srtp(None)`` goes back to plain RTP."""
    s = engine.allocate()
    s.set_srtp(SUITE, local_key=b"a" * 30, remote_key=b"b" * 30)
    ctx = s._srtp
    s.set_srtp(SUITE, local_key=b"a" * 30, remote_key=b"b" * 30)
    assert s._srtp is ctx and engine._srtp_streams == 1
    s.set_srtp(SUITE, local_key=b"a" * 30, remote_key=b"c" * 30)
    assert s._srtp is not ctx and engine._srtp_streams == 1
    s.set_srtp(None)
    assert s._srtp is None and engine._srtp_streams == 0


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32",
                                   "AEAD_AES_128_GCM", "AEAD_AES_256_GCM"])
def test_context_fast_path_matches_libsrtp_public_api(suite: str) -> None:
    """The per-packet path (a buffer view over one preallocated cffi buffer) protects
    byte for byte as pylibsrtp's public Session does, and unprotects what it made; a
    second protect of the same sequence number, a replay, a forged tag and a packet over
    2,048 bytes are each dropped and counted, never raised."""
    from telephony.media.srtp import _PROFILES, KEY_LENGTHS

    n = KEY_LENGTHS[suite]
    mine, theirs = os.urandom(n), os.urandom(n)
    ours = SrtpContext(suite, local_key=mine, remote_key=theirs)
    peer = SrtpContext(suite, local_key=theirs, remote_key=mine)
    ref = Session(Policy(key=mine, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                         srtp_profile=_PROFILES[suite]))
    for seq, size in ((1, 160), (2, 1), (3, 2036)):  # 2,036 + 12-byte header = 2,048
        packet = rtp.build(8, seq, 160 * seq, 0x5EC0, bytes([seq]) * size)
        protected = ours.protect(packet)
        assert isinstance(protected, bytes)
        if size < 1000:  # (the public API's own buffer is smaller than ours)
            assert protected == ref.protect(packet)
        assert peer.unprotect(protected) == packet
    assert ours.protect(rtp.build(8, 1, 160, 0x5EC0, b"\x01" * 160)) is None
    assert ours.malformed == 1
    assert peer.unprotect(protected) is None and peer.replayed == 1
    forged = bytearray(ours.protect(rtp.build(8, 4, 640, 0x5EC0, b"\x04" * 160)) or b"")
    forged[-1] ^= 1
    assert peer.unprotect(bytes(forged)) is None and peer.forged == 1
    assert ours.protect(rtp.build(8, 5, 800, 0x5EC0, bytes(2037))) is None
    assert peer.unprotect(bytes(2048 + 16 + 128 + 4 + 1)) is None
    assert (ours.malformed, peer.malformed) == (2, 1)
