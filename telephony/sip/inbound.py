"""What an inbound request tells the engine: caller identity, location, INFO DTMF.

Pure functions on parsed messages (no I/O), kept apart from the engine so they can be
tested on recorded messages.
"""

from __future__ import annotations

from typing import Any

from telephony import pidf
from telephony.errors import SipError
from telephony.numbers import CallerNumber, from_uri_user

from .message import Request
from .uri import parse_name_addr, split_outside

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
    """Caller number as given (``+447700900123``, never stripped of its ``+``) and
    display: P-Asserted-Identity first (trusted network), else From."""
    number, display = caller_number(req)
    return number.raw, display


def caller_number(req: Request, *, country_code: str = "44") -> tuple[CallerNumber, str]:
    """Caller number (raw and normalised, see :mod:`telephony.numbers`) and display name.

    P-Asserted-Identity first (the trusted network's; a ``tel:`` one is preferred, as it
    carries the number), else From. An anonymous From (RFC 3323) with no asserted
    identity is a withheld number."""
    values: list[str] = []
    for pai in req.get_all("P-Asserted-Identity"):
        values.extend(v for v in split_outside(pai, ",") if v.strip())
    values.sort(key=lambda v: 0 if "tel:" in v.lower() else 1)
    for value in values + [req.get("From") or ""]:
        try:
            na = parse_name_addr(value)
        except SipError:
            continue
        return (from_uri_user(na.uri.user, host=na.uri.host, display=na.display,
                              country_code=country_code), na.display)
    return CallerNumber(raw="", normalised="", withheld=True), ""


# -- location (RFC 6442 Geolocation, RFC 4119/5491 PIDF-LO) ---------------------------

MAX_LOCATION_TEXT = 4096
"""A location kept as given (by value in another form, or unreadable) is cut here."""


def multipart(req: Request) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body as ``(headers, content)``, header names lower-case
    (``content-type``, ``content-id``); a non-multipart body is one part."""
    ctype = req.get("Content-Type") or ("application/sdp" if req.body else "")
    if not req.body:
        return []
    main, _, params = ctype.partition(";")
    if not main.strip().lower().startswith("multipart/"):
        return [({"content-type": ctype.strip()}, req.body)]
    boundary = ""
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip().strip('"')
    if not boundary:
        return []
    out = []
    for part in req.body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        part = part.lstrip(b"\r\n")
        sep = part.find(b"\r\n\r\n")
        if sep < 0:
            continue
        headers: dict[str, str] = {}
        for line in part[:sep].decode("utf-8", "replace").split("\r\n"):
            n, colon, v = line.partition(":")
            if colon:
                headers.setdefault(n.strip().lower(), v.strip())
        out.append((headers, part[sep + 4:].removesuffix(b"\r\n")))
    return out


def _as_given(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:MAX_LOCATION_TEXT]


def _from_pidf(data: bytes, base: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    try:
        loc = pidf.parse(data)
    except pidf.PidfError as exc:
        # never refuse a call for its location: keep the text, say why it was not read
        return _as_given(data), {**base, "parsed": False, "error": str(exc)}
    detail = {**base, "parsed": True, "error": None, **loc}
    return pidf.summary(loc) or _as_given(data), detail


def location_info(req: Request) -> tuple[str | None, dict[str, Any] | None]:
    """The caller's location: ``(text, detail)``, or ``(None, None)`` when none was sent.

    ``Geolocation: <cid:...>`` (RFC 6442 location by value) names the body part whose
    Content-ID matches; it is read as PIDF-LO (:mod:`telephony.pidf`) into ``detail``
    (``parsed`` True, ``geodetic``, ``civic``, ``accuracy``...) and ``text`` is a one-line
    summary. A reference (``http:``, ``https:``, ``sip:``...) is kept as given with
    ``parsed`` False, as is a PIDF-LO that cannot be read (``error`` says why). A PIDF-LO
    part without a Geolocation header is read as well (older SBCs)."""
    header = req.get("Geolocation")
    parts = multipart(req)
    pidfs = [(h, c) for h, c in parts
             if h.get("content-type", "").split(";")[0].strip().lower() == "application/pidf+xml"]
    if header:
        refs = [v.strip().strip("<>").strip() for v in split_outside(header, ",") if v.strip()]
        for ref in refs:
            if ref.lower().startswith("cid:"):
                cid = ref[4:]
                base = {"by": "value", "uri": ref}
                for h, content in parts:
                    if h.get("content-id", "").strip().strip("<>") == cid:
                        return _from_pidf(content, base)
                return _as_given(header), {**base, "parsed": False,
                                           "error": f"no body part with Content-ID <{cid}>"}
        first = refs[0] if refs else header
        return _as_given(header), {"by": "reference", "uri": first, "parsed": False,
                                   "error": None}
    if pidfs:
        return _from_pidf(pidfs[0][1], {"by": "value", "uri": None})
    return None, None

