"""The telephony engine: a thin asyncio adapter around the sans-IO SIP core and media.

One UDP socket (:mod:`telephony.transport`), one loop timer scheduled at the core's next
deadline, media through the :mod:`telephony.media` contract. Every inbound call is
answered at once (caller audio is recorded from answer; the caller hears the queue
prompt) and reported as :class:`CallArrived`; handler legs go out through the proxy.
Events reach ``on_event`` synchronously on the loop, in order; commands may be called
from inside ``on_event`` (re-entrancy is handled).

Inbound INVITE, in order: 100 Trying; line by Request-URI user (``+``/separators stripped;
a registered line's username also maps) else 404; source in ``trusted_sources`` (address
or CIDR; the registrar for registered lines) else 403; ``set_accepting`` / ``max_calls``
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
import enum
import ipaddress
import itertools
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from config.loader import secret
from config.schema import LineSettings
from config.telephony import SipSettings

from . import api
from .api import (
    CallArrived,
    CallCancelled,
    CallEnded,
    CallRejected,
    Dtmf,
    EngineStats,
    HoldChanged,
    IncomingCall,
    LegAnswered,
    LegEnded,
    LegFailed,
    LegRinging,
    RecordingSealed,
    SilentCallFlag,
    TelephonyEvent,
)
from .errors import EngineError, SdpError, SipError
from .sip import sdp
from .sip.dialog import resolve
from .sip.events import (
    AckTimeout,
    Answered,
    ByeReceived,
    Failed,
    InfoReceived,
    InviteCancelled,
    InviteReceived,
    Progress,
    RegistrationResult,
    ReInviteReceived,
    SessionConfirmed,
    UaEvent,
)
from .sip.inbound import caller_identity, info_digit
from .sip.inbound import location as inbound_location
from .sip.message import Request, body_parts
from .sip.register import Registration
from .sip.ua import Session, UserAgent
from .sip.uri import is_ip, parse_uri
from .transport import SipProtocol, open_sip_socket

log = structlog.get_logger(__name__)

Admit = Callable[[IncomingCall], "tuple[int, str] | None"]
"""Optional admission hook: None accepts, ``(status, reason)`` rejects (e.g. 486)."""

_FAIL_REASON = {486: "busy", 600: "busy", 603: "rejected", 408: "unreachable",
                480: "unreachable", 404: "unreachable", 503: "unreachable", 487: "cancelled"}


NO_RESPONSE_TIMEOUT = 4.0
"""A leg whose INVITE got no response at all (not even 100 Trying) in this many seconds
is reported ``unreachable`` (RFC 3261's 32 s Timer B is far too slow for a control room;
a proxy or phone on the LAN answers 100 Trying within milliseconds)."""


_RINGING = ("calling", "trying", "ringing")
"""Leg states before a final response."""


class _FallbackCodec(enum.Enum):
    """Same values as ``telephony.media.Codec`` while that package is absent."""

    PCMU = 0
    PCMA = 8


def _codec_enum() -> Any:
    try:
        from telephony.media import Codec
    except ImportError:
        return _FallbackCodec
    return Codec


@dataclass(eq=False)
class _SdpState:
    """Our side of one SDP session: o= id/version and the last body we sent (RFC 3264 §8:
    the version changes only when the description does)."""

    session_id: int
    version: int = 1
    last: bytes = b""

    def encode(self, build: Callable[[int], sdp.SessionDescription]) -> bytes:
        body = build(self.version).encode()
        if self.last and _without_origin(body) != _without_origin(self.last):
            self.version += 1
            body = build(self.version).encode()
        self.last = body
        return body


def _without_origin(body: bytes) -> bytes:
    return b"\n".join(ln for ln in body.split(b"\n") if not ln.startswith(b"o="))


def _play(stream: Any, prompt: str) -> None:
    """Play a prompt; a missing/bad WAV falls back to the tone rather than failing the call."""
    try:
        stream.play(prompt)
    except Exception:  # noqa: BLE001 - MediaError, OSError...
        log.exception("media.prompt_failed", prompt=prompt)
        if prompt != "tone":
            stream.play("tone")


class _NoRecording:
    """Stands in when a recording could not be created (logged as an error)."""

    def attach_caller(self, stream: Any) -> None:
        pass

    def attach_handler(self, stream: Any) -> None:
        pass


@dataclass(eq=False)
class _Leg:
    leg_id: str
    call: _Call
    session: Session
    stream: Any
    state: str = "calling"
    """calling (INVITE sent), trying (100 received), ringing (18x), answered, ended"""
    reported: bool = False
    """A final outcome (LegFailed/LegEnded) was already emitted."""
    timer: asyncio.TimerHandle | None = None
    on_hold: bool = False
    last_signal: float = 0.0
    sdp: _SdpState = field(default_factory=lambda: _SdpState(0))
    codec: str = ""


@dataclass(eq=False)
class _Call:
    call_id: str
    line: LineSettings
    session: Session
    stream: Any
    recording: Any
    caller: str
    codec: str
    invite_at: float
    last_signal: float
    prompt: str
    log: Any
    legs: dict[str, _Leg] = field(default_factory=dict)
    bridged: _Leg | None = None
    held_by_handler: bool = False
    on_hold: bool = False
    sdp: _SdpState = field(default_factory=lambda: _SdpState(0))
    guard: asyncio.TimerHandle | None = None
    last_digit: tuple[str, float] = ("", 0.0)
    silent_flagged: bool = False
    awaiting_answer: bool = False
    """Delayed offer: our 200 carried the offer, the ACK carries the answer."""


class Engine:
    """SIP signalling + media for inbound calls and handler legs; implements
    :class:`telephony.api.EngineCommands`."""

    def __init__(self, *, settings: SipSettings, lines: list[LineSettings], recordings_dir: Path,
                 on_event: Callable[[TelephonyEvent], None],
                 on_audio: Callable[[api.AudioFrame], None] | None = None,
                 media_factory: Callable[..., Any] | None = None,
                 admit: Admit | None = None) -> None:
        """``media_factory`` defaults to :class:`telephony.media.MediaEngine` and is called
        with its keyword arguments (tests pass a fake); ``admit`` may refuse a call after
        the engine's own checks by returning ``(status, reason)``."""
        self.settings = settings
        self.lines = list(lines)
        self.recordings_dir = Path(recordings_dir)
        self._on_event = on_event
        self._on_audio = on_audio
        self._media_factory = media_factory
        self._admit = admit
        self.sip_port = 0
        """Actual bound SIP port (after start)."""
        self._by_number: dict[str, LineSettings] = {}
        for line in self.lines:
            for n in line.numbers:
                self._by_number[n.lstrip("+")] = line
            if line.mode == "registered" and line.username:
                self._by_number.setdefault(line.username, line)
        self._ua: UserAgent | None = None
        self._sock: SipProtocol | None = None
        self._media: Any = None
        self._codec: Any = _FallbackCodec
        self._calls: dict[str, _Call] = {}
        self._legs: dict[str, _Leg] = {}
        self._streams: dict[int, tuple[_Call, _Leg | None]] = {}
        self._regs: list[Registration] = []
        self._registrar_ips: dict[str, set[str]] = {}
        self._trusted_nets: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._priority_max: int | None = None
        self._proxy_route: list[str] = []
        self._proxy_addr: tuple[str, int] | None = None
        self._ids = itertools.count(1)
        self._stats = EngineStats()
        self._retired = {"packets_in": 0, "packets_out": 0, "lost": 0, "late": 0}
        """RTP counters of streams already closed (stats stay monotonic)."""
        self._drained: asyncio.Event | None = None
        self._seal_tasks: set[asyncio.Task[None]] = set()
        self._byes_done: asyncio.Event | None = None
        self._leg_credentials: tuple[str, str] | None = None
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------

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
        if s.username:  # resolved once: env:/file: secrets are never read per call
            self._leg_credentials = (s.username, secret(s.password, key="sip.password") or "")
        factory = self._media_factory
        if factory is None:
            from telephony.media import MediaEngine
            factory = MediaEngine
        self._media = factory(bind=s.rtp_bind, port_min=s.rtp_port_min, port_max=s.rtp_port_max,
                              ptime=s.ptime, recordings_dir=self.recordings_dir,
                              on_audio=self._on_audio, on_dtmf=self._on_dtmf)
        await self._media.start()
        try:
            self._sock, self.sip_port = await open_sip_socket(s.bind, s.port, self._on_datagram)
            if s.proxy:
                uri = parse_uri(s.proxy)
                self._proxy_addr = await self._resolve(uri.host, uri.host_port[1])
                self._proxy_route = [f"<sip:{self._proxy_addr[0]}:{self._proxy_addr[1]};lr>"]
        except BaseException:
            if self._sock is not None and self._sock.transport is not None:
                self._sock.transport.close()
            await self._media.stop()
            raise
        self._ua = UserAgent(host=s.public_host or s.bind, port=self.sip_port, domain=s.domain,
                             user_agent=s.user_agent, max_message_bytes=s.max_message_bytes)
        self._running = True
        for info in self._media.recover_recordings():
            self._emit(RecordingSealed(at=time.time(), call_id=info.call_id, path=info.path,
                                       sha256=info.sha256, duration=info.duration,
                                       bytes=info.bytes, recovered=True))
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
        if self._sock and self._sock.transport:
            self._sock.transport.close()
        log.info("engine.stopped")

    # -- plumbing ----------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time()

    async def _resolve(self, host: str, port: int) -> tuple[str, int]:
        if host == "localhost":
            return "127.0.0.1", port
        if is_ip(host):
            return host, port
        infos = await self._loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
        return str(infos[0][4][0]), port

    def _emit(self, event: TelephonyEvent) -> None:
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - a consumer bug must not break signalling
            log.exception("engine.on_event_failed", event_type=type(event).__name__)

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self._running or self._ua is None:
            return
        self._ua.receive(data, addr, self._now())
        self._pump()

    def _flush(self) -> None:
        assert self._ua is not None and self._sock is not None
        for data, addr in self._ua.datagrams_to_send():
            self._sock.send(data, addr)

    def _pump(self) -> None:
        """Send what the core produced, handle its events, re-arm the timer."""
        if self._pumping or self._ua is None:
            return
        self._pumping = True
        try:
            while True:
                self._flush()
                events = self._ua.events()
                if not events:
                    break
                for ev in events:
                    try:
                        self._handle(ev)
                    except Exception:  # noqa: BLE001 - one bad call must not stop the rest
                        log.exception("engine.event_failed", event_type=type(ev).__name__)
                    self._flush()
        finally:
            self._pumping = False
        self._rearm()
        if self._byes_done is not None and not self._ua.requests_in_flight("BYE"):
            self._byes_done.set()

    def _rearm(self) -> None:
        assert self._ua is not None
        d = self._ua.next_deadline()
        if d == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, d
        if d is not None and self._running:
            self._timer = self._loop.call_at(d, self._on_timer)

    def _on_timer(self) -> None:
        assert self._ua is not None
        now = max(self._now(), self._timer_at or 0.0)
        self._timer = self._timer_at = None
        self._ua.handle_timers(now)
        self._pump()

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

    # -- inbound calls -----------------------------------------------------------------

    def _reject(self, session: Session, line: LineSettings | None, dialled: str, caller: str,
                status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        assert self._ua is not None
        self._ua.respond(session, status, reason, headers=headers or [], now=self._now())
        self._stats.rejected[status] = self._stats.rejected.get(status, 0) + 1
        log.info("call.rejected", line=line.name if line else None, dialled=dialled,
                 status=status, reason=reason)
        self._emit(CallRejected(at=time.time(), line=line.name if line else None,
                                dialled=dialled, caller=caller, status=status, reason=reason))

    def _on_invite(self, ev: InviteReceived) -> None:
        assert self._ua is not None
        req, session, now = ev.request, ev.session, self._now()
        invite_at = time.time()
        self._stats.invites += 1
        dialled = req.uri.number or req.to.uri.number
        caller, display = caller_identity(req)
        line = self._by_number.get(dialled)
        if line is None:
            self._reject(session, None, dialled, caller, 404, "Unknown number")
            return
        source_ip = ev.source[0]
        if not self._trusted(line, source_ip):
            self._reject(session, line, dialled, caller, 403, "Source not trusted")
            return
        if (self._priority_max is not None and line.priority > self._priority_max) or (
                line.priority > 0 and len(self._calls) >= self.settings.max_calls):
            self._reject(session, line, dialled, caller, 503, "Overloaded",
                         [("Retry-After", str(self.settings.retry_after))])
            return
        parts = body_parts(req)
        location = inbound_location(req)
        incoming = IncomingCall(line=line.name, dialled=dialled, caller=caller,
                                display_name=display, source=f"{ev.source[0]}:{ev.source[1]}",
                                location=location)
        if self._admit is not None:
            verdict = self._admit(incoming)
            if verdict is not None:
                self._reject(session, line, dialled, caller, verdict[0], verdict[1])
                return
        offer_body = parts.get("application/sdp")
        offer = None
        if offer_body:
            try:
                offer = sdp.parse_sdp(offer_body)
            except SdpError as exc:
                self._reject(session, line, dialled, caller, exc.status, exc.reason)
                return
        try:
            stream = self._media.allocate()
        except Exception as exc:  # noqa: BLE001 - MediaError: port pool exhausted
            self._reject(session, line, dialled, caller, 503, str(exc) or "No media port",
                         [("Retry-After", str(self.settings.retry_after))])
            return
        call_id = f"c{next(self._ids)}-{secrets.token_hex(3)}"
        sdp_state = _SdpState(secrets.randbelow(2**31))
        if offer is None:
            # delayed offer (RFC 3261 §13.2.1): we offer in the 200, the ACK answers
            body = sdp.offer(codecs=list(self.settings.codecs), address=self._rtp_host(),
                             port=stream.local_port, ptime=self.settings.ptime,
                             session_id=sdp_state.session_id)
            neg = None
            codec: str = self.settings.codecs[0]
        else:
            try:
                body, neg = sdp.answer(offer, codecs=list(self.settings.codecs),
                                       address=self._rtp_host(), port=stream.local_port,
                                       ptime=self.settings.ptime,
                                       session_id=sdp_state.session_id, version=1)
            except SdpError as exc:
                self._close_stream(stream)
                self._reject(session, line, dialled, caller, exc.status, exc.reason)
                return
            self._configure(stream, neg)
            codec = neg.codec
        try:
            recording: Any = self._media.create_recording(call_id)
        except Exception:  # noqa: BLE001 - a recording fault must not refuse a 999 call
            log.exception("recording.create_failed", call_id=call_id)
            recording = _NoRecording()
        recording.attach_caller(stream)
        _play(stream, line.queue_prompt)
        sdp_state.last = body.encode()
        self._ua.respond(session, 200, body=sdp_state.last, now=now)
        self._flush()  # the 200 leaves before any consumer code runs
        call = _Call(call_id=call_id, line=line, session=session, stream=stream,
                     recording=recording, caller=caller, codec=codec, invite_at=invite_at,
                     last_signal=now, prompt=line.queue_prompt,
                     log=log.bind(call_id=call_id, line=line.name),
                     on_hold=neg.on_hold if neg else False, sdp=sdp_state,
                     awaiting_answer=neg is None)
        session.user = call
        self._calls[call_id] = call
        self._streams[id(stream)] = (call, None)
        self._arm_guard(call)
        call.log.info("call.answered", caller=caller, dialled=dialled, codec=codec,
                      sip_call_id=req.call_id, source=incoming.source)
        self._emit(CallArrived(at=time.time(), call_id=call_id, line=line.name, dialled=dialled,
                               caller=caller, display_name=display, source=incoming.source,
                               sip_call_id=req.call_id, codec=codec, location=location,
                               invite_at=invite_at))

    def _trusted(self, line: LineSettings, ip: str) -> bool:
        """Source check for a line: exact addresses or CIDR blocks (``10.0.0.0/24``), plus
        the registrar's address for registered lines."""
        if ip in self._registrar_ips.get(line.name, set()):
            return True
        nets = self._trusted_nets.get(line.name)
        if nets is None:
            nets = []
            for src in line.trusted_sources:
                try:
                    nets.append(ipaddress.ip_network(src, strict=False))
                except ValueError:
                    log.warning("engine.bad_trusted_source", line=line.name, source=src)
            self._trusted_nets[line.name] = nets
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in nets)

    def _rtp_host(self) -> str:
        s = self.settings
        return s.public_host or s.rtp_bind

    def _close_stream(self, stream: Any) -> None:
        """Close a stream, keeping its counters in the engine's running totals."""
        rs = getattr(stream, "stats", None)
        for k in self._retired:
            self._retired[k] += getattr(rs, k, 0)
        gap = float(getattr(rs, "max_send_gap_ms", 0.0) or 0.0)
        self._stats.max_send_gap_ms = max(self._stats.max_send_gap_ms, gap)
        stream.close()

    def _configure(self, stream: Any, neg: sdp.Negotiated) -> None:
        stream.configure(remote=neg.remote, codec=self._codec[neg.codec], dtmf_pt=neg.dtmf_pt,
                         ptime=neg.ptime)
        stream.set_direction(neg.direction)

    def _call_event(self, call: _Call, ev: UaEvent) -> None:
        call.last_signal = self._now()
        if isinstance(ev, ByeReceived):
            self._end_call(call, by="caller", reason="bye", send_bye=False)
        elif isinstance(ev, AckTimeout):
            self._end_call(call, by="system", reason="no ACK for 200 OK", send_bye=False)
        elif isinstance(ev, InviteCancelled):
            self._end_call(call, by="caller", reason="cancelled", send_bye=False)
            self._emit(CallCancelled(at=time.time(), call_id=call.call_id, line=call.line.name,
                                     caller=call.caller))
        elif isinstance(ev, ReInviteReceived):
            on_hold = self._reinvite(call.session, call.stream, call.sdp, call.codec, ev.request)
            if on_hold is not None and on_hold != call.on_hold:
                call.on_hold = on_hold
                self._emit(HoldChanged(at=time.time(), call_id=call.call_id, on_hold=on_hold,
                                       by="caller"))
        elif isinstance(ev, InfoReceived):
            digit = info_digit(ev.request)
            if digit:
                self._digit(call, None, digit)
        elif isinstance(ev, SessionConfirmed) and call.awaiting_answer:
            self._delayed_answer(call, ev.request)

    def _delayed_answer(self, call: _Call, ack: Request | None) -> None:
        """Read the SDP answer in the ACK after a delayed-offer INVITE; a bad one ends the call."""
        call.awaiting_answer = False
        body = body_parts(ack).get("application/sdp") if ack is not None else None
        try:
            if not body:
                raise SdpError(488, "ACK without SDP answer")
            neg = sdp.accept_answer(sdp.parse_sdp(body), codecs=list(self.settings.codecs),
                                    ptime=self.settings.ptime)
        except SdpError as exc:
            self._end_call(call, by="system", reason=f"bad SDP answer in ACK: {exc.reason}",
                           send_bye=True)
            return
        self._configure(call.stream, neg)
        call.codec = neg.codec

    def _reinvite(self, session: Session, stream: Any, st: _SdpState, codec: str,
                  req: Request) -> bool | None:
        """Answer a re-INVITE (caller or handler leg); returns the peer's hold state, or
        None when there was no offer to apply or it was refused."""
        assert self._ua is not None
        now = self._now()
        body = body_parts(req).get("application/sdp")
        host, ptime = self._rtp_host(), self.settings.ptime
        try:
            if not body:
                # offerless re-INVITE (session refresh): offer our current media again
                offer = st.encode(lambda v: sdp.offer(codecs=[codec], address=host,
                                                      port=stream.local_port, ptime=ptime,
                                                      session_id=st.session_id, version=v))
                self._ua.respond_reinvite(session, 200, body=offer, now=now)
                return None
            remote = sdp.parse_sdp(body)
            _, neg = sdp.answer(remote, codecs=list(self.settings.codecs), address=host,
                                port=stream.local_port, ptime=ptime, session_id=st.session_id,
                                version=st.version)
        except SdpError as exc:
            self._ua.respond_reinvite(session, exc.status, exc.reason, now=now)
            return None
        answer = st.encode(lambda v: sdp.answer(
            remote, codecs=list(self.settings.codecs), address=host, port=stream.local_port,
            ptime=ptime, session_id=st.session_id, version=v)[0])
        self._configure(stream, neg)
        self._ua.respond_reinvite(session, 200, body=answer, now=now)
        return neg.on_hold

    def _end_call(self, call: _Call, *, by: api.Party, reason: str, send_bye: bool) -> None:
        if call.call_id not in self._calls:
            return
        assert self._ua is not None
        now = self._now()
        del self._calls[call.call_id]
        if call.guard:
            call.guard.cancel()
        for leg in list(call.legs.values()):
            self._drop_leg(leg, by="caller" if by == "caller" else "system")
        if call.bridged is not None:
            self._media.unbridge(call.stream)
        if send_bye:
            self._ua.bye(call.session, now)
        self._streams.pop(id(call.stream), None)
        self._close_stream(call.stream)
        call.log.info("call.ended", by=by, reason=reason)
        self._emit(CallEnded(at=time.time(), call_id=call.call_id, by=by, reason=reason))
        # sealing hashes the whole file: off the loop when the media layer offers it
        task = asyncio.get_running_loop().create_task(self._seal(call))
        self._seal_tasks.add(task)
        task.add_done_callback(self._seal_tasks.discard)
        if not self._calls and self._drained is not None:
            self._drained.set()

    async def _seal(self, call: _Call) -> None:
        rec = call.recording
        if isinstance(rec, _NoRecording):
            return
        try:
            info = await rec.seal_async() if hasattr(rec, "seal_async") else rec.seal()
        except Exception:  # noqa: BLE001 - a disk error must not leave the call half-ended
            call.log.exception("recording.seal_failed")
            return
        self._emit(RecordingSealed(at=time.time(), call_id=call.call_id, path=info.path,
                                   sha256=info.sha256, duration=info.duration,
                                   bytes=info.bytes, recovered=False))

    @staticmethod
    def _activity(last_signal: float, stream: Any) -> float:
        return max(last_signal, stream.last_rx or 0.0)

    def _arm_guard(self, call: _Call) -> None:
        """One loop timer per call at the earliest instant the call or a connected leg
        could be declared dead (no RTP and no signalling for dead_call_timeout)."""
        timeout, now = self.settings.dead_call_timeout, self._now()
        # a held party legitimately sends no RTP (inactive/sendonly): not checked while held
        deadlines = [now + timeout if call.on_hold
                     else self._activity(call.last_signal, call.stream) + timeout]
        deadlines += [self._activity(leg.last_signal, leg.stream) + timeout
                      for leg in call.legs.values() if leg.state == "answered" and not leg.on_hold]
        call.guard = self._loop.call_later(max(0.05, min(deadlines) - now), self._check_guard, call)

    def _check_guard(self, call: _Call) -> None:
        if call.call_id not in self._calls:
            return
        timeout, now = self.settings.dead_call_timeout, self._now()
        reason = f"dead-call: no RTP or signalling for {timeout:g} s"
        for leg in list(call.legs.values()):
            if (leg.state == "answered" and not leg.on_hold
                    and now - self._activity(leg.last_signal, leg.stream) >= timeout):
                call.log.warning("leg.dead", leg_id=leg.leg_id, reason=reason)
                self._drop_leg(leg, by="system")
        if not call.on_hold and now - self._activity(call.last_signal, call.stream) >= timeout:
            self._end_call(call, by="system", send_bye=True, reason=reason)
        else:
            self._arm_guard(call)
        self._pump()

    # -- handler legs ------------------------------------------------------------------

    def _call(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            raise EngineError(f"unknown call_id {call_id!r}")
        return call

    def offer(self, call_id: str, handler_uri: str, *, timeout: float,
              caller_display: str = "") -> str:
        """Ring a handler's phone for this call (through the proxy); returns the leg_id."""
        assert self._ua is not None
        call = self._call(call_id)
        leg_id = f"l{next(self._ids)}-{secrets.token_hex(3)}"
        try:
            target = parse_uri(handler_uri)
        except SipError as exc:
            raise EngineError(f"bad handler URI {handler_uri!r}: {exc.reason}") from None
        if not self._proxy_addr and resolve(target, ("", 0))[0] == "":
            raise EngineError(f"handler URI host must be an IP address without a proxy: {handler_uri!r}")
        try:
            stream = self._media.allocate()
        except Exception as exc:  # noqa: BLE001 - MediaError: port pool exhausted
            raise EngineError(f"cannot allocate RTP for leg: {exc}") from exc
        sdp_state = _SdpState(secrets.randbelow(2**31))
        off = sdp.offer(codecs=list(self.settings.codecs), address=self._rtp_host(),
                        port=stream.local_port, ptime=self.settings.ptime,
                        session_id=sdp_state.session_id)
        sdp_state.last = off.encode()
        from_user = call.caller if call.caller.isalnum() else "controlroom"
        session = self._ua.invite(handler_uri, from_user=from_user, from_display=caller_display,
                                  routes=self._proxy_route, dest=self._proxy_addr,
                                  body=sdp_state.last, credentials=self._leg_credentials, now=self._now())
        leg = _Leg(leg_id, call, session, stream, sdp=sdp_state)
        session.user = leg
        _play(stream, "silence")
        call.legs[leg_id] = leg
        self._legs[leg_id] = leg
        self._streams[id(stream)] = (call, leg)
        ring_until = self._now() + timeout
        leg.timer = self._loop.call_later(min(timeout, NO_RESPONSE_TIMEOUT), self._leg_timeout,
                                          leg, ring_until)
        call.log.info("leg.offered", leg_id=leg_id, handler=handler_uri)
        self._pump()
        return leg_id

    def _leg_timeout(self, leg: _Leg, ring_until: float) -> None:
        if leg.state == "calling":
            # not even 100 Trying: the proxy/phone is not there (or ICMP was swallowed)
            self._fail_leg(leg, "unreachable", 408)
            self._pump()
        elif leg.state in ("trying", "ringing"):
            left = ring_until - self._now()
            if left > 0.001:
                leg.timer = self._loop.call_later(left, self._leg_timeout, leg, ring_until)
                return
            self._fail_leg(leg, "no-answer" if leg.state == "ringing" else "unreachable", 0)
            self._pump()

    def cancel_offer(self, leg_id: str) -> None:
        """Stop ringing a handler (CANCEL); LegFailed(cancelled) follows at once.

        A leg that was already answered (the offer raced the answer) is hung up with BYE
        and reported as LegEnded(by='system'). Unknown or ended legs are ignored.
        """
        leg = self._legs.get(leg_id)
        if leg is None:
            return
        if leg.state in _RINGING:
            self._fail_leg(leg, "cancelled", 0)
        else:
            self._drop_leg(leg, by="system")
        self._pump()

    def _fail_leg(self, leg: _Leg, reason: str, status: int) -> None:
        assert self._ua is not None
        self._ua.cancel(leg.session, self._now())
        self._close_leg(leg)
        if not leg.reported:
            leg.reported = True
            leg.call.log.info("leg.failed", leg_id=leg.leg_id, reason=reason, status=status)
            self._emit(LegFailed(at=time.time(), call_id=leg.call.call_id, leg_id=leg.leg_id,
                                 reason=reason, status=status))  # type: ignore[arg-type]

    def _close_leg(self, leg: _Leg) -> None:
        if leg.state == "ended":
            return
        leg.state = "ended"
        if leg.timer:
            leg.timer.cancel()
        call = leg.call
        if call.bridged is leg:
            self._media.unbridge(call.stream)
            call.recording.attach_handler(None)
            call.bridged = None
            if call.call_id in self._calls:
                _play(call.stream, call.prompt)
        self._streams.pop(id(leg.stream), None)
        self._close_stream(leg.stream)
        call.legs.pop(leg.leg_id, None)
        self._legs.pop(leg.leg_id, None)

    def _drop_leg(self, leg: _Leg, *, by: api.Party) -> None:
        """End a leg in any state from our side (BYE if answered, else CANCEL)."""
        assert self._ua is not None
        if leg.state == "answered":
            self._ua.bye(leg.session, self._now())
            self._close_leg(leg)
            if not leg.reported:
                leg.reported = True
                self._emit(LegEnded(at=time.time(), call_id=leg.call.call_id, leg_id=leg.leg_id,
                                    by=by))
        elif leg.state in _RINGING:
            self._fail_leg(leg, "cancelled", 0)

    def _leg_event(self, leg: _Leg, ev: UaEvent) -> None:
        assert self._ua is not None
        call = leg.call
        leg.last_signal = self._now()
        if isinstance(ev, Progress):
            if ev.response.status == 100:
                if leg.state == "calling":
                    leg.state = "trying"
            elif leg.state in ("calling", "trying"):
                leg.state = "ringing"
                self._emit(LegRinging(at=time.time(), call_id=call.call_id, leg_id=leg.leg_id))
        elif isinstance(ev, Answered):
            if leg.state not in _RINGING:
                self._ua.bye(leg.session, self._now())  # answered after we gave up: hang up
                return
            try:
                body = body_parts(ev.response).get("application/sdp")
                if not body:
                    raise SdpError(488, "2xx without SDP answer")
                neg = sdp.accept_answer(sdp.parse_sdp(body), codecs=list(self.settings.codecs),
                                        ptime=self.settings.ptime)
            except SdpError as exc:
                call.log.warning("leg.bad_answer", leg_id=leg.leg_id, reason=exc.reason)
                self._ua.bye(leg.session, self._now())
                self._close_leg(leg)
                leg.reported = True
                self._emit(LegFailed(at=time.time(), call_id=call.call_id, leg_id=leg.leg_id,
                                     reason="error", status=ev.response.status))
                return
            self._configure(leg.stream, neg)
            leg.state, leg.codec = "answered", neg.codec
            if leg.timer:
                leg.timer.cancel()
            if call.guard:  # the leg's own dead-media deadline joins the call's guard
                call.guard.cancel()
            self._arm_guard(call)
            call.log.info("leg.answered", leg_id=leg.leg_id, codec=neg.codec)
            self._emit(LegAnswered(at=time.time(), call_id=call.call_id, leg_id=leg.leg_id))
        elif isinstance(ev, Failed):
            if leg.state in _RINGING:
                reason = _FAIL_REASON.get(ev.status, "error")
                self._fail_leg(leg, reason, ev.status)
        elif isinstance(ev, ByeReceived):
            if leg.state == "answered":
                self._close_leg(leg)
                if not leg.reported:
                    leg.reported = True
                    call.log.info("leg.ended", leg_id=leg.leg_id, by="handler")
                    self._emit(LegEnded(at=time.time(), call_id=call.call_id, leg_id=leg.leg_id,
                                        by="handler"))
        elif isinstance(ev, InfoReceived):
            digit = info_digit(ev.request)
            if digit:
                self._digit(call, leg, digit)
        elif isinstance(ev, ReInviteReceived):
            on_hold = self._reinvite(leg.session, leg.stream, leg.sdp, leg.codec, ev.request)
            if on_hold is not None and on_hold != leg.on_hold:
                leg.on_hold = on_hold
                self._emit(HoldChanged(at=time.time(), call_id=call.call_id, on_hold=on_hold,
                                       by="handler"))

    # -- media commands ----------------------------------------------------------------

    def bridge(self, call_id: str, leg_id: str) -> None:
        """Connect caller and answered leg both ways; the recording gets the handler channel."""
        call = self._call(call_id)
        leg = call.legs.get(leg_id)
        if leg is None or leg.state != "answered":
            raise EngineError(f"leg {leg_id!r} of {call_id!r} is not answered")
        if call.bridged is not None and call.bridged is not leg:
            self._media.unbridge(call.stream)
        self._media.bridge(call.stream, leg.stream)
        call.recording.attach_handler(leg.stream)
        call.bridged = leg
        call.held_by_handler = False
        call.log.info("call.bridged", leg_id=leg_id)

    def unbridge(self, call_id: str) -> None:
        """Hang up the bridged handler leg; the caller hears the queue prompt again."""
        call = self._call(call_id)
        leg = call.bridged
        if leg is not None:
            self._drop_leg(leg, by="system")
            self._pump()

    def play(self, call_id: str, prompt: str) -> None:
        call = self._call(call_id)
        call.prompt = prompt
        if call.bridged is None or call.held_by_handler:
            _play(call.stream, prompt)

    def hold(self, call_id: str, on: bool) -> None:
        """Handler hold: caller hears the prompt, handler hears silence; resume re-bridges."""
        call = self._call(call_id)
        leg = call.bridged
        if leg is None or on == call.held_by_handler:
            return
        if on:
            self._media.unbridge(call.stream)
            _play(call.stream, call.prompt)
            _play(leg.stream, "silence")
        else:
            self._media.bridge(call.stream, leg.stream)
        call.held_by_handler = on

    def hangup(self, call_id: str, reason: str = "") -> None:
        """End the call: BYE to the caller and every handler leg."""
        call = self._calls.get(call_id)
        if call is None:
            return
        self._end_call(call, by="system", reason=reason or "hangup", send_bye=True)
        self._pump()

    def set_accepting(self, *, priority_max: int | None) -> None:
        self._priority_max = priority_max
        log.info("engine.accepting", priority_max=priority_max)

    # -- DTMF, registration, stats -----------------------------------------------------

    def _on_dtmf(self, stream: Any, digit: str) -> None:
        """RFC 4733 digit from the media layer."""
        owner = self._streams.get(id(stream))
        if owner is not None:
            self._digit(owner[0], owner[1], digit)

    def _digit(self, call: _Call, leg: _Leg | None, digit: str) -> None:
        now = time.time()
        self._emit(Dtmf(at=now, call_id=call.call_id, digit=digit,
                        leg_id=leg.leg_id if leg else None))
        if leg is None:
            prev, prev_at = call.last_digit
            call.last_digit = (digit, now)
            # Silent Solution: 5 then 5 within a few seconds from a silent caller
            if digit == "5" and prev == "5" and now - prev_at < 5.0 and not call.silent_flagged:
                call.silent_flagged = True
                call.log.warning("call.silent_solution")
                self._emit(SilentCallFlag(at=now, call_id=call.call_id))

    async def _start_registration(self, line: LineSettings) -> None:
        assert self._ua is not None
        uri = parse_uri(line.registrar)
        host, port = await self._resolve(uri.host, uri.host_port[1])
        self._registrar_ips[line.name] = {host}
        creds = (line.username, secret(line.password, key=f"lines.{line.name}.password") or "") \
            if line.username else None
        reg = self._ua.register(registrar=f"sip:{host}:{port}", user=line.username or line.name,
                                expires=line.register_expires, credentials=creds, owner=line,
                                now=self._now())
        self._regs.append(reg)

    @property
    def registrations(self) -> dict[str, bool]:
        """Line name -> currently registered (registered-mode lines only)."""
        return {getattr(r.user, "name", ""): r.registered for r in self._regs}

    @property
    def stats(self) -> EngineStats:
        """Counters for /metrics (RTP figures summed over live streams)."""
        st = self._stats
        st.calls_active = len(self._calls)
        st.legs_active = len(self._legs)
        r = self._retired
        pin, pout, lost, late = r["packets_in"], r["packets_out"], r["lost"], r["late"]
        gap = st.max_send_gap_ms
        for call, leg in self._streams.values():
            rs = getattr((leg or call).stream, "stats", None)
            pin += getattr(rs, "packets_in", 0)
            pout += getattr(rs, "packets_out", 0)
            lost += getattr(rs, "lost", 0)
            late += getattr(rs, "late", 0)
            gap = max(gap, float(getattr(rs, "max_send_gap_ms", 0.0)))
        st.rtp_packets_in, st.rtp_packets_out, st.rtp_lost, st.rtp_late = pin, pout, lost, late
        st.max_send_gap_ms = gap
        return st

    @property
    def sip_counters(self) -> dict[str, int]:
        """Parser/transaction counters (malformed, dropped, retransmissions_absorbed...)."""
        return dict(self._ua.counters) if self._ua else {}
