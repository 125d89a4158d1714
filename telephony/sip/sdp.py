"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one G.711 audio stream.

We accept PCMA/PCMU plus RFC 4733 telephone-event, pick the first codec of *our*
preference list that the offer contains (the UK norm is A-law, so A-law is preferred),
answer with the offerer's payload type numbers, and mirror the direction
(sendonly -> recvonly, ...). ``c=0.0.0.0`` is the RFC 2543 hold.

SRTP keyed by SDES (RFC 4568): each side puts its own master key in an ``a=crypto`` line
and encrypts what it sends with it. A policy per line or handler phone says what we do:

* ``off``: plain RTP. An ``RTP/SAVP`` offer is refused (488); ``a=crypto`` on an
  ``RTP/AVP`` stream (best-effort SRTP, as baresip's ``mediaenc srtp``) is answered plain.
* ``offered``: SRTP when the far end wants it, plain otherwise. We offer ``RTP/AVP`` with
  ``a=crypto`` (best-effort: a phone without SRTP answers plain).
* ``required``: SRTP or no call. We offer ``RTP/SAVP``; an offer or answer without a
  usable ``a=crypto`` is refused (488 / the leg fails).

A malformed ``a=crypto`` line is always a 488 naming it; a stream whose crypto lines all
name suites we do not have (or use MKI, several keys or session parameters, which we do
not implement) is refused when it is ``RTP/SAVP`` or the policy is ``required``. This
module never makes keys: the caller passes them in (``secrets.token_bytes``), and the
caller decides whether keys may be sent at all (only over TLS: see the engine).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony.errors import SdpError

STATIC_PT = {"PCMU": 0, "PCMA": 8}
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
           "inactive": "inactive"}
DTMF_PT = 101
"""Dynamic payload type we offer for telephone-event."""
CRYPTO_SUITES = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30,
                 "AEAD_AES_128_GCM": 28, "AEAD_AES_256_GCM": 44}
"""SDES crypto suites we accept (RFC 4568, RFC 7714) -> master key + salt length in bytes."""
OFFER_SUITES = ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
"""Suites we offer, preferred first: AES-GCM (RFC 7714: one AEAD pass, no HMAC; measured
cheaper per packet, bench/srtp_cpu.py), then the two every SDES phone has (RFC 4568), which
a peer without GCM picks instead (it skips the line it does not know)."""
SRTP_POLICIES = ("required", "offered", "off")
_PLAIN = ("RTP/AVP", "RTP/AVPF")
_SECURE = ("RTP/SAVP", "RTP/SAVPF")


@dataclass(frozen=True)
class Crypto:
    """One ``a=crypto`` line (RFC 4568 §9.1) we can use: a known suite, one inline key."""

    tag: int
    suite: str
    key: bytes
    """Master key followed by master salt."""

    def attribute(self) -> tuple[str, str]:
        return ("crypto", f"{self.tag} {self.suite} inline:"
                          f"{base64.b64encode(self.key).decode('ascii')}")


def parse_crypto(value: str | None) -> Crypto | str:
    """One ``a=crypto`` value: the :class:`Crypto`, or why we cannot use it (a string:
    unknown suite, MKI, several keys, session parameters). A malformed line raises
    ``SdpError(488)`` saying what is wrong; the reason never quotes the key (it goes in
    a SIP response and a log line)."""
    parts = (value or "").split()
    if len(parts) < 3:
        raise SdpError(488, "Malformed a=crypto: expected '<tag> <suite> inline:<key>'")
    if not parts[0].isdigit() or len(parts[0]) > 9:
        raise SdpError(488, "Malformed a=crypto: the tag must be 1 to 9 digits")
    tag, suite, key_params = int(parts[0]), parts[1], parts[2]
    if not key_params.startswith("inline:"):
        raise SdpError(488, f"Malformed a=crypto: the key method must be inline: (tag {tag})")
    length = CRYPTO_SUITES.get(suite)
    if length is None:
        return f"unknown crypto suite {suite[:40]}"
    if ";" in key_params:
        return "several master keys in one a=crypto (not supported)"
    key_b64, *extra = key_params[len("inline:"):].split("|")
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SdpError(488, f"Malformed a=crypto: the key is not base64 (tag {tag})") from None
    if len(key) != length:
        raise SdpError(488, f"Malformed a=crypto: {suite} needs a {length}-byte key, "
                            f"got {len(key)} (tag {tag})")
    if len(extra) > 2:
        raise SdpError(488, f"Malformed a=crypto: too many key parameters (tag {tag})")
    for item in extra:
        if ":" in item:  # MKI:length
            mki, _, mlen = item.partition(":")
            if not (mki.isdigit() and mlen.isdigit()):
                raise SdpError(488, f"Malformed a=crypto: bad MKI (tag {tag})")
            return "MKI in a=crypto (not supported)"
        lifetime = item[2:] if item.startswith("2^") else item
        if not lifetime.isdigit():
            raise SdpError(488, f"Malformed a=crypto: bad key lifetime (tag {tag})")
    for param in parts[3:]:
        if not (param.startswith("WSH=") and param[4:].isdigit()):  # window size hint: fine
            return f"session parameter {param[:30]} (not supported)"
    return Crypto(tag, suite, key)


