"""SIP message framing on a stream (TCP, TLS): bytes in, whole messages out. Sans-IO.

RFC 3261 §18.3: on a stream the Content-Length header is the only way to find where a
message ends, so it MUST be there. Theory of operation: :meth:`StreamFramer.feed` takes
whatever bytes arrived (any chunking: one byte at a time or many messages at once) and
``now``, and returns what became complete, in order:

* :class:`Frame` - one whole message (start line, headers, body), for the parser;
* :class:`Ping` - a double CRLF between messages (RFC 5626 §4.4.1 keep-alive): answer
  with a single CRLF (:data:`PONG`);
* :class:`Pong` - a single CRLF between messages (the answer to our ping). A lone CRLF
  could also be the first half of a peer's ping, so it is a pong at once only while
  :attr:`StreamFramer.awaiting_pong` (the adapter sets it when it pings); otherwise it
  waits for the next bytes to tell;
* :class:`Fault` - the stream cannot be framed: no Content-Length, a malformed or
  conflicting one, a message over the size limit, or a first line that is not SIP (a
  Content-Length shorter than the body leaves the rest looking like that). The adapter
  answers ``status`` when ``head`` holds a request it can answer, then closes the
  connection: after a framing error nothing later on the stream can be trusted.

Nothing waits forever: :attr:`StreamFramer.partial_since` is when the first byte of the
message now incomplete arrived; :meth:`StreamFramer.expire` turns a message still
incomplete ``timeout`` s after that into a :class:`Fault` (a Content-Length larger than
the body, or a slow sender: slow-loris).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telephony.errors import SipParseError

from .uri import parse_via

PONG = b"\r\n"
PING = b"\r\n\r\n"

MAX_HEAD = 16384
"""Bytes of start line + headers at most (then 513, whatever Content-Length says)."""

_CL = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.I | re.M)
_START = re.compile(rb"^(?:SIP/2\.0 \d{3}(?: [^\r\n]*)?|[A-Za-z0-9!%*_+`'~.-]+ \S+ SIP/2\.0)$")
_FIRST_LINE_MAX = 8192


_VIA = re.compile(rb"^(?:via|v)[ \t]*:[ \t]*([^\r\n]*)", re.I | re.M)


def via_alias_port(message: bytes, default_port: int = 5061) -> int | None:
    """RFC 5923: the sent-by port of a request's top Via when it has the ``alias``
    parameter (the sender offers its connection for requests to that address), else None.
    Responses carry our own Via on top and never count. ``default_port`` when the Via
    names no port (5061 for TLS)."""
    if message.startswith(b"SIP/2.0 "):
        return None
    end = message.find(b"\r\n\r\n")
    m = _VIA.search(message, 0, end if end >= 0 else len(message))
    if m is None or b"alias" not in m.group(1).lower():
        return None
    try:
        via = parse_via(m.group(1).split(b",", 1)[0].decode("utf-8", "replace"))
    except SipParseError:
        return None
    if "alias" not in {k.lower() for k in via.params}:
        return None
    return via.port if via.port is not None else default_port


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A CRLFCRLF keep-alive: answer :data:`PONG`."""


@dataclass(frozen=True, slots=True)
class Pong:
    """A single CRLF: the answer to our keep-alive."""


@dataclass(frozen=True, slots=True)
class Fault:
    """The stream cannot be framed any further; close the connection."""

    status: int
    """SIP response the fault implies (400, 513)."""
    reason: str
    """Exact reason, also the response's reason phrase."""
    kind: str
    """Stable counter / log key: ``no_content_length``, ``bad_content_length``,
    ``too_large``, ``bad_start_line``, ``incomplete``."""
    head: bytes = b""
    """Start line and headers of the message at fault, when they were complete (the
    adapter may answer it), else empty."""


Framed = Frame | Ping | Pong | Fault


