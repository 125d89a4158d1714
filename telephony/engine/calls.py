"""Inbound calls: admission and answer, in-dialog events, dead-media guard, call end,
media commands (bridge, unbridge, play, hold, hangup, set_accepting) and DTMF."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from typing import Any

import structlog

from config.schema import LineSettings
from telephony import api
from telephony.api import (
    CallArrived,
    CallCancelled,
    CallEnded,
    CallRejected,
    Dtmf,
    HoldChanged,
    IncomingCall,
    SilentCallFlag,
)
from telephony.errors import EngineError, SdpError
from telephony.sip import sdp
from telephony.sip.events import (
    AckTimeout,
    ByeReceived,
    InfoReceived,
    InviteCancelled,
    InviteReceived,
    ReInviteReceived,
    SessionConfirmed,
    SessionExpired,
    UaEvent,
)
from telephony.sip.inbound import caller_number, info_digit, location_info
from telephony.sip.message import Request, body_parts
from telephony.sip.ua import Session

from .base import EngineBase
from .recordings import recording_sealed
from .state import _Call, _Leg, _NoRecording, _play, _SdpState

log = structlog.get_logger("telephony.engine")

class CallsMixin(EngineBase):
    """The caller's side of the engine."""

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
        number, display = caller_number(req, country_code=self.settings.country_code)
        caller = number.raw  # as given, with its "+"; the normalised form rides along
        line = self._by_number.get(dialled)
        if line is None:
            self._reject(session, None, dialled, caller, 404, "Unknown number")
            return
        source_ip = ev.source[0]
        if not self._trusted(line, source_ip):
            self._reject(session, line, dialled, caller, 403, "Source not trusted")
            return
        if line.tls_client_cert and not self._tls_client_ok(line, ev.source):
            self._reject(session, line, dialled, caller, 403, "Client certificate required")
            return
        if line.priority > 0 and self._rx_wait > self.overload_wait:
            # shed load before any real work (SDP, media port, recording): this INVITE
            # already waited too long, so the engine is behind; 999 is never shed
            self._shed += 1
            self._reject(session, line, dialled, caller, 503, "Overloaded",
                         [("Retry-After", str(self.settings.retry_after))])
            return
        if (self._priority_max is not None and line.priority > self._priority_max) or (
                line.priority > 0 and len(self._calls) >= self.settings.max_calls):
            self._reject(session, line, dialled, caller, 503, "Overloaded",
                         [("Retry-After", str(self.settings.retry_after))])
            return
        parts = body_parts(req)
        # never refuses the call: an unreadable location is kept as given, with the reason
        location, location_detail = location_info(req)
        incoming = IncomingCall(line=line.name, dialled=dialled, caller=caller,
                                display_name=display, source=f"{ev.source[0]}:{ev.source[1]}",
                                location=location, caller_normalised=number.normalised,
                                location_detail=location_detail)
        if self._admit is not None:
            verdict = self._admit(incoming)
            if verdict is not None:
                self._reject(session, line, dialled, caller, verdict[0], verdict[1])
                return
        over_tls = getattr(ev.source, "transport", "udp") == "tls"
        srtp = self._srtp_policy(line.srtp, over_tls, line=line.name, sip_call_id=req.call_id)
        if srtp == "refuse":  # SDES keys must not cross plain SIP (see _srtp_policy)
            self._reject(session, line, dialled, caller, 488,
                         "SRTP required on this line, and its keys travel only over TLS: "
                         "this INVITE came over " + getattr(ev.source, "transport", "udp"))
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
        call_id = f"{self._id_prefix}c{next(self._ids)}-{secrets.token_hex(3)}"
        self._media_source(stream, call_id, source_ip if line.nat else None)
        sdp_state = _SdpState(secrets.randbelow(2**31), srtp=srtp)
        if offer is None:
            # delayed offer (RFC 3261 §13.2.1): we offer in the 200, the ACK answers
            body = sdp.offer(codecs=list(self.settings.codecs), address=self._rtp_host(),
                             port=stream.local_port, ptime=self.settings.ptime,
                             session_id=sdp_state.session_id,
                             crypto=sdp_state.crypto_offer(), proto=sdp_state.proto)
            neg = None
            codec: str = self.settings.codecs[0]
        else:
            try:
                body, neg = sdp.answer(offer, codecs=list(self.settings.codecs),
                                       address=self._rtp_host(), port=stream.local_port,
                                       ptime=self.settings.ptime,
                                       session_id=sdp_state.session_id, version=1,
                                       srtp=srtp, srtp_key=sdp_state.key)
                self._configure(stream, neg)
                sdp_state.current = neg.srtp
            except SdpError as exc:
                self._close_stream(stream)
                self._reject(session, line, dialled, caller, exc.status, exc.reason)
                return
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
        self._journal_add(call_id, "caller", session)  # a crash from now on owes a BYE
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
                      sip_call_id=req.call_id, source=incoming.source,
                      srtp=neg.srtp.suite if neg and neg.srtp else "")
        self._emit(CallArrived(at=time.time(), call_id=call_id, line=line.name, dialled=dialled,
                               caller=caller, display_name=display, source=incoming.source,
                               sip_call_id=req.call_id, codec=codec, location=location,
                               invite_at=invite_at, caller_normalised=number.normalised,
                               location_detail=location_detail))

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

    def _call_event(self, call: _Call, ev: UaEvent) -> None:
        call.last_signal = self._now()
        if isinstance(ev, ByeReceived):
            self._end_call(call, by="caller", reason="bye", send_bye=False)
        elif isinstance(ev, AckTimeout):
            self._end_call(call, by="system", reason="no ACK for 200 OK", send_bye=False)
        elif isinstance(ev, SessionExpired):  # the core already sent BYE (RFC 4028 §10)
            self._end_call(call, by="system", send_bye=False,
                           reason=f"session timer: no refresh within {ev.interval} s")
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
                                    ptime=self.settings.ptime, crypto=call.sdp.offered,
                                    srtp_required=call.sdp.srtp == "required")
            self._configure(call.stream, neg)
            call.sdp.current = neg.srtp
        except SdpError as exc:
            self._end_call(call, by="system", reason=f"bad SDP answer in ACK: {exc.reason}",
                           send_bye=True)
            return
        call.codec = neg.codec

    def _end_call(self, call: _Call, *, by: api.Party, reason: str, send_bye: bool) -> None:
        if call.call_id not in self._calls:
            return
        assert self._ua is not None
        now = self._now()
        del self._calls[call.call_id]
        self._journal_remove(call.call_id)
        if call.guard:
            call.guard.cancel()
        call.log.info("call.ended", by=by, reason=reason)
        # Causal order: the call's end is reported BEFORE the legs it takes down, so a
        # consumer sees a handler's phone stop ringing as the consequence of the caller
        # leaving (an abandon), never as that handler failing an offer.
        self._emit(CallEnded(at=time.time(), call_id=call.call_id, by=by, reason=reason))
        for leg in list(call.legs.values()):  # ringing: CANCEL; answered: BYE
            self._drop_leg(leg, by="caller" if by == "caller" else "system")
        if call.bridged is not None:
            self._media.unbridge(call.stream)
        if send_bye:
            self._ua.bye(call.session, now)
        self._streams.pop(id(call.stream), None)
        self._close_stream(call.stream)
        self._unlink_later(call)
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
        self._emit(recording_sealed(info, recovered=False))

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

    # -- DTMF ---------------------------------------------------------------------------

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

