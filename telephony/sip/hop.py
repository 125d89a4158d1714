"""Where a SIP message goes or came from: an address plus the transport that carries it.

The core keys everything (transactions, dialogs, the source guard) on ``(host, port)``
pairs. A :class:`Hop` is such a pair that also names its transport (``udp``, ``tcp``,
``tls``) and, for TLS, the name the peer's certificate must carry. It compares and hashes
as the plain pair, so every table keyed on addresses keeps working; code that does not
care about transports never sees the difference. A plain pair means UDP.

What picks the transport (RFC 3261 §18, §26.2, RFC 3263 without DNS):

* a message received: the transport it came on (the I/O adapter passes a Hop);
* a request sent: ``sips:`` means TLS, else ``;transport=tcp|tls|udp`` on the URI
  (first Route, else Request-URI), else UDP;
* a response: back on the connection the request came on (§18.2.2), so its Hop is the
  request's source.
"""

from __future__ import annotations

from .uri import SipUri

RELIABLE = frozenset({"tcp", "tls"})
"""Stream transports: no retransmissions by the transaction layer (RFC 3261 §17)."""
TRANSPORTS = ("udp", "tcp", "tls")

UDP_SIZE_LIMIT = 1300
"""A request larger than this goes over TCP instead of UDP when TCP is available
(RFC 3261 §18.1.1: 200 bytes under a 1500-byte path MTU)."""


class Hop(tuple[str, int]):
    """``(host, port)`` with ``transport`` and ``name`` (the TLS server name)."""

    transport: str
    name: str

    def __new__(cls, host: str, port: int, transport: str = "udp", name: str = "") -> Hop:
        self = super().__new__(cls, (host, port))
        self.transport = transport
        self.name = name or host
        return self

    def __getnewargs__(self) -> tuple[str, int, str, str]:  # type: ignore[override]
        return self[0], self[1], self.transport, self.name

    def __repr__(self) -> str:
        return f"Hop({self[0]!r}, {self[1]}, {self.transport!r})"

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE


def transport_of(addr: tuple[str, int]) -> str:
    """``udp``, ``tcp`` or ``tls`` (a plain pair is UDP)."""
    return getattr(addr, "transport", "udp")


def is_reliable(addr: tuple[str, int]) -> bool:
    return transport_of(addr) in RELIABLE


def uri_transport(uri: SipUri) -> str:
    """The transport a request to ``uri`` uses: ``sips:`` is TLS, else ``;transport=``,
    else UDP. Unknown transports (sctp, ws) are returned as named, for the caller to
    refuse."""
    if uri.scheme.lower() == "sips":
        return "tls"
    return (uri.params.get("transport") or "udp").lower()


def with_transport(addr: tuple[str, int], transport: str, name: str = "") -> tuple[str, int]:
    """``addr`` marked with ``transport`` (a plain pair for UDP without a name)."""
    if transport == "udp" and not name:
        return (addr[0], addr[1])
    return Hop(addr[0], addr[1], transport, name or getattr(addr, "name", ""))