def _cryptos(m: Media) -> tuple[list[Crypto], list[str]]:
    """The usable crypto lines of a stream and the reasons the others are not."""
    usable: list[Crypto] = []
    why: list[str] = []
    tags: set[int] = set()
    for name, value in m.attributes:
        if name != "crypto":
            continue
        c = parse_crypto(value)
        tag = int((value or "0").split()[0])
        if tag in tags:
            raise SdpError(488, f"Malformed a=crypto: tag {tag} used twice")
        tags.add(tag)
        if isinstance(c, Crypto):
            usable.append(c)
        else:
            why.append(c)
    return usable, why


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
    srtp: Srtp | None = None
    """SRTP keys when the stream is encrypted, None for plain RTP."""


@dataclass(frozen=True)
class Srtp:
    """The outcome of SDES for one stream."""

    suite: str
    tag: int
    """The ``a=crypto`` tag both sides agreed on."""
    local_key: bytes
    """Ours: protects what we send (it is in our SDP)."""
    remote_key: bytes
    """The far end's: checks and decrypts what it sends."""
    proto: str
    """``RTP/SAVP`` (or ``RTP/AVP`` for best-effort SRTP), for our next offer."""


def _audio(sdp: SessionDescription, srtp: str = "off") -> tuple[Media, Crypto | None]:
    """The first active audio stream we can take under the ``srtp`` policy, with the
    crypto line we take (None: plain RTP); else ``SdpError(488)`` saying why."""
    if srtp not in SRTP_POLICIES:
        raise ValueError(f"srtp policy must be one of {SRTP_POLICIES}, got {srtp!r}")
    refusal = ""
    for m in sdp.media:
        if m.kind != "audio" or m.port == 0:
            continue
        proto = m.proto.upper()
        if proto not in _PLAIN and proto not in _SECURE:
            refusal = refusal or f"Unsupported media transport {m.proto[:30]}"
            continue
        usable, why = _cryptos(m)  # a malformed line is refused here, whatever the policy
        if proto in _SECURE and srtp == "off":
            refusal = refusal or "Secure RTP (RTP/SAVP) is not accepted here (srtp = 'off')"
        elif usable and srtp != "off":
            return m, usable[0]
        elif proto in _SECURE or srtp == "required":
            refusal = refusal or (
                f"SRTP required: no usable a=crypto ({'; '.join(why)})" if why else
                "SRTP required: no a=crypto in the offer" if srtp == "required" else
                "RTP/SAVP without a=crypto")
        else:
            return m, None
    raise SdpError(488, refusal or "No audio stream in SDP offer")


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
           ptime: int, session_id: int, version: int, srtp: str = "off",
           srtp_key: Callable[[str], bytes] | None = None
           ) -> tuple[SessionDescription, Negotiated]:
    """Answer an offer: first of OUR ``codecs`` the offer has; none -> ``SdpError(488)``.

    ``srtp`` is the policy (module docstring); when we take a crypto line,
    ``srtp_key(suite)`` gives our master key for it (the same one each time it is asked
    during one negotiation)."""
    m, crypto = _audio(offer, srtp)
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
    keys = None
    if crypto is not None:
        if srtp_key is None:
            raise ValueError("srtp_key is needed to answer with SRTP")
        ours = srtp_key(crypto.suite)
        attrs.append(Crypto(crypto.tag, crypto.suite, ours).attribute())
        keys = Srtp(crypto.suite, crypto.tag, ours, crypto.key, m.proto)
    ans = SessionDescription(
        origin=f"controlroom {session_id} {version} IN {_family(address)} {address}", name="controlroom",
        connection=address,
        # RFC 3264 §6: one answer m-line per offered m-line, the others refused with port 0
        media=[Media("audio", port, m.proto, fmts, None, attrs) if o is m
               else Media(o.kind, 0, o.proto, o.formats[:1] or ["0"]) for o in offer.media])
    on_hold = m.direction in ("sendonly", "inactive") or held_addr
    return ans, Negotiated(chosen, pt, dtmf, remote, direction, ptime_used, on_hold, keys)


