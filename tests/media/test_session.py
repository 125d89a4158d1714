"""MediaEngine on loopback: streams, bridge with PCMA<->PCMU transcoding, recording, pool."""

from __future__ import annotations

import asyncio
import socket
import wave
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from telephony.media import Codec, MediaEngine, MediaError, g711, rtp
from telephony.media.jitter import silence


def free_even_range(count: int) -> tuple[int, int]:
    """Find `count` consecutive even ports free right now (probe by binding)."""
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
        s.close()
        base += base & 1
        if base + 2 * count > 65535:
            continue
        ok = True
        for p in range(base, base + 2 * count, 2):
            t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                t.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                t.close()
            if not ok:
                break
        if ok:
            return base, base + 2 * count - 1
    raise RuntimeError("no free port range")


class Phone(asyncio.DatagramProtocol):
    """A far end: collects every RTP packet it receives."""

    def __init__(self) -> None:
        self.packets: list[rtp.RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        self.packets.append(rtp.parse(data))

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]


@pytest.fixture
async def phone_factory():
    phones: list[Phone] = []

    async def make() -> Phone:
        loop = asyncio.get_running_loop()
        _, p = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
        phones.append(p)
        return p

    yield make
    for p in phones:
        if p.transport is not None:
            p.transport.close()


@pytest.fixture
async def engine(tmp_path: Path):
    lo, hi = free_even_range(8)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path / "rec")
    await eng.start()
    yield eng
    await eng.stop()