class StreamFramer:
    """Frames one direction of one connection. After a :class:`Fault`, feeds return
    nothing (:attr:`failed`)."""

    def __init__(self, *, max_message: int = 65535, max_head: int = MAX_HEAD) -> None:
        self.max_message = max_message
        self.max_head = min(max_head, max_message)
        self._buf = bytearray()
        self._scan = 0
        """Where to resume looking for the end of the headers."""
        self._head_end = -1
        """Offset just past the blank line, once found."""
        self._length = -1
        """Whole-message length, once known."""
        self.partial_since: float | None = None
        """When the first byte of the unfinished message arrived (None: between messages)."""
        self.failed: Fault | None = None
        self.awaiting_pong = False
        """We pinged on this connection: the next lone CRLF is the pong (cleared by it)."""
        self.messages = 0
        self.bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, now: float) -> list[Framed]:
        if self.failed is not None:
            return []
        self.bytes += len(data)
        self._buf += data
        out: list[Framed] = []
        while self._buf and self.failed is None:
            item = self._next(now)
            if item is None:
                break
            out.append(item)
        if not self._buf:
            self.partial_since = None
        elif self.partial_since is None:
            self.partial_since = now
        return out

    def expire(self, now: float, timeout: float) -> Fault | None:
        """A :class:`Fault` if a message has been incomplete for ``timeout`` s or more."""
        if self.failed is not None or self.partial_since is None:
            return None
        if now - self.partial_since < timeout:
            return None
        head = bytes(self._buf[:self._head_end]) if self._head_end >= 0 else b""
        return self._fail(Fault(400, f"Incomplete message after {timeout:g} s", "incomplete",
                                head))

    def _fail(self, fault: Fault) -> Fault:
        self.failed = fault
        self._buf.clear()
        self.partial_since = None
        return fault

    def _next(self, now: float) -> Framed | None:
        buf = self._buf
        if self._head_end < 0:
            # keep-alives and stray CRLFs between messages (RFC 3261 §7.5)
            if buf[0:1] == b"\r":
                if len(buf) < 2:
                    return None
                if buf[1:2] == b"\n":
                    if self.awaiting_pong:  # the answer to our ping, not half of one
                        del buf[:2]
                        self.awaiting_pong = False
                        self.partial_since = None
                        return Pong()
                    if len(buf) < 4 and PING.startswith(bytes(buf)):
                        return None  # maybe the first half of a ping
                    if buf[:4] == PING:
                        del buf[:4]
                        self.partial_since = None
                        return Ping()
                    del buf[:2]
                    self.partial_since = None
                    return Pong()
            if self.partial_since is None:
                self.partial_since = now
            line_end = buf.find(b"\r\n", 0, _FIRST_LINE_MAX)
            if line_end < 0:
                if len(buf) >= _FIRST_LINE_MAX or (len(buf) >= 16 and not _plausible(buf)):
                    return self._fail(Fault(400, "Not a SIP message", "bad_start_line"))
                return None
            if not _START.match(bytes(buf[:line_end])):
                return self._fail(Fault(400, "Not a SIP message", "bad_start_line"))
            end = buf.find(b"\r\n\r\n", max(self._scan, line_end))
            if end < 0:
                self._scan = max(0, len(buf) - 3)
                if len(buf) > self.max_head:
                    return self._fail(Fault(513, f"Message too large (headers over "
                                                 f"{self.max_head} bytes)", "too_large"))
                return None
            self._head_end = end + 4
            if self._head_end > self.max_head:
                return self._fail(Fault(513, f"Message too large (headers over "
                                             f"{self.max_head} bytes)", "too_large",
                                        bytes(buf[:self._head_end])))
            head = bytes(buf[:self._head_end])
            values = [m.group(1) for m in _CL.finditer(head)]
            if not values:
                return self._fail(Fault(400, "Missing Content-Length (required on TCP/TLS)",
                                        "no_content_length", head))
            if len(set(values)) > 1:
                return self._fail(Fault(400, "Conflicting Content-Length headers",
                                        "bad_content_length", head))
            value = values[0]
            if not value.isdigit() or len(value) > 9:
                shown = value[:20].decode("latin-1")
                return self._fail(Fault(400, f"Bad Content-Length: {shown!r}",
                                        "bad_content_length", head))
            self._length = self._head_end + int(value)
            if self._length > self.max_message:
                return self._fail(Fault(513, f"Message too large ({self._length} > "
                                             f"{self.max_message} bytes)", "too_large", head))
        if len(buf) < self._length:
            return None
        frame = Frame(bytes(buf[:self._length]))
        del buf[:self._length]
        self._head_end = self._length = -1
        self._scan = 0
        self.partial_since = now if buf else None
        self.messages += 1
        return frame


def _plausible(buf: bytearray) -> bool:
    """Could the first bytes begin a SIP start line? (Refuse binary garbage early.)"""
    head = bytes(buf[:16])
    if head.startswith(b"SIP/2.0 "[:len(head)]):
        return True
    token = head.split(b" ", 1)[0]
    if not re.fullmatch(rb"[A-Za-z0-9!%*_+`'~.-]*", token):
        return False
    return b" " in head or len(token) < 16
