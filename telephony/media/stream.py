"""One RTP leg: socket I/O, receive path into the jitter buffer, send path on the tick.

See :mod:`telephony.media.session` for the theory of operation (reading in the tick,
sequence/timestamp continuity, what a bridge sends).

Who is heard (a stranger must not put audio into a 999 call or its recording):

* Only RTP from the address and port the SDP names is accepted (one comparison of the
  source port and host per packet, nothing allocated); anything else is dropped and
  counted (``foreign``), the first such packet of a stream logged. Before the SDP is
  known (delayed offer, a handler leg still ringing) nothing is accepted. An SDP with
  ``c=0.0.0.0`` (old-style hold) keeps the last address: the far end may still send.
* NAT latching, only where the line is configured behind NAT (``allow_latch``): the
  first valid RTP packet, if it comes from the signalling source's host (any port)
  rather than the SDP address, moves the accepted and the send address there, once,
  and is logged (``rtp.nat_latched``). The window closes with the first packet accepted
  either way and opens again only when an SDP names a new address.
* One SSRC at a time: the first packet after each ``configure`` (offer/answer, also a
  re-INVITE) sets it. A packet with another SSRC from the right address is dropped and
  counted (``ssrc_dropped``) while the current SSRC is alive; once the current one has
  been silent ``ssrc_switch_after`` seconds (0.5) the new one is taken (logged). That is
  what a real SBC does: after a restart, a failover or an upstream source switch it
  starts a new SSRC on the same address, and the old stream has stopped; two streams
  interleaved on one address is the case that is not legitimate. So a caller whose SBC
  restarts loses at most half a second, never the rest of the call.

SRTP (:mod:`telephony.media.srtp`, keys from the SDP's ``a=crypto``): ``set_srtp`` gives
the stream an :class:`~telephony.media.srtp.SrtpContext`. The hooks are one test of
``self._srtp`` where a packet leaves (after it is built, before ``sendto``) and where one
arrives (after the address check, before the RTP parse); everything after sees plain
RTP, so the jitter buffer, the bridge, the recording and transcription get the decrypted
audio. On the tick the engine does a tick's SRTP work back to back (every unprotect of
the packets read, then, after the send loop, every protect, then their ``sendto``s):
libsrtp's code then stays in the CPU caches, measured 2-3x cheaper per packet than
interleaved with the socket calls and numpy of each stream (``bench/srtp_cpu.py``).
Replayed, forged or malformed SRTP is dropped and counted (``srtp_replayed``,
``srtp_forged``, ``malformed``). RTCP goes as SRTCP with the same keys.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt
import structlog

from . import rtcp, rtp
from .codec import Codec
from .dtmf import DtmfReceiver, DtmfSender
from .errors import MediaError, RtpError
from .g711 import A2U_TRANSLATE, ALAW_DECODE, ALAW_ENCODE, U2A_TRANSLATE, ULAW_DECODE, ULAW_ENCODE
from .jitter import JitterBuffer, silence

if TYPE_CHECKING:
    from .prompts import PromptLoop
    from .srtp import SrtpContext

__all__ = ["DIRECTIONS", "Codec", "RtpStats", "RtpStream"]

log = structlog.get_logger("telephony.media")

Pcm = npt.NDArray[np.int16]
_HDR = struct.Struct("!BBHII")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class StreamEngine(Protocol):
    """What a stream uses of the engine that made it (:class:`.session.MediaEngine`)."""

    frame_samples: int
    cname: str
    rtcp_interval: float
    _srtp_streams: int
    _srtp_out: list[tuple[RtpStream, bytes, tuple[str, int]]]

    def _check_remote(self, remote: tuple[str, int]) -> tuple[str, int] | None: ...
    def _prompt(self, prompt: str) -> PromptLoop | None: ...
    def _dtmf(self, stream: RtpStream, digit: str) -> None: ...
    def bridge(self, a: RtpStream, b: RtpStream) -> None: ...
    def unbridge(self, a: RtpStream) -> None: ...
    def _unwatch(self, stream: RtpStream) -> None: ...
    def _release(self, stream: RtpStream) -> None: ...


_DECODE = {0: ULAW_DECODE, 8: ALAW_DECODE}
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
    """Packets from another address than the SDP's (or the NAT-latched) one (dropped)."""
    ssrc_dropped: int = 0
    """Packets from the right address with another SSRC while the current one is alive."""
    latched: int = 0
    """1 once the stream latched to a NAT address (lines behind NAT only), else 0."""
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
    rtcp_in: int = 0
    """RTCP compound packets received and understood."""
    rtcp_out: int = 0
    far_fraction_lost: float | None = None
    """Loss of OUR audio at the far end over its last report interval (0..1), from RTCP."""
    far_lost: int | None = None
    """Cumulative loss of our packets reported by the far end."""
    far_jitter_ms: float | None = None
    """Jitter of our packets as the far end measures it."""
    rtt_ms: float | None = None
    """Round-trip time from the far end's LSR/DLSR (None until it echoed one of our SRs)."""
    srtp: str = ""
    """SRTP crypto suite in use ("" for plain RTP)."""
    srtp_replayed: int = 0
    """SRTP/SRTCP packets dropped by the replay check (seen before, or too old)."""
    srtp_forged: int = 0
    """SRTP/SRTCP packets dropped because their authentication tag did not match."""