def signal(seconds: float, freq: float, seed: int) -> np.ndarray:
    """A recognisable test signal: a sine plus noise, 16-bit."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(8000 * seconds)) / 8000
    x = 8000 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 2000, len(t))
    return np.clip(x, -32768, 32767).astype(np.int16)


async def wait_for(cond, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    end = asyncio.get_running_loop().time() + limit
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_bridge_pcma_pcmu_bit_exact_with_recording(engine: MediaEngine, phone_factory) -> None:
    """Caller PCMA and handler PCMU audio cross the bridge transcoded exactly, and the
    stereo recording holds exactly the decoded audio each side sent (after the jitter delay)."""
    caller_phone, handler_phone = await phone_factory(), await phone_factory()
    a, b = engine.allocate(), engine.allocate()
    assert a.local_port % 2 == 0 and b.local_port % 2 == 0
    a.configure(remote=caller_phone.addr, codec=Codec.PCMA, dtmf_pt=101)
    b.configure(remote=handler_phone.addr, codec=Codec.PCMU, dtmf_pt=None)
    rec = engine.create_recording("call-1")
    rec.attach_caller(a)
    rec.attach_handler(b)
    engine.bridge(a, b)
    await asyncio.sleep(0.1)  # transports up

    x = signal(1.0, 440, 1)  # caller's voice (PCMA)
    y = signal(1.0, 1000, 2)  # handler's voice (PCMU)
    xa = g711.alaw_encode(x)
    yu = g711.ulaw_encode(y)
    for k in range(50):  # the whole second at once: order and timing come from RTP, not arrival
        caller_phone.transport.sendto(rtp.build(8, 1000 + k, 5000 + 160 * k, 0xAAAA,
                                                xa[160 * k:160 * k + 160], marker=k == 0),
                                      ("127.0.0.1", a.local_port))
        handler_phone.transport.sendto(rtp.build(0, 60000 + k, 2**32 - 800 + 160 * k, 0xBBBB,
                                                 yu[160 * k:160 * k + 160]),  # seq & ts wrap
                                       ("127.0.0.1", b.local_port))
    # until 1 s of audio plus the jitter delay has been played and relayed (tick-count
    # based, not a fixed sleep, so a loaded machine only makes the test slower)
    await wait_for(lambda: rec.frames >= 160 * 70, limit=20)
    await wait_for(lambda: len(handler_phone.packets) >= 70 and len(caller_phone.packets) >= 70,
                   limit=20)
    info = rec.seal()

    # What each phone heard: the other side's audio, transcoded through 16-bit PCM.
    heard_by_handler = b"".join(p.payload for p in handler_phone.packets if p.payload_type == 0)
    heard_by_caller = b"".join(p.payload for p in caller_phone.packets if p.payload_type == 8)
    assert heard_by_handler.find(g711.alaw_to_ulaw(xa)) >= 0
    assert heard_by_caller.find(g711.ulaw_to_alaw(yu)) >= 0

    # RTP continuity of what we sent to the handler phone.
    pk = handler_phone.packets
    assert all((q.sequence - p.sequence) & 0xFFFF == 1 for p, q in zip(pk, pk[1:], strict=False))
    assert all((q.timestamp - p.timestamp) & 0xFFFFFFFF == 160 for p, q in zip(pk, pk[1:], strict=False))
    assert [p.marker for p in pk].count(True) == 1 and pk[0].marker
    assert len({p.ssrc for p in pk}) == 1

    with wave.open(str(info.path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    left, right = data[0::2], data[1::2]
    for chan, sent in ((left, g711.alaw_decode(xa)), (right, g711.ulaw_decode(yu))):
        start = int(np.flatnonzero(chan)[0])
        assert start % 160 == 0  # whole silent frames of jitter delay before the audio
        assert np.array_equal(chan[start:start + len(sent)], sent)
        assert not chan[:start].any()
    assert info.duration == pytest.approx(len(left) / 8000)
    assert info.bytes == info.path.stat().st_size == 44 + 4 * len(left)
    assert a.stats.packets_in == 50 and a.stats.lost == 0 and b.stats.lost == 0


async def test_ports_return_to_pool_and_pool_exhausts(engine: MediaEngine) -> None:
    """allocate() takes even ports until MediaError; close() gives them back."""
    n = engine.free_ports
    streams = [engine.allocate() for _ in range(n)]
    assert len({s.local_port for s in streams}) == n
    with pytest.raises(MediaError, match="RTP port pool exhausted"):
        engine.allocate()
    for s in streams:
        s.close()
    assert engine.free_ports == n
    await asyncio.sleep(0.05)  # sockets finish closing on the next loop turns
    again = engine.allocate()
    assert again.local_port in {s.local_port for s in streams}
    again.close()


async def test_rtp_is_heard_only_from_the_sdp_address(engine: MediaEngine, phone_factory) -> None:
    """A stranger's RTP, even the first to arrive, is dropped and counted and never diverts
    what we send; the SDP address is heard and keeps getting our packets."""
    sdp_phone, stranger = await phone_factory(), await phone_factory()
    s = engine.allocate()
    dst = ("127.0.0.1", s.local_port)
    stranger.transport.sendto(rtp.build(8, 1, 0, 7, bytes(160)), dst)  # before any SDP
    await wait_for(lambda: s.stats.foreign == 1)
    s.configure(remote=sdp_phone.addr, codec=Codec.PCMA, dtmf_pt=None)
    s.play("tone")
    for k in range(3):
        stranger.transport.sendto(rtp.build(8, 2 + k, 160 * k, 7, bytes(160)), dst)
    await wait_for(lambda: s.stats.foreign == 4)
    sdp_phone.transport.sendto(rtp.build(8, 1, 0, 5, bytes(160)), dst)
    await wait_for(lambda: s.stats.packets_in == 1)
    await wait_for(lambda: len(sdp_phone.packets) >= 3)
    assert s.send_addr == sdp_phone.addr and not stranger.packets and s.stats.foreign == 4
    seqs = [p.sequence for p in sdp_phone.packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))


async def test_tone_silence_and_direction(engine: MediaEngine, phone_factory) -> None:
    """'tone' sends the 400 Hz cadence, 'silence' sends A-law silence, recvonly sends nothing."""
    phone = await phone_factory()
    s = engine.allocate()
    s.configure(remote=phone.addr, codec=Codec.PCMA, dtmf_pt=None)
    s.play("tone")
    await wait_for(lambda: len(phone.packets) >= 25)
    pcm = g711.alaw_decode(b"".join(p.payload for p in phone.packets[:20]))
    assert 2000 < np.abs(pcm).max() < 4500  # moderate level
    spectrum = np.abs(np.fft.rfft(pcm[:3200]))
    assert np.argmax(spectrum) * 8000 / 3200 == pytest.approx(400, abs=5)
    s.play("silence")
    n = len(phone.packets)
    await wait_for(lambda: len(phone.packets) >= n + 5)
    assert phone.packets[-1].payload == bytes([0xD5]) * 160
    s.set_direction("recvonly")
    await asyncio.sleep(0.06)
    n = len(phone.packets)
    await asyncio.sleep(0.1)
    assert len(phone.packets) == n
    s.set_direction("sendrecv")
    await wait_for(lambda: len(phone.packets) >= n + 2)
    assert phone.packets[n].marker  # talkspurt start after the pause
    assert (phone.packets[n].timestamp - phone.packets[n - 1].timestamp) & 0xFFFFFFFF > 160


async def test_wav_prompt_and_bad_prompts(engine: MediaEngine, phone_factory, tmp_path: Path) -> None:
    """A WAV prompt is sent looped, exactly; wrong formats and missing files raise MediaError."""
    phone = await phone_factory()
    x = signal(0.1, 300, 3)  # 5 frames
    p = tmp_path / "p.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(x.tobytes())
    s = engine.allocate()
    s.configure(remote=phone.addr, codec=Codec.PCMU, dtmf_pt=None)
    s.play(str(p))
    await wait_for(lambda: len(phone.packets) >= 12)
    got = b"".join(q.payload for q in phone.packets[:10])
    assert got == g711.ulaw_encode(np.concatenate([x, x]))
    bad = tmp_path / "bad.wav"
    with wave.open(str(bad), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(x.tobytes())
    with pytest.raises(MediaError, match="must be 8 kHz mono 16-bit WAV, got 16000 Hz"):
        s.play(str(bad))
    with pytest.raises(MediaError, match="cannot read prompt"):
        s.play(str(tmp_path / "missing.wav"))
    with pytest.raises(MediaError, match="cannot read prompt"):
        engine.preload(str(tmp_path / "missing.wav"))
    engine.preload(str(p))  # a good file is fine (and cached)


async def test_garbage_is_counted_not_raised(engine: MediaEngine, phone_factory) -> None:
    """Malformed datagrams and unknown payload types are counted and dropped."""
    phone = await phone_factory()
    s = engine.allocate()
    s.configure(remote=phone.addr, codec=Codec.PCMA, dtmf_pt=101)
    await asyncio.sleep(0.05)
    dst = ("127.0.0.1", s.local_port)
    phone.transport.sendto(b"\x00" * 5, dst)
    phone.transport.sendto(b"\x40" + bytes(20), dst)  # version 1
    phone.transport.sendto(rtp.build(18, 1, 0, 1, bytes(20)), dst)  # G.729: not negotiated
    phone.transport.sendto(rtp.build(101, 2, 0, 1, b"\x01"), dst)  # short telephone-event
    await wait_for(lambda: s.stats.malformed + s.stats.unexpected_pt >= 4)
    assert (s.stats.malformed, s.stats.unexpected_pt) == (3, 1)
    assert s.stats.packets_in == 1  # the telephone-event packet was still valid RTP


async def test_dtmf_send_and_receive_between_streams(engine: MediaEngine) -> None:
    """A digit sent by one stream arrives once at the other's on_dtmf (RFC 4733 both ways)."""
    got: list[tuple[int, str]] = []
    engine.on_dtmf = lambda stream, d: got.append((stream.local_port, d))
    a, b = engine.allocate(), engine.allocate()
    a.configure(remote=("127.0.0.1", b.local_port), codec=Codec.PCMA, dtmf_pt=101)
    b.configure(remote=("127.0.0.1", a.local_port), codec=Codec.PCMU, dtmf_pt=101)
    await asyncio.sleep(0.1)
    a.send_dtmf("5")
    a.send_dtmf("#", duration_ms=100)
    await wait_for(lambda: len(got) >= 2)
    await asyncio.sleep(0.2)
    assert got == [(b.local_port, "5"), (b.local_port, "#")]
    with pytest.raises(ValueError, match="not a DTMF digit"):
        a.send_dtmf("x")


