"""Sans-IO SIP (RFC 3261) for controlroom: messages, URIs, SDP, digest, transactions,
dialogs and the user agent core. No sockets, no clocks: see :mod:`telephony.sip.ua`."""

from .message import Request, Response, make_response, parse
from .register import Registration
from .ua import Session, UserAgent
from .uri import NameAddr, SipUri, Via, parse_name_addr, parse_uri, parse_via

__all__ = [
    "NameAddr", "Registration", "Request", "Response", "Session", "SipUri", "UserAgent", "Via",
    "make_response", "parse", "parse_name_addr", "parse_uri", "parse_via",
]
