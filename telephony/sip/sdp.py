"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one G.711 audio stream.

We accept PCMA/PCMU plus RFC 4733 telephone-event, pick the first codec of *our*
preference list that the offer contains (the UK norm is A-law, so A-law is preferred),
answer with the offerer's payload type numbers, and mirror the direction
(sendonly -> recvonly, ...). ``c=0.0.0.0`` is the RFC 2543 hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telephony.errors import SdpError

STATIC_PT = {"PCMU": 0, "PCMA": 8}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
           "inactive": "inactive"}
DTMF_PT = 101
"""Dynamic payload type we offer for telephone-event."""


@dataclass
class Media:
    """One ``m=`` section."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def attr(self, name: str) -> str | None:
        for n, v in self.attributes:
            if n == name:
                return v
        return None

    @property
    def direction(self) -> str:
        for n, _ in self.attributes:
            if n in DIRECTIONS:
                return n
        return "sendrecv"

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """Payload type -> (encoding name upper-cased, clock rate)."""
        out: dict[int, tuple[str, int]] = {}
        for n, v in self.attributes:
            if n == "rtpmap" and v:
                pt, _, enc = v.partition(" ")
                name, _, rate = enc.strip().partition("/")
                if pt.isdigit():
                    out[int(pt)] = (name.upper(), int(rate.partition("/")[0]) if rate.isdigit() else 8000)
        return out


@dataclass
class SessionDescription:
    """A parsed SDP body (only what a G.711 voice call needs, attributes kept verbatim)."""

    origin: str = "- 0 0 IN IP4 0.0.0.0"
    name: str = "-"
    connection: str | None = None
    media: list[Media] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    def encode(self) -> bytes:
        lines = ["v=0", f"o={self.origin}", f"s={self.name}"]
        if self.connection:
            lines.append(f"c=IN {_family(self.connection)} {self.connection}")
        lines.append("t=0 0")
        lines += [f"a={n}" if v is None else f"a={n}:{v}" for n, v in self.attributes]
        for m in self.media:
            lines.append(f"m={m.kind} {m.port} {m.proto} {' '.join(m.formats)}")
            if m.connection and m.connection != self.connection:
                lines.append(f"c=IN {_family(m.connection)} {m.connection}")
            lines += [f"a={n}" if v is None else f"a={n}:{v}" for n, v in m.attributes]
        return ("\r\n".join(lines) + "\r\n").encode()


def _family(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse an SDP body; raises ``SdpError(400, ...)`` with an exact message."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError(400, "SDP is not valid UTF-8") from None
    sdp = SessionDescription()
    seen_v = False
    current: Media | None = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(400, f"Malformed SDP line: {line[:60]!r}")
        key, value = line[0], line[2:]
        if key == "v":
            if value != "0":
                raise SdpError(400, f"Unsupported SDP version: {value[:10]!r}")
            seen_v = True
        elif not seen_v:
            raise SdpError(400, "SDP does not start with v=0")
        elif key == "o":
            sdp.origin = value
        elif key == "s":
            sdp.name = value
        elif key == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError(400, f"Malformed SDP connection: {value[:60]!r}")
            addr = parts[2].split("/")[0]
            if current is None:
                sdp.connection = addr
            else:
                current.connection = addr
        elif key == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise SdpError(400, f"Malformed SDP media line: {value[:60]!r}")
            port = int(parts[1].split("/")[0])
            if port > 65535:
                raise SdpError(400, f"Malformed SDP media line: {value[:60]!r}")
            current = Media(parts[0], port, parts[2], parts[3:])
            sdp.media.append(current)
        elif key == "a":
            name, colon, val = value.partition(":")
            target = current.attributes if current is not None else sdp.attributes
            target.append((name.strip(), val.strip() if colon else None))
    if not seen_v:
        raise SdpError(400, "SDP does not start with v=0")
    return sdp


@dataclass(frozen=True)
class Negotiated:
    """The outcome of offer/answer for the audio stream, from our point of view."""

    codec: str
    """``PCMA`` or ``PCMU``."""
    payload_type: int
    dtmf_pt: int | None
    remote: tuple[str, int] | None
    """Where to send RTP (None when the peer holds with c=0.0.0.0 or port 0)."""
    direction: str
    """Our direction towards the peer (the answer's direction when we answer)."""
    ptime: int
    on_hold: bool
    """The peer put us on hold (sendonly/inactive or c=0.0.0.0)."""


def _audio(sdp: SessionDescription) -> Media:
    """The first active plain-RTP audio stream (SRTP is not offered or accepted)."""
    srtp = False
    for m in sdp.media:
        if m.kind != "audio" or m.port == 0:
            continue
        if m.proto.upper() in ("RTP/AVP", "RTP/AVPF"):
            return m
        srtp = srtp or "SAVP" in m.proto.upper()
    if srtp:
        raise SdpError(488, "Secure RTP (SAVP) not supported")
    raise SdpError(488, "No audio stream in SDP offer")


def _codec_pts(m: Media) -> tuple[dict[str, int], int | None]:
    rtpmap = m.rtpmap()
    codecs: dict[str, int] = {}
    dtmf: int | None = None
    for f in m.formats:
        if not f.isdigit():
            continue
        pt = int(f)
        name = rtpmap.get(pt, ("", 8000))[0] or {0: "PCMU", 8: "PCMA"}.get(pt, "")
        rate = rtpmap.get(pt, ("", 8000))[1]
        if name in STATIC_PT and rate == 8000 and name not in codecs:
            codecs[name] = pt
        elif name == "TELEPHONE-EVENT" and rate == 8000 and dtmf is None:
            dtmf = pt
    return codecs, dtmf


def _ptime(m: Media, default: int) -> int:
    v = m.attr("ptime")
    return int(v) if v and v.isdigit() and int(v) in (10, 20, 30, 40) else default


def answer(offer: SessionDescription, *, codecs: list[str], address: str, port: int,
           ptime: int, session_id: int, version: int) -> tuple[SessionDescription, Negotiated]:
    """Answer an offer: first of OUR ``codecs`` the offer has; none -> ``SdpError(488)``."""
    m = _audio(offer)
    offered, dtmf = _codec_pts(m)
    chosen = next((c for c in codecs if c in offered), None)
    if chosen is None:
        raise SdpError(488, "No common codec (we accept " + ", ".join(codecs) + ")")
    pt = offered[chosen]
    addr = m.connection or offer.connection
    held_addr = addr in (None, "0.0.0.0")
    direction = _MIRROR[m.direction]
    remote = None if held_addr else (addr or "", m.port)
    ptime_used = _ptime(m, ptime)
    fmts = [str(pt)] + ([str(dtmf)] if dtmf is not None else [])
    attrs: list[tuple[str, str | None]] = [("rtpmap", f"{pt} {chosen}/8000")]
    if dtmf is not None:
        attrs += [("rtpmap", f"{dtmf} telephone-event/8000"), ("fmtp", f"{dtmf} 0-15")]
    attrs += [("ptime", str(ptime_used)), (direction, None)]
    ans = SessionDescription(
        origin=f"controlroom {session_id} {version} IN {_family(address)} {address}", name="controlroom",
        connection=address,
        # RFC 3264 §6: one answer m-line per offered m-line, the others refused with port 0
        media=[Media("audio", port, m.proto, fmts, None, attrs) if o is m
               else Media(o.kind, 0, o.proto, o.formats[:1] or ["0"]) for o in offer.media])
    on_hold = m.direction in ("sendonly", "inactive") or held_addr
    return ans, Negotiated(chosen, pt, dtmf, remote, direction, ptime_used, on_hold)


def offer(*, codecs: list[str], address: str, port: int, ptime: int, session_id: int,
          version: int = 1) -> SessionDescription:
    """Our offer to a handler phone: our codecs in preference order + telephone-event."""
    fmts = [str(STATIC_PT[c]) for c in codecs] + [str(DTMF_PT)]
    attrs: list[tuple[str, str | None]] = [("rtpmap", f"{STATIC_PT[c]} {c}/8000") for c in codecs]
    attrs += [("rtpmap", f"{DTMF_PT} telephone-event/8000"), ("fmtp", f"{DTMF_PT} 0-15"),
              ("ptime", str(ptime)), ("sendrecv", None)]
    return SessionDescription(
        origin=f"controlroom {session_id} {version} IN {_family(address)} {address}", name="controlroom",
        connection=address, media=[Media("audio", port, "RTP/AVP", fmts, None, attrs)])


def accept_answer(ans: SessionDescription, *, codecs: list[str], ptime: int) -> Negotiated:
    """Read the answer to our offer: the codec is the first one the answer lists that we offered."""
    m = _audio(ans)
    got, dtmf = _codec_pts(m)
    chosen = None
    for f in m.formats:
        for name, pt in got.items():
            if f.isdigit() and int(f) == pt and name in codecs:
                chosen = name
                break
        if chosen:
            break
    if chosen is None:
        raise SdpError(488, "Answer has none of our codecs")
    addr = m.connection or ans.connection
    held = addr in (None, "0.0.0.0")
    return Negotiated(chosen, got[chosen], dtmf, None if held else (addr or "", m.port),
                      _MIRROR[m.direction], _ptime(m, ptime),
                      m.direction in ("sendonly", "inactive") or held)
