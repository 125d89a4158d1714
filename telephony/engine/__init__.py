"""The telephony engine: a thin asyncio adapter around the sans-IO SIP core and media.

One UDP socket (:mod:`telephony.transport`), one loop timer scheduled at the core's next
deadline, media through the :mod:`telephony.media` contract. Every inbound call is
answered at once (caller audio is recorded from answer; the caller hears the queue
prompt) and reported as :class:`CallArrived`; handler legs go out through the proxy.
Events reach ``on_event`` synchronously on the loop, in order; commands may be called
from inside ``on_event`` (re-entrancy is handled).

A request from a source that no line trusts (nor a registrar, nor the proxy) and that
belongs to no dialog of ours never reaches the transaction layer: it gets one small
stateless 403 or nothing (``sip.untrusted``, :mod:`telephony.sip.guard`).

Inbound INVITE, in order: 100 Trying; line by Request-URI user (``+``/separators stripped;
a registered line's username also maps) else 404; source in ``trusted_sources`` (address
or CIDR; the registrar for registered lines) else 403; overload (the INVITE waited more
than ``overload_wait`` s between reaching the host and being handled: 503 + Retry-After,
priority-0 lines exempt); ``set_accepting`` / ``max_calls``
(priority-0 lines exempt from ``max_calls``) else 503 + Retry-After; the optional
``admit(IncomingCall)`` hook may refuse with its own status; SDP (400/488 on bad or no
common codec; no SDP = delayed offer); RTP port (503 if none); 200 OK; CallArrived.

Timers: the SIP core's deadlines share one loop timer; each call has one dead-media
guard timer (covering its connected legs); each ringing leg one ring timer. A leg with no
response at all after ``NO_RESPONSE_TIMEOUT`` s fails ``unreachable``.

Construct in a test::

    engine = Engine(settings=SipSettings(port=0), lines=[...], recordings_dir=tmp,
                    on_event=events.append, media_factory=FakeMedia)
    await engine.start(); ...; await engine.stop(drain_timeout=0)
"""

from __future__ import annotations

import asyncio

import structlog

from config.loader import secret
from config.schema import LineSettings
from telephony.api import EngineStats
from telephony.errors import EngineError
from telephony.sip.events import InviteReceived, MessageRefused, RegistrationResult, UaEvent
from telephony.sip.guard import SourceGuard, TokenBucket
from telephony.sip.hop import uri_transport, with_transport
from telephony.sip.message import Request
from telephony.sip.ua import Session, UserAgent
from telephony.sip.uri import parse_uri
from telephony.transport import open_sip_socket

from .base import EngineBase
from .calls import CallsMixin
from .consult import ConsultMixin
from .dialout import DialOutMixin
from .legs import LegsMixin
from .monitor import MonitorMixin
from .recordings import disk_health, disk_stats, find_recording, recording_sealed
from .state import NO_RESPONSE_TIMEOUT, Admit, _Call, _codec_enum, _Leg
from .transports import TransportsMixin

log = structlog.get_logger("telephony.engine")

__all__ = ["NO_RESPONSE_TIMEOUT", "Admit", "Engine"]

REFUSED_LOG_RATE = 5.0
"""``sip.refused`` log lines a second at most (after a burst of ``REFUSED_LOG_BURST``)."""
REFUSED_LOG_BURST = 20.0


