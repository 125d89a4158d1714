"""What an inbound request tells the engine: caller identity, location, INFO DTMF.

Pure functions on parsed messages (no I/O), kept apart from the engine so they can be
tested on recorded messages.
"""

from __future__ import annotations

from telephony.errors import SipError

from .message import Request, body_parts
from .uri import parse_name_addr


def location(req: Request) -> str | None:
    """Geolocation header value, else a PIDF-LO body part (RFC 6442), else None."""
    parts = body_parts(req)
    if req.get("Geolocation"):
        return req.get("Geolocation")
    if "application/pidf+xml" in parts:
        return parts["application/pidf+xml"].decode("utf-8", "replace")
    return None


_DIGITS = set("0123456789*#ABCD")


def info_digit(req: Request) -> str | None:
    """The digit of a SIP INFO DTMF body (application/dtmf-relay ``Signal=5`` or
    application/dtmf ``5``); None for anything else."""
    ctype = (req.get("Content-Type") or "").split(";")[0].strip().lower()
    text = req.body.decode("utf-8", "replace").strip()
    if ctype == "application/dtmf-relay":
        for line in text.splitlines():
            k, _, v = line.partition("=")
            if k.strip().lower() == "signal":
                text = v.strip()
                break
        else:
            return None
    elif ctype != "application/dtmf":
        return None
    digit = text.upper()
    return digit if len(digit) == 1 and digit in _DIGITS else None


def caller_identity(req: Request) -> tuple[str, str]:
    """Caller number and display: P-Asserted-Identity first (trusted network), else From."""
    for value in req.get_all("P-Asserted-Identity") + [req.get("From") or ""]:
        try:
            na = parse_name_addr(value)
        except SipError:
            continue
        return na.uri.number or na.uri.user, na.display
    return "", ""

