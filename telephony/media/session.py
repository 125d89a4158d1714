"""RTP streams and the media engine: sockets, sources (tone/WAV/bridge), recordings.

Theory of operation:

* :meth:`MediaEngine.allocate` is synchronous (the signalling code calls it while
  building an SDP answer): it binds a non-blocking UDP socket on a free even port of
  the pool with the ``socket`` module; the port is live before ``allocate`` returns.
  RTCP (port + 1) is not bound: we neither send nor need RTCP; the odd port is left
  unused as RFC 3550 expects.
* Reading: by default (``read_in_tick=True``) the media clock tick itself drains every
  stream's socket (``recvfrom`` until EAGAIN) just before pulling from the jitter
  buffers. A packet is only needed at the next pull, so nothing is lost by waiting for
  the tick, and the per-packet cost of epoll + an asyncio callback disappears. The
  cost is a 20 ms quantisation of arrival times: RFC 3550 jitter is measured on tick
  times, and ``last_rx`` / DTMF are up to one tick late. With ``read_in_tick=False``
  each socket gets a ``loop.add_reader`` callback that drains it.
* Why not ``loop.create_datagram_endpoint(sock=...)`` (the first version did that):
  asyncio's datagram transport reads ONE datagram per socket per loop iteration. With
  300 legs the loop iterates about once per tick, so any backlog (a slow tick, start-up)
  never drains: measured 41 packets/s/leg received at 300 legs and 13 late packets per
  leg per second.
* Receiving: parse, decode G.711 to 16-bit PCM with a lookup table, push into the
  stream's :class:`~telephony.media.jitter.JitterBuffer`. Malformed or unexpected
  packets are counted and dropped.
* Sending happens only on the shared :class:`~telephony.media.clock.MediaClock` tick:
  each stream takes one frame from its source (prompt loop, silence, or the bridged
  peer's received frame of the same tick), encodes it and writes it with
  ``sock.sendto`` directly. We bypass the transport's write buffer on purpose: a
  real-time sender must drop (and count) a packet the kernel refuses rather than queue
  stale audio behind it.
* Symmetric RTP: we send to the source address of the RTP we receive, or to the SDP
  address until a packet arrives. The source is latched: packets from another address
  are dropped (``foreign``) unless the latched one has been silent ``relatch_after``
  seconds (a NAT rebinding, a media server change), so a stray or forged packet cannot
  divert a call's audio. Sequence number, timestamp and SSRC are
  per stream and continuous across source changes (play -> bridge -> play); the
  timestamp advances one frame per tick even while not sending (hold), so it always
  tracks real time. The marker bit is set on the first packet after a pause.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import math
import random
import select
import socket
import struct
import time
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from telephony.api import AudioFrame

from . import rtp
from .clock import MediaClock
from .dtmf import DtmfReceiver, DtmfSender
from .errors import MediaError, RtpError
from .g711 import A2U_TRANSLATE, ALAW_DECODE, ALAW_ENCODE, U2A_TRANSLATE, ULAW_DECODE, ULAW_ENCODE
from .jitter import JitterBuffer, silence
from .recording import Recording, RecordingInfo, recover

__all__ = ["Codec", "MediaEngine", "RtpStats", "RtpStream"]

log = structlog.get_logger(__name__)

Pcm = npt.NDArray[np.int16]
_HDR = struct.Struct("!BBHII")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class Codec(enum.Enum):
    """Static payload types of ITU-T G.711."""

    PCMU = 0
    PCMA = 8


_DECODE = {0: ULAW_DECODE, 8: ALAW_DECODE}
_DECODE_BOTH = np.concatenate([ULAW_DECODE, ALAW_DECODE])  # index: code + 256 * is_alaw
_SILENT_CODES = {0: b"\xff", 8: b"\xd5"}  # encode(0) per payload type
_ENCODE = {Codec.PCMU: ULAW_ENCODE, Codec.PCMA: ALAW_ENCODE}
# bridge fast path: received payload -> our payload type, by ``bytes.translate``
_TRANSLATE = {(8, 0): A2U_TRANSLATE, (0, 8): U2A_TRANSLATE}


@dataclass(frozen=True)
class RtpStats:
    """A snapshot of one stream's counters."""

    packets_in: int = 0
    """Valid RTP packets received (audio and telephone-event)."""
    packets_out: int = 0
    """RTP packets sent."""
    bytes_in: int = 0
    bytes_out: int = 0
    lost: int = 0
    """RFC 3550 cumulative loss (expected - received), summed over SSRCs."""
    late: int = 0
    """Audio packets that arrived after their playout time (dropped)."""
    duplicates: int = 0
    malformed: int = 0
    """Datagrams that were not valid RTP (dropped)."""
    unexpected_pt: int = 0
    """Packets with a payload type we did not negotiate (dropped)."""
    foreign: int = 0
    """Packets from another address than the latched source while it is alive (dropped)."""
    jitter_ms: float = 0.0
    """RFC 3550 interarrival jitter."""
    max_send_gap_ms: float = 0.0
    """Largest interval between two packets sent while sending continuously."""
    send_errors: int = 0
    """Packets the kernel refused (buffer full, unreachable): dropped, not queued."""
    resyncs: int = 0
    """New SSRC or timestamp jump on the receive side."""
    jitter_delay_ms: float = 0.0
    """Current playout delay of the jitter buffer."""


