"""The sans-IO SIP user agent core: transactions + dialogs + INVITE sessions + REGISTER.

Feed it datagrams with :meth:`UserAgent.receive` and the time with
:meth:`UserAgent.handle_timers`; collect what to send with :meth:`datagrams_to_send`,
what happened with :meth:`events`, and when to call it next with :meth:`next_deadline`.
It never touches a socket or a clock, so every behaviour (retransmissions, CANCEL
races, ACK timeouts) is tested with a fake ``now``.

What the core does by itself (so the engine cannot forget): 100 Trying at once;
absorbing retransmitted INVITEs (same branch, or same Call-ID/CSeq/From-tag) by
re-sending the last response; 2xx retransmission until ACK and BYE after 64*T1 without
one; CANCEL -> 200 + 487; 481 for unknown dialogs; OPTIONS -> 200; 405/501; ACK for
2xx built from the dialog and re-sent on retransmitted 2xx; digest retries on 401/407;
CANCEL deferred until a provisional arrives (RFC 3261 §9.1). Session timers (RFC 4028,
:mod:`.timer`): Session-Expires and Require on the 2xx, 422 below our Min-SE, refreshes
(re-INVITE or bodyless UPDATE) restart the timer, a missing refresh ends the session with
BYE and :class:`SessionExpired`, and when we are the refresher we send the re-INVITE.

Transports (:mod:`.hop`): the adapter passes a :class:`~.hop.Hop` as the source of what
came over TCP or TLS; responses go back to that source (its connection), Contact names
the port and transport the request came on, and requests we send carry the transport of
their destination in their Via (``SIP/2.0/TCP``, ``SIP/2.0/TLS``). A request over UDP
larger than :data:`~.hop.UDP_SIZE_LIMIT` goes over TCP when we listen on TCP (RFC 3261
§18.1.1). Stream framing faults reach :meth:`UserAgent.receive_fault`.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections import Counter
from collections.abc import Iterable
from typing import Any

from telephony.errors import SipParseError

from .auth import with_credentials
from .dialog import Addr, Dialog, resolve
from .events import (
    AckTimeout,
    Answered,
    ByeReceived,
    Failed,
    InfoReceived,
    InviteCancelled,
    InviteReceived,
    MessageRefused,
    Progress,
    ReInviteReceived,
    SessionConfirmed,
    SessionExpired,
    UaEvent,
)
from .guard import ANSWER, SourceGuard
from .hop import UDP_SIZE_LIMIT, Hop, is_reliable, transport_of, with_transport
from .message import REASONS, Request, Response, make_response, parse
from .register import RegisterMixin
from .state import Registration, Session, new_tag
from .timer import MIN_SE_FLOOR, Timer, TooSmall, from_response, negotiate
from .transaction import T1, T2, ClientTransaction, ServerTransaction, TxState
from .uri import NameAddr, SipUri, Via, parse_name_addr, parse_uri

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"
"""No UPDATE: we cannot answer an offer in one, so session refreshes come as re-INVITEs
(RFC 4028 §7.4 lets the refresher use either). A bodyless UPDATE still gets 200 and
counts as a refresh; one with a body gets 405."""
SUPPORTED = {"timer"}
"""Option tags we accept in Require (session timers, RFC 4028: see :mod:`.timer`)."""
_KNOWN = {"REGISTER", "SUBSCRIBE", "NOTIFY", "MESSAGE", "REFER", "PRACK", "UPDATE", "PUBLISH"}


class UserAgent(RegisterMixin):
    """One SIP endpoint's protocol state. Not thread-safe; drive it from one loop."""

    def __init__(self, *, host: str, port: int, domain: str = "localhost",
                 user_agent: str = "controlroom", max_message_bytes: int = 65535,
                 min_se: int = MIN_SE_FLOOR, guard: SourceGuard | None = None,
                 ports: dict[str, int] | None = None) -> None:
        """``guard`` decides what requests from untrusted sources get (see
        :mod:`telephony.sip.guard`); without one every source is treated as trusted.
        ``ports``: our listening port per transport (``udp``, ``tcp``, ``tls``); default
        UDP on ``port`` only."""
        self.host = host
        self.ports = dict(ports) if ports else {"udp": port}
        """Listening port per transport: what Via and Contact name."""
        self.guard = guard
        self.min_se = max(min_se, MIN_SE_FLOOR)
        """Smallest session interval we accept (RFC 4028 Min-SE); smaller ones get 422."""
        self.port = port
        self.domain = domain
        self.user_agent = user_agent
        self.max_message_bytes = max_message_bytes
        self.counters: Counter[str] = Counter()
        """malformed, dropped, retransmissions_absorbed, requests, responses..."""
        self._out: list[tuple[bytes, Addr]] = []
        self._events: list[UaEvent] = []
        self._server: dict[tuple[str, str, str], ServerTransaction] = {}
        self._server_alt: dict[tuple[str, int, str], ServerTransaction] = {}
        self._client: dict[tuple[str, str], ClientTransaction] = {}
        self._owner: dict[ClientTransaction, Any] = {}
        self._tx_session: dict[ServerTransaction, Session] = {}
        self._dialogs: dict[tuple[str, str, str], Session] = {}
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()

    # -- I/O surface -------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[UaEvent]:
        ev, self._events = self._events, []
        return ev

    def next_deadline(self) -> float | None:
        while self._heap:
            t, _, obj = self._heap[0]
            if obj.deadline == t:
                return t
            heapq.heappop(self._heap)
        return None

    def handle_timers(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            t, _, obj = heapq.heappop(self._heap)
            if obj.deadline != t:
                continue
            if isinstance(obj, ClientTransaction):
                self._client_timer(obj, now)
            elif isinstance(obj, ServerTransaction):
                self._server_timer(obj, now)
            elif isinstance(obj, Session):
                self._session_timer(obj, now)
            elif isinstance(obj, Registration):
                obj.refresh_at = None
                self._send_register(obj, now)
            self._sched(obj)

    def receive(self, data: bytes, addr: Addr, now: float, *,
                fault: SipParseError | None = None, size: int = 0) -> None:
        """One datagram (or framed stream message) from ``addr``. Never raises on bad
        input: answers 400 (or the parse fault's status) once when the request can be
        routed, else drops; counts ``malformed`` and ``malformed_<kind>``, and reports
        :class:`MessageRefused`. (``fault``: see :meth:`receive_fault`.)"""
        try:
            if fault is not None:
                raise fault
            msg = parse(data, max_size=self.max_message_bytes)
        except SipParseError as exc:
            data = data or b" " * size
            self.counters["malformed"] += 1
            self.counters[f"malformed_{exc.kind}"] += 1
            partial = exc.partial
            verdict, status = "dropped", None
            if isinstance(partial, Request):
                self._fix_via(partial, addr)
                if self._trusted(addr):
                    resp = make_response(partial, exc.status, exc.reason, to_tag=new_tag())
                    self._server_headers(resp)
                    self._out.append((resp.encode(), _response_dest(partial, addr)))
                    verdict, status = "answered", exc.status
                else:
                    verdict = self._answer_untrusted(partial, addr, len(data), exc.status,
                                                     exc.reason, now)
                    status = exc.status if verdict == ANSWER else None
            if status is None:
                self.counters["dropped"] += 1
            self._events.append(MessageRefused(addr, exc.kind, exc.reason, status, verdict))
            return
        if msg is None:
            self.counters["keepalives"] += 1
            return
        if isinstance(msg, Request):
            self.counters["requests"] += 1
            if not self._trusted(addr) and not self._ours(msg):
                self._fix_via(msg, addr)
                verdict = self._answer_untrusted(msg, addr, len(data), 403,
                                                 "Source not trusted", now)
                self._events.append(MessageRefused(
                    addr, "untrusted", f"{msg.method} from an untrusted source",
                    403 if verdict == ANSWER else None, verdict))
                return
            self._on_request(msg, addr, now)
        else:
            self.counters["responses"] += 1
            self._on_response(msg, addr, now)

    def receive_fault(self, head: bytes, addr: Addr, status: int, reason: str, kind: str,
                      now: float) -> None:
        """A stream could not be framed (:class:`telephony.sip.framing.Fault`): answer the
        request in ``head`` with ``status`` when it can be answered, as for a malformed
        datagram. The adapter closes the connection once this is sent."""
        if not head:
            self.counters["malformed"] += 1
            self.counters[f"malformed_{kind}"] += 1
            self.counters["dropped"] += 1
            self._events.append(MessageRefused(addr, kind, reason, None, "dropped"))
            return
        try:
            msg = parse(head, max_size=self.max_message_bytes)
        except SipParseError as exc:
            msg = exc.partial if isinstance(exc.partial, Request) else None
        if isinstance(msg, Request):
            partial: Request | None = msg
        else:
            partial = None
        self.receive(b"", addr, now, fault=SipParseError(status, reason, partial, kind=kind),
                     size=len(head))

    # -- untrusted sources (telephony.sip.guard) -----------------------------------------

    def _trusted(self, addr: Addr) -> bool:
        return self.guard is None or self.guard.trusted(addr[0])

    def _ours(self, req: Request) -> bool:
        """Does a request from an untrusted address belong to something of ours (a dialog
        or transaction it could only know by taking part)? ACK is never answered, so it
        goes on to the core, which ignores what matches nothing."""
        if req.method == "ACK":
            return True
        to_tag = req.to.tag
        if to_tag and (req.call_id, to_tag, req.from_.tag or "") in self._dialogs:
            return True  # e.g. a handler phone's BYE sent straight to us
        key = _server_key(req, "INVITE" if req.method == "CANCEL" else None)
        return key in self._server

    def _answer_untrusted(self, req: Request, addr: Addr, size: int, status: int,
                          reason: str, now: float) -> str:
        """At most one stateless answer, no bigger than the request (guard permitting);
        returns the guard's verdict (also counted)."""
        assert self.guard is not None
        if req.method == "ACK":
            verdict = "untrusted_dropped"
        else:
            try:
                via = req.top_via
                key: tuple[object, ...] = (via.branch or "", req.get("Call-ID") or "",
                                           req.get("CSeq") or "")
                dest = _response_dest(req, addr)
            except SipParseError:
                verdict = "untrusted_dropped"
            else:
                verdict = self.guard.verdict(addr, key, now)
        if verdict == ANSWER:
            for phrase in (reason, REASONS.get(status, "Error")):
                data = make_response(req, status, phrase, to_tag=new_tag()).encode()
                if len(data) <= size:
                    self._out.append((data, dest))
                    break
            else:
                verdict = "untrusted_too_large"
        self.counters[verdict] += 1
        return verdict

    # -- helpers -----------------------------------------------------------------------

    def _sched(self, obj: Any) -> None:
        d = obj.deadline
        if d is not None:
            heapq.heappush(self._heap, (d, next(self._seq), obj))

    def _send(self, sends: Iterable[tuple[bytes, Addr]]) -> None:
        self._out.extend(sends)

    def via(self, transport: str = "udp") -> str:
        port = self.ports.get(transport, self.port)
        return (f"SIP/2.0/{transport.upper()} {self.host}:{port};"
                f"branch=z9hG4bK{secrets.token_hex(10)};rport")

    @property
    def contact_uri(self) -> str:
        return f"sip:controlroom@{self.host}:{self.port}"

    def contact_for(self, addr: Addr) -> str:
        """Our Contact URI for a dialog whose messages go over ``addr``'s transport."""
        transport = transport_of(addr)
        if transport == "udp" or transport not in self.ports:
            return self.contact_uri
        port = self.ports[transport]
        if transport == "tls":
            return f"sips:controlroom@{self.host}:{port}"
        return f"sip:controlroom@{self.host}:{port};transport={transport}"

    def _stamp(self, req: Request, dest: Addr) -> Addr:
        """Put ``dest``'s transport in the top Via (the Via was built before the next hop
        was known); a UDP request too large for UDP goes over TCP when we listen on TCP
        (RFC 3261 §18.1.1). Returns the destination, possibly moved to TCP."""
        transport = transport_of(dest)
        if transport == "udp" and "tcp" in self.ports \
                and len(req.encode()) > UDP_SIZE_LIMIT - 20:  # the Via grows by a few bytes
            transport = "tcp"
            dest = with_transport(dest, "tcp")
            self.counters["udp_too_large_sent_tcp"] += 1
        for i, (n, v) in enumerate(req.headers):
            if n == "Via":
                via = _parse_via_safe(v)
                if via is not None and (via.transport.lower() != transport or (
                        transport == "tls" and "alias" not in via.params)):
                    port = self.ports.get(transport, via.port)
                    params = dict(via.params)
                    if transport == "tls":  # RFC 5923: the peer may send its requests to
                        params["alias"] = None  # us on this connection (TLS-authenticated)
                    req.set_header_at(i, str(Via(transport.upper(), via.host, port, params)))
                break
        return dest

    def _send_ack(self, ack: Request, dest: Addr) -> None:
        dest = self._stamp(ack, dest)
        self._out.append((ack.encode(), dest))

    def _server_headers(self, msg: Request | Response) -> None:
        msg.add("Server" if isinstance(msg, Response) else "User-Agent", self.user_agent)

    @staticmethod
    def _fix_via(req: Request, addr: Addr) -> None:
        """RFC 3261 §18.2.1 received + RFC 3581 rport on the top Via."""
        for i, (n, v) in enumerate(req.headers):
            if n == "Via":
                via = _parse_via_safe(v)
                if via is None:
                    return
                params = dict(via.params)
                if via.host != addr[0]:
                    params["received"] = addr[0]
                if "rport" in params and not params["rport"]:
                    params["rport"] = str(addr[1])
                    params["received"] = addr[0]
                req.set_header_at(i, str(Via(via.transport, via.host, via.port, params)))
                return

    def _reply(self, tx: ServerTransaction, status: int, reason: str | None = None, *,
               to_tag: str | None = None, headers: Iterable[tuple[str, str]] = (),
               body: bytes = b"", now: float) -> None:
        resp = make_response(tx.request, status, reason, to_tag=to_tag, headers=headers, body=body)
        self._server_headers(resp)
        self._send(tx.respond(resp, now))
        self._sched(tx)

    def _new_server_tx(self, req: Request, now: float, source: Addr | None = None
                       ) -> ServerTransaction:
        tx = ServerTransaction(req, now, source)
        self._server[_server_key(req)] = tx
        if req.method == "INVITE":
            self._server_alt[(req.call_id, req.cseq[0], req.from_.tag or "")] = tx
        return tx

    # -- requests ----------------------------------------------------------------------

    def _on_request(self, req: Request, addr: Addr, now: float) -> None:
        self._fix_via(req, addr)
        method = req.method
        if method == "ACK":
            self._on_ack(req, addr, now)
            return
        key = _server_key(req)
        if method == "CANCEL":
            self._on_cancel(req, key, addr, now)
            return
        tx = self._server.get(key)
        if tx is None and method == "INVITE" and not req.to.tag:
            tx = self._server_alt.get((req.call_id, req.cseq[0], req.from_.tag or ""))
        if tx is not None:
            self.counters["retransmissions_absorbed"] += 1
            self._send(tx.on_retransmit())
            return
        mf = req.get("Max-Forwards")
        tx = self._new_server_tx(req, now, addr)
        if mf is not None and int(mf) == 0:
            self._reply(tx, 483, to_tag=new_tag(), now=now)
            return
        unsupported = [o for o in req.get_all("Require") if o.strip().lower() not in SUPPORTED]
        if unsupported:
            # RFC 3261 §8.2.2.3: refuse what we cannot honour (e.g. 100rel), naming it
            self._reply(tx, 420, to_tag=new_tag(), now=now,
                        headers=[("Unsupported", ", ".join(unsupported))])
            return
        if method in ("INVITE", "UPDATE"):
            small = negotiate(req, min_se=self.min_se)
            if isinstance(small, TooSmall):
                self.counters["session_interval_too_small"] += 1
                self._reply(tx, 422, "Session Interval Too Small", headers=small.headers(),
                            to_tag=None if req.to.tag else new_tag(), now=now)
                return
        if req.to.tag:
            self._in_dialog(req, tx, addr, now)
        elif method == "INVITE":
            session = Session("uas", req, state="incoming", local_tag=new_tag(), source=addr,
                              server_tx=tx)
            self._tx_session[tx] = session
            self._reply(tx, 100, now=now)
            self._events.append(InviteReceived(session, req, addr))
        elif method == "OPTIONS":
            self._reply(tx, 200, to_tag=new_tag(), now=now,
                        headers=[("Allow", ALLOW), ("Accept", "application/sdp")])
        elif method == "BYE":
            self._reply(tx, 481, to_tag=new_tag(), now=now)
        elif method in _KNOWN or method == "INFO":
            self._reply(tx, 405, to_tag=new_tag(), headers=[("Allow", ALLOW)], now=now)
        else:
            self._reply(tx, 501, to_tag=new_tag(), headers=[("Allow", ALLOW)], now=now)

    def _in_dialog(self, req: Request, tx: ServerTransaction, addr: Addr, now: float) -> None:
        session = self._dialogs.get((req.call_id, req.to.tag or "", req.from_.tag or ""))
        if session is None or session.dialog is None or session.state == "terminated":
            self._reply(tx, 481, now=now)
            return
        dialog = session.dialog
        if not dialog.accept_remote_cseq(req.cseq[0]):
            self._reply(tx, 500, "CSeq out of order", now=now)
            return
        dialog.peer = addr
        if req.method == "BYE":
            self._reply(tx, 200, now=now)
            self._terminate(session)
            self._events.append(ByeReceived(session))
        elif req.method == "INVITE":
            if session.reinvite_tx is not None and session.reinvite_tx.state == TxState.PROCEEDING:
                self._reply(tx, 500, "Pending re-INVITE", headers=[("Retry-After", "1")], now=now)
                return
            session.reinvite_tx = tx
            if req.contact:
                dialog.remote_target = req.contact.uri
            self._reply(tx, 100, now=now)
            self._events.append(ReInviteReceived(session, req))
        elif req.method == "UPDATE" and req.body:
            # an UPDATE carrying an offer needs an answer we do not give: refuse it (the
            # peer falls back to re-INVITE); bodyless UPDATEs (session refresh) are fine
            self._reply(tx, 405, headers=[("Allow", ALLOW)], now=now)
        elif req.method == "UPDATE":
            # a session refresh (RFC 4028 §9): answered with the timer, which restarts
            self._reply(tx, 200, now=now,
                        headers=[("Allow", ALLOW), *self._apply_timer(session, req, now)])
        elif req.method in ("OPTIONS", "INFO", "NOTIFY"):
            self._reply(tx, 200, now=now, headers=[("Allow", ALLOW)])
            if req.method == "INFO" and req.body:
                self._events.append(InfoReceived(session, req))
        elif req.method in _KNOWN:
            self._reply(tx, 405, headers=[("Allow", ALLOW)], now=now)
        else:
            self._reply(tx, 501, headers=[("Allow", ALLOW)], now=now)

    def _on_ack(self, req: Request, addr: Addr, now: float) -> None:
        tx = self._server.get(_server_key(req, "INVITE"))
        if tx is not None and tx.last_status >= 300:
            tx.on_ack(now)
            self._sched(tx)
            return
        session = self._dialogs.get((req.call_id, req.to.tag or "", req.from_.tag or ""))
        if session is None or session.role != "uas":
            self.counters["dropped"] += 1
            return
        if req.cseq[0] != session.invite.cseq[0] and not (
                session.reinvite_tx and req.cseq[0] == session.reinvite_tx.request.cseq[0]):
            return
        if session.dialog:
            session.dialog.peer = addr
        session.retrans_at = session.end_at = None
        if session.state == "answered":
            session.state = "confirmed"
            self._events.append(SessionConfirmed(session, req))
            if session.bye_pending:
                self._send_bye(session, now)

    def _on_cancel(self, req: Request, key: tuple[str, str, str], addr: Addr,
                   now: float) -> None:
        ctx = self._server.get(key)
        if ctx is not None:  # retransmitted CANCEL
            self._send(ctx.on_retransmit())
            return
        ctx = self._new_server_tx(req, now, addr)
        itx = self._server.get(_server_key(req, "INVITE"))
        if itx is None:
            self._reply(ctx, 481, to_tag=new_tag(), now=now)
            return
        session = self._tx_session.get(itx)
        tag = session.local_tag if session else new_tag()
        self._reply(ctx, 200, to_tag=tag, now=now)
        if itx.state == TxState.PROCEEDING and session is not None and session.state == "incoming":
            self._reply(itx, 487, to_tag=tag, now=now)
            session.state = "terminated"
            session.cancelled = True
            self._events.append(InviteCancelled(session))
        # after our 2xx the CANCEL has no effect (RFC 3261 §9.2); the caller sends BYE

    # -- UAS commands ------------------------------------------------------------------

    def respond(self, session: Session, status: int, reason: str | None = None, *,
                body: bytes = b"", headers: Iterable[tuple[str, str]] = (), now: float) -> None:
        """Answer the INVITE of an inbound session (provisional or final)."""
        tx = session.server_tx
        if tx is None or session.state != "incoming":
            return
        hdrs = list(headers)
        contact = f"<{self.contact_for(session.source)}>"
        if 100 < status < 300:
            hdrs.append(("Contact", contact))
        if 200 <= status < 300:
            hdrs.append(("Allow", ALLOW))
            hdrs += self._apply_timer(session, tx.request, now)
            session.local_sdp = body
        resp = make_response(tx.request, status, reason, to_tag=session.local_tag, headers=hdrs,
                             body=body)
        self._server_headers(resp)
        self._send(tx.respond(resp, now))
        self._sched(tx)
        if 200 <= status < 300:
            d = Dialog.as_uas(tx.request, local_tag=session.local_tag,
                              local_contact=contact, source=session.source)
            session.dialog = d
            self._dialogs[d.key] = session
            session.state = "answered"
            session.ok_data = resp.encode()
            session.ok_dest = tx.dest
            session.interval = T1
            session.retrans_at = now + T1
            session.end_at = now + 64 * T1
            self._sched(session)
        elif status >= 300:
            session.state = "terminated"

    def respond_reinvite(self, session: Session, status: int, reason: str | None = None, *,
                         body: bytes = b"", now: float) -> None:
        tx = session.reinvite_tx
        if tx is None or tx.state != TxState.PROCEEDING:
            return
        contact = session.dialog.local_contact if session.dialog else f"<{self.contact_uri}>"
        hdrs = [("Contact", contact)] if status < 300 else []
        if 200 <= status < 300:
            hdrs += self._apply_timer(session, tx.request, now)
            if body:
                session.local_sdp = body
        self._reply(tx, status, reason, headers=hdrs, body=body, now=now)
        # a 2xx to a re-INVITE is not retransmitted here: the ACK is best-effort and the
        # media state is already applied; the peer's retransmitted re-INVITE gets it again

    def bye(self, session: Session, now: float) -> None:
        """Hang up a session in any state: BYE, CANCEL, or 480 for an unanswered INVITE."""
        if session.state == "terminated":
            return
        if session.role == "uas":
            if session.state == "incoming":
                self.respond(session, 480, "Hung up", now=now)
            elif session.state == "answered":
                session.bye_pending = True  # no BYE before the ACK (RFC 3261 §15)
            else:
                self._send_bye(session, now)
        elif session.state in ("calling", "early"):
            self.cancel(session, now)
        else:
            self._send_bye(session, now)

    def _send_bye(self, session: Session, now: float) -> None:
        assert session.dialog is not None
        req = session.dialog.request("BYE", self.via())
        self._server_headers(req)
        self._start_client(req, session.dialog.next_hop(req), now, owner=("bye", session))
        self._terminate(session)

    def _terminate(self, session: Session) -> None:
        session.state = "terminated"
        session.retrans_at = session.end_at = None
        session.timer = session.timer_at = session.expires_at = None
        if session.dialog:
            self._dialogs.pop(session.dialog.key, None)

    # -- session timers (RFC 4028) ------------------------------------------------------

    def _apply_timer(self, session: Session, req: Request, now: float) -> list[tuple[str, str]]:
        """Negotiate the timer of a request we answer 2xx (INVITE, re-INVITE, UPDATE),
        start it on the session and return the headers for the 2xx."""
        # only the caller's side: a handler leg (we are its uac) runs no timer; its phone
        # is registered and watched by the dead-call guard instead
        t = negotiate(req, min_se=self.min_se) if session.role == "uas" else None
        if not isinstance(t, Timer):
            session.timer = session.timer_at = session.expires_at = None
            return []
        self._start_timer(session, t, we_refresh=t.refresher == "uas", now=now)
        return t.headers()

    def _start_timer(self, session: Session, t: Timer, *, we_refresh: bool, now: float) -> None:
        session.timer, session.we_refresh, session.refreshing = t, we_refresh, False
        session.expires_at = now + t.interval
        session.timer_at = now + (t.interval / 2 if we_refresh else t.bye_after())
        self._sched(session)

    def _timer_due(self, session: Session, now: float) -> None:
        t = session.timer
        if t is None or session.state == "terminated":
            session.timer_at = None
            return
        if session.we_refresh and not session.refreshing and session.dialog is not None \
                and session.expires_at is not None and now < session.expires_at - 1:
            self._send_refresh(session, t, now)
            session.timer_at = session.expires_at
            return
        # the refresh did not come (or ours did not succeed) in time: end the session
        self.counters["session_timer_expired"] += 1
        session.timer_at = None
        if session.state == "answered":
            session.state = "confirmed"
        self._send_bye(session, now)
        self._events.append(SessionExpired(session, t.interval))

    def _send_refresh(self, session: Session, t: Timer, now: float) -> None:
        assert session.dialog is not None
        req = session.dialog.request(
            "INVITE", self.via(), body=session.local_sdp,
            headers=[("Session-Expires", f"{t.interval};refresher=uac"),
                     ("Min-SE", str(self.min_se)), ("Supported", "timer"), ("Allow", ALLOW)])
        self._server_headers(req)
        session.refreshing = True
        self._start_client(req, session.dialog.next_hop(req), now, owner=("refresh", session))

    def _refresh_response(self, session: Session, tx: ClientTransaction, resp: Response,
                          now: float) -> None:
        if resp.status < 200 or session.state == "terminated" or session.dialog is None:
            return
        session.refreshing = False
        if resp.status < 300:
            ack = session.dialog.request("ACK", self.via(), cseq=tx.request.cseq[0])
            session.ack = ack  # re-sent on a retransmitted 2xx (_stray_response)
            self._send_ack(ack, session.dialog.next_hop(ack))
            t = from_response(resp)
            if t is None:
                session.timer = session.timer_at = session.expires_at = None
            else:
                # in our re-INVITE we are the uac
                self._start_timer(session, t, we_refresh=t.refresher == "uac", now=now)
        elif resp.status in (408, 481):
            # RFC 4028 §10 / RFC 5057: the dialog is gone at the peer: end it
            self._refresh_failed(session, now)
        elif resp.status == 422 and session.timer is not None:
            try:
                larger = max(int((resp.get("Min-SE") or "").split(";")[0]),
                             session.timer.interval)
            except ValueError:
                return
            session.timer = Timer(larger, session.timer.refresher)
            session.timer_at = now  # retry at once with the larger interval
            self._sched(session)
        elif session.expires_at is not None and session.timer_at == session.expires_at:
            # 491 or another refusal: the session goes on; try again after a pause
            retry = now + min(4.0, max(0.0, session.expires_at - now) / 4)
            if retry < session.expires_at - 1:
                session.timer_at = retry
                self._sched(session)

    def _refresh_failed(self, session: Session, now: float) -> None:
        t = session.timer
        if session.state == "terminated" or t is None:
            return
        self.counters["session_timer_expired"] += 1
        self._send_bye(session, now)
        self._events.append(SessionExpired(session, t.interval))

    def _session_timer(self, session: Session, now: float) -> None:
        if session.timer_at is not None and now >= session.timer_at:
            self._timer_due(session, now)
        if session.end_at is not None and now >= session.end_at:
            session.retrans_at = session.end_at = None
            if session.state == "answered":
                session.state = "confirmed"  # treat as confirmed so BYE can go
                self._send_bye(session, now)
                self._events.append(AckTimeout(session))
            return
        if session.retrans_at is not None and now >= session.retrans_at and session.ok_data:
            self._out.append((session.ok_data, session.ok_dest))
            session.interval = min(session.interval * 2, T2)
            session.retrans_at = now + session.interval

    def _server_timer(self, tx: ServerTransaction, now: float) -> None:
        self._send(tx.on_timer(now))
        if tx.state == TxState.TERMINATED:
            self._server.pop(_server_key(tx.request), None)
            self._server_alt.pop((tx.request.call_id, tx.request.cseq[0],
                                  tx.request.from_.tag or ""), None)
            self._tx_session.pop(tx, None)

    # -- UAC ---------------------------------------------------------------------------

    def invite(self, uri: str, *, from_user: str = "controlroom", from_display: str = "",
               routes: Iterable[str] = (), dest: Addr | None = None, body: bytes = b"",
               credentials: tuple[str, str] | None = None, user: Any = None,
               now: float) -> Session:
        """Start an outbound INVITE. ``routes`` is a pre-loaded route set (outbound proxy)."""
        target = parse_uri(uri)
        req = Request(method="INVITE", uri=target)
        req.add("Via", self.via())
        for r in routes:
            req.add("Route", r)
        req.add("Max-Forwards", "70")
        frm = NameAddr(SipUri("sip", from_user, self.domain), from_display, {"tag": new_tag()})
        req.add("From", str(frm))
        req.add("To", f"<{target}>")
        req.add("Call-ID", f"{secrets.token_hex(12)}@{self.host}")
        req.add("CSeq", "1 INVITE")
        first = parse_name_addr(req.get_all("Route")[0]).uri if req.get_all("Route") else target
        hop = resolve(first, (first.host, first.host_port[1]))
        if dest is None:
            dest = hop
        elif not isinstance(dest, Hop):
            dest = with_transport(dest, transport_of(hop), getattr(hop, "name", ""))
        req.add("Contact", f"<{self.contact_for(dest)}>")
        req.add("Allow", ALLOW)
        self._server_headers(req)
        if body:
            req.add("Content-Type", "application/sdp")
            req.body = body
        session = Session("uac", req, user=user, state="calling", dest=dest,
                          credentials=credentials, local_tag=frm.tag or "")
        session.client_tx = self._start_client(req, dest, now, owner=("invite", session))
        return session

    def cancel(self, session: Session, now: float) -> None:
        """CANCEL an outbound INVITE (deferred until a provisional arrived)."""
        if session.role != "uac" or session.state not in ("calling", "early") or session.cancelled:
            return
        session.cancelled = True
        if session.state == "calling":
            session.cancel_pending = True
            return
        self._send_cancel(session, now)

    def _send_cancel(self, session: Session, now: float) -> None:
        inv = session.client_tx.request if session.client_tx else session.invite
        req = Request(method="CANCEL", uri=inv.uri)
        req.add("Via", inv.get_all("Via")[0])
        for r in inv.get_all("Route"):
            req.add("Route", r)
        req.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            req.add(name, inv.get(name) or "")
        req.add("CSeq", f"{inv.cseq[0]} CANCEL")
        self._server_headers(req)
        self._start_client(req, session.dest, now, owner=("cancel", session))

    def _start_client(self, req: Request, dest: Addr, now: float, *, owner: Any) -> ClientTransaction:
        dest = self._stamp(req, dest)
        tx = ClientTransaction(req, dest, now)
        self._client[tx.key] = tx
        self._owner[tx] = owner
        self._send(tx.start())
        self._sched(tx)
        return tx

    def _client_timer(self, tx: ClientTransaction, now: float) -> None:
        self._send(tx.on_timer(now))
        if tx.state == TxState.TERMINATED:
            self._client.pop(tx.key, None)
            owner = self._owner.pop(tx, None)
            if tx.timed_out and owner is not None:
                self._client_failed(owner, 408, "Request Timeout", now)

    def transport_error(self, addr: Addr, now: float) -> None:
        """ICMP port unreachable (or send error) towards ``addr``: fail requests in flight."""
        for tx in [t for t in self._client.values() if t.dest == addr]:
            tx.transport_error()
            self._client.pop(tx.key, None)
            owner = self._owner.pop(tx, None)
            if owner is not None:
                self._client_failed(owner, 503, "Unreachable", now)

    def _client_failed(self, owner: Any, status: int, reason: str, now: float) -> None:
        kind, obj = owner
        if kind == "invite" and obj.state in ("calling", "early"):
            obj.state = "terminated"
            self._events.append(Failed(obj, status, reason))
        elif kind == "register":
            self._register_failed(obj, status, now)
        elif kind == "refresh":
            self._refresh_failed(obj, now)

    def _on_response(self, resp: Response, addr: Addr, now: float) -> None:
        try:
            via = resp.top_via
        except SipParseError:
            self.counters["dropped"] += 1
            return
        tx = self._client.get((via.branch or "", resp.cseq[1]))
        if tx is None:
            self._stray_response(resp, now)
            return
        sends, deliver = tx.receive(resp, now)
        self._send(sends)
        self._sched(tx)
        if not deliver:
            return
        owner = self._owner.get(tx)
        if owner is None:
            return
        kind, obj = owner
        if kind == "invite":
            self._invite_response(obj, tx, resp, addr, now)
        elif kind == "refresh":
            self._refresh_response(obj, tx, resp, now)
        elif kind == "register":
            self._register_response(obj, resp, now)

    def _stray_response(self, resp: Response, now: float) -> None:
        """A 2xx retransmission after the transaction ended: re-send the ACK."""
        if resp.cseq[1] == "INVITE" and 200 <= resp.status < 300:
            session = self._dialogs.get((resp.call_id, resp.from_.tag or "", resp.to.tag or ""))
            if session is not None and session.ack is not None and session.dialog:
                self._send_ack(session.ack, session.dialog.next_hop(session.ack))
                return
        self.counters["dropped"] += 1

    def _invite_response(self, session: Session, tx: ClientTransaction, resp: Response,
                         addr: Addr, now: float) -> None:
        code = resp.status
        if code < 200:
            if session.state == "calling":
                session.state = "early"
                if session.cancel_pending:
                    session.cancel_pending = False
                    self._send_cancel(session, now)
            if session.state == "early":
                self._events.append(Progress(session, resp))
            return
        if code < 300:
            if session.dialog is None:
                d = Dialog.as_uac(tx.request, resp, source=addr)
                session.dialog = d
                self._dialogs[d.key] = session
                ack = d.request("ACK", self.via(), cseq=tx.request.cseq[0])
                for n in ("Authorization", "Proxy-Authorization"):
                    for v in tx.request.get_all(n):
                        ack.add(n, v)
                session.ack = ack
                session.state = "confirmed"
                self._send_ack(ack, d.next_hop(ack))
                self._events.append(Answered(session, resp))
            elif resp.to.tag != session.dialog.remote_tag:
                self._end_forked_2xx(tx, resp, addr, now)
            elif session.ack is not None:
                self._send_ack(session.ack, session.dialog.next_hop(session.ack))
            return
        if code in (401, 407) and self._retry_auth(session, tx, resp, now):
            return
        if session.state in ("calling", "early"):
            session.state = "terminated"
            self._events.append(Failed(session, code, resp.reason))

    def _end_forked_2xx(self, tx: ClientTransaction, resp: Response, addr: Addr,
                        now: float) -> None:
        """A second phone answered a forked INVITE: ACK its 2xx and hang it up at once
        (RFC 3261 §13.2.2.4); only the first answer is kept."""
        d = Dialog.as_uac(tx.request, resp, source=addr)
        ack = d.request("ACK", self.via(), cseq=tx.request.cseq[0])
        self._send_ack(ack, d.next_hop(ack))
        bye = d.request("BYE", self.via())
        self._server_headers(bye)
        self._start_client(bye, d.next_hop(bye), now, owner=("bye", None))
        self.counters["forked_2xx_hung_up"] += 1

    def _retry_auth(self, session: Session, tx: ClientTransaction, resp: Response,
                    now: float) -> bool:
        if session.credentials is None or session.auth_attempts >= 2 or session.cancelled:
            return False
        req = with_credentials(tx.request, resp, session.credentials, self.via())
        if req is None:
            return False
        session.auth_attempts += 1
        session.state = "calling"
        session.client_tx = self._start_client(req, session.dest, now, owner=("invite", session))
        return True

    def requests_in_flight(self, method: str) -> int:
        """Client transactions of ``method`` still waiting for a final response."""
        return sum(1 for tx in self._client.values() if tx.request.method == method
                   and tx.state in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING))

    def session_count(self) -> int:
        return len(self._dialogs)


def _server_key(req: Request, method: str | None = None) -> tuple[str, str, str]:
    """RFC 3261 §17.2.3 matching: branch + sent-by + method (ACK/CANCEL map to INVITE)."""
    via = req.top_via
    branch = via.branch or ""
    m = method or req.method
    if not branch.startswith("z9hG4bK"):
        # RFC 2543 peer: fall back to dialog identifiers
        branch = f"2543|{req.call_id}|{req.cseq[0]}|{req.from_.tag}"
    return branch, f"{via.host}:{via.port or 5060}", m


def _response_dest(req: Request, source: Addr) -> Addr:
    """Where a response to ``req`` goes: back on the connection it came on over a stream
    (RFC 3261 §18.2.2), else the top Via's address (with received/rport)."""
    if is_reliable(source):
        return source
    return req.top_via.response_address()


def _parse_via_safe(v: str) -> Via | None:
    try:
        from .uri import parse_via
        return parse_via(v)
    except SipParseError:
        return None
