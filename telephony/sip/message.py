"""SIP messages: parse bytes into :class:`Request` / :class:`Response` and build them back.

RFC 3261 §7 and §20. Header names are case-insensitive and compact forms (``i``, ``f``,
``t``, ``v``, ``m``, ``l``, ``c``, ``k``...) are expanded. Headers that the grammar allows
as comma-separated lists (Via, Route, Record-Route, Contact, Allow, Supported...) are
split into one value each, never inside quotes or ``<...>``. Folded lines are unfolded.

:func:`parse` never raises anything but :class:`SipParseError`; its ``status`` is the
response to answer with and ``partial`` is the request when one can be answered at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from telephony.errors import SipParseError

from .uri import NameAddr, SipUri, Via, parse_name_addr, parse_uri, parse_via, split_outside

MAX_HEADERS = 200
"""More header lines than this is refused (flood / memory guard)."""

COMPACT = {
    "i": "Call-ID", "f": "From", "t": "To", "v": "Via", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding",
    "o": "Event", "r": "Refer-To", "u": "Allow-Events", "x": "Session-Expires",
    "b": "Referred-By", "a": "Accept-Contact", "j": "Reject-Contact", "y": "Identity",
}
_CANONICAL = {n.lower(): n for n in (
    "Call-ID", "CSeq", "From", "To", "Via", "Contact", "Content-Length", "Content-Type",
    "Max-Forwards", "Route", "Record-Route", "Allow", "Supported", "Require", "Unsupported",
    "Proxy-Require", "User-Agent", "Server", "WWW-Authenticate", "Authorization",
    "Proxy-Authenticate", "Proxy-Authorization", "Retry-After", "Expires", "Accept",
    "Session-Expires", "Min-SE", "P-Asserted-Identity", "Geolocation", "Reason", "Warning",
    "Subject", "Event", "Allow-Events", "Min-Expires", "Content-Encoding", "Content-Disposition",
    "Refer-To", "Referred-By", "Date", "Timestamp", "Organization", "Priority",
)}
_MULTI = {"via", "route", "record-route", "contact", "allow", "supported", "require",
          "unsupported", "proxy-require", "accept", "allow-events", "p-asserted-identity"}
_REQUIRED = ("Via", "From", "To", "Call-ID", "CSeq")


def canonical(name: str) -> str:
    """Canonical spelling of a header name (compact forms expanded)."""
    low = name.strip().lower()
    if low in COMPACT:
        return COMPACT[low]
    return _CANONICAL.get(low) or "-".join(p[:1].upper() + p[1:] for p in low.split("-"))


@dataclass
class Message:
    """Headers (ordered, one value per entry) and body common to requests and responses."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    _cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False)
    """Parsed Via/From/To/Contact, dropped whenever the headers change through this API."""

    def get(self, name: str, default: str | None = None) -> str | None:
        """First value of a header (case-insensitive, compact names accepted)."""
        key = canonical(name)
        for n, v in self.headers:
            if n == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = canonical(name)
        return [v for n, v in self.headers if n == key]

    def add(self, name: str, value: str) -> None:
        self._cache.clear()
        self.headers.append((canonical(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with one (kept at the first one's position)."""
        self._cache.clear()
        key = canonical(name)
        for i, (n, _) in enumerate(self.headers):
            if n == key:
                self.headers[i] = (key, value)
                self.headers = [h for j, h in enumerate(self.headers) if j <= i or h[0] != key]
                return
        self.headers.append((key, value))

    def remove(self, name: str) -> None:
        self._cache.clear()
        key = canonical(name)
        self.headers = [h for h in self.headers if h[0] != key]

    def prepend(self, name: str, value: str) -> None:
        self._cache.clear()
        self.headers.insert(0, (canonical(name), value))

    # -- typed accessors (valid once parse() has checked the required headers) --

    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = (self.get("CSeq") or "").partition(" ")
        return int(num), method.strip().upper()

    def set_header_at(self, index: int, value: str) -> None:
        """Replace the value of the header line at ``index`` (keeps its name)."""
        self._cache.clear()
        self.headers[index] = (self.headers[index][0], value)

    @property
    def vias(self) -> list[Via]:
        return [parse_via(v) for v in self.get_all("Via")]

    @property
    def top_via(self) -> Via:
        v = self._cache.get("via")
        if v is None:
            v = self._cache["via"] = parse_via(self.get_all("Via")[0])
        return v  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        v = self._cache.get("from")
        if v is None:
            v = self._cache["from"] = parse_name_addr(self.get("From") or "")
        return v  # type: ignore[return-value]

    @property
    def to(self) -> NameAddr:
        v = self._cache.get("to")
        if v is None:
            v = self._cache["to"] = parse_name_addr(self.get("To") or "")
        return v  # type: ignore[return-value]

    @property
    def contact(self) -> NameAddr | None:
        value = self.get("Contact")
        return parse_name_addr(value) if value and value.strip() != "*" else None

    def _encode(self, start: str) -> bytes:
        lines = [start]
        lines += [f"{n}: {v}" for n, v in self.headers if n != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Request(Message):
    method: str = ""
    uri: SipUri = field(default_factory=lambda: SipUri("sip", "", "invalid"))

    def encode(self) -> bytes:
        return self._encode(f"{self.method} {self.uri} SIP/2.0")


@dataclass
class Response(Message):
    status: int = 0
    reason: str = ""

    def encode(self) -> bytes:
        return self._encode(f"SIP/2.0 {self.status} {self.reason}")


REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 415: "Unsupported Media Type", 420: "Bad Extension",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
}


def make_response(req: Request, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, headers: Iterable[tuple[str, str]] = (),
                  body: bytes = b"", content_type: str | None = None) -> Response:
    """Build a response to ``req`` (RFC 3261 §8.2.6): Via/From/To/Call-ID/CSeq copied,
    Record-Route copied on 18x/2xx so the caller learns the route set."""
    resp = Response(status=status, reason=_safe_reason(reason or REASONS.get(status, "Unknown")))
    for n, v in req.headers:
        if n in ("Via", "From", "Call-ID", "CSeq") or (n == "Record-Route" and 100 < status < 300):
            resp.headers.append((n, v))
        elif n == "To":
            if to_tag and status != 100 and "tag=" not in _params_text(v):
                v = f"{v};tag={to_tag}"
            resp.headers.append((n, v))
    for n, v in headers:
        resp.add(n, v)
    if body:
        resp.add("Content-Type", content_type or "application/sdp")
        resp.body = body
    return resp


def _params_text(name_addr: str) -> str:
    gt = name_addr.rfind(">")
    return name_addr[gt + 1:] if gt >= 0 else name_addr


def _safe_reason(reason: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in reason)[:120]


def parse(data: bytes, *, max_size: int = 65535) -> Request | Response | None:
    """Parse one datagram. Returns ``None`` for keep-alives (blank lines).

    Raises :class:`SipParseError` with the status to answer (400, 413, 505, 513).
    """
    if len(data) > max_size:
        raise SipParseError(513, f"Message too large ({len(data)} > {max_size} bytes)")
    if not data.strip(b"\r\n\t "):
        return None
    data = data.lstrip(b"\r\n")
    sep = data.find(b"\r\n\r\n")
    if sep >= 0:
        head, body = data[:sep], data[sep + 4:]
    else:
        sep = data.find(b"\n\n")
        if sep >= 0:
            head, body = data[:sep], data[sep + 2:]
        else:
            head, body = data.rstrip(b"\r\n"), b""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(400, "Header section is not valid UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    msg = _parse_start_line(lines[0])
    try:
        _parse_headers(lines[1:], msg)
        _check(msg, body)
    except SipParseError as exc:
        exc.partial = msg if isinstance(msg, Request) and _answerable(msg) else None
        raise
    return msg


def _parse_start_line(line: str) -> Request | Response:
    parts = line.strip().split(" ", 2)
    if len(parts) == 3 and parts[0].upper().startswith("SIP/"):
        if parts[0] != "SIP/2.0":
            raise SipParseError(505, f"Unsupported SIP version: {parts[0][:16]}")
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise SipParseError(400, f"Malformed status line: {line[:80]!r}")
        return Response(status=int(code), reason=parts[2].strip())
    if len(parts) == 2 and parts[0] == "SIP/2.0" and parts[1].isdigit() and len(parts[1]) == 3:
        return Response(status=int(parts[1]), reason="")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper():
        raise SipParseError(400, f"Malformed start line: {line[:80]!r}")
    if parts[2] != "SIP/2.0":
        if parts[2].upper().startswith("SIP/"):
            raise SipParseError(505, f"Unsupported SIP version: {parts[2][:16]}")
        raise SipParseError(400, f"Malformed start line: {line[:80]!r}")
    return Request(method=parts[0], uri=parse_uri(parts[1]))


def _parse_headers(lines: list[str], msg: Request | Response) -> None:
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()
        elif line.strip():
            unfolded.append(line)
    if len(unfolded) > MAX_HEADERS:
        raise SipParseError(400, f"Too many headers (more than {MAX_HEADERS})")
    error: SipParseError | None = None
    for line in unfolded:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or any(ch in name for ch in " \t\"<>()@,;"):
            # keep parsing so the request can still be answered with this 400
            error = error or SipParseError(400, f"Malformed header line: {line[:80]!r}")
            continue
        key = canonical(name)
        value = value.strip()
        if key.lower() in _MULTI and "," in value:
            for item in split_outside(value, ","):
                if item.strip():
                    msg.headers.append((key, item.strip()))
        else:
            msg.headers.append((key, value))
    if error is not None:
        raise error


def _check(msg: Request | Response, body: bytes) -> None:
    for name in _REQUIRED:
        if msg.get(name) is None:
            raise SipParseError(400, f"Missing {name} header")
    cseq = msg.get("CSeq") or ""
    num, _, method = cseq.partition(" ")
    if not num.isdigit() or len(num) > 10 or not method.strip().isalpha():
        raise SipParseError(400, f"Malformed CSeq: {cseq[:40]!r}")
    if isinstance(msg, Request) and method.strip().upper() != msg.method:
        raise SipParseError(400, f"CSeq method {method.strip()} does not match {msg.method}")
    for v in msg.get_all("Via"):
        parse_via(v)
    msg.from_, msg.to  # noqa: B018 - raise on malformed From/To
    for name in ("Contact", "Route", "Record-Route"):
        for v in msg.get_all(name):
            if v.strip() != "*":
                parse_name_addr(v)
    cl = msg.get("Content-Length")
    if cl is not None:
        if not cl.isdigit():
            raise SipParseError(400, f"Bad Content-Length: {cl[:20]!r}")
        n = int(cl)
        if n > len(body):
            raise SipParseError(400, f"Content-Length {n} exceeds body ({len(body)} bytes)")
        body = body[:n]
    msg.body = body
    mf = msg.get("Max-Forwards")
    if mf is not None and not mf.isdigit():
        raise SipParseError(400, f"Bad Max-Forwards: {mf[:20]!r}")


def _answerable(req: Request) -> bool:
    """Can a response be built (and routed) for this partially parsed request?

    A parseable top Via is enough (RFC 3261 §8.2 / §16.3: a request missing Call-ID,
    CSeq, From or To is answered 400 naming what is missing; the response copies what
    the request has and is routed by its Via). ACK is never answered."""
    try:
        if not req.get_all("Via") or req.method == "ACK":
            return False
        req.top_via  # noqa: B018
        return True
    except SipParseError:
        return False


def body_parts(msg: Message) -> dict[str, bytes]:
    """Body by content type; a multipart/mixed body (SDP + PIDF-LO location, RFC 6442) is
    split into its parts. Malformed multipart yields what could be read."""
    ctype = (msg.get("Content-Type") or "application/sdp" if msg.body else "").strip()
    if not msg.body:
        return {}
    main, _, params = ctype.partition(";")
    main = main.strip().lower()
    if not main.startswith("multipart/"):
        return {main: msg.body}
    boundary = ""
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip().strip('"')
    if not boundary:
        return {}
    out: dict[str, bytes] = {}
    for part in msg.body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        part = part.lstrip(b"\r\n")
        sep = part.find(b"\r\n\r\n")
        if sep < 0:
            continue
        head, content = part[:sep], part[sep + 4:]
        ptype = "text/plain"
        for line in head.decode("utf-8", "replace").split("\r\n"):
            n, _, v = line.partition(":")
            if n.strip().lower() == "content-type":
                ptype = v.split(";")[0].strip().lower()
        out.setdefault(ptype, content.removesuffix(b"\r\n"))
    return out