def offer(*, codecs: list[str], address: str, port: int, ptime: int, session_id: int,
          version: int = 1, crypto: list[Crypto] | tuple[Crypto, ...] = (),
          proto: str = "RTP/AVP") -> SessionDescription:
    """Our offer to a handler phone: our codecs in preference order + telephone-event;
    with ``crypto`` lines (our keys) on ``proto`` ``RTP/SAVP`` (SRTP required) or
    ``RTP/AVP`` (best-effort SRTP)."""
    fmts = [str(STATIC_PT[c]) for c in codecs] + [str(DTMF_PT)]
    attrs: list[tuple[str, str | None]] = [("rtpmap", f"{STATIC_PT[c]} {c}/8000") for c in codecs]
    attrs += [("rtpmap", f"{DTMF_PT} telephone-event/8000"), ("fmtp", f"{DTMF_PT} 0-15"),
              ("ptime", str(ptime)), ("sendrecv", None)]
    attrs += [c.attribute() for c in crypto]
    return SessionDescription(
        origin=f"controlroom {session_id} {version} IN {_family(address)} {address}", name="controlroom",
        connection=address, media=[Media("audio", port, proto, fmts, None, attrs)])


def offer_crypto(key: Callable[[str], bytes]) -> list[Crypto]:
    """Our ``a=crypto`` lines for an offer: one per :data:`OFFER_SUITES`, tags 1, 2..."""
    return [Crypto(i, suite, key(suite)) for i, suite in enumerate(OFFER_SUITES, 1)]


def accept_answer(ans: SessionDescription, *, codecs: list[str], ptime: int,
                  crypto: list[Crypto] | tuple[Crypto, ...] = (),
                  srtp_required: bool = False) -> Negotiated:
    """Read the answer to our offer: the codec is the first one the answer lists that we
    offered. With ``crypto`` (what we offered) the answer's ``a=crypto`` must take one
    of ours (same tag and suite); ``srtp_required``: an answer without one is 488."""
    m = _answered_audio(ans)
    keys = None
    theirs = [v for n, v in m.attributes if n == "crypto"]
    if theirs and crypto:
        if len(theirs) != 1:
            raise SdpError(488, "Answer has more than one a=crypto")
        c = parse_crypto(theirs[0])
        if not isinstance(c, Crypto):
            raise SdpError(488, f"Answer's a=crypto is unusable: {c}")
        mine = next((o for o in crypto if o.tag == c.tag and o.suite == c.suite), None)
        if mine is None:
            raise SdpError(488, f"Answer's a=crypto (tag {c.tag}, {c.suite}) matches none "
                                "of our offer")
        keys = Srtp(c.suite, c.tag, mine.key, c.key, m.proto)
    elif srtp_required or (m.proto.upper() in _SECURE):
        raise SdpError(488, "SRTP required: the answer has no a=crypto" if crypto
                       else "Answer is RTP/SAVP but we offered plain RTP")
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
                      m.direction in ("sendonly", "inactive") or held, keys)


def _answered_audio(sdp: SessionDescription) -> Media:
    """The first active RTP audio stream of an answer (plain or secure profile)."""
    for m in sdp.media:
        if m.kind == "audio" and m.port != 0 and m.proto.upper() in _PLAIN + _SECURE:
            return m
    raise SdpError(488, "No audio stream in SDP answer")