async def test_stop_seals_open_recordings(tmp_path: Path) -> None:
    """MediaEngine.stop() closes streams and seals recordings still open."""
    lo, hi = free_even_range(2)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path)
    await eng.start()
    rec = eng.create_recording("c9")
    s = eng.allocate()
    rec.attach_caller(s)
    await asyncio.sleep(0.3)
    await eng.stop()
    assert rec.sealed is not None and rec.sealed.path == tmp_path / "c9.wav"
    assert rec.sealed.duration >= 0.2 and s.closed
    assert not list(tmp_path.glob("*.part"))  # noqa: ASYNC240 - a test's tmp dir listing
    assert silence(160).sum() == 0


async def test_unbridge_returns_to_prompts_and_play_while_bridged(engine: MediaEngine, phone_factory) -> None:
    """play() while bridged takes over that side (hold); unbridge returns both to their prompts."""
    pa, pb = await phone_factory(), await phone_factory()
    a, b = engine.allocate(), engine.allocate()
    a.configure(remote=pa.addr, codec=Codec.PCMA, dtmf_pt=None)
    b.configure(remote=pb.addr, codec=Codec.PCMA, dtmf_pt=None)
    a.play("tone")
    b.play("silence")
    engine.bridge(a, b)
    assert a.peer is b and b.peer is a
    # far ends send a constant non-silent code: whoever is bridged relays it
    marker_a, marker_b = bytes([0x9A]) * 160, bytes([0x1C]) * 160
    for k in range(10):
        pa.transport.sendto(rtp.build(8, k, 160 * k, 1, marker_a), ("127.0.0.1", a.local_port))
        pb.transport.sendto(rtp.build(8, k, 160 * k, 2, marker_b), ("127.0.0.1", b.local_port))
    await wait_for(lambda: any(p.payload == marker_a for p in pb.packets))
    await wait_for(lambda: any(p.payload == marker_b for p in pa.packets))
    engine.unbridge(b)
    assert a.peer is None and b.peer is None
    n = len(pb.packets)
    await wait_for(lambda: len(pb.packets) >= n + 3)
    assert pb.packets[-1].payload == bytes([0xD5]) * 160  # b's own prompt: silence
    # all packets to pa: one SSRC, continuous sequence and timestamps across the changes
    seqs = [p.sequence for p in pa.packets]
    assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:], strict=False))
    assert len({p.ssrc for p in pa.packets}) == 1


