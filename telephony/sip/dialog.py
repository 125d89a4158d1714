"""SIP dialogs (RFC 3261 §12): tags, CSeq spaces, remote target and route set.

A dialog is created by the UAS when it answers (route set = Record-Route in request
order) and by the UAC on a 2xx/18x with a To tag (route set = Record-Route reversed).
It builds in-dialog requests (BYE, ACK for 2xx, re-INVITE) with the right Request-URI,
Route headers and next hop, honouring loose (``;lr``) and strict routers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .hop import uri_transport, with_transport
from .message import Request, Response
from .uri import NameAddr, SipUri, is_ip, parse_name_addr

Addr = tuple[str, int]


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    """Our From/To value without tag (name-addr text)."""
    remote_uri: str
    local_seq: int
    remote_seq: int | None
    remote_target: SipUri
    route_set: list[NameAddr] = field(default_factory=list)
    local_contact: str = ""
    peer: Addr = ("127.0.0.1", 5060)
    """Where the dialog's last message came from: next hop when a URI host is a name."""

    @property
    def key(self) -> tuple[str, str, str]:
        return self.call_id, self.local_tag, self.remote_tag

    @classmethod
    def as_uas(cls, req: Request, *, local_tag: str, local_contact: str, source: Addr) -> Dialog:
        contact = req.contact
        frm, to = req.from_, req.to
        return cls(
            call_id=req.call_id, local_tag=local_tag, remote_tag=frm.tag or "",
            local_uri=_untagged(to), remote_uri=_untagged(frm), local_seq=0,
            remote_seq=req.cseq[0],
            remote_target=contact.uri if contact else frm.uri,
            route_set=[parse_name_addr(v) for v in req.get_all("Record-Route")],
            local_contact=local_contact, peer=source)

    @classmethod
    def as_uac(cls, req: Request, resp: Response, *, source: Addr) -> Dialog:
        contact = resp.contact
        return cls(
            call_id=req.call_id, local_tag=req.from_.tag or "", remote_tag=resp.to.tag or "",
            local_uri=_untagged(req.from_), remote_uri=_untagged(resp.to),
            local_seq=req.cseq[0], remote_seq=None,
            remote_target=contact.uri if contact else req.uri,
            route_set=[parse_name_addr(v) for v in reversed(resp.get_all("Record-Route"))],
            local_contact=req.get("Contact") or "", peer=source)

    def update_from_2xx(self, resp: Response) -> None:
        """A 2xx may refresh the remote target (RFC 3261 §12.2.1.2)."""
        if resp.contact:
            self.remote_target = resp.contact.uri

    def request(self, method: str, via: str, *, body: bytes = b"",
                content_type: str = "application/sdp", cseq: int | None = None,
                headers: list[tuple[str, str]] | None = None) -> Request:
        """Build an in-dialog request; ``cseq`` given only for ACK (the INVITE's number)."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        uri, routes = self.remote_target, [str(r) for r in self.route_set]
        if self.route_set and "lr" not in self.route_set[0].uri.params:
            # strict router: it goes in the Request-URI, remote target last in Route
            uri = self.route_set[0].uri
            routes = [str(r) for r in self.route_set[1:]] + [f"<{self.remote_target}>"]
        req = Request(method=method, uri=uri)
        req.add("Via", via)
        for r in routes:
            req.add("Route", r)
        req.add("Max-Forwards", "70")
        req.add("From", f"{self.local_uri};tag={self.local_tag}")
        req.add("To", f"{self.remote_uri};tag={self.remote_tag}")
        req.add("Call-ID", self.call_id)
        req.add("CSeq", f"{cseq} {method}")
        if method not in ("ACK", "BYE", "CANCEL") and self.local_contact:
            req.add("Contact", self.local_contact)
        for n, v in headers or []:
            req.add(n, v)
        if body:
            req.add("Content-Type", content_type)
            req.body = body
        return req

    def next_hop(self, req: Request) -> Addr:
        """Where to send an in-dialog request: first Route, else the Request-URI."""
        routes = req.get_all("Route")
        uri = parse_name_addr(routes[0]).uri if routes else req.uri
        return resolve(uri, self.peer)

    def accept_remote_cseq(self, cseq: int) -> bool:
        """False for an out-of-order request (answer 500, RFC 3261 §12.2.2)."""
        if self.remote_seq is not None and cseq <= self.remote_seq:
            return False
        self.remote_seq = cseq
        return True


def resolve(uri: SipUri, fallback: Addr) -> Addr:
    """Host/port of a URI when it is an address literal; otherwise ``fallback``; marked
    with the URI's transport (:func:`telephony.sip.hop.uri_transport`) and, for TLS, the
    URI's host as the name the certificate must carry.

    No DNS here: the sans-IO core must never block. ``localhost`` is allowed for tests.
    """
    host, port = uri.host_port
    transport = uri_transport(uri)
    name = uri.host if transport == "tls" else ""
    maddr = uri.params.get("maddr")
    if maddr and is_ip(maddr):
        host = maddr
    if host == "localhost":
        host = "127.0.0.1"
    if is_ip(host):
        return with_transport((host, port), transport, name)
    return with_transport(fallback, transport, name)


def _untagged(addr: NameAddr) -> str:
    params = {k: v for k, v in addr.params.items() if k != "tag"}
    return str(NameAddr(addr.uri, addr.display, params))
