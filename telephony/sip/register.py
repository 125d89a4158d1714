"""REGISTER client for 'registered' lines (RFC 3261 §10): digest, refresh, backoff.

Mixed into :class:`telephony.sip.ua.UserAgent`; the binding is refreshed at 80 % of the
granted lifetime (at least 5 s early) and retried with exponential backoff (5 s .. 300 s)
after a failure. Sans-IO like the rest of the core.
"""

from __future__ import annotations

from typing import Any

from telephony.errors import SipParseError

from .auth import answer_challenge
from .dialog import Addr, resolve
from .events import RegistrationResult, UaEvent
from .hop import transport_of
from .message import Request, Response
from .state import Registration
from .transaction import ClientTransaction
from .uri import SipUri, parse_name_addr, parse_uri


class RegisterMixin:
    """REGISTER handling; relies on the user agent's transaction plumbing."""

    host: str
    port: int
    ports: dict[str, int]
    _events: list[UaEvent]
    _owner: dict[ClientTransaction, Any]

    def via(self) -> str:
        raise NotImplementedError

    def _start_client(self, req: Request, dest: Addr, now: float, *, owner: Any) -> ClientTransaction:
        raise NotImplementedError

    def _sched(self, obj: Any) -> None:
        raise NotImplementedError

    def _server_headers(self, msg: Request | Response) -> None:
        raise NotImplementedError

    def register(self, *, registrar: str, user: str, expires: int,
                 credentials: tuple[str, str] | None, owner: Any = None, now: float) -> Registration:
        """Register ``user`` at ``registrar`` and keep the binding refreshed."""
        reg_uri = parse_uri(registrar)
        dest = resolve(reg_uri, (reg_uri.host, reg_uri.host_port[1]))
        transport = transport_of(dest)
        params = {"transport": reg_uri.params["transport"]} if "transport" in reg_uri.params else {}
        port = self.ports.get(transport, self.port)
        contact = (f"<sips:{user}@{self.host}:{port}>" if transport == "tls" else
                   f"<sip:{user}@{self.host}:{port};transport={transport}>" if transport != "udp"
                   else f"<sip:{user}@{self.host}:{self.port}>")
        reg = Registration(
            registrar=SipUri(reg_uri.scheme, "", reg_uri.host, reg_uri.port, params),
            aor=f"{'sips' if reg_uri.scheme == 'sips' else 'sip'}:{user}@{reg_uri.host}",
            contact=contact, expires=expires, credentials=credentials, dest=dest, user=owner)
        self._send_register(reg, now)
        return reg

    def unregister(self, reg: Registration, now: float) -> None:
        reg.stopping = True
        reg.refresh_at = None
        self._send_register(reg, now)

    def _send_register(self, reg: Registration, now: float, auth_header: tuple[str, str] | None = None) -> None:
        reg.cseq += 1
        req = Request(method="REGISTER", uri=reg.registrar)
        req.add("Via", self.via())
        req.add("Max-Forwards", "70")
        req.add("From", f"<{reg.aor}>;tag={reg.from_tag}")
        req.add("To", f"<{reg.aor}>")
        req.add("Call-ID", reg.call_id)
        req.add("CSeq", f"{reg.cseq} REGISTER")
        req.add("Contact", reg.contact)
        req.add("Expires", "0" if reg.stopping else str(reg.expires))
        if auth_header:
            req.add(*auth_header)
        self._server_headers(req)
        self._start_client(req, reg.dest, now, owner=("register", reg))

    def _register_response(self, reg: Registration, resp: Response, now: float) -> None:
        code = resp.status
        if code < 200:
            return
        tx_req = None
        if code in (401, 407) and reg.credentials and reg.auth_attempts < 2:
            for tx, owner in self._owner.items():
                if owner == ("register", reg) and tx.final is resp:
                    tx_req = tx.request
            if tx_req is not None:
                hdr = answer_challenge(tx_req, resp, reg.credentials)
                if hdr is not None:
                    reg.auth_attempts += 1
                    self._send_register(reg, now, hdr)
                    return
        if code == 423 and (resp.get("Min-Expires") or "").isdigit() and not reg.stopping:
            reg.expires = int(resp.get("Min-Expires") or reg.expires)
            self._send_register(reg, now)
            return
        reg.auth_attempts = 0
        if 200 <= code < 300:
            granted = _granted_expires(resp, reg)
            reg.registered = not reg.stopping
            reg.retry_delay = 5.0
            if not reg.stopping:
                # refresh well before expiry so one lost REGISTER can be retried in time
                reg.refresh_at = now + max(1.0, min(granted * 0.8, granted - 5.0))
                self._sched(reg)
            self._events.append(RegistrationResult(reg, True, code, 0 if reg.stopping else granted))
        else:
            self._register_failed(reg, code, now)

    def _register_failed(self, reg: Registration, status: int, now: float) -> None:
        reg.registered = False
        reg.auth_attempts = 0
        if not reg.stopping:
            reg.refresh_at = now + reg.retry_delay
            reg.retry_delay = min(reg.retry_delay * 2, 300.0)
            self._sched(reg)
        self._events.append(RegistrationResult(reg, False, status, 0))


def _granted_expires(resp: Response, reg: Registration) -> int:
    for c in resp.get_all("Contact"):
        try:
            na = parse_name_addr(c)
        except SipParseError:
            continue
        if na.uri.host == reg.contact.split("@")[-1].split(":")[0].rstrip(">") and "expires" in na.params:
            v = na.params["expires"] or ""
            if v.isdigit():
                return int(v)
    v = resp.get("Expires") or ""
    return int(v) if v.isdigit() else reg.expires