async def test_on_audio_gets_one_frame_per_tick_per_attached_channel(tmp_path: Path) -> None:
    """on_audio receives caller frames each tick with offsets 0, 0.02, ...; no handler: no frames."""
    frames = []
    lo, hi = free_even_range(2)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path,
                      on_audio=frames.append)
    await eng.start()
    try:
        s = eng.allocate()
        rec = eng.create_recording("c-audio")
        rec.attach_caller(s)
        await wait_for(lambda: len(frames) >= 10)
        info = await rec.seal_async()
    finally:
        await eng.stop()
    assert {f.channel for f in frames} == {"caller"} and {f.call_id for f in frames} == {"c-audio"}
    assert [f.offset for f in frames[:5]] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert all(len(f.pcm) == 320 for f in frames)
    assert info.duration == pytest.approx(len(frames) * 0.02)


async def test_far_end_ssrc_change_and_reconfigure(engine: MediaEngine, phone_factory) -> None:
    """A new far-end SSRC (after the old one went quiet) resyncs the jitter buffer;
    configure() to a new address re-targets sending."""
    p1, p2 = await phone_factory(), await phone_factory()
    s = engine.allocate()
    s.ssrc_switch_after = 0.2
    s.configure(remote=p1.addr, codec=Codec.PCMU, dtmf_pt=None)
    for k in range(3):
        p1.transport.sendto(rtp.build(0, k, 160 * k, 111, bytes([0x80]) * 160), ("127.0.0.1", s.local_port))
    await wait_for(lambda: s.stats.packets_in == 3)
    await asyncio.sleep(0.3)
    p1.transport.sendto(rtp.build(0, 9000, 123456, 222, bytes([0x80]) * 160), ("127.0.0.1", s.local_port))
    await wait_for(lambda: s.stats.resyncs == 1)
    assert s.stats.ssrc_dropped == 0
    s.configure(remote=p2.addr, codec=Codec.PCMA, dtmf_pt=None)
    n = len(p2.packets)
    await wait_for(lambda: len(p2.packets) >= n + 3)
    assert {p.payload_type for p in p2.packets} == {8}
    with pytest.raises(MediaError, match="ptime must be 10, 20, 30 or 40 ms, got 25"):
        s.configure(remote=p2.addr, codec=Codec.PCMA, dtmf_pt=None, ptime=25)
    with pytest.raises(MediaError, match="telephone-event payload type must be 0..127 and not 0 or 8, got 8"):
        s.configure(remote=p2.addr, codec=Codec.PCMA, dtmf_pt=8)
    with pytest.raises(MediaError, match="unknown direction 'both'"):
        s.set_direction("both")
    with pytest.raises(MediaError, match="remote must be \\(IP address, port\\), got \\('example.com', 4000\\)"):
        s.configure(remote=("example.com", 4000), codec=Codec.PCMA, dtmf_pt=None)
    with pytest.raises(MediaError, match="remote ::1 is not reachable from RTP bind address 127.0.0.1"):
        s.configure(remote=("::1", 4000), codec=Codec.PCMA, dtmf_pt=None)
    with pytest.raises(MediaError, match="remote port must be 1..65535, got 0"):
        s.configure(remote=("127.0.0.1", 0), codec=Codec.PCMA, dtmf_pt=None)
    assert s.remote == p2.addr  # a refused configure changed nothing
    s.configure(remote=("0.0.0.0", 4000), codec=Codec.PCMA, dtmf_pt=None)  # RFC 2543 hold
    assert s.remote is None and s.send_addr is None


