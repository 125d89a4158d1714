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
        # surrogate escapes are the undecodable bytes a peer sent: back to those bytes
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


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

    Raises :class:`SipParseError` with the status to answer (400, 413, 505, 513) and its
    ``kind``. Whenever the message is a request with a usable top Via, the error's
    ``partial`` is that request so the fault can be answered (never for ACK): a bad
    request line, too many headers or an oversized message included.

    Undecodable bytes (RFC 3261 wants UTF-8) are kept losslessly as surrogate escapes
    in Via, From, To, Call-ID, CSeq, Contact, Route and Record-Route (we echo or re-send
    those, byte for byte: :meth:`Message.encode` restores them) and become U+FFFD in every
    other header (we only read those). Display names read through :attr:`Message.from_`
    and friends never carry them. Where the grammar is ASCII and we interpret the value
    (request line, URIs, Via, Call-ID, CSeq, Content-Length, Max-Forwards) they are a 400.
    """
    if not data.strip(b"\r\n\t "):
        return None
    data = data.lstrip(b"\r\n")
    fault: SipParseError | None = None
    if len(data) > max_size:
        # still read the head, so the sender learns why (513 names the size)
        fault = SipParseError(513, f"Message too large ({len(data)} > {max_size} bytes)",
                              kind="too_large")
        data = data[:max_size]
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
        text, clean = head.decode("utf-8"), True
    except UnicodeDecodeError:
        text, clean = head.decode("utf-8", "surrogateescape"), False
    lines = text.replace("\r\n", "\n").split("\n")
    msg, start_fault = _parse_start_line(lines[0])
    fault = fault or start_fault
    try:
        _parse_headers(lines[1:], msg, clean)
        if fault is not None:
            raise fault
        _check(msg, body, clean)
    except SipParseError as exc:
        exc.partial = msg if isinstance(msg, Request) and _answerable(msg) else None
        raise
    return msg


def _parse_start_line(line: str) -> tuple[Request | Response, SipParseError | None]:
    """The message the start line begins, or raise when it is not even that.

    A response's bad status line raises (a response is never answered). A request's bad
    method, Request-URI or version is returned as the fault to raise once the headers
    are read: with a top Via the sender is told what is wrong."""
    parts = line.strip().split(" ", 2)
    if parts[0].upper().startswith("SIP/"):
        if len(parts) == 3:
            if parts[0] != "SIP/2.0":
                raise SipParseError(505, f"Unsupported SIP version: {parts[0][:16]}",
                                    kind="bad_version")
            code = parts[1]
            if len(code) != 3 or not code.isascii() or not code.isdigit() \
                    or not 100 <= int(code) <= 699:
                raise SipParseError(400, f"Malformed status line: {line[:80]!r}",
                                    kind="bad_start_line")
            return Response(status=int(code), reason=parts[2].strip()), None
        if (len(parts) == 2 and parts[0] == "SIP/2.0" and parts[1].isascii()
                and parts[1].isdigit() and len(parts[1]) == 3):
            return Response(status=int(parts[1]), reason=""), None
        raise SipParseError(400, f"Malformed status line: {line[:80]!r}", kind="bad_start_line")
    method = parts[0]
    placeholder = SipUri("sip", "", "invalid")
    if len(parts) != 3 or not _token(method):
        bad = Request(method=method if _token(method) else "", uri=placeholder)
        return bad, SipParseError(400, f"Malformed start line: {line[:80]!r}",
                                  kind="bad_start_line")
    if parts[2] != "SIP/2.0":
        req = Request(method=method, uri=placeholder)
        if parts[2].upper().startswith("SIP/"):
            return req, SipParseError(505, f"Unsupported SIP version: {parts[2][:16]}",
                                      kind="bad_version")
        return req, SipParseError(400, f"Malformed start line: {line[:80]!r}",
                                  kind="bad_start_line")
    try:
        return Request(method=method, uri=parse_uri(parts[1])), None
    except SipParseError as exc:
        return Request(method=method, uri=placeholder), SipParseError(
            exc.status, f"Bad Request-URI: {exc.reason}", kind="bad_request_uri")


def _token(text: str) -> bool:
    """A SIP method: upper-case letters (what every method we could meet looks like)."""
    return bool(text) and text.isascii() and text.isalpha() and text.isupper()


_RAW = frozenset(("Via", "From", "To", "Call-ID", "CSeq", "Contact", "Route", "Record-Route"))
"""Headers kept byte-exact (surrogate escapes): echoed in responses or re-sent in requests."""
_ASCII = ("Via", "Call-ID", "CSeq", "Content-Length", "Max-Forwards")
"""Headers we interpret whose grammar is ASCII: undecodable bytes there are a 400."""


def _has_escapes(text: str) -> bool:
    """Does ``text`` carry undecodable bytes (surrogate escapes)?"""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _replace_escapes(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _parse_headers(lines: list[str], msg: Request | Response, clean: bool = True) -> None:
    unfolded: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()
        elif line.strip():
            unfolded.append(line)
    error: SipParseError | None = None
    if len(unfolded) > MAX_HEADERS:
        # the first MAX_HEADERS are read (Via comes first), so the 400 can be routed
        error = SipParseError(400, f"Too many headers (more than {MAX_HEADERS})",
                              kind="too_many_headers")
        del unfolded[MAX_HEADERS:]
    for line in unfolded:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or not name.isascii() or any(ch in name for ch in " \t\"<>()@,;"):
            # keep parsing so the request can still be answered with this 400
            error = error or SipParseError(400, f"Malformed header line: {line[:80]!r}",
                                           kind="bad_header_line")
            continue
        key = canonical(name)
        value = value.strip()
        if not clean and key not in _RAW and _has_escapes(value):
            value = _replace_escapes(value)
        if key.lower() in _MULTI and "," in value:
            for item in split_outside(value, ","):
                if item.strip():
                    msg.headers.append((key, item.strip()))
        else:
            msg.headers.append((key, value))
    if error is not None:
        raise error


def _digits(text: str, most: int = 10) -> bool:
    """ASCII digits only, at most ``most`` of them (``str.isdigit`` also accepts '²')."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _check(msg: Request | Response, body: bytes, clean: bool = True) -> None:
    for name in _REQUIRED:
        if msg.get(name) is None:
            raise SipParseError(400, f"Missing {name} header", kind="missing_header")
    if not clean:
        for name in _ASCII:
            if any(_has_escapes(v) for v in msg.get_all(name)):
                raise SipParseError(400, f"{name} header is not valid UTF-8", kind="bad_bytes")
    for name in ("Call-ID", "CSeq"):
        values = msg.get_all(name)
        if any(v != values[0] for v in values[1:]):
            raise SipParseError(400, f"Conflicting {name} headers", kind="duplicate_header")
    cseq = msg.get("CSeq") or ""
    num, _, method = cseq.partition(" ")
    method = method.strip()
    if not _digits(num) or not method.isascii() or not method.isalpha():
        raise SipParseError(400, f"Malformed CSeq: {cseq[:40]!r}", kind="bad_cseq")
    if isinstance(msg, Request) and method.upper() != msg.method:
        raise SipParseError(400, f"CSeq method {method} does not match {msg.method}",
                            kind="bad_cseq")
    for v in msg.get_all("Via"):
        parse_via(v)
    msg.from_, msg.to  # noqa: B018 - raise on malformed From/To
    for name in ("Contact", "Route", "Record-Route"):
        for v in msg.get_all(name):
            if v.strip() != "*":
                parse_name_addr(v)
    lengths = msg.get_all("Content-Length")
    if lengths:
        cl = lengths[0]
        if not _digits(cl):
            raise SipParseError(400, f"Bad Content-Length: {cl[:20]!r}", kind="bad_content_length")
        if any(v != cl for v in lengths[1:]):
            # two framings of one datagram: which one the next hop believes is anyone's guess
            raise SipParseError(400, "Conflicting Content-Length headers: "
                                f"{', '.join(v[:12] for v in lengths[:3])}",
                                kind="bad_content_length")
        n = int(cl)
        if n > len(body):
            raise SipParseError(400, f"Content-Length {n} exceeds body ({len(body)} bytes)",
                                kind="bad_content_length")
        body = body[:n]
    msg.body = body
    mf = msg.get("Max-Forwards")
    if mf is not None and not _digits(mf, 3):
        raise SipParseError(400, f"Bad Max-Forwards: {mf[:20]!r}", kind="bad_max_forwards")


def _answerable(req: Request) -> bool:
    """Can a response be built (and routed) for this partially parsed request?

    A parseable top Via is enough (RFC 3261 §8.2 / §16.3: a request missing Call-ID,
    CSeq, From or To is answered 400 naming what is missing; the response copies what
    the request has and is routed by its Via). ACK is never answered."""
    try:
        if not req.get_all("Via") or req.method == "ACK":
            return False
        if (req.get("CSeq") or "").rpartition(" ")[2].strip().upper() == "ACK":
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
