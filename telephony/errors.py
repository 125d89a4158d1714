"""Errors of the telephony package. Each SIP error knows the response it implies."""

from __future__ import annotations


class TelephonyError(Exception):
    """Base of every telephony error."""


class SipError(TelephonyError):
    """A SIP-level problem that maps to a final response ``status`` / ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        """SIP status code to answer with (400, 404, 488, 503...)."""
        self.reason = reason
        """Human-readable reason; also used as the response reason phrase."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.reason!r})"


class SipParseError(SipError):
    """A message could not be parsed.

    ``partial`` holds whatever was parsed (a request with Via/From/To/Call-ID/CSeq can
    still be answered with ``status``); ``None`` when the bytes are not even SIP-shaped,
    in which case the datagram is dropped. ``kind`` names the fault in a few fixed words
    (``bad_content_length``, ``too_many_headers``, ``bad_bytes``...) for counters and logs.
    """

    def __init__(self, status: int, reason: str, partial: object | None = None, *,
                 kind: str = "malformed") -> None:
        super().__init__(status, reason)
        self.partial = partial
        self.kind = kind
        """Fault category: a stable counter / log key (the reason carries the details)."""


class SdpError(SipError):
    """An SDP body is malformed (400) or has nothing we can accept (488)."""


class EngineError(TelephonyError):
    """A command was given that the engine cannot carry out (unknown call_id, leg_id...)."""
