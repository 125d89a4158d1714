"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state). Sans-IO.

Theory of operation: a transaction is fed the messages that match it and ``now`` (a
monotonic clock in seconds) and returns the datagrams to send. ``deadline`` is when
``on_timer`` must next be called (None: no timer running). Timers:

========  ==========================================  ==========================
client    INVITE: A (retransmit, T1 doubling), B       non-INVITE: E (T1 doubling
          (64*T1 give-up in Calling), D (32 s absorb    to T2), F (64*T1 give-up),
          final retransmissions), M (64*T1 absorb 2xx)  K (T4 absorb)
server    INVITE: G (retransmit non-2xx final, T1      non-INVITE: J (64*T1 absorb
          doubling to T2), H (64*T1 wait for ACK),      request retransmissions)
          I (T4 absorb ACKs), L (64*T1 after 2xx)
========  ==========================================  ==========================

2xx responses to INVITE are retransmitted by the UA core (ua.py), not here.

Memory: once a transaction has its final response it only absorbs retransmissions
(for up to 64*T1 = 32 s on UDP), and at 30 calls/s that is ~1,000 finished calls'
transactions at any moment. So from then on it keeps its request as encoded bytes
and holds the parsed :class:`Request` (and a client's final :class:`Response`) only
weakly: while the core still uses it (the session keeps its INVITE) ``request`` is
that object; once nothing else does it is freed and ``request`` parses the bytes
again when asked (at termination, for the core to unindex it). ``bench/sip_memory.py``
measures the difference.

Over a reliable transport (TCP, TLS: the destination or source is a
:class:`~telephony.sip.hop.Hop` marked so) nothing is retransmitted here: timers A, E and
G are not used, and D, I, J and K are zero (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1,
§17.2.2); B, F and H still bound the wait for an answer or an ACK. A server
transaction's responses go to the request's source, i.e. back on its connection
(§18.2.2), not to the Via's sent-by.
"""

from __future__ import annotations

import enum
import weakref

from .hop import is_reliable
from .message import Request, Response, parse

T1 = 0.5
"""RTT estimate (s)."""
T2 = 4.0
"""Longest retransmit interval for non-INVITE requests and INVITE responses (s)."""
T4 = 5.0
"""Longest time a message stays in the network (s)."""

Addr = tuple[str, int]
Send = tuple[bytes, Addr]


class TxState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class _Timers:
    """Retransmit and give-up instants shared by both transaction kinds, and the
    request, held strongly until the final response, then as bytes plus a weak
    reference (module docstring)."""

    retrans_at: float | None = None
    interval: float = T1
    end_at: float | None = None
    _request: Request | None = None
    _request_ref: weakref.ReferenceType[Request] | None = None
    _request_data: bytes = b""

    @property
    def request(self) -> Request:
        """The request this transaction is for (parsed again from its bytes if the
        parsed one was freed after the final response)."""
        req = self._request
        if req is None and self._request_ref is not None:
            req = self._request_ref()
        if req is None:
            parsed = parse(self._request_data)
            if not isinstance(parsed, Request):  # (our own encoding of a parsed request)
                raise ValueError("transaction request bytes do not parse as a request")
            req = parsed
            self._request_ref = weakref.ref(req)
        return req

    def _shed(self, data: bytes | None = None) -> None:
        """Final response reached: keep the request as bytes, the parsed one weakly."""
        req = self._request
        if req is None:
            return
        self._request_data = data if data is not None else req.encode()
        self._request_ref = weakref.ref(req)
        self._request = None

    @property
    def deadline(self) -> float | None:
        times = [t for t in (self.retrans_at, self.end_at) if t is not None]
        return min(times) if times else None


class ClientTransaction(_Timers):
    """Sends a request, retransmits it, and filters the responses handed to the core."""

    def __init__(self, request: Request, dest: Addr, now: float) -> None:
        self._request = request
        self.method = request.method
        self.dest = dest
        self.invite = request.method == "INVITE"
        self.branch = request.top_via.branch or ""
        self.state = TxState.CALLING if self.invite else TxState.TRYING
        self.timed_out = False
        """True once B/F fired: the core reports 408 to its user."""
        self._final: weakref.ReferenceType[Response] | None = None
        self.reliable = is_reliable(dest)
        self._data = request.encode()
        self._ack: bytes | None = None
        self.retrans_at = None if self.reliable else now + T1
        self.end_at = now + 64 * T1

    @property
    def key(self) -> tuple[str, str]:
        return self.branch, self.method

    @property
    def final(self) -> Response | None:
        """The final response received, while the core still holds it (held weakly)."""
        return None if self._final is None else self._final()

    def _finished(self, resp: Response) -> None:
        self._final = weakref.ref(resp)
        self._shed(self._data)

    def start(self) -> list[Send]:
        return [(self._data, self.dest)]

    def receive(self, resp: Response, now: float) -> tuple[list[Send], bool]:
        """Feed a matching response; returns (datagrams, whether to pass it to the core)."""
        s = self.state
        if s == TxState.TERMINATED:
            return [], False
        code = resp.status
        if self.invite:
            if code < 200:
                if s in (TxState.CALLING, TxState.PROCEEDING):
                    self.state = TxState.PROCEEDING
                    self.retrans_at = None
                    self.end_at = None  # timer B only runs in Calling; the core times rings out
                    return [], True
                return [], False
            if code < 300:
                if s in (TxState.CALLING, TxState.PROCEEDING):
                    self.state = TxState.ACCEPTED
                    self._finished(resp)
                    self.retrans_at = None
                    self.end_at = now + 64 * T1
                # in Accepted, 2xx retransmissions go up so the core re-sends its ACK
                return [], s in (TxState.CALLING, TxState.PROCEEDING, TxState.ACCEPTED)
            if s in (TxState.CALLING, TxState.PROCEEDING):
                self.state = TxState.COMPLETED
                self._ack = self._build_ack(resp).encode()
                self._finished(resp)
                self.retrans_at = None
                self.end_at = now + (0.0 if self.reliable else 32.0)  # timer D
                return [(self._ack, self.dest)], True
            if s == TxState.COMPLETED and self._ack:
                return [(self._ack, self.dest)], False
            return [], False
        if s not in (TxState.TRYING, TxState.PROCEEDING):
            return [], False
        if code < 200:
            self.state = TxState.PROCEEDING
            return [], True
        self.state = TxState.COMPLETED
        self._finished(resp)
        self.retrans_at = None
        self.end_at = now + (0.0 if self.reliable else T4)  # timer K
        return [], True

    def on_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        if self.end_at is not None and now >= self.end_at:
            if self.state in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING):
                self.timed_out = True
            self.state = TxState.TERMINATED
            self.retrans_at = self.end_at = None
            return out
        if self.retrans_at is not None and now >= self.retrans_at:
            out.append((self._data, self.dest))
            if self.invite:
                self.interval *= 2
            elif self.state == TxState.PROCEEDING:
                self.interval = T2
            else:
                self.interval = min(self.interval * 2, T2)
            self.retrans_at = now + self.interval
        return out

    def transport_error(self) -> None:
        """ICMP unreachable or send failure: the request cannot be delivered."""
        if self.state in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING):
            self.timed_out = True
        self.state = TxState.TERMINATED
        self.retrans_at = self.end_at = None

    def _build_ack(self, resp: Response) -> Request:
        """ACK for a non-2xx final (RFC 3261 §17.1.1.3): same branch, To from the response."""
        req = self.request
        ack = Request(method="ACK", uri=req.uri)
        ack.add("Via", req.get_all("Via")[0])
        for route in req.get_all("Route"):
            ack.add("Route", route)
        ack.add("Max-Forwards", "70")
        ack.add("From", req.get("From") or "")
        ack.add("To", resp.get("To") or "")
        ack.add("Call-ID", req.call_id)
        ack.add("CSeq", f"{req.cseq[0]} ACK")
        return ack


class ServerTransaction(_Timers):
    """Holds the last response to a request and re-sends it on retransmissions."""

    def __init__(self, request: Request, now: float, source: Addr | None = None) -> None:
        """``source``: where the request came from; when it is a reliable Hop, responses
        go back to it (its connection) and nothing is retransmitted."""
        self._request = request
        self.invite = request.method == "INVITE"
        self.reliable = source is not None and is_reliable(source)
        self.dest: Addr = source if source is not None and self.reliable \
            else request.top_via.response_address()
        self.state = TxState.PROCEEDING if self.invite else TxState.TRYING
        self.last: bytes | None = None
        self.last_status = 0
        self.timed_out = False
        """True once timer H fired (no ACK for our non-2xx final)."""

    def respond(self, resp: Response, now: float) -> list[Send]:
        if self.state in (TxState.COMPLETED, TxState.CONFIRMED, TxState.ACCEPTED,
                          TxState.TERMINATED):
            return []  # a final response was already sent; never send two
        self.last = resp.encode()
        self.last_status = resp.status
        if resp.status < 200:
            self.state = TxState.PROCEEDING
            return [(self.last, self.dest)]
        self._shed()
        if self.invite and resp.status < 300:
            self.state = TxState.ACCEPTED
            self.end_at = now + 64 * T1
        elif self.invite:
            self.state = TxState.COMPLETED
            self.interval = T1
            self.retrans_at = None if self.reliable else now + T1  # timer G
            self.end_at = now + 64 * T1  # timer H
        else:
            self.state = TxState.COMPLETED
            self.end_at = now + (0.0 if self.reliable else 64 * T1)  # timer J
        return [(self.last, self.dest)]

    def on_retransmit(self) -> list[Send]:
        """The request came again: re-send our last response (if any)."""
        if self.last is None or self.state in (TxState.CONFIRMED, TxState.TERMINATED):
            return []
        return [(self.last, self.dest)]

    def on_ack(self, now: float) -> None:
        """ACK for our non-2xx final: stop retransmitting, absorb further ACKs (timer I)."""
        if self.state == TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self.retrans_at = None
            self.end_at = now + (0.0 if self.reliable else T4)  # timer I

    def on_timer(self, now: float) -> list[Send]:
        if self.end_at is not None and now >= self.end_at:
            if self.state == TxState.COMPLETED and self.invite:
                self.timed_out = True
            self.state = TxState.TERMINATED
            self.retrans_at = self.end_at = None
            return []
        if self.retrans_at is not None and now >= self.retrans_at and self.last:
            self.interval = min(self.interval * 2, T2)
            self.retrans_at = now + self.interval
            return [(self.last, self.dest)]
        return []