@pytest.mark.parametrize("ptime", [10, 30, 40])
async def test_other_ptime_sends_whole_packets_of_the_tone(engine: MediaEngine, phone_factory, ptime: int) -> None:
    """A stream configured for 10/30/40 ms sends packets of ptime*8 samples, ts += that, audio continuous."""
    p = await phone_factory()
    s = engine.allocate()
    s.configure(remote=p.addr, codec=Codec.PCMA, dtmf_pt=None, ptime=ptime)
    s.play("tone")
    await wait_for(lambda: len(p.packets) >= 12)
    n = ptime * 8
    pk = p.packets[:12]
    assert {len(q.payload) for q in pk} == {n}
    assert all((y.timestamp - x.timestamp) & 0xFFFFFFFF == n for x, y in zip(pk, pk[1:], strict=False))
    assert all((y.sequence - x.sequence) & 0xFFFF == 1 for x, y in zip(pk, pk[1:], strict=False))
    tone = np.concatenate(engine._prompts["tone"])
    assert b"".join(q.payload for q in pk) == g711.alaw_encode(tone[:12 * n])


async def test_a_quiet_source_is_never_replaced_by_another_address(engine: MediaEngine, phone_factory) -> None:
    """However long the SDP address is silent, another address is not heard (no re-latching)."""
    good, evil = await phone_factory(), await phone_factory()
    s = engine.allocate()
    s.configure(remote=good.addr, codec=Codec.PCMA, dtmf_pt=None)
    dst = ("127.0.0.1", s.local_port)
    good.transport.sendto(rtp.build(8, 1, 0, 7, bytes(160)), dst)
    await wait_for(lambda: s.stats.packets_in == 1)
    await asyncio.sleep(0.3)  # the caller went quiet
    evil.transport.sendto(rtp.build(8, 2, 160, 7, bytes(160)), dst)  # even with its SSRC
    await wait_for(lambda: s.stats.foreign == 1)
    assert s.send_addr == good.addr and s.stats.packets_in == 1