class RtpStream:
    """One RTP leg: a socket, a jitter buffer, a send source. Made by ``MediaEngine.allocate``."""

    def __init__(self, engine: StreamEngine, sock: socket.socket, port: int,
                 rtcp_sock: socket.socket | None = None) -> None:
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
        """Where packets go: ``remote``, or the NAT-latched source."""
        self.ssrc_switch_after = 0.5
        """Seconds the current SSRC must be silent before another one from the same
        address is accepted without a new SDP."""
        self.tag = ""
        """Who this stream belongs to (a call id), for log lines."""
        # the one accepted source (host, port); None until an SDP names it
        self._src_host: str | None = None
        self._src_port: int | None = None
        self._latch_host: str | None = None  # signalling source host (NAT lines only)
        self._latch_open = False
        self._latched = 0
        self._ssrc_in: int | None = None  # SSRC being accepted (None: the next one)
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
        self._prompt: PromptLoop | None = None  # None: silence
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
        self._ssrc_dropped = 0
        self._sending = True  # direction allows sending
        self._receiving = True  # direction allows receiving
        self._max_send_gap = 0.0
        # RTCP (port + 1; None if that port was taken: RTP works without it)
        self._rtcp_sock = rtcp_sock
        self._rtcp_addr: tuple[str, int] | None = None  # latched RTCP source
        self._rtcp_due = 0.0  # loop time of the next report (0: at the first tick)
        self._rtcp_in = self._rtcp_out = self._rtcp_bad = 0
        self._far_sr: tuple[int, float] | None = None  # (NTP mid32, monotonic) of its last SR
        self._far_block: rtcp.ReportBlock | None = None
        self._rtt: float | None = None
        self._sent_since_report = False
        self._srtp: SrtpContext | None = None  # None: plain RTP (see set_srtp)

    # ------------------------------------------------------------ transport
    def _open(self, loop: asyncio.AbstractEventLoop, reader: bool) -> None:
        if reader:
            self._loop = loop
            loop.add_reader(self._sock.fileno(), self._on_readable)
            if self._rtcp_sock is not None:
                loop.add_reader(self._rtcp_sock.fileno(), self._on_rtcp_readable)

    def _on_rtcp_readable(self) -> None:
        sock = self._rtcp_sock
        if self.closed or sock is None:
            return
        for _ in range(8):
            try:
                data, addr = sock.recvfrom(2048)
            except OSError:  # EAGAIN, or an ICMP error: nothing more to read now
                return
            self.rtcp_received(data, addr, time.monotonic())

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
        # RFC 4733 uses a dynamic type (96-127), but we take any the SDP named rather than
        # fail a call over it - except the G.711 types themselves, which would be ambiguous.
        if dtmf_pt is not None and (not isinstance(dtmf_pt, int) or not 0 <= dtmf_pt <= 127
                                    or dtmf_pt in (0, 8)):
            raise MediaError(f"telephone-event payload type must be 0..127 and not 0 or 8, "
                             f"got {dtmf_pt!r}")
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
        self._ssrc_in = None  # a new offer/answer may bring a new source
        if remote != self.remote:
            self.remote = remote
            self.send_addr = remote
            self._rtcp_addr = None
            if remote is not None:  # (None, 0.0.0.0 hold: keep hearing the last address)
                self._src_host, self._src_port = remote
                self._latch_open = self._latch_host is not None

    def set_srtp(self, suite: str | None, *, local_key: bytes = b"",
                 remote_key: bytes = b"") -> None:
        """Protect this stream with SRTP (``suite`` from the SDP, our key and the far
        end's), or go back to plain RTP (``suite`` None). Keys that did not change keep
        the running contexts (a re-INVITE must not reset the replay window or rollover
        counter); new ones start fresh. Raises MediaError for an unknown suite or a key
        of the wrong length."""
        if suite is None:
            if self._srtp is not None:
                self._engine._srtp_streams -= 1
            self._srtp = None
            return
        old = self._srtp
        if old is not None and (old.suite, old.local_key, old.remote_key) == (
                suite, local_key, remote_key):
            return
        from .srtp import SrtpContext  # (plain-RTP deployments never load libsrtp)
        ctx = SrtpContext(suite, local_key=local_key, remote_key=remote_key)
        if old is None:
            self._engine._srtp_streams += 1
        else:  # keep the counts across a re-key
            ctx.replayed, ctx.forged, ctx.malformed = old.replayed, old.forged, old.malformed
        self._srtp = ctx

    def allow_latch(self, host: str, *, tag: str = "") -> None:
        """Line behind NAT: the first RTP packet may come from ``host`` (the signalling
        source's address) on another address than the SDP names; the stream then
        latches there (receive and send). ``tag`` names the call in the log line."""
        self._latch_host = host
        self._latch_open = True
        self.tag = tag or self.tag

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
        sr = self._srtp
        return RtpStats(packets_in=self._packets_in, packets_out=self._packets_out,
                        bytes_in=self._bytes_in, bytes_out=self._bytes_out,
                        lost=self._rstats.lost, late=jb.late, duplicates=jb.duplicates,
                        malformed=self._malformed + (sr.malformed if sr else 0),
                        unexpected_pt=self._unexpected_pt,
                        srtp=sr.suite if sr else "", srtp_replayed=sr.replayed if sr else 0,
                        srtp_forged=sr.forged if sr else 0,
                        ssrc_dropped=self._ssrc_dropped, latched=self._latched,
                        jitter_ms=self._rstats.jitter_ms,
                        max_send_gap_ms=1000.0 * self._max_send_gap,
                        send_errors=self._send_errors, foreign=self._foreign,
                        resyncs=jb.resyncs,
                        jitter_delay_ms=jb.delay / 8.0, rtcp_in=self._rtcp_in,
                        rtcp_out=self._rtcp_out,
                        far_fraction_lost=(None if self._far_block is None
                                           else self._far_block.fraction_lost / 256.0),
                        far_lost=None if self._far_block is None else self._far_block.cumulative_lost,
                        far_jitter_ms=(None if self._far_block is None
                                       else self._far_block.jitter / 8.0),
                        rtt_ms=None if self._rtt is None else 1000.0 * self._rtt)

    def close(self) -> None:
        """Stop sending and receiving, close the socket, return the port. Idempotent."""
        if self.closed:
            return
        self._on_readable()  # what already arrived still goes to the jitter buffer (and
        self.closed = True   # from there into the recording's tail at seal)
        if self.peer is not None:
            self._engine.unbridge(self)
        if self._rtcp_sock is not None:
            dest = self._rtcp_dest()
            if dest is not None:
                bye = rtcp.build_bye(self._ssrc, self._engine.cname)
                try:  # BYE: the far end may stop expecting us at once
                    self._rtcp_sock.sendto(bye if self._srtp is None
                                           else self._srtp.protect_rtcp(bye), dest)
                except OSError:
                    pass
        if self._srtp is not None:
            self._engine._srtp_streams -= 1
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            if self._rtcp_sock is not None:
                self._loop.remove_reader(self._rtcp_sock.fileno())
        self._engine._unwatch(self)
        self._sock.close()
        if self._rtcp_sock is not None:
            self._rtcp_sock.close()
        self._engine._release(self)

    # ------------------------------------------------------------------ RTCP
    def _rtcp_dest(self) -> tuple[str, int] | None:
        if self._rtcp_addr is not None:
            return self._rtcp_addr
        addr = self.send_addr
        return None if addr is None else (addr[0], addr[1] + 1)

    def rtcp_received(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Handle one datagram on the RTCP port (bad ones are counted and dropped)."""
        if addr[0] != self._src_host:
            self._rtcp_bad += 1  # only the host we hear RTP from may report on it
            return
        if self._srtp is not None:
            plain = self._srtp.unprotect_rtcp(data)
            if plain is None:  # counted in the context (replayed / forged / malformed)
                return
            data = plain
        try:
            reports = rtcp.parse(data)
        except RtpError:
            self._rtcp_bad += 1
            return
        self._rtcp_in += 1
        self._rtcp_addr = addr
        for r in reports:
            if r.ntp_mid32 is not None:
                self._far_sr = (r.ntp_mid32, now)
            for b in r.blocks:
                if b.ssrc != self._ssrc:
                    continue
                self._far_block = b
                if b.lsr:
                    rtt = ((rtcp.ntp_mid32(time.time()) - b.lsr - b.dlsr) & 0xFFFFFFFF) / 65536.0
                    if rtt < 60.0:  # else a bogus echo (or clocks stepped): ignore
                        self._rtt = rtt

    def _send_rtcp(self, now: float) -> None:
        """Send a report and schedule the next (5 s, randomised 0.5-1.5x per RFC 3550)."""
        interval = self._engine.rtcp_interval
        self._rtcp_due = now + interval * (0.5 + random.random())
        dest = self._rtcp_dest()
        sock = self._rtcp_sock
        if dest is None or sock is None:
            return
        lsr = dlsr = 0
        if self._far_sr is not None:  # (its arrival was stamped with time.monotonic())
            lsr = self._far_sr[0]
            dlsr = max(0, int((time.monotonic() - self._far_sr[1]) * 65536))
        block = self._rstats.report_block(lsr=lsr, dlsr=dlsr)
        sending = self._sent_since_report
        self._sent_since_report = False
        packet = rtcp.build_report(ssrc=self._ssrc, cname=self._engine.cname, wall=time.time(),
                                   rtp_ts=self._ts if sending else None,
                                   packets=self._packets_out,
                                   octets=self._bytes_out - 12 * self._packets_out, block=block)
        if self._srtp is not None:
            packet = self._srtp.protect_rtcp(packet)
        try:
            sock.sendto(packet, dest)
        except OSError:
            self._send_errors += 1
            return
        self._rtcp_out += 1

    # --------------------------------------------------------------- receive
    def datagram_received(self, data: bytes, addr: tuple[str, int],
                          now: float | None = None, pcm: Pcm | None = None) -> None:
        """Handle one received datagram (never raises for bad input: counted, dropped).

        ``now`` is ``time.monotonic()`` (taken once per batch of datagrams by the reader);
        ``pcm`` is the payload already decoded (the engine decodes a tick's packets in one
        batch), else it is decoded here. On an SRTP stream ``data`` is the SRTP packet.
        """
        if self._srtp is not None:
            plain = self.srtp_unprotect(data, addr)
            if plain is None:
                return
            data = plain
        self._receive(data, addr, now, pcm)

    def srtp_unprotect(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """The plain RTP inside an SRTP datagram from ``addr`` (None: dropped, counted).

        Only a packet from the accepted source (or a NAT line's latch candidate) is
        unprotected: one from anywhere else is returned as it is, for the address check
        to drop and count as ``foreign``; its replayed copy therefore cannot use up the
        replay window of the real source."""
        srtp = self._srtp
        if srtp is None or self.closed:
            return data
        if (addr[1] != self._src_port or addr[0] != self._src_host) and (
                not self._latch_open or addr[0] != self._latch_host):
            return data
        return srtp.unprotect(data)

    def _receive(self, data: bytes, addr: tuple[str, int], now: float | None = None,
                 pcm: Pcm | None = None) -> None:
        """``datagram_received`` for plain RTP (an SRTP packet already unprotected)."""
        if self.closed:
            return
        latch = False
        if addr[1] != self._src_port or addr[0] != self._src_host:
            if not self._latch_open or addr[0] != self._latch_host:
                self._foreign += 1
                if self._foreign == 1:
                    log.warning("rtp.foreign_dropped", port=self.local_port, call_id=self.tag,
                                source=f"{addr[0]}:{addr[1]}",
                                expected=f"{self._src_host}:{self._src_port}")
                return
            latch = True  # a NAT line's first packet from the signalling host: if valid RTP
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
        if ssrc != self._ssrc_in:
            if not self._new_ssrc(ssrc, now):
                return
        if self._latch_open:
            self._latch_open = False  # only the first packet may latch
            if latch:
                self._latch(addr)
        self._packets_in += 1
        self._bytes_in += n
        self.last_rx = now
        self._rstats.update(ssrc, seq, ts, now)
        if table is not None:
            if self._receiving and payload:
                if pcm is None:
                    pcm = table[np.frombuffer(payload, dtype=np.uint8)]
                self._jb.add(ssrc, seq, ts, pcm, (pt, payload))
            return
        try:
            digits = self._dtmf_rx.feed(ts, payload)
        except RtpError:
            self._malformed += 1
            return
        for d in digits:
            self._engine._dtmf(self, d)

    def _new_ssrc(self, ssrc: int, now: float) -> bool:
        """Whether a packet with an SSRC other than the current one is taken (see above)."""
        current, last = self._ssrc_in, self.last_rx
        if current is not None and last is not None and now - last < self.ssrc_switch_after:
            self._ssrc_dropped += 1
            if self._ssrc_dropped == 1:
                log.warning("rtp.ssrc_dropped", port=self.local_port, call_id=self.tag,
                            ssrc=ssrc, current=current)
            return False
        if current is not None:
            log.info("rtp.ssrc_changed", port=self.local_port, call_id=self.tag,
                     ssrc=ssrc, previous=current, silent_s=round(now - (last or now), 3))
        self._ssrc_in = ssrc
        return True

    def _latch(self, addr: tuple[str, int]) -> None:
        """NAT line: hear and answer the address the first packet came from."""
        sdp = f"{self._src_host}:{self._src_port}"
        self._src_host, self._src_port = addr[0], addr[1]
        if self.remote is not None:  # (not before the SDP is known, nor on hold)
            self.send_addr = (addr[0], addr[1])
        self._rtcp_addr = None
        self._latched = 1
        log.info("rtp.nat_latched", port=self.local_port, call_id=self.tag, sdp=sdp,
                 source=f"{addr[0]}:{addr[1]}")

    def _srtp_sent(self, packet: bytes | None, addr: tuple[str, int], size: int) -> None:
        """Send one packet the engine protected for this stream's tick (None: failed)."""
        if packet is None or self.closed:
            self._send_errors += 1
            return
        try:
            self._sock.sendto(packet, addr)
        except OSError:
            self._send_errors += 1
            return
        self._packets_out += 1
        self._bytes_out += size
        self._sent_since_report = True

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
            size = len(packet)
            if self._srtp is not None:  # protected and sent with the tick's other SRTP
                self._engine._srtp_out.append((self, packet, addr))
                return
            try:
                self._sock.sendto(packet, addr)
            except OSError:  # EAGAIN (buffer full), unreachable...: drop, never queue
                self._send_errors += 1
                return
            self._packets_out += 1
            self._bytes_out += size  # RTP bytes (the RTCP octet count), without SRTP's tag
            self._sent_since_report = True
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
        size = len(packet)
        if self._srtp is not None:
            protected = self._srtp.protect(packet)
            if protected is None:  # (counted by the context)
                self._send_errors += 1
                return
            packet = protected
        try:
            self._sock.sendto(packet, addr)
        except OSError:  # EAGAIN (buffer full), unreachable...: drop, never queue
            self._send_errors += 1
            return
        self._packets_out += 1
        self._bytes_out += size
        self._sent_since_report = True
