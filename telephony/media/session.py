"""The media engine: port pool, the shared clock's tick, bridges, recordings.

Streams live in :mod:`telephony.media.stream`, prompts in :mod:`telephony.media.prompts`.

Theory of operation:

* :meth:`MediaEngine.allocate` is synchronous (the signalling code calls it while
  building an SDP answer): it binds a non-blocking UDP socket on an even port of the
  pool chosen at random, never one released in the last ``port_quarantine`` seconds
  while another is free (:mod:`telephony.media.ports`), with the ``socket`` module; the
  port is live before ``allocate`` returns.
  RTCP uses port + 1 when it is free (see :mod:`telephony.media.rtcp`); if not, the
  stream simply has no RTCP.
* Reading: by default (``read_in_tick=True``) the media clock tick itself reads every
  socket that has data (the engine's own ``epoll``, polled with timeout 0, names them;
  one datagram per ready socket per pass, passes until none is ready) just before
  pulling from the jitter buffers, and decodes that tick's G.711 payloads in one numpy
  lookup. A packet is only needed at the next pull, so nothing is lost by waiting for
  the tick, and the per-packet cost of an asyncio callback disappears (measured 36 vs
  55 us of CPU per leg per tick at 300 legs). The cost is a 20 ms quantisation of
  arrival times: RFC 3550 jitter is measured on tick times, and ``last_rx`` / DTMF are
  up to one tick late. With ``read_in_tick=False`` each socket gets a
  ``loop.add_reader`` callback that drains it.
* Why not ``loop.create_datagram_endpoint(sock=...)`` (the first version did that):
  asyncio's datagram transport reads ONE datagram per socket per loop iteration. With
  300 legs the loop iterates about once per tick, so any backlog (a slow tick, start-up)
  never drains: measured 41 packets/s/leg received at 300 legs and 13 late packets per
  leg per second.
* Receiving: parse, decode G.711 to 16-bit PCM with a lookup table, push into the
  stream's :class:`~telephony.media.jitter.JitterBuffer`. Malformed or unexpected
  packets are counted and dropped.
* Sending happens only on the shared :class:`~telephony.media.clock.MediaClock` tick:
  each stream takes one frame from its source and writes it with ``sock.sendto``. A
  prompt's payloads are encoded once per codec; a bridge forwards the peer's received
  G.711 codes untouched (same law) or through a 256-byte ``bytes.translate`` table
  (A-law <-> mu-law via 16-bit PCM, identical to decode+encode); only silence/loss
  frames and odd packet sizes are encoded from PCM. A packet the kernel refuses is
  dropped and counted, never queued: stale audio is worse than none.
* Bridge and ``play``: ``bridge(a, b)`` makes each send what the other received this
  tick (no extra delay). ``play`` on a bridged stream takes over what that side sends
  (hold) while the peer keeps hearing it; ``unbridge`` returns both to their last
  ``play`` source.
* Who is heard: only the address and port the SDP names (see
  :mod:`telephony.media.stream` for the rules: NAT latching on lines behind NAT, one
  SSRC at a time); everything else is dropped and counted (``foreign``,
  ``ssrc_dropped``), one address comparison per packet. We send to the SDP address
  (or the NAT-latched one). Sequence number, timestamp and SSRC are
  per stream and continuous across source changes (play -> bridge -> play); the
  timestamp advances one frame per tick even while not sending (hold), so it always
  tracks real time. The marker bit is set on the first packet after a pause.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import secrets
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from telephony.api import AudioFrame
from telephony.runtime import release_free_heap

from .clock import MediaClock
from .errors import MediaError
from .g711 import ALAW_DECODE, ULAW_DECODE
from .jitter import silence
from .mixer import Mix
from .ports import PortPool
from .prompts import PromptLoop, load_wav, queue_tone
from .recording import DiskWriter, Recording, RecordingInfo, recover
from .stream import Codec, RtpStats, RtpStream

__all__ = ["Codec", "MediaEngine", "RtpStats", "RtpStream"]

log = structlog.get_logger(__name__)

Pcm = npt.NDArray[np.int16]
_DECODE_BOTH = np.concatenate([ULAW_DECODE, ALAW_DECODE])  # index: code + 256 * is_alaw


class MediaEngine:
    """All RTP streams, bridges and recordings of the process, driven by one clock."""

    def __init__(self, *, bind: str, port_min: int, port_max: int, ptime: int = 20,
                 recordings_dir: Path,
                 on_audio: Callable[[AudioFrame], None] | None = None,
                 on_dtmf: Callable[[RtpStream, str], None] | None = None,
                 read_in_tick: bool = True, port_quarantine: float = 30.0) -> None:
        """Ports: even ports in ``[port_min, port_max]``; ``ptime`` is the clock period in ms.

        ``port_quarantine``: seconds a released port rests before it is handed out again
        (unless no other port is free), so a stale stream cannot reach the next call.

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
        self._rtcp_by_fd: dict[int, RtpStream] = {}
        self.cname = f"controlroom-{secrets.token_hex(6)}"
        """RTCP CNAME of this process (random, RFC 7022)."""
        self.rtcp_interval = 5.0
        """Mean seconds between RTCP reports of a stream."""
        self._family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self._pool = PortPool(first, port_max, quarantine=port_quarantine)
        self._streams: dict[int, RtpStream] = {}
        self._stream_list: list[RtpStream] = []
        self.disk = DiskWriter()
        """The thread that writes every recording (the tick never waits for the disk)."""
        self._recordings: dict[str, Recording] = {}
        self._rec_list: list[Recording] = []
        self._rec_counter = 0
        self._prompts: dict[str, list[Pcm]] = {"tone": queue_tone(self.frame_samples)}
        self._encoded: dict[str, dict[Codec, list[bytes]]] = {"tone": {}}
        self.clock = MediaClock(ptime / 1000.0, self._tick)
        self.audio_errors = 0
        self.stream_errors = 0
        self.recording_errors = 0
        """Per-stream tick failures (bugs), logged for the first 20; the others kept going."""
        self._srtp_streams = 0
        """Open streams with SRTP (kept by ``RtpStream.set_srtp``/``close``)."""
        self._srtp_out: list[tuple[RtpStream, bytes, tuple[str, int]]] = []
        """SRTP streams' packets of this tick, protected and sent after the send loop."""
        self._mixes: dict[int, tuple[RtpStream, Mix]] = {}
        """Listeners sent a mix (supervisor listen/whisper/barge), by id of the listener."""
        # Idle (no stream, no recording): free heap pages go back to the OS 2 s after
        # the last call and every 10 s after that (the last calls' SIP transactions
        # absorb retransmissions for 32 s and ended calls are unlinked after 40 s: their
        # memory is freed later). The first trim after a busy spell takes a few tens of
        # ms (80 MB freed: 45 ms); later ones ~1 ms. Under load there is no idle tick.
        self._idle_ticks = 0
        self._trim_first = max(1, 2000 // ptime)
        self._trim_every = 10000 // ptime

    # --------------------------------------------------------------- life
    async def start(self) -> None:
        """Start the shared media clock and the recording writer."""
        self.disk.start()
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
        await asyncio.to_thread(self.disk.stop)

    # ------------------------------------------------------------ streams
    @property
    def free_ports(self) -> int:
        """Ports left in the pool (free or resting: ``allocate`` can hand out either)."""
        return len(self._pool)

    @property
    def ports_reused_early(self) -> int:
        """Ports handed out before their quarantine ended (the pool had no other)."""
        return self._pool.reused_early

    @property
    def streams(self) -> list[RtpStream]:
        """Open streams."""
        return list(self._stream_list)

    def allocate(self) -> RtpStream:
        """Bind a new stream on a random even port of the pool (synchronous; needs the
        running loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise MediaError("allocate() must be called from the running event loop") from None
        pool = self._pool
        now = time.monotonic()
        for _ in range(len(pool)):
            port = pool.take(now)
            if port is None:
                break
            try:
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
            except OSError as e:  # EMFILE/ENFILE: out of file descriptors
                pool.release(port, now - pool.quarantine)  # never used: free at once
                raise MediaError(f"cannot create RTP socket: {e.strerror}") from e
            try:
                sock.setblocking(False)
                if self._family == socket.AF_INET:
                    # DSCP EF (46): voice gets expedited forwarding where the network honours it
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0xB8)
                sock.bind((self.bind, port))
            except OSError as e:
                sock.close()
                pool.release(port, now)  # in use by someone else: try it again later
                if e.errno == errno.EADDRINUSE:
                    continue
                raise MediaError(f"cannot bind RTP socket on {self.bind}:{port}: "
                                 f"{e.strerror}") from e
            stream = RtpStream(self, sock, port, self._bind_rtcp(port + 1))
            self._streams[port] = stream
            if self._epoll is not None:
                self._by_fd[sock.fileno()] = stream
                self._epoll.register(sock.fileno(), select.EPOLLIN)
                if stream._rtcp_sock is not None:
                    self._rtcp_by_fd[stream._rtcp_sock.fileno()] = stream
                    self._epoll.register(stream._rtcp_sock.fileno(), select.EPOLLIN)
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

    def _bind_rtcp(self, port: int) -> socket.socket | None:
        """The RTCP socket next to an RTP port, or None if that port is taken (RTP still works)."""
        try:
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
        except OSError:
            return None
        try:
            sock.setblocking(False)
            sock.bind((self.bind, port))
        except OSError:
            sock.close()
            return None
        return sock

    def _unwatch(self, stream: RtpStream) -> None:
        """Called by ``RtpStream.close`` before the sockets are closed."""
        fd = stream._sock.fileno()
        if self._epoll is not None and self._by_fd.pop(fd, None) is not None:
            self._epoll.unregister(fd)
        if stream._rtcp_sock is not None:
            fd = stream._rtcp_sock.fileno()
            if self._epoll is not None and self._rtcp_by_fd.pop(fd, None) is not None:
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
        # Bounded, so a flood cannot hold the tick, but deep enough that a stranger
        # flooding a call's port (dropped per packet for ~1 us) cannot fill the socket
        # and make the kernel drop the real caller's packets: 64 reads per socket per
        # tick = 3,200 datagrams/s each (16 lost ~1 caller frame in 8 at 1,000/s).
        for _ in range(64):
            events = ep.poll(0)
            if not events:
                break
            for fd, _mask in events:
                s = by_fd.get(fd)
                if s is None:
                    r = self._rtcp_by_fd.get(fd)
                    if r is not None and r._rtcp_sock is not None:
                        try:
                            data, addr = r._rtcp_sock.recvfrom(2048)
                        except OSError:
                            continue
                        r.rtcp_received(data, addr, time.monotonic())
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
            if self._srtp_streams:  # every unprotect back to back, before the batch decode
                batch = self._unprotect(batch)
            self._ingest(batch, time.monotonic())

    @staticmethod
    def _unprotect(batch: list[tuple[RtpStream, bytes, tuple[str, int]]]
                   ) -> list[tuple[RtpStream, bytes, tuple[str, int]]]:
        """The batch with SRTP packets unprotected; replayed, forged and malformed ones
        dropped (counted by their stream's context)."""
        out = []
        for s, data, addr in batch:
            if s._srtp is not None:
                plain = s.srtp_unprotect(data, addr)
                if plain is None:
                    continue
                data = plain
            out.append((s, data, addr))
        return out

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
            idx = arr[:, 12:].astype(np.intp)
            idx[(arr[:, 1] & 0x7F) == 8] += 256
            pcm = _DECODE_BOTH.take(idx)  # (take: ~25 % cheaper than fancy indexing)
            for j, i in enumerate(sel):
                rows[i] = pcm[j]
        for (s, data, addr), row in zip(batch, rows, strict=True):
            try:
                s._receive(data, addr, now, row)  # (SRTP already unprotected by the reader)
            except Exception:  # a bug must not cost every other stream its packets
                self._stream_failed(s, "receive")

    def _release(self, stream: RtpStream) -> None:
        if self._streams.pop(stream.local_port, None) is not None:
            self._stream_list = list(self._streams.values())
            # the port rests while stray packets of the old call drain (and the socket's
            # close, next loop turn, completes) before another call may get it
            self._pool.release(stream.local_port, time.monotonic())

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

    def mix(self, listener: RtpStream, sources: list[RtpStream]) -> None:
        """``listener`` sends the sum of what ``sources`` receive, each tick (see
        :mod:`telephony.media.mixer`). It replaces the listener's bridge peer; ``bridge``,
        ``unbridge`` or ``play`` on the listener end it. The sources' own peers are
        untouched (mixing is one-way: a supervisor listening is heard by nobody)."""
        if listener.closed or listener in sources:
            raise MediaError("mix needs an open listener that is not one of its sources")
        # Only the listener's side changes: its old partner (if any) keeps hearing it
        # (whisper: the caller still hears the handler, whose own peer becomes the mix).
        m = Mix(sources, self.frame_samples)
        listener.peer = m  # type: ignore[assignment]
        listener._listen_peer = True
        self._mixes[id(listener)] = (listener, m)

    def _tick_mixes(self) -> None:
        gone = []
        for key, (listener, m) in self._mixes.items():
            if listener.closed or listener.peer is not m or not listener._listen_peer:
                gone.append(key)   # bridged, unbridged or played over since: forget it
                continue
            m.update()
        for key in gone:
            del self._mixes[key]

    def preload(self, prompt: str) -> None:
        """Load and check a prompt now (``'tone'``, ``'silence'`` or a WAV path), so a bad
        file is a start-up error (MediaError) rather than a failure at a call's first play."""
        self._prompt(prompt)

    def _prompt(self, prompt: str) -> PromptLoop | None:
        if prompt == "silence":
            return None
        frames = self._prompts.get(prompt)
        if frames is None:
            frames = load_wav(Path(prompt), self.frame_samples)
            self._prompts[prompt] = frames
            self._encoded[prompt] = {}
        return PromptLoop(frames, self._encoded[prompt])

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
                        flush_every=max(1, 1000 // self.ptime), phase=self._rec_counter,
                        writer=self.disk)
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
        if not streams and not self._rec_list:
            self._idle_ticks += 1
            if self._idle_ticks % self._trim_every == self._trim_first:
                release_free_heap()  # idle: give freed heap pages back (telephony.runtime)
            return
        self._idle_ticks = 0
        if self.read_in_tick:
            self._read_ready()
        elif self.clock.behind:
            # reader mode: a catch-up tick comes before the loop ran the readers again,
            # so read what is queued now, or every packet would count as late
            for s in streams:
                s._on_readable()
        # try/except per stream costs nothing on 3.11 unless raised, and keeps one
        # stream's bug from silencing every call
        for s in streams:
            try:
                frame = s._jb.pull()
                if s._receiving:
                    s.rx_frame, s.rx_raw = frame, s._jb.last_raw
                else:
                    s.rx_frame, s.rx_raw = silence(len(frame)), None
                if s._dtmf_rx._current_ts is not None:
                    for d in s._dtmf_rx.expire():
                        self._dtmf(s, d)
            except Exception:
                s.rx_frame, s.rx_raw = silence(self.frame_samples), None
                self._stream_failed(s, "receive")
        if self._mixes:  # after every pull, before any send: this tick's audio
            self._tick_mixes()
        for s in streams:
            try:
                s._send_tick(now)
                if now >= s._rtcp_due:
                    s._send_rtcp(now)
            except Exception:
                self._stream_failed(s, "send")
        if self._srtp_out:
            self._send_srtp()
        if self._rec_list:
            self._tick_recordings()

    def _send_srtp(self) -> None:
        """Protect the tick's SRTP packets back to back, then send them."""
        out, self._srtp_out = self._srtp_out, []
        done = [(s, s._srtp.protect(p) if s._srtp is not None else None, a, len(p))
                for s, p, a in out]
        for s, packet, addr, size in done:
            try:
                s._srtp_sent(packet, addr, size)
            except Exception:
                self._stream_failed(s, "send")

    def _stream_failed(self, s: RtpStream, where: str) -> None:
        self.stream_errors += 1
        if self.stream_errors <= 20:  # a bug per tick must not flood the log
            log.exception("media stream tick failed", port=s.local_port, where=where)

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
            offset = r.duration if self.on_audio is not None else 0.0
            try:
                r.write_frame(left, right)
            except Exception:  # disk error (MediaError: the file is then closed) or a bug
                self.recording_errors += 1
                if self.recording_errors <= 20:
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
            out["foreign"] = out.get("foreign", 0) + st.foreign
            out["ssrc_dropped"] = out.get("ssrc_dropped", 0) + st.ssrc_dropped
            out["srtp_replayed"] = out.get("srtp_replayed", 0) + st.srtp_replayed
            out["srtp_forged"] = out.get("srtp_forged", 0) + st.srtp_forged
        out["max_tick_gap_ms"] = 1000.0 * self.clock.max_gap
        return out