class Engine(DialOutMixin, CallsMixin, LegsMixin, MonitorMixin, ConsultMixin, TransportsMixin, EngineBase):
    """SIP signalling + media for inbound calls and handler legs; implements
    :class:`telephony.api.EngineCommands`."""

    _refused_log: TokenBucket | None = None
    _refused_unlogged = 0

    async def start(self) -> None:
        """Start media, bind the SIP socket, report recovered recordings, register lines.

        Raises EngineError when the configuration cannot work (wildcard bind without
        ``public_host``) and OSError when the SIP port is taken; nothing is left running.
        """
        s = self.settings
        self._loop = asyncio.get_running_loop()
        for name, addr in (("bind", s.bind), ("rtp_bind", s.rtp_bind)):
            if addr in ("0.0.0.0", "::") and not s.public_host:
                raise EngineError(f"sip.public_host is required when sip.{name} is {addr}: "
                                  "it goes in Via, Contact and SDP")
        self._codec = _codec_enum()
        self._check_srtp()
        if s.username:  # resolved once: env:/file: secrets are never read per call
            self._leg_credentials = (s.username, secret(s.password, key="sip.password") or "")
        factory = self._media_factory
        if factory is None:
            from telephony.media import MediaEngine
            factory = MediaEngine
        self._media = factory(bind=s.rtp_bind, port_min=s.rtp_port_min, port_max=s.rtp_port_max,
                              ptime=s.ptime, recordings_dir=self.recordings_dir,
                              on_audio=self._on_audio, on_dtmf=self._on_dtmf)
        health = getattr(getattr(self._media, "disk", None), "health", None)
        if health is not None:  # the recordings-disk spool (telephony.media.recording)
            health.spool_limit = s.recording_spool_mb << 20
            health.retry_interval = s.recording_retry_interval
        await self._media.start()
        try:
            preload = getattr(self._media, "preload", None)
            if preload is not None:
                # A missing or unreadable prompt WAV is a start-up error naming the line,
                # not a surprise at the first caller.
                for line in self.lines:
                    try:
                        preload(line.queue_prompt)
                    except Exception as exc:
                        raise EngineError(f"lines[{line.name}].queue_prompt: {exc}") from None
            self._sock, self.sip_port = await open_sip_socket(s.bind, s.port, self._on_datagram)
            ports = await self._start_streams()  # TCP/TLS when configured (.transports)
            if s.proxy:
                uri = parse_uri(s.proxy)
                ip, port = await self._resolve(uri.host, uri.host_port[1])
                transport = uri_transport(uri)
                self._proxy_addr = with_transport((ip, port), transport,
                                                  uri.host if transport == "tls" else "")
                tparam = "" if transport == "udp" else f";transport={transport}"
                self._proxy_route = [f"<sip:{ip}:{port}{tparam};lr>"]
        except BaseException:
            await self._stop_streams()
            if self._sock is not None and self._sock.transport is not None:
                self._sock.transport.close()
            await self._media.stop()
            raise
        self._ua = UserAgent(host=s.public_host or s.bind, port=self.sip_port, domain=s.domain,
                             user_agent=s.user_agent, max_message_bytes=s.max_message_bytes,
                             min_se=s.min_se, ports=ports,
                             guard=SourceGuard(policy=s.untrusted, rate=s.untrusted_rate,
                                               burst=s.untrusted_burst,
                                               trusted=self._known_source))
        self._running = True
        for info in self._media.recover_recordings():
            self._emit(recording_sealed(info, recovered=True))
        self._bye_interrupted()
        for line in self.lines:
            if line.mode == "registered":
                await self._start_registration(line)
        log.info("engine.started", sip_port=self.sip_port, lines=[ln.name for ln in self.lines])
        self._pump()

    async def stop(self, drain_timeout: float = 0.0, *, bye_grace: float = 1.0) -> None:
        """Refuse new calls (503), wait up to ``drain_timeout`` s for calls to end, then
        hang up the rest (CallEnded reason ``shutdown``), unregister, stop media.

        Up to ``bye_grace`` s is spent waiting for the BYEs' answers, so that a lost BYE is
        retransmitted before the socket closes (0: do not wait).
        """
        if not self._running:
            return
        self._priority_max = -1
        if self._calls and drain_timeout > 0:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except TimeoutError:
                pass
        for call in list(self._calls.values()):
            self._end_call(call, by="system", reason="shutdown", send_bye=True)
        assert self._ua is not None
        for reg in self._regs:
            if reg.registered:
                self._ua.unregister(reg, self._now())
        self._pump()
        if bye_grace > 0 and self._ua.requests_in_flight("BYE"):
            # the core's timer keeps retransmitting; _pump sets the event when all are answered
            self._byes_done = asyncio.Event()
            try:
                await asyncio.wait_for(self._byes_done.wait(), bye_grace)
            except TimeoutError:
                log.warning("engine.bye_unanswered", count=self._ua.requests_in_flight("BYE"))
        if self._seal_tasks:
            await asyncio.gather(*list(self._seal_tasks), return_exceptions=True)
        self._running = False
        if self._timer:
            self._timer.cancel()
        await self._media.stop()
        await self._stop_streams()
        if self._sock and self._sock.transport:
            self._sock.transport.close()
        log.info("engine.stopped")

    def _handle(self, ev: UaEvent) -> None:
        if isinstance(ev, InviteReceived):
            try:
                self._on_invite(ev)
            except Exception:  # noqa: BLE001 - never leave a caller without a final answer
                log.exception("engine.invite_failed", sip_call_id=ev.request.call_id)
                if ev.session.state == "incoming" and self._ua is not None:
                    self._ua.respond(ev.session, 500, "Internal error",
                                     headers=[("Retry-After", "1")], now=self._now())
            return
        if isinstance(ev, MessageRefused):
            self._log_refused(ev)
            return
        owner = getattr(ev, "session", None)
        user = owner.user if owner is not None else None
        if isinstance(ev, RegistrationResult):
            (log.info if ev.ok else log.warning)(
                "sip.registration", line=getattr(ev.registration.user, "name", ""),
                ok=ev.ok, status=ev.status, expires=ev.expires)
        elif isinstance(user, _Call):
            self._call_event(user, ev)
        elif isinstance(user, _Leg):
            self._leg_event(user, ev)

    def _known_source(self, ip: str) -> bool:
        """A source we deal with normally: some line's trusted source or registrar, or the
        outbound proxy. Anything else only gets what :mod:`telephony.sip.guard` allows."""
        if self._proxy_addr is not None and ip == self._proxy_addr[0]:
            return True
        return any(self._trusted(line, ip) for line in self.lines)

    def _log_refused(self, ev: MessageRefused) -> None:
        """One structured line per refused datagram, at most ``REFUSED_LOG_RATE`` a second
        (a flood must not fill the disk); the lines left out are counted in the next."""
        now = self._now()
        if self._refused_log is None:
            self._refused_log = TokenBucket.full(REFUSED_LOG_RATE, REFUSED_LOG_BURST, now)
        if not self._refused_log.take(now):
            self._refused_unlogged += 1
            return
        log.warning("sip.refused", source=f"{ev.source[0]}:{ev.source[1]}", kind=ev.kind,
                    reason=ev.reason, status=ev.status, verdict=ev.verdict,
                    unlogged_before=self._refused_unlogged)
        self._refused_unlogged = 0

    async def _start_registration(self, line: LineSettings) -> None:
        assert self._ua is not None
        uri = parse_uri(line.registrar)
        host, port = await self._resolve(uri.host, uri.host_port[1])
        self._registrar_ips[line.name] = {host}
        creds = (line.username, secret(line.password, key=f"lines.{line.name}.password") or "") \
            if line.username else None
        transport = uri_transport(uri)
        registrar = (f"sips:{host}:{port}" if uri.scheme == "sips" else
                     f"sip:{host}:{port}" + ("" if transport == "udp" else f";transport={transport}"))
        reg = self._ua.register(registrar=registrar, user=line.username or line.name,
                                expires=line.register_expires, credentials=creds, owner=line,
                                now=self._now())
        self._regs.append(reg)

    def _bye_interrupted(self) -> None:
        """BYE every dialog a crash left up (the dialog journal), before taking calls.

        Each goes through its own route set, like any in-dialog request; the core
        retransmits it until answered. The journal is cleared as the BYEs leave: a second
        crash before their answers at worst leaves those far ends to hang up themselves.
        """
        if self._journal is None or self._ua is None:
            return
        now = self._now()
        for rec in self._journal.load():
            try:
                dialog = rec.dialog()
                session = Session("uac" if rec.role == "handler" else "uas",
                                  Request(method="INVITE", uri=dialog.remote_target),
                                  state="confirmed", dialog=dialog, local_tag=rec.local_tag)
                self._ua.bye(session, now)
                self.interrupted_byes += 1
                log.warning("engine.interrupted_dialog_bye", key=rec.key, role=rec.role,
                            sip_call_id=rec.call_id, target=rec.remote_target)
            except Exception:  # noqa: BLE001 - one bad entry must not stop the rest
                log.exception("engine.interrupted_dialog_bye_failed", key=rec.key)
            self._journal.remove(rec.key)

    def health(self) -> list[tuple[str, str]]:
        """What is wrong now, as ``(component, reason)`` pairs; ``[]`` when healthy.

        Today: the recordings disk (full, read-only or failing while recordings spool) and
        the SIP TLS certificate (expired or expiring within 14 days)."""
        return disk_health(self._media) + self.transport_health()

    def recover_recording(self, call_id: str) -> bool:
        """Report (RecordingSealed, recovered) a recording whose files were sealed but whose
        report a crash may have lost; False when it has no sealed file. Hashes the files:
        for start-up, not the call path."""
        info = find_recording(self.recordings_dir, call_id)
        if info is None:
            return False
        self._emit(recording_sealed(info, recovered=True))
        return True

    @property
    def registrations(self) -> dict[str, bool]:
        """Line name -> currently registered (registered-mode lines only)."""
        return {getattr(r.user, "name", ""): r.registered for r in self._regs}

    @property
    def stats(self) -> EngineStats:
        """Counters for /metrics (RTP figures: live streams plus every closed one)."""
        st = self._stats
        st.calls_active = len(self._calls)
        st.legs_active = len(self._legs)
        r = self._retired
        pin, pout, lost, late = r["packets_in"], r["packets_out"], r["lost"], r["late"]
        foreign, ssrc, latched = r["foreign"], r["ssrc_dropped"], r["latched"]
        replayed, forged, secure = r["srtp_replayed"], r["srtp_forged"], 0
        gap = st.max_send_gap_ms
        for call, leg in self._streams.values():
            rs = getattr((leg or call).stream, "stats", None)
            replayed += getattr(rs, "srtp_replayed", 0)
            forged += getattr(rs, "srtp_forged", 0)
            secure += bool(getattr(rs, "srtp", ""))
            pin += getattr(rs, "packets_in", 0)
            pout += getattr(rs, "packets_out", 0)
            lost += getattr(rs, "lost", 0)
            late += getattr(rs, "late", 0)
            foreign += getattr(rs, "foreign", 0)
            ssrc += getattr(rs, "ssrc_dropped", 0)
            latched += getattr(rs, "latched", 0)
            gap = max(gap, float(getattr(rs, "max_send_gap_ms", 0.0)))
        st.rtp_packets_in, st.rtp_packets_out, st.rtp_lost, st.rtp_late = pin, pout, lost, late
        st.rtp_foreign, st.rtp_ssrc_dropped, st.rtp_nat_latched = foreign, ssrc, latched
        st.rtp_srtp_replayed, st.rtp_srtp_forged, st.srtp_streams = replayed, forged, secure
        st.rtp_ports_reused_early = int(getattr(self._media, "ports_reused_early", 0))
        st.max_send_gap_ms = gap
        disk = getattr(self._media, "disk", None)
        st.recording_backlog = int(getattr(disk, "queued", 0))
        disk_stats(self._media, st)
        return st

    @property
    def sip_counters(self) -> dict[str, int]:
        """SIP counters for /metrics: requests, responses, malformed, dropped, keepalives,
        retransmissions_absorbed, forked_2xx_hung_up, handler_errors (bugs caught at the
        socket), overload_rejected (new INVITEs answered 503 because datagrams waited over
        ``overload_wait``), kernel_drops (datagrams lost on a full receive buffer),
        max_rx_wait_ms (longest wait of a datagram before it was handled), rx_deferred
        (wake-ups whose handling budget ran out, rest left to the next loop iteration),
        max_rx_wakeup_ms (longest handling in one wake-up); malformed_<kind> (parse faults
        by kind: bad_content_length, bad_bytes, too_many_headers, missing_header, bad_cseq,
        bad_start_line, bad_request_uri, too_large...); untrusted_answered,
        untrusted_dropped, untrusted_repeat_dropped, untrusted_rate_limited,
        untrusted_too_large (requests from untrusted sources, see telephony.sip.guard);
        stream_* (TCP/TLS connections: open, accepted, refused over the limits,
        tls_handshakes, tls_failures, framing_faults, idle_closed, connect_failures) and
        tls_cert_days_left / tls_cert_not_after (see telephony.engine.transports)."""
        out = dict(self._ua.counters) if self._ua else {}
        sock = self._sock
        out["handler_errors"] = sock.handler_errors if sock else 0
        out["overload_rejected"] = self._shed
        out["kernel_drops"] = sock.kernel_drops if sock else 0
        out["max_rx_wait_ms"] = int((sock.max_wait if sock else 0.0) * 1000)
        out["rx_deferred"] = sock.deferred if sock else 0
        out["max_rx_wakeup_ms"] = int((sock.max_wakeup if sock else 0.0) * 1000)
        out.update(self.transport_counters())
        return out