async def test_reader_mode_receives_and_closes_cleanly(tmp_path: Path, phone_factory) -> None:
    """With read_in_tick=False (one loop reader per socket) packets arrive and close() unregisters."""
    lo, hi = free_even_range(2)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path,
                      read_in_tick=False)
    await eng.start()
    try:
        phone = await phone_factory()
        s = eng.allocate()
        s.configure(remote=phone.addr, codec=Codec.PCMA, dtmf_pt=None)
        for k in range(5):
            phone.transport.sendto(rtp.build(8, k, 160 * k, 3, bytes([0x9A]) * 160), ("127.0.0.1", s.local_port))
        await wait_for(lambda: s.stats.packets_in == 5)
        await wait_for(lambda: len(phone.packets) >= 2)  # symmetric RTP back to the phone
        s.close()
        await asyncio.sleep(0.05)
        assert eng.free_ports == len(range(lo, hi + 1, 2))
    finally:
        await eng.stop()


async def test_unusable_bind_address_is_a_clear_error(tmp_path: Path) -> None:
    """A bind address that is not ours raises MediaError naming it, not 'pool exhausted'."""
    eng = MediaEngine(bind="192.0.2.1", port_min=30000, port_max=30010, recordings_dir=tmp_path)
    with pytest.raises(MediaError, match=r"cannot bind RTP socket on 192\.0\.2\.1:300(0[02468]|10)\b"):
        eng.allocate()
    assert eng.free_ports == 6


async def test_last_words_in_jitter_buffer_are_recorded(tmp_path: Path, phone_factory) -> None:
    """Audio still in the jitter buffer when the call ends is written as the recording's tail."""
    lo, hi = free_even_range(2)
    eng = MediaEngine(bind="127.0.0.1", port_min=lo, port_max=hi, recordings_dir=tmp_path)
    # clock not started: the test runs the ticks itself, so timing is exact
    phone = await phone_factory()
    s = eng.allocate()
    s.configure(remote=phone.addr, codec=Codec.PCMA, dtmf_pt=None)
    rec = eng.create_recording("c-tail")
    rec.attach_caller(s)
    x = signal(0.16, 500, 4)
    xa = g711.alaw_encode(x)
    for k in range(8):  # 160 ms of speech at once
        phone.transport.sendto(rtp.build(8, k, 160 * k, 3, xa[160 * k:160 * k + 160]), ("127.0.0.1", s.local_port))
    for _ in range(250):
        eng._read_ready()
        if s.stats.packets_in == 8:
            break
        await asyncio.sleep(0.01)
    for n in range(3):  # 2 ticks of jitter delay, then the first packet plays
        eng._tick(n)
    s.close()  # hang-up with 7 packets still buffered
    info = rec.seal()
    assert rec.tail_frames == 7
    with wave.open(str(info.path)) as w:
        left = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[0::2]
    assert len(left) == 10 * 160
    assert not left[:320].any() and np.array_equal(left[320:], g711.alaw_decode(xa))
    await eng.stop()


