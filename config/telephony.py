"""Settings of the SIP/RTP engine (owned by telephony/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class SipSettings:
    """Where the engine listens and how it reaches handler phones."""

    bind: str = "127.0.0.1"
    """Address the SIP UDP socket binds to."""
    port: int = 5080
    """SIP UDP port (0 picks a free one, for tests)."""
    public_host: str = ""
    """Host put in Via/Contact/SDP; defaults to ``bind``."""
    domain: str = "controlroom.local"
    """Our SIP domain (From of outbound legs)."""
    proxy: str = ""
    """Outbound proxy for handler legs, e.g. ``sip:127.0.0.1:5060`` (Kamailio). Empty: direct."""
    user_agent: str = "controlroom/0.1"
    """User-Agent / Server header value."""
    username: str = ""
    """Digest user for handler legs if the proxy challenges."""
    password: str | None = None
    """Digest password (``env:NAME`` or ``file:PATH`` are resolved, never logged)."""
    rtp_bind: str = "127.0.0.1"
    """Address RTP sockets bind to."""
    rtp_port_min: int = 20000
    """Lowest RTP port (even)."""
    rtp_port_max: int = 29999
    """Highest RTP port."""
    codecs: list[Literal["PCMA", "PCMU"]] = field(default_factory=lambda: ["PCMA", "PCMU"])
    """Codecs we offer/accept, preferred first (A-law is the UK norm)."""
    ptime: int = 20
    """Packetisation time in ms."""
    dead_call_timeout: float = 60.0
    """No RTP and no signalling for this long: hang up and record why."""
    max_calls: int = 400
    """Above this many calls, new 101 calls get 503 + Retry-After; 999 is still accepted."""
    retry_after: int = 30
    """Retry-After seconds on 503."""
    max_message_bytes: int = 65535
    """Larger SIP messages are refused."""
    recording_spool_mb: int = 64
    """While the recordings disk fails (full, read-only, I/O errors), recordings keep
    their audio in memory up to this many MiB in all (64: ~35 min of stereo audio); past
    it the oldest spooled audio is dropped and recorded as a gap on its call."""
    recording_retry_interval: float = 2.0
    """Seconds between attempts to resume a spooling recording into a new file."""
    untrusted: Literal["reject", "drop"] = "reject"
    """Out-of-dialog requests from an address that is no line's trusted source or
    registrar and not the proxy: ``reject`` answers each with one small 403 (or 400 naming
    a parse fault), never retransmitted, never larger than the request, never twice for
    the same request, at most ``untrusted_rate`` a second per address; ``drop`` answers
    nothing. Counted either way (``untrusted_*`` in /metrics)."""
    untrusted_rate: float = 1.0
    """Answers a second to one untrusted address (after a burst of ``untrusted_burst``)."""
    untrusted_burst: int = 5
    """Answers an untrusted address may get at once before ``untrusted_rate`` applies."""
    country_code: str = "44"
    """Country calling code for numbers given nationally (``07700900123`` is
    ``+447700900123``): the normalised caller number the history matches on."""
    min_se: int = 90
    """Smallest session-timer interval accepted (RFC 4028 Min-SE, at least 90 s); an
    INVITE asking for less gets 422 with this value."""
    srtp_over_plain_sip: bool = False
    """LAB AND TEST ONLY. SDES (RFC 4568) puts the SRTP keys in the SDP, so whoever reads
    the signalling can decrypt the media: the engine sends and accepts ``a=crypto`` only
    on SIP over TLS. ``true`` allows it over UDP/TCP too (e.g. a loopback test rig before
    TLS is set up); logged as a warning at start and on every call that uses it."""

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be 0..65535, got {self.port}")
        if not (1024 <= self.rtp_port_min < self.rtp_port_max <= 65535):
            raise ConfigError("rtp_port_min", "RTP port range must satisfy 1024 <= min < max <= 65535")
        if self.rtp_port_max - self.rtp_port_min < 4:
            raise ConfigError("rtp_port_max", "RTP port range too small")
        if not self.codecs:
            raise ConfigError("codecs", "at least one codec is required")
        if self.ptime not in (10, 20, 30, 40):
            raise ConfigError("ptime", f"must be 10, 20, 30 or 40, got {self.ptime}")
        if self.dead_call_timeout <= 0:
            raise ConfigError("dead_call_timeout", "must be positive")
        if self.recording_spool_mb < 0:
            raise ConfigError("recording_spool_mb", "must be 0 or more")
        if self.recording_retry_interval <= 0:
            raise ConfigError("recording_retry_interval", "must be positive")
        if self.proxy and (problem := uri_problem(self.proxy)):
            raise ConfigError("proxy", problem)
        if self.untrusted_rate <= 0 or self.untrusted_burst < 1:
            raise ConfigError("untrusted_rate", "untrusted_rate must be > 0 and "
                              "untrusted_burst >= 1 (use untrusted = 'drop' to answer nothing)")
        if not self.country_code.lstrip("+").isdigit() or len(self.country_code.lstrip("+")) > 3:
            raise ConfigError("country_code", f"must be 1-3 digits, got {self.country_code!r}")
        if self.min_se < 90:
            raise ConfigError("min_se", f"must be at least 90 (RFC 4028), got {self.min_se}")


def uri_problem(uri: str) -> str | None:
    """Why the engine cannot reach ``uri``, or ``None`` when it can.

    The engine speaks SIP over UDP and nothing else: a ``sips:`` URI (TLS) or a
    ``transport=`` other than ``udp`` (tcp, tls, sctp, ws, wss) would be accepted here and
    fail on the first call, so it is refused at start-up instead (issue 12 #12)."""
    scheme, colon, rest = uri.strip().partition(":")
    if scheme.lower() == "sips":
        return (f"sips: URIs need SIP over TLS, which this engine does not have (UDP only); "
                f"got {uri!r}")
    if scheme.lower() != "sip" or not colon:
        return f"must be a sip: URI, got {uri!r}"
    hostpart = rest.split("?", 1)[0].rpartition("@")[2]
    host, *params = hostpart.split(";")
    if not host.strip() or any(ch in host for ch in " \t<>\"@"):
        return f"has no usable host, got {uri!r}"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport" and value.strip().lower() != "udp":
            return (f"transport={value.strip()} is not supported: this engine speaks SIP over "
                    f"UDP only; got {uri!r}")
    return None
