"""Click-to-dial: an outbound call to a caller (a call-back), bridged to a handler.

:meth:`DialOutMixin.dial_out` sends an INVITE through the proxy (the trunk towards the
caller's network) to ``sip:<number>@<domain>``, from the line's first number. The
callee is a "caller" like any inbound one once they answer: their audio is recorded on
the left channel from that moment, they hear the line's prompt (never silence) until the
handler's phone, rung at once as a leg of the call, answers; the service then bridges
them (:meth:`CallsMixin.bridge`) and the handler is recorded on the right.

A callee who does not answer (busy, no answer within ``timeout``, unreachable) ends
the call: CallEnded(by="caller", reason="dial-out failed: <status>").
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import structlog

from telephony.api import CallEnded
from telephony.errors import EngineError, SdpError
from telephony.sip import sdp
from telephony.sip.events import Answered, Failed, UaEvent
from telephony.sip.message import body_parts

from .base import EngineBase
from .state import _Call, _NoRecording, _play, _SdpState

log = structlog.get_logger("telephony.engine")


class DialOutMixin(EngineBase):
    """Outbound calls to callers (call-backs)."""

    _dialling: dict[str, tuple[Any, str, asyncio.TimerHandle]]
    """Call id -> (call, handler URI, no-answer timer) while dialling (set on first use)."""

    def dial_out(self, line_name: str, number: str, handler_uri: str, *,
                 timeout: float = 60.0) -> str:
        """Call ``number`` on ``line_name``'s behalf; when answered, ring ``handler_uri``.
        Returns the new call's id (its events: LegAnswered etc. for the handler's leg,
        CallEnded at the end)."""
        assert self._ua is not None
        line = next((ln for ln in self.lines if ln.name == line_name), None)
        if line is None:
            raise EngineError(f"no line {line_name!r}")
        if not number or not all(ch.isdigit() or ch == "+" for ch in number):
            raise EngineError(f"cannot dial {number!r}")
        if not self._proxy_addr:
            raise EngineError("dialling out needs sip.proxy (the trunk)")
        try:
            stream = self._media.allocate()
        except Exception as exc:  # noqa: BLE001 - MediaError: port pool exhausted
            raise EngineError(f"cannot allocate RTP: {exc}") from exc
        call_id = f"{self._id_prefix}c{next(self._ids)}-{secrets.token_hex(3)}"
        self._media_source(stream, call_id, None)
        st = _SdpState(secrets.randbelow(2**31), srtp="off")
        off = sdp.offer(codecs=list(self.settings.codecs), address=self._rtp_host(),
                        port=stream.local_port, ptime=self.settings.ptime,
                        session_id=st.session_id, crypto=st.crypto_offer(), proto=st.proto)
        st.last = off.encode()
        session = self._ua.invite(f"sip:{number}@{self.settings.domain}",
                                  from_user=line.numbers[0] if line.numbers else "controlroom",
                                  from_display="Police", routes=self._proxy_route,
                                  dest=self._proxy_addr, body=st.last,
                                  credentials=self._leg_credentials, now=self._now())
        call = _Call(call_id=call_id, line=line, session=session, stream=stream,
                     recording=_NoRecording(), caller=number, codec=self.settings.codecs[0],
                     invite_at=time.time(), last_signal=self._now(), prompt=line.queue_prompt,
                     log=log.bind(call_id=call_id, line=line.name), sdp=st)
        session.user = call
        _play(stream, "silence")
        dialling = self.__dict__.setdefault("_dialling", {})
        timer = self._loop.call_later(timeout, self._dial_failed, call, "no answer", 408)
        dialling[call_id] = (call, handler_uri, timer)
        self._streams[id(stream)] = (call, None)
        call.log.info("call.dialling", number=number)
        self._pump()
        return call_id

    def _call_event(self, call: _Call, ev: UaEvent) -> None:
        d = self.__dict__.get("_dialling", {}).get(call.call_id)
        if d is None:
            super()._call_event(call, ev)  # type: ignore[misc]
            return
        if isinstance(ev, Answered):
            self._dial_answered(call, ev, d[1])
        elif isinstance(ev, Failed):
            self._dial_failed(call, ev.reason if hasattr(ev, "reason") else "failed",
                              ev.status)

    def _dial_answered(self, call: _Call, ev: Any, handler_uri: str) -> None:
        _, _, timer = self._dialling.pop(call.call_id)
        timer.cancel()
        try:
            body = body_parts(ev.response).get("application/sdp")
            if not body:
                raise SdpError(488, "2xx without SDP answer")
            neg = sdp.accept_answer(sdp.parse_sdp(body), codecs=list(self.settings.codecs),
                                    ptime=self.settings.ptime, crypto=call.sdp.offered,
                                    srtp_required=False)
            self._configure(call.stream, neg)
        except SdpError as exc:
            assert self._ua is not None
            self._ua.bye(call.session, self._now())
            self._dial_cleanup(call)
            self._emit(CallEnded(at=time.time(), call_id=call.call_id, by="system",
                                 reason=f"dial-out failed: {exc.reason}"))
            return
        call.codec = neg.codec
        try:
            call.recording = self._media.create_recording(call.call_id)
        except Exception:  # noqa: BLE001 - a recording fault must not drop the call-back
            call.log.exception("recording.create_failed")
        call.recording.attach_caller(call.stream)
        _play(call.stream, call.prompt)
        self._calls[call.call_id] = call
        self._journal_add(call.call_id, "caller", call.session)
        self._arm_guard(call)
        call.log.info("call.dialled", codec=neg.codec)
        self.offer(call.call_id, handler_uri, timeout=30.0)  # type: ignore[attr-defined]

    def _dial_failed(self, call: _Call, reason: str, status: int) -> None:
        d = self.__dict__.get("_dialling", {}).pop(call.call_id, None)
        if d is None:
            return
        d[2].cancel()
        assert self._ua is not None
        self._ua.cancel(call.session, self._now())
        self._dial_cleanup(call)
        call.log.info("call.dial_failed", reason=reason, status=status)
        self._emit(CallEnded(at=time.time(), call_id=call.call_id, by="caller",
                             reason=f"dial-out failed: {status or reason}"))
        self._pump()

    def _dial_cleanup(self, call: _Call) -> None:
        self._streams.pop(id(call.stream), None)
        self._close_stream(call.stream)
