"""Engine plumbing shared by the call and leg halves: state, the SIP core pump, timers,
SDP/media helpers. See :mod:`telephony.engine` for the whole picture."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from config.schema import HandlerSettings, LineSettings
from config.telephony import SipSettings
from telephony import api
from telephony.api import (
    EngineStats,
    TelephonyEvent,
)
from telephony.errors import EngineError, SdpError
from telephony.sip import sdp
from telephony.sip.events import (
    UaEvent,
)
from telephony.sip.message import Request, body_parts
from telephony.sip.register import Registration
from telephony.sip.ua import Session, UserAgent
from telephony.sip.uri import is_ip, parse_uri
from telephony.transport import SipProtocol

from .journal import DialogJournal, DialogRecord
from .state import OVERLOAD_WAIT, UNLINK_AFTER, Admit, _Call, _FallbackCodec, _Leg, _SdpState

log = structlog.get_logger("telephony.engine")

class EngineBase:
    """Attributes and plumbing; the behaviour lives in the mixins and :class:`Engine`."""

    _loop: asyncio.AbstractEventLoop

    def __init__(self, *, settings: SipSettings, lines: list[LineSettings], recordings_dir: Path,
                 on_event: Callable[[TelephonyEvent], None],
                 on_audio: Callable[[api.AudioFrame], None] | None = None,
                 handlers: Sequence[HandlerSettings] = (),
                 media_factory: Callable[..., Any] | None = None,
                 admit: Admit | None = None, dialog_journal: Path | None = None,
                 call_id_prefix: str = "") -> None:
        """``media_factory`` defaults to :class:`telephony.media.MediaEngine` and is called
        with its keyword arguments (tests pass a fake); ``admit`` may refuse a call after
        the engine's own checks by returning ``(status, reason)``; ``dialog_journal`` is
        the folder where established dialogs are kept so that a restart after a crash can
        send them BYE (:mod:`telephony.engine.journal`; None: no journal);
        ``call_id_prefix`` starts every call and leg id this engine mints (the node id
        and a ``-``, so ids stay unique across the nodes of a cluster)."""
        self.settings = settings
        self.lines = list(lines)
        self._handler_srtp: dict[str, str] = {h.phone: h.srtp for h in handlers}
        """Handler phone URI -> its SRTP policy (``handlers[].srtp``, from ``handlers``)."""
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
        self._id_prefix = call_id_prefix
        self._stats = EngineStats()
        self._retired = {"packets_in": 0, "packets_out": 0, "lost": 0, "late": 0,
                         "foreign": 0, "ssrc_dropped": 0, "latched": 0,
                         "srtp_replayed": 0, "srtp_forged": 0}
        """RTP counters of streams already closed (stats stay monotonic)."""
        self._drained: asyncio.Event | None = None
        self._seal_tasks: set[asyncio.Task[None]] = set()
        self._journal: DialogJournal | None = (
            DialogJournal(Path(dialog_journal), background=self._in_background)
            if dialog_journal is not None else None)
        self.interrupted_byes = 0
        """BYEs sent at start to dialogs a crash had left up (the dialog journal)."""
        self._byes_done: asyncio.Event | None = None
        self._leg_credentials: tuple[str, str] | None = None
        self._running = False
        self.overload_wait = OVERLOAD_WAIT
        """Shedding threshold, seconds (see :data:`telephony.engine.state.OVERLOAD_WAIT`)."""
        self._rx_wait = 0.0
        """How long the datagram being handled waited before the engine got it."""
        self._shed = 0

    def _now(self) -> float:
        return self._loop.time()

    def _in_background(self, job: Callable[[], None]) -> None:
        """Run a blocking job (a journal fsync) in the loop's executor, never on the loop."""
        self._loop.run_in_executor(None, job)

    def _journal_add(self, key: str, role: str, session: Session) -> None:
        """An established dialog: keep what its BYE needs (see :mod:`.journal`)."""
        if self._journal is not None and session.dialog is not None:
            self._journal.add(DialogRecord.of(key, role, session.dialog))

    def _journal_remove(self, key: str) -> None:
        if self._journal is not None:
            self._journal.remove(key)

    def _unlink_later(self, obj: _Call | _Leg) -> None:
        """Cut an ended call's or leg's reference cycles once no late message can need
        them (see :data:`telephony.engine.state.UNLINK_AFTER`)."""
        self._loop.call_later(UNLINK_AFTER, _unlink, obj)

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
        self._rx_wait = self._sock.wait if self._sock is not None else 0.0
        self._ua.receive(data, addr, self._now())
        self._pump()

    def _flush(self) -> None:
        assert self._ua is not None and self._sock is not None
        for data, addr in self._ua.datagrams_to_send():
            self._send_sip(data, addr)  # UDP, or TCP/TLS (telephony.engine.transports)

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

    def _media_source(self, stream: Any, tag: str, latch_host: str | None) -> None:
        """Name the stream for its log lines and, on a line behind NAT, let its first RTP
        packet latch to the signalling source's host (see :mod:`telephony.media.stream`).
        Media is pluggable: a media layer without these simply does not filter."""
        if latch_host is not None and hasattr(stream, "allow_latch"):
            stream.allow_latch(latch_host, tag=tag)
        elif hasattr(stream, "tag"):
            stream.tag = tag

    # -- SRTP policy ----------------------------------------------------------------------
    # SDES (RFC 4568) carries the SRTP keys in the SDP: whoever reads the signalling can
    # decrypt the media. So keys are sent and taken only on SIP over TLS, unless the
    # lab setting sip.srtp_over_plain_sip says otherwise (loudly).

    def _srtp_policy(self, policy: str, over_tls: bool, **where: str) -> str:
        """The SRTP policy that applies to one call or leg given how its signalling
        travels: ``policy`` itself over TLS; over UDP/TCP ``off`` for ``offered`` and
        ``refuse`` for ``required`` (unless ``srtp_over_plain_sip``: then ``policy``,
        with a warning per call)."""
        if policy == "off" or over_tls:
            return policy
        if self.settings.srtp_over_plain_sip:
            log.warning("srtp.keys_over_plain_sip", policy=policy, **where)
            return policy
        return "refuse" if policy == "required" else "off"

    def _leg_over_tls(self, handler_uri: str) -> bool:
        """Whether a handler leg's INVITE leaves over TLS: the proxy's URI (or the
        handler's, without a proxy) is ``sips:`` or names ``transport=tls``."""
        if self._proxy_addr is not None and getattr(self._proxy_addr, "transport", "") == "tls":
            return True
        try:
            uri = parse_uri(self.settings.proxy or handler_uri)
        except Exception:  # noqa: BLE001 - SipError: a bad URI is not TLS
            return False
        return uri.scheme.lower() == "sips" or (uri.params.get("transport") or "").lower() == "tls"

    def _check_srtp(self) -> None:
        """At start: a handler that requires SRTP must be reached over TLS (or the lab
        setting is on); ``offered`` without TLS is plain RTP, said once here."""
        if self.settings.srtp_over_plain_sip:
            log.warning("srtp.keys_over_plain_sip_enabled",
                        detail="sip.srtp_over_plain_sip = true: SRTP keys (SDP a=crypto) "
                               "may travel over SIP that is not TLS; anyone who reads the "
                               "signalling can decrypt the media. For labs and tests only.")
            return
        for uri, policy in self._handler_srtp.items():
            if policy == "off" or self._leg_over_tls(uri):
                continue
            if policy == "required":
                raise EngineError(f"handler {uri} has srtp = 'required' but its calls do not "
                                  "go over SIP over TLS (sip.proxy must be a sips: URI or "
                                  "have ;transport=tls): SDES keys travel only over TLS")
            log.warning("srtp.offered_without_tls", handler=uri,
                        detail="plain RTP to this phone until SIP goes over TLS")

    def _configure(self, stream: Any, neg: sdp.Negotiated) -> None:
        """Apply negotiated media; media the stream refuses (a host name instead of an IP
        literal, wrong family, bad port or event type, SRTP it cannot do) is 488 Not
        Acceptable Here."""
        try:
            stream.configure(remote=neg.remote, codec=self._codec[neg.codec],
                             dtmf_pt=neg.dtmf_pt, ptime=neg.ptime)
            keys, set_srtp = neg.srtp, getattr(stream, "set_srtp", None)
            if keys is not None:
                if set_srtp is None:
                    raise SdpError(488, "SRTP is not available in this media layer")
                set_srtp(keys.suite, local_key=keys.local_key, remote_key=keys.remote_key)
            elif set_srtp is not None:
                set_srtp(None)
            stream.set_direction(neg.direction)
        except (ValueError, TypeError, OSError) as exc:
            raise SdpError(488, f"unusable media description: {exc}") from None
        except Exception as exc:  # MediaError (not imported here: media is pluggable)
            if type(exc).__name__ != "MediaError":
                raise
            raise SdpError(488, f"unusable media description: {exc}") from None

    def _call(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            raise EngineError(f"unknown call_id {call_id!r}")
        return call

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
                crypto, proto = st.crypto_offer(), st.proto
                offer = st.encode(lambda v: sdp.offer(codecs=[codec], address=host,
                                                      port=stream.local_port, ptime=ptime,
                                                      session_id=st.session_id, version=v,
                                                      crypto=crypto, proto=proto))
                self._ua.respond_reinvite(session, 200, body=offer, now=now)
                return None
            remote = sdp.parse_sdp(body)
            _, neg = sdp.answer(remote, codecs=list(self.settings.codecs), address=host,
                                port=stream.local_port, ptime=ptime, session_id=st.session_id,
                                version=st.version, srtp=st.srtp, srtp_key=st.key)
        except SdpError as exc:
            log.info("sdp.reinvite_refused", status=exc.status, reason=exc.reason)
            self._ua.respond_reinvite(session, exc.status, exc.reason, now=now)
            return None
        answer = st.encode(lambda v: sdp.answer(
            remote, codecs=list(self.settings.codecs), address=host, port=stream.local_port,
            ptime=ptime, session_id=st.session_id, version=v, srtp=st.srtp,
            srtp_key=st.key)[0])
        try:
            self._configure(stream, neg)
        except SdpError as exc:
            self._ua.respond_reinvite(session, exc.status, exc.reason, now=now)
            return None
        st.current = neg.srtp
        self._ua.respond_reinvite(session, 200, body=answer, now=now)
        return neg.on_hold

    # -- implemented by the mixins / Engine --------------------------------------------

    def _handle(self, ev: UaEvent) -> None:
        raise NotImplementedError

    def _send_sip(self, data: bytes, addr: tuple[str, int]) -> None:
        raise NotImplementedError

    def _tls_client_ok(self, line: LineSettings, source: tuple[str, int]) -> bool:
        raise NotImplementedError

    def _drop_leg(self, leg: _Leg, *, by: api.Party) -> None:
        raise NotImplementedError

    def _arm_guard(self, call: _Call) -> None:
        raise NotImplementedError

    def _digit(self, call: _Call, leg: _Leg | None, digit: str) -> None:
        raise NotImplementedError


def _unlink(obj: _Call | _Leg) -> None:
    obj.session.user = None
    if isinstance(obj, _Call):
        obj.legs.clear()
        obj.bridged = None
        obj.guard = None
    else:
        obj.timer = None
