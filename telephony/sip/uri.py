"""SIP URIs, name-addr values (From/To/Contact/Route) and Via headers (RFC 3261 §19, §20).

Parsing is strict enough to refuse garbage with a :class:`SipParseError` (400) carrying
an exact message, and lenient about what real peers send (tel: URIs, IPv6 literals,
params without values, unquoted display names).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from telephony.errors import SipParseError

Params = dict[str, str | None]


def split_params(text: str) -> tuple[str, Params]:
    """Split ``head;a=1;b`` into ``('head', {'a': '1', 'b': None})`` (quotes respected)."""
    parts = split_outside(text, ";")
    params: Params = {}
    for raw in parts[1:]:
        raw = raw.strip()
        if not raw:
            continue
        name, eq, value = raw.partition("=")
        params[name.strip().lower()] = value.strip() if eq else None
    return parts[0].strip(), params


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def split_outside(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except inside double quotes or ``<...>``."""
    if '"' not in text and "<" not in text:
        return text.split(sep)  # the common case, without the character loop
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


@dataclass(frozen=True)
class SipUri:
    """``sip:user@host:port;params?headers`` (also ``sips:`` and ``tel:``)."""

    scheme: str
    user: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=dict)
    headers: str = ""
    password: str | None = None

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        userinfo = ""
        if self.user:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        hdrs = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{host}{port}{format_params(self.params)}{hdrs}"

    @property
    def number(self) -> str:
        """User part as a dialled number: ``+`` and visual separators stripped."""
        user = self.user.split(";", 1)[0]
        return "".join(ch for ch in user if ch not in "+-.() ")

    @property
    def host_port(self) -> tuple[str, int]:
        """Host and port, defaulting to 5060 (5061 for ``sips:`` and ``;transport=tls``,
        RFC 3261 §19.1.2)."""
        if self.port is not None:
            return self.host, self.port
        tls = self.scheme == "sips" or (self.params.get("transport") or "").lower() == "tls"
        return self.host, 5061 if tls else 5060

    def with_params(self, **params: str | None) -> SipUri:
        return replace(self, params={**self.params, **params})


def parse_uri(text: str) -> SipUri:
    """Parse a SIP/SIPS/tel URI; raises ``SipParseError(400, 'Malformed URI: ...')``."""
    text = text.strip()
    if _escaped(text):
        # a URI is ASCII (RFC 3261 §25.1: anything else is %-escaped); these are bytes
        # that were not even UTF-8
        raise SipParseError(400, f"Malformed URI: not valid UTF-8: {text[:80]!r}",
                            kind="bad_bytes")
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips", "tel") or not rest:
        raise SipParseError(400, f"Malformed URI: {text[:80]!r}", kind="bad_uri")
    if scheme == "tel":
        number, params = split_params(rest)
        if not number:
            raise SipParseError(400, f"Malformed URI: {text[:80]!r}", kind="bad_uri")
        return SipUri("tel", number, "", None, params)
    rest, _, headers = rest.partition("?")
    if "@" in rest:
        userinfo, _, hostpart = rest.rpartition("@")
    else:
        userinfo, hostpart = "", rest
    user, pw_sep, password = userinfo.partition(":")
    hostport, params = split_params(hostpart)
    host, port = _split_hostport(hostport, text)
    return SipUri(scheme, user, host, port, params, headers, password if pw_sep else None)


def _split_hostport(hostport: str, whole: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise SipParseError(400, f"Malformed URI: {whole[:80]!r}", kind="bad_uri")
        host, tail = hostport[1:end], hostport[end + 1:]
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise SipParseError(400, f"Malformed URI: {whole[:80]!r}", kind="bad_uri")
    else:
        host, _, port_text = hostport.partition(":")
    if not host or any(ch in host for ch in " \t<>\"@"):
        raise SipParseError(400, f"Malformed URI: {whole[:80]!r}", kind="bad_uri")
    port: int | None = None
    if port_text:
        if (not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5
                or not 0 < int(port_text) < 65536):
            raise SipParseError(400, f"Malformed URI port: {whole[:80]!r}", kind="bad_uri")
        port = int(port_text)
    return host.lower(), port


@dataclass(frozen=True)
class NameAddr:
    """``"Display" <uri>;tag=...`` as in From, To, Contact, Route, Record-Route."""

    uri: SipUri
    display: str = ""
    params: Params = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> NameAddr:
        return replace(self, params={**self.params, "tag": tag})

    def __str__(self) -> str:
        display = ""
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse name-addr or addr-spec; raises ``SipParseError(400, ...)``."""
    text = text.strip()
    if "<" in text:
        lt = _find_unquoted(text, "<")
        gt = text.find(">", lt)
        if lt < 0 or gt < 0:
            raise SipParseError(400, f"Malformed address: {text[:80]!r}", kind="bad_address")
        display = text[:lt].strip()
        if display.startswith('"'):
            if len(display) < 2 or not display.endswith('"'):
                raise SipParseError(400, f"Malformed address: {text[:80]!r}", kind="bad_address")
            display = display[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        if _escaped(display):
            # a Latin-1 caller name from some network: harmless, shown as U+FFFD
            display = display.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        uri = parse_uri(text[lt + 1:gt])
        _, params = split_params(text[gt + 1:]) if text[gt + 1:].strip() else ("", {})
        return NameAddr(uri, display, params)
    # addr-spec: parameters after the URI belong to the header, not the URI
    head, params = split_params(text)
    return NameAddr(parse_uri(head), "", params)


def _escaped(text: str) -> bool:
    """Does ``text`` carry undecodable bytes (surrogate escapes, see message.parse)?"""
    return not text.isascii() and any("\udc80" <= ch <= "\udcff" for ch in text)


def _find_unquoted(text: str, ch: str) -> int:
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
    return -1


@dataclass(frozen=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;rport;received=...``."""

    transport: str
    host: str
    port: int | None
    params: Params = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {host}{port}{format_params(self.params)}"

    def response_address(self) -> tuple[str, int]:
        """Where a response goes (RFC 3261 §18.2.2 with RFC 3581 rport)."""
        host = self.params.get("received") or self.host
        rport = self.params.get("rport")
        if rport and rport.isdigit():
            return host, int(rport)
        return host, self.port if self.port is not None else 5060


def parse_via(text: str) -> Via:
    text = text.strip()
    proto, _, rest = text.partition(" ")
    bits = [b.strip() for b in proto.split("/")]
    rest = rest.strip()
    if len(bits) != 3 or bits[0].upper() != "SIP" or not rest:
        # tolerate "SIP / 2.0 / UDP host" spacing
        joined = text.replace(" / ", "/").replace("/ ", "/").replace(" /", "/")
        if joined != text:
            return parse_via(joined)
        raise SipParseError(400, f"Malformed Via: {text[:80]!r}", kind="bad_via")
    hostport, params = split_params(rest)
    host, port = _split_hostport(hostport.strip(), text)
    return Via(bits[2].upper(), host, port, params)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