async def test_batch_decode_matches_per_packet_decode(engine: MediaEngine) -> None:
    """A tick's packets decoded in one batch equal G.711 decoding of each (both laws, odd sizes)."""
    a, b = engine.allocate(), engine.allocate()
    src = ("127.0.0.1", 9)
    a.configure(remote=src, codec=Codec.PCMA, dtmf_pt=101)
    b.configure(remote=src, codec=Codec.PCMU, dtmf_pt=101)
    rng = np.random.default_rng(5)
    pay = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(4)]
    odd = rng.integers(0, 256, 80, dtype=np.uint8).tobytes()
    batch = [
        (a, rtp.build(8, 1, 0, 1, pay[0]), src), (b, rtp.build(0, 1, 0, 2, pay[1]), src),
        (a, rtp.build(8, 2, 160, 1, pay[2]), src), (b, rtp.build(0, 2, 160, 2, pay[3]), src),
        (a, rtp.build(8, 3, 320, 1, odd), src), (b, b"\x80garbage", src),
        (b, rtp.build(101, 3, 320, 2, b"\x05\x80\x01\x40"), src),
    ]
    engine._ingest(batch, 1.0)
    assert [p.tolist() for p in a._jb._buf.values()] == [
        g711.alaw_decode(pay[0]).tolist(), g711.alaw_decode(pay[2]).tolist(), g711.alaw_decode(odd).tolist()]
    assert [p.tolist() for p in b._jb._buf.values()] == [
        g711.ulaw_decode(pay[1]).tolist(), g711.ulaw_decode(pay[3]).tolist()]
    assert b.stats.malformed == 1 and b.stats.packets_in == 3


async def test_ipv6_loopback_stream(tmp_path: Path) -> None:
    """Streams work on ::1 too (IPv6 family chosen from the bind address)."""
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    finally:
        probe.close()
    eng = MediaEngine(bind="::1", port_min=30000, port_max=65000, recordings_dir=tmp_path)
    await eng.start()
    try:
        a, b = eng.allocate(), eng.allocate()
        a.configure(remote=("::1", b.local_port), codec=Codec.PCMA, dtmf_pt=None)
        b.configure(remote=("::1", a.local_port), codec=Codec.PCMU, dtmf_pt=None)
        a.play("tone")
        await wait_for(lambda: b.stats.packets_in >= 5)
        assert b.send_addr is not None and b.send_addr[:2] == ("::1", a.local_port)
    finally:
        await eng.stop()


async def test_one_broken_stream_does_not_silence_the_others(engine: MediaEngine, phone_factory) -> None:
    """If one stream's tick raises (a bug), the other streams keep sending every tick, each
    failure is counted, and only the first 20 are logged."""
    p = await phone_factory()
    good, bad = engine.allocate(), engine.allocate()
    good.configure(remote=p.addr, codec=Codec.PCMA, dtmf_pt=None)
    bad.configure(remote=p.addr, codec=Codec.PCMA, dtmf_pt=None)

    def boom(now: float) -> None:
        raise RuntimeError("bug")

    # capture_logs: structlog's default renderer (rich, with locals) took ~60 ms per logged
    # traceback inside the tick, which made this test a measure of CPU speed (it timed out
    # at load 10-12). The property does not depend on how fast the tick runs.
    with capture_logs() as logs:
        bad._send_tick = boom  # type: ignore[method-assign]
        n = len(p.packets)
        await wait_for(lambda: len(p.packets) >= n + 25, limit=60.0)
        errors, clock_errors = engine.stream_errors, engine.clock.errors
    got = p.packets[n:]
    assert {q.ssrc for q in got} == {good._ssrc}
    # no tick skipped for the good stream: consecutive sequence numbers, 160 samples apart
    assert [q.sequence for q in got] == [(got[0].sequence + i) & 0xFFFF for i in range(len(got))]
    assert [q.timestamp for q in got] == [(got[0].timestamp + 160 * i) & 0xFFFFFFFF for i in range(len(got))]
    # every tick that sent a good packet also failed the bad stream (same tick, counted)
    assert errors >= len(got) and clock_errors == 0
    failed = [e for e in logs if e["event"] == "media stream tick failed"]
    assert len(failed) == 20  # a bug per tick must not flood the log
    assert all(e["port"] == bad.local_port and e["where"] == "send" for e in failed)