class _Loop:
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
            table = _ENCODE[codec]
            enc = self.encoded[codec] = [table[f.view(np.uint16)].tobytes() for f in self.frames]
        return enc


class RtpStream:
    """One RTP leg: a socket, a jitter buffer, a send source. Made by ``MediaEngine.allocate``."""

    def __init__(self, engine: MediaEngine, sock: socket.socket, port: int) -> None:
        self.local_port = port
        """Even UDP port this stream is bound to."""
        self.last_rx: float | None = None
        """``time.monotonic()`` of the last valid RTP packet received."""
        self.codec = Codec.PCMA
        self.dtmf_pt: int | None = None
        self.direction = "sendrecv"
        self.remote: tuple[str, int] | None = None
        """Address from SDP (``configure``)."""
        self.send_addr: tuple[str, int] | None = None
        """Where packets go: the latched source of received RTP, else ``remote``."""
        self.relatch_after = 2.0
        """Seconds the latched source must be silent before another source is accepted."""
        self._latched: tuple[str, int] | None = None
        self.closed = False
        self.rx_frame: Pcm = silence(engine.frame_samples)
        """Audio received for the current tick (valid during and after the tick)."""
        self.rx_raw: tuple[int, bytes] | None = None
        """``(payload type, G.711 payload)`` when ``rx_frame`` is exactly one received packet."""
        self._engine = engine
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frame = engine.frame_samples
        self._ptime_samples = self._frame
        self._enc = ALAW_ENCODE
        self._pt = Codec.PCMA.value
        self._acc: Pcm | None = None
        self._jb = JitterBuffer(frame_samples=self._frame)
        self._rstats = rtp.ReceptionStats()
        self._dtmf_rx = DtmfReceiver()
        self._dtmf_tx: deque[tuple[str, int]] = deque()
        self._dtmf_active: DtmfSender | None = None
        self._prompt: _Loop | None = None  # None: silence
        self.peer: RtpStream | None = None
        """Bridged stream whose received audio we send (None when not bridged)."""
        self._listen_peer = False
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._marker = True
        self._last_send: float | None = None
        # plain attributes, not a dict: these are bumped per packet on the hot path
        self._packets_in = self._packets_out = self._bytes_in = self._bytes_out = 0
        self._malformed = self._unexpected_pt = self._send_errors = self._foreign = 0
        self._sending = True  # direction allows sending
        self._receiving = True  # direction allows receiving
        self._max_send_gap = 0.0

    # ------------------------------------------------------------ transport
    def _open(self, loop: asyncio.AbstractEventLoop, reader: bool) -> None:
        if reader:
            self._loop = loop
            loop.add_reader(self._sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        if self.closed:
            return
        sock = self._sock
        now = time.monotonic()
        for _ in range(64):  # bounded, so one flooded socket cannot starve the others
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors surfaced on the socket (port unreachable after our sendto):
                # the far end is not there (yet); the dead-call guard decides, not us.
                self._send_errors += 1
                continue
            self.datagram_received(data, addr, now)
            if self.closed:
                return

    # -------------------------------------------------------------- control
    def configure(self, *, remote: tuple[str, int] | None, codec: Codec, dtmf_pt: int | None,
                  ptime: int = 20) -> None:
        """Set (or change, on re-INVITE) the far address, send codec, DTMF PT and ptime."""
        if not isinstance(codec, Codec):
            raise MediaError(f"unsupported codec {codec!r}")
        if dtmf_pt is not None and not (96 <= dtmf_pt <= 127):
            raise MediaError(f"telephone-event payload type must be 96..127, got {dtmf_pt}")
        if ptime not in (10, 20, 30, 40):
            raise MediaError(f"ptime must be 10, 20, 30 or 40 ms, got {ptime}")
        if remote is not None:
            remote = self._engine._check_remote(remote)  # None for 0.0.0.0 (RFC 2543 hold)
        self.codec = codec
        self._enc = _ENCODE[codec]
        self._pt = codec.value
        self.dtmf_pt = dtmf_pt
        self._ptime_samples = ptime * 8
        self._acc = None
        if remote != self.remote:
            self.remote = remote
            self.send_addr = remote  # re-latch to the new address once its packets arrive
            self._latched = None

    def set_direction(self, direction: str) -> None:
        """Our direction: ``sendrecv``, ``sendonly``, ``recvonly`` or ``inactive``."""
        if direction not in DIRECTIONS:
            raise MediaError(f"unknown direction {direction!r}")
        self.direction = direction
        self._sending = direction in ("sendrecv", "sendonly")
        self._receiving = direction in ("sendrecv", "recvonly")

    def play(self, prompt: str) -> None:
        """Send ``'tone'``, ``'silence'`` or a WAV file (8 kHz mono 16-bit), looped.

        Takes effect at the next tick, also while bridged (this side then stops sending
        the peer's audio, e.g. hold music; ``bridge`` again to resume). It is the source
        ``unbridge`` returns to.
        """
        self._prompt = self._engine._prompt(prompt)
        self._listen_peer = False

    def send_dtmf(self, digit: str, duration_ms: int = 160) -> None:
        """Queue an RFC 4733 digit (audio pauses while it is sent)."""
        DtmfSender(digit, timestamp=0)  # validates the digit now, raising ValueError
        if not 40 <= duration_ms <= 5000:
            raise MediaError(f"DTMF duration must be 40..5000 ms, got {duration_ms}")
        self._dtmf_tx.append((digit, duration_ms))

    @property
    def stats(self) -> RtpStats:
        """Counters snapshot."""
        jb = self._jb
        return RtpStats(packets_in=self._packets_in, packets_out=self._packets_out,
                        bytes_in=self._bytes_in, bytes_out=self._bytes_out,
                        lost=self._rstats.lost, late=jb.late, duplicates=jb.duplicates,
                        malformed=self._malformed, unexpected_pt=self._unexpected_pt,
                        jitter_ms=self._rstats.jitter_ms,
                        max_send_gap_ms=1000.0 * self._max_send_gap,
                        send_errors=self._send_errors, foreign=self._foreign,
                        resyncs=jb.resyncs,
                        jitter_delay_ms=jb.delay / 8.0)

    def close(self) -> None:
        """Stop sending and receiving, close the socket, return the port. Idempotent."""
        if self.closed:
            return
        self._on_readable()  # what already arrived still goes to the jitter buffer (and
        self.closed = True   # from there into the recording's tail at seal)
        if self.peer is not None:
            self._engine.unbridge(self)
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._engine._unwatch(self)
        self._sock.close()
        self._engine._release(self)

    # --------------------------------------------------------------- receive
    def datagram_received(self, data: bytes, addr: tuple[str, int],
                          now: float | None = None, pcm: Pcm | None = None) -> None:
        """Handle one received datagram (never raises for bad input: counted, dropped).

        ``now`` is ``time.monotonic()`` (taken once per batch of datagrams by the reader);
        ``pcm`` is the payload already decoded (the engine decodes a tick's packets in one
        batch), else it is decoded here.
        """
        if self.closed:
            return
        n = len(data)
        if n >= 12 and data[0] == 0x80:  # fast path: no padding, extension or CSRC
            b0, b1, seq, ts, ssrc = _HDR.unpack_from(data)
            pt = b1 & 0x7F
            payload = data[12:]
        else:
            try:
                p = rtp.parse(data)
            except RtpError:
                self._malformed += 1
                return
            pt, seq, ts, ssrc, payload = p.payload_type, p.sequence, p.timestamp, p.ssrc, p.payload
        table = _DECODE.get(pt)
        if table is None and pt != self.dtmf_pt:
            self._unexpected_pt += 1
            return
        if now is None:
            now = time.monotonic()
        if addr != self._latched:
            # Strict symmetric RTP: a single forged packet must not divert a 999 call's
            # audio. Latch to the first source; move only if it has been silent a while.
            if self._latched is not None and self.last_rx is not None \
                    and now - self.last_rx < self.relatch_after:
                self._foreign += 1
                return
            self._latched = self.send_addr = addr
        self._packets_in += 1
        self._bytes_in += n
        self.last_rx = now
        self._rstats.update(ssrc, seq, ts, now)
        if table is not None:
            if self._receiving and payload:
                if pcm is None:
                    pcm = table[np.frombuffer(payload, dtype=np.uint8)]
                self._jb.push(ssrc=ssrc, seq=seq, timestamp=ts, pcm=pcm, raw=(pt, payload))
            return
        try:
            digits = self._dtmf_rx.feed(ts, payload)
        except RtpError:
            self._malformed += 1
            return
        for d in digits:
            self._engine._dtmf(self, d)

    # ------------------------------------------------------------------ tick
    def _send_tick(self, now: float) -> None:
        frame_ts = self._ts
        self._ts = (frame_ts + self._frame) & 0xFFFFFFFF  # real time, sent or not
        addr = self.send_addr
        if addr is None or not self._sending:
            self._marker = True
            self._last_send = None
            return
        if self._dtmf_tx or self._dtmf_active is not None:
            if self.dtmf_pt is None:  # no telephone-event negotiated: digits cannot be sent
                self._dtmf_active = None
                self._dtmf_tx.clear()
            else:
                if self._dtmf_active is None:
                    digit, ms = self._dtmf_tx.popleft()
                    self._dtmf_active = DtmfSender(digit, timestamp=frame_ts, duration_ms=ms,
                                                   frame_samples=self._frame)
                sender = self._dtmf_active
                marker, payload = sender.next_packet()
                if sender.done:
                    self._dtmf_active = None
                self._send(rtp.build_fast(self.dtmf_pt, self._seq, sender.timestamp,
                                          self._ssrc, payload, marker), addr, now)
                return
        pt = self._pt
        if self._ptime_samples == self._frame:  # the hot path, _send inlined
            peer = self.peer if self._listen_peer else None
            if peer is not None:
                raw = peer.rx_raw
                if raw is None:
                    payload = self._enc[peer.rx_frame.view(np.uint16)].tobytes()
                elif raw[0] == pt:
                    payload = raw[1]  # same law: forward the received codes untouched
                else:
                    payload = raw[1].translate(_TRANSLATE[raw[0], pt])
            elif self._prompt is not None:
                loop = self._prompt
                payload = loop.payloads(self.codec)[loop.next_index()]
            else:
                payload = _SILENT_CODES[pt] * self._frame
            seq = self._seq
            packet = _HDR.pack(0x80, (0x80 | pt) if self._marker else pt, seq, frame_ts,
                               self._ssrc) + payload
            self._seq = (seq + 1) & 0xFFFF
            self._marker = False
            last = self._last_send
            if last is not None and now - last > self._max_send_gap:
                self._max_send_gap = now - last
            self._last_send = now
            try:
                self._sock.sendto(packet, addr)
            except OSError:  # EAGAIN (buffer full), unreachable...: drop, never queue
                self._send_errors += 1
                return
            self._packets_out += 1
            self._bytes_out += len(packet)
            return
        if self._listen_peer and self.peer is not None:
            frame = self.peer.rx_frame
        elif self._prompt is not None:
            frame = self._prompt.frames[self._prompt.next_index()]
        else:
            frame = silence(self._frame)
        table = self._enc
        # other ptime: accumulate samples, send whole packets (ts of their first sample)
        if self._acc is None:
            self._acc = frame.copy()
            self._acc_ts = frame_ts
        else:
            self._acc = np.concatenate((self._acc, frame))
        p = self._ptime_samples
        while self._acc is not None and len(self._acc) >= p:
            chunk, rest = self._acc[:p], self._acc[p:]
            self._send(rtp.build_fast(pt, self._seq, self._acc_ts, self._ssrc,
                                      table[chunk.view(np.uint16)].tobytes(), self._marker),
                       addr, now)
            self._acc_ts = (self._acc_ts + p) & 0xFFFFFFFF
            self._acc = rest if len(rest) else None

    def _send(self, packet: bytes, addr: tuple[str, int], now: float) -> None:
        self._seq = (self._seq + 1) & 0xFFFF
        self._marker = False
        if self._last_send is not None:
            gap = now - self._last_send
            if gap > self._max_send_gap:
                self._max_send_gap = gap
        self._last_send = now
        try:
            self._sock.sendto(packet, addr)
        except OSError:  # EAGAIN (buffer full), unreachable...: drop, never queue
            self._send_errors += 1
            return
        self._packets_out += 1
        self._bytes_out += len(packet)


class MediaEngine:
    """All RTP streams, bridges and recordings of the process, driven by one clock."""

    def __init__(self, *, bind: str, port_min: int, port_max: int, ptime: int = 20,
                 recordings_dir: Path,
                 on_audio: Callable[[AudioFrame], None] | None = None,
                 on_dtmf: Callable[[RtpStream, str], None] | None = None,
                 read_in_tick: bool = True) -> None:
        """Ports: even ports in ``[port_min, port_max]``; ``ptime`` is the clock period in ms.

        ``read_in_tick``: sockets are read by the clock tick (default, cheapest) rather
        than by one event-loop reader callback per socket. Either way nothing is
        received before :meth:`start`.
        """
        if ptime not in (10, 20, 30, 40):
            raise MediaError(f"ptime must be 10, 20, 30 or 40 ms, got {ptime}")
        first = port_min + (port_min & 1)
        if first > port_max:
            raise MediaError(f"no even port in {port_min}..{port_max}")
        self.bind = bind
        self.ptime = ptime
        self.frame_samples = ptime * 8
        self.recordings_dir = Path(recordings_dir)
        self.on_audio = on_audio
        self.on_dtmf = on_dtmf
        self.read_in_tick = read_in_tick
        # our own epoll (not the event loop's): the tick asks it which sockets to read
        self._epoll = select.epoll() if read_in_tick else None
        self._by_fd: dict[int, RtpStream] = {}
        self._family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self._free: deque[int] = deque(range(first, port_max + 1, 2))
        self._streams: dict[int, RtpStream] = {}
        self._stream_list: list[RtpStream] = []
        self._recordings: dict[str, Recording] = {}
        self._rec_list: list[Recording] = []
        self._rec_counter = 0
        self._prompts: dict[str, list[Pcm]] = {"tone": _queue_tone(self.frame_samples)}
        self._encoded: dict[str, dict[Codec, list[bytes]]] = {"tone": {}}
        self.clock = MediaClock(ptime / 1000.0, self._tick)
        self.audio_errors = 0

    # --------------------------------------------------------------- life
    async def start(self) -> None:
        """Start the shared media clock."""
        self.clock.start()

    async def stop(self) -> None:
        """Stop the clock, close every stream, seal every open recording."""
        await self.clock.stop()
        for s in list(self._stream_list):
            s.close()
        for r in list(self._rec_list):
            try:
                await r.seal_async()
            except (OSError, MediaError):
                log.exception("recording seal failed at stop", call_id=r.call_id)
        self._recordings.clear()
        self._rec_list = []

    # ------------------------------------------------------------ streams
    @property
    def free_ports(self) -> int:
        """Ports left in the pool."""
        return len(self._free)

    @property
    def streams(self) -> list[RtpStream]:
        """Open streams."""
        return list(self._stream_list)

    def allocate(self) -> RtpStream:
        """Bind a new stream on a free even port (synchronous; needs the running loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise MediaError("allocate() must be called from the running event loop") from None
        for _ in range(len(self._free)):
            port = self._free.popleft()
            try:
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
            except OSError as e:  # EMFILE/ENFILE: out of file descriptors
                self._free.appendleft(port)
                raise MediaError(f"cannot create RTP socket: {e.strerror}") from e
            try:
                sock.setblocking(False)
                if self._family == socket.AF_INET:
                    # DSCP EF (46): voice gets expedited forwarding where the network honours it
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xB8)
                sock.bind((self.bind, port))
            except OSError as e:
                sock.close()
                self._free.append(port)  # in use by someone else: try it again later
                if e.errno == errno.EADDRINUSE:
                    continue
                raise MediaError(f"cannot bind RTP socket on {self.bind}:{port}: "
                                 f"{e.strerror}") from e
            stream = RtpStream(self, sock, port)
            self._streams[port] = stream
            if self._epoll is not None:
                self._by_fd[sock.fileno()] = stream
                self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._stream_list = list(self._streams.values())
            stream._open(loop, not self.read_in_tick)
            return stream
        raise MediaError("RTP port pool exhausted")

    def _check_remote(self, remote: tuple[str, int]) -> tuple[str, int] | None:
        """An SDP address must be an IP literal of our family (sendto would resolve a
        host name synchronously, blocking the loop) and a real port. The unspecified
        address (``0.0.0.0``/``::``, old-style hold) means: do not send."""
        try:
            host, port = remote
            ip = ipaddress.ip_address(host)
        except (TypeError, ValueError):
            raise MediaError(f"remote must be (IP address, port), got {remote!r}") from None
        if (ip.version == 6) != (self._family == socket.AF_INET6):
            raise MediaError(f"remote {host} is not reachable from RTP bind address {self.bind}")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise MediaError(f"remote port must be 1..65535, got {port!r}")
        if ip.is_unspecified:
            return None
        return (str(ip), port)

    def _unwatch(self, stream: RtpStream) -> None:
        """Called by ``RtpStream.close`` before the socket is closed."""
        fd = stream._sock.fileno()
        if self._epoll is not None and self._by_fd.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _read_ready(self) -> None:
        """Read every socket with data waiting: one datagram per ready socket per pass.

        ``epoll_wait`` (timeout 0) names the readable sockets, so idle sockets cost nothing
        and no ``recvfrom`` ends in EAGAIN; a socket with more queued (10 ms ptime, a
        backlog after a stall) shows up again in the next pass.
        """
        ep, by_fd = self._epoll, self._by_fd
        assert ep is not None
        batch: list[tuple[RtpStream, bytes, tuple[str, int]]] = []
        for _ in range(16):  # bounded: a flood cannot hold the tick
            events = ep.poll(0)
            if not events:
                break
            for fd, _mask in events:
                s = by_fd.get(fd)
                if s is None:
                    continue
                try:
                    data, addr = s._sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # ICMP error surfaced on the socket: see _on_readable
                    s._send_errors += 1
                    continue
                batch.append((s, data, addr))
        if batch:
            self._ingest(batch, time.monotonic())

    def _ingest(self, batch: list[tuple[RtpStream, bytes, tuple[str, int]]], now: float) -> None:
        """Hand a tick's datagrams to their streams, decoding the G.711 ones in one go.

        Decoding 160 bytes per packet with its own numpy call costs ~10 us of call
        overhead; the ordinary packets of a tick (fixed header, PCMA/PCMU, one frame) are
        instead stacked into one array and decoded by a single lookup in a 512-entry
        table (mu-law codes 0-255, A-law codes 256-511). Others take the normal path.
        """
        size = 12 + self.frame_samples
        rows: list[Pcm | None] = [None] * len(batch)
        sel = [i for i, (_, d, _) in enumerate(batch)
               if len(d) == size and d[0] == 0x80 and (d[1] & 0x7F) in (0, 8)]
        if len(sel) >= 4:  # below that, one call per packet is as cheap
            arr = np.frombuffer(b"".join([batch[i][1] for i in sel]), dtype=np.uint8)
            arr = arr.reshape(len(sel), size)
            idx = arr[:, 12:].astype(np.uint16)
            idx[(arr[:, 1] & 0x7F) == 8] += 256
            pcm = _DECODE_BOTH[idx]
            for j, i in enumerate(sel):
                rows[i] = pcm[j]
        for (s, data, addr), row in zip(batch, rows, strict=True):
            s.datagram_received(data, addr, now, row)

    def _release(self, stream: RtpStream) -> None:
        if self._streams.pop(stream.local_port, None) is not None:
            self._stream_list = list(self._streams.values())
            # to the back of the queue: the port rests while stray packets of the old
            # call drain, and the socket's close (next loop turn) completes
            self._free.append(stream.local_port)

    def bridge(self, a: RtpStream, b: RtpStream) -> None:
        """Each of ``a`` and ``b`` sends what the other receives (transcoded via PCM)."""
        if a is b or a.closed or b.closed:
            raise MediaError("bridge needs two distinct open streams")
        for s in (a, b):
            if s.peer is not None and s.peer not in (a, b):
                self.unbridge(s)
        a.peer, b.peer = b, a
        a._listen_peer = b._listen_peer = True

    def unbridge(self, a: RtpStream) -> None:
        """Undo ``a``'s bridge; both sides return to their last ``play`` source."""
        b = a.peer
        a.peer = None
        a._listen_peer = False
        if b is not None and b.peer is a:
            b.peer = None
            b._listen_peer = False

    def preload(self, prompt: str) -> None:
        """Load and check a prompt now (``'tone'``, ``'silence'`` or a WAV path), so a bad
        file is a start-up error (MediaError) rather than a failure at a call's first play."""
        self._prompt(prompt)

    def _prompt(self, prompt: str) -> _Loop | None:
        if prompt == "silence":
            return None
        frames = self._prompts.get(prompt)
        if frames is None:
            frames = _load_wav(Path(prompt), self.frame_samples)
            self._prompts[prompt] = frames
            self._encoded[prompt] = {}
        return _Loop(frames, self._encoded[prompt])

    def _dtmf(self, stream: RtpStream, digit: str) -> None:
        if self.on_dtmf is not None:
            try:
                self.on_dtmf(stream, digit)
            except Exception:
                log.exception("on_dtmf callback failed", port=stream.local_port)

    # --------------------------------------------------------- recordings
    def create_recording(self, call_id: str) -> Recording:
        """Start a stereo recording now (answer time); sealed by ``seal()`` or ``stop``."""
        if call_id in self._recordings:
            raise MediaError(f"recording for call {call_id} already exists")
        self._rec_counter += 1
        rec = Recording(call_id, self.recordings_dir, frame_samples=self.frame_samples,
                        flush_every=max(1, 1000 // self.ptime), phase=self._rec_counter)
        self._recordings[call_id] = rec
        self._rec_list = list(self._recordings.values())
        return rec

    def recover_recordings(self) -> list[RecordingInfo]:
        """Seal ``.part`` files left by a crash (not those of recordings open now)."""
        open_parts = {r.part_path for r in self._rec_list}
        return recover(self.recordings_dir, skip=open_parts)

    # --------------------------------------------------------------- tick
    def _tick(self, n: int) -> None:
        now = asyncio.get_running_loop().time()
        streams = self._stream_list
        if self.read_in_tick:
            self._read_ready()
        elif self.clock.behind:
            # reader mode: a catch-up tick comes before the loop ran the readers again,
            # so read what is queued now, or every packet would count as late
            for s in streams:
                s._on_readable()
        for s in streams:
            frame = s._jb.pull()
            if s._receiving:
                s.rx_frame, s.rx_raw = frame, s._jb.last_raw
            else:
                s.rx_frame, s.rx_raw = silence(len(frame)), None
            if s._dtmf_rx._current_ts is not None:
                for d in s._dtmf_rx.expire():
                    self._dtmf(s, d)
        for s in streams:
            s._send_tick(now)
        if self._rec_list:
            self._tick_recordings()

    def _tick_recordings(self) -> None:
        quiet = silence(self.frame_samples)
        done = False
        for r in self._rec_list:
            if r.sealed is not None or r._sealing:
                done = done or r.sealed is not None
                continue
            c, h = r.caller, r.handler
            left = c.rx_frame if c is not None and not c.closed else quiet
            right = h.rx_frame if h is not None and not h.closed else quiet
            offset = r.duration
            try:
                r.write_frame(left, right)
            except MediaError:
                log.exception("recording write failed", call_id=r.call_id)
            if self.on_audio is not None:
                self._audio(r.call_id, "caller", c, left, offset)
                self._audio(r.call_id, "handler", h, right, offset)
        if done:  # forget sealed recordings
            self._recordings = {k: v for k, v in self._recordings.items() if v.sealed is None}
            self._rec_list = list(self._recordings.values())

    def _audio(self, call_id: str, channel: Any, stream: RtpStream | None, pcm: Pcm,
               offset: float) -> None:
        if stream is None or self.on_audio is None:
            return  # no transcription of a channel nobody is on
        try:
            self.on_audio(AudioFrame(call_id=call_id, channel=channel, pcm=pcm.tobytes(),
                                     offset=offset))
        except Exception:
            self.audio_errors += 1
            if self.audio_errors <= 10:
                log.exception("on_audio callback failed", call_id=call_id)

    def totals(self) -> dict[str, float]:
        """Sums over open streams plus clock figures, for EngineStats / metrics."""
        out: dict[str, float] = {"packets_in": 0, "packets_out": 0, "lost": 0, "late": 0}
        for s in self._stream_list:
            st = s.stats
            out["packets_in"] += st.packets_in
            out["packets_out"] += st.packets_out
            out["lost"] += st.lost
            out["late"] += st.late
        out["max_tick_gap_ms"] = 1000.0 * self.clock.max_gap
        return out


def _queue_tone(frame: int) -> list[Pcm]:
    """UK-style comfort tone: 400 Hz, 0.4 on / 0.2 off / 0.4 on / 2.0 off, about -18 dBFS."""
    rate, amp, ramp = 8000, 4000.0, 40  # 5 ms raised-cosine edges: no click at cadence steps
    on = np.sin(2 * math.pi * 400 * np.arange(int(0.4 * rate)) / rate) * amp
    edge = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, ramp))
    on[:ramp] *= edge
    on[-ramp:] *= edge[::-1]
    cycle = np.concatenate([on, np.zeros(int(0.2 * rate)), on, np.zeros(int(2.0 * rate))])
    return _frames(np.round(cycle).astype(np.int16), frame)


def _frames(pcm: Pcm, frame: int) -> list[Pcm]:
    pad = (-len(pcm)) % frame
    if pad:
        pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    out = [pcm[i:i + frame].copy() for i in range(0, len(pcm), frame)]
    for f in out:
        f.setflags(write=False)
    return out


def _load_wav(path: Path, frame: int) -> list[Pcm]:
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
    return _frames(pcm, frame)
