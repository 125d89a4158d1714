"""Handler legs: INVITE through the proxy, ring timers, CANCEL, failures, BYE."""

from __future__ import annotations

import secrets
import time

import structlog

from telephony import api
from telephony.api import (
    HoldChanged,
    LegAnswered,
    LegEnded,
    LegFailed,
    LegRinging,
)
from telephony.errors import EngineError, SdpError, SipError
from telephony.sip import sdp
from telephony.sip.dialog import resolve
from telephony.sip.events import (
    Answered,
    ByeReceived,
    Failed,
    InfoReceived,
    Progress,
    ReInviteReceived,
    UaEvent,
)
from telephony.sip.inbound import info_digit
from telephony.sip.message import body_parts
from telephony.sip.uri import parse_uri

from .base import EngineBase
from .state import _FAIL_REASON, _RINGING, NO_RESPONSE_TIMEOUT, _Leg, _play, _SdpState

log = structlog.get_logger("telephony.engine")

class LegsMixin(EngineBase):
    """Outbound legs to handler phones."""

    def offer(self, call_id: str, handler_uri: str, *, timeout: float,
              caller_display: str = "") -> str:
        """Ring a handler's phone for this call (through the proxy); returns the leg_id."""
        assert self._ua is not None
        call = self._call(call_id)
        leg_id = f"{self._id_prefix}l{next(self._ids)}-{secrets.token_hex(3)}"
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
        # Handler phones are heard only from the address their 200 OK's SDP names: they
        # sit on the control room's network, and the signalling source here is the proxy,
        # not the phone, so there is no address to latch to (a phone behind NAT needs the
        # proxy to fix its SDP, e.g. Kamailio nathelper / rtpengine).
        self._media_source(stream, leg_id, None)
        srtp = self._srtp_policy(self._handler_srtp.get(handler_uri, "off"),
                                 self._leg_over_tls(handler_uri), handler=handler_uri)
        if srtp == "refuse":  # (start() refuses this configuration; kept as a backstop)
            self._close_stream(stream)
            raise EngineError(f"handler {handler_uri} requires SRTP but is not reached over TLS")
        sdp_state = _SdpState(secrets.randbelow(2**31), srtp=srtp)
        off = sdp.offer(codecs=list(self.settings.codecs), address=self._rtp_host(),
                        port=stream.local_port, ptime=self.settings.ptime,
                        session_id=sdp_state.session_id, crypto=sdp_state.crypto_offer(),
                        proto=sdp_state.proto)
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
        self._journal_remove(leg.leg_id)
        self._unlink_later(leg)

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
                                        ptime=self.settings.ptime, crypto=leg.sdp.offered,
                                        srtp_required=leg.sdp.srtp == "required")
                self._configure(leg.stream, neg)
                leg.sdp.current = neg.srtp
            except SdpError as exc:
                call.log.warning("leg.bad_answer", leg_id=leg.leg_id, reason=exc.reason)
                self._ua.bye(leg.session, self._now())
                self._close_leg(leg)
                leg.reported = True
                self._emit(LegFailed(at=time.time(), call_id=call.call_id, leg_id=leg.leg_id,
                                     reason="error", status=ev.response.status))
                return
            leg.state, leg.codec = "answered", neg.codec
            self._journal_add(leg.leg_id, "handler", leg.session)
            if leg.timer:
                leg.timer.cancel()
            if call.guard:  # the leg's own dead-media deadline joins the call's guard
                call.guard.cancel()
            self._arm_guard(call)
            call.log.info("leg.answered", leg_id=leg.leg_id, codec=neg.codec,
                          srtp=neg.srtp.suite if neg.srtp else "")
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

