"""Settings of the SIP/RTP engine (owned by telephony/)."""

from __future__ import annotations

import os
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
    tcp: bool = False
    """Also listen for SIP over TCP on ``port`` (RFC 3261 §18: the UDP port number; with
    ``port = 0`` the number UDP got). Needed for ``;transport=tcp`` URIs and for requests
    too large for UDP (moved to TCP, §18.1.1)."""
    tls: bool = False
    """Listen for SIP over TLS on ``tls_port`` and reach ``sips:`` / ``;transport=tls``
    URIs over TLS (1.2 or later). Needs ``tls_cert`` and ``tls_key``."""
    tls_port: int = 5061
    """SIP over TLS port (0 picks a free one, for tests)."""
    tls_cert: str = ""
    """PEM certificate chain we present (server and client side). Re-read on SIGHUP:
    new connections use the new one, connections up (calls) keep theirs."""
    tls_key: str = ""
    """PEM private key of ``tls_cert`` (a file readable only by the service)."""
    tls_ca: str = ""
    """PEM CA bundle that peers' certificates must chain to: servers we connect to
    (proxy, registrars, handler phones) and clients that present one. Empty: the
    system's trust store for servers; client certificates are then not asked for."""
    tls_verify_server: bool = True
    """Check the certificate (chain to ``tls_ca`` and the name in the URI we dial, or
    its IP address) of every TLS server we connect to. Turning it off is for labs."""
    tls_client_cert: Literal["none", "optional", "required"] = "optional"
    """Whether TLS clients must present a certificate that chains to ``tls_ca`` (mutual
    TLS): ``required`` refuses a handshake without one; ``optional`` asks and verifies
    one if sent (lines with ``tls_client_cert = true`` then insist); ``none`` does
    not ask."""
    tcp_max_connections: int = 1024
    """TCP/TLS connections open at most; more are closed at accept."""
    tcp_max_per_source: int = 32
    """TCP/TLS connections open at most from one IP address."""
    tcp_idle_timeout: float = 300.0
    """Seconds without a byte either way before a TCP/TLS connection is closed (peers
    reconnect, or keep it up with CRLF keep-alives, RFC 5626)."""
    tcp_message_timeout: float = 10.0
    """Seconds a SIP message may take from its first byte to its last on TCP/TLS; then it
    is answered 400 (when it can be) and the connection closed (slow senders)."""
    tls_handshake_timeout: float = 5.0
    """Seconds a TLS handshake may take; then the connection is closed and logged."""
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
    engine_workers: int = 1
    """Engine processes. 1: the engine runs inside the service process (the default).
    N >= 2: N whole engines (SIP, media, recordings) in child processes
    (:mod:`telephony.workers`), worker ``i`` on SIP port ``port + i`` (``tls_port + i``)
    with the i-th share of the RTP range, recordings under ``<recordings_dir>/w<i>``;
    the proxy in front (Kamailio's dispatcher) spreads INVITEs over those ports.
    Measured on two shared cores with Kamailio, SIPp and the handler phones on the same
    machine, a second engine process does not pay off, so the default is 1: engines
    alone, one process did as well as two (issue 15, ``bench/sip_load.py --workers``);
    the whole service (``bench/service_load.py --calls 200 --rate 5 --engine none
    --handlers 60 --talk 6 --engine-workers 1|2``, 3 rounds each, load average 8-15)
    used 0.22-0.29 cores with 1 and 0.28-0.35 (service + workers) with 2, and 999
    INVITE->200 p99 was 72 / 392 / 4628 ms (min / median / max) with 1 against
    2928 / 3096 / 6288 ms with 2; engines alone at 20 calls/s (``bench/sip_load.py
    --calls 500 --rate-start 20 --rate-max 20 --rounds 2 --no-pyvoip --workers 1|2``,
    load 6) spent 2.20-2.25 ms CPU per stream-second in one process and 2.59-2.78 in two.
    Workers are for machines with cores to spare."""
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
        if not 1 <= self.engine_workers <= 64:
            raise ConfigError("engine_workers", f"must be 1..64, got {self.engine_workers}")
        if self.engine_workers > 1:
            share = (self.rtp_port_max - self.rtp_port_min + 1) // self.engine_workers
            if share < 4:
                raise ConfigError("engine_workers", f"{self.engine_workers} workers leave "
                                  f"{share} RTP ports each (rtp_port_min..rtp_port_max is "
                                  "split between them); at least 4 are needed")
            if self.port and self.port + self.engine_workers - 1 > 65535:
                raise ConfigError("engine_workers", f"worker SIP ports port..port+"
                                  f"{self.engine_workers - 1} go past 65535")
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
        if self.proxy and (problem := uri_problem(self.proxy, self.transports)):
            raise ConfigError("proxy", problem)
        if self.untrusted_rate <= 0 or self.untrusted_burst < 1:
            raise ConfigError("untrusted_rate", "untrusted_rate must be > 0 and "
                              "untrusted_burst >= 1 (use untrusted = 'drop' to answer nothing)")
        if not self.country_code.lstrip("+").isdigit() or len(self.country_code.lstrip("+")) > 3:
            raise ConfigError("country_code", f"must be 1-3 digits, got {self.country_code!r}")
        if self.min_se < 90:
            raise ConfigError("min_se", f"must be at least 90 (RFC 4028), got {self.min_se}")
        if self.tls:
            if not 0 <= self.tls_port <= 65535:
                raise ConfigError("tls_port", f"must be 0..65535, got {self.tls_port}")
            for key in ("tls_cert", "tls_key"):
                if not getattr(self, key):
                    raise ConfigError(key, "is required when tls = true")
            for key in ("tls_cert", "tls_key", "tls_ca"):
                path = getattr(self, key)
                if path and not os.path.isfile(path):
                    raise ConfigError(key, f"no such file: {path!r}")
        for key in ("tcp_idle_timeout", "tcp_message_timeout", "tls_handshake_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(key, "must be positive")
        if self.tcp_max_connections < 1 or self.tcp_max_per_source < 1:
            raise ConfigError("tcp_max_connections",
                              "tcp_max_connections and tcp_max_per_source must be >= 1")

    @property
    def transports(self) -> frozenset[str]:
        """Transports this configuration carries SIP over."""
        return frozenset({"udp"} | ({"tcp"} if self.tcp else set())
                         | ({"tls"} if self.tls else set()))


def uri_problem(uri: str, transports: frozenset[str] | None = None) -> str | None:
    """Why the engine cannot reach ``uri``, or ``None`` when it can.

    The engine speaks SIP over UDP, TCP and TLS. ``transports`` is what the configuration
    enables (:attr:`SipSettings.transports`; None: judge only the syntax, for fields
    checked before the ``[sip]`` table is known). A ``sips:`` URI or ``;transport=tls``
    needs ``sip.tls``, ``;transport=tcp`` needs ``sip.tcp``; other transports (sctp, ws,
    wss) are refused: they would be accepted here and fail on the first call."""
    scheme, colon, rest = uri.strip().partition(":")
    if scheme.lower() not in ("sip", "sips") or not colon:
        return f"must be a sip: or sips: URI, got {uri!r}"
    hostpart = rest.split("?", 1)[0].rpartition("@")[2]
    host, *params = hostpart.split(";")
    if not host.strip() or any(ch in host for ch in " \t<>\"@"):
        return f"has no usable host, got {uri!r}"
    transport = "tls" if scheme.lower() == "sips" else "udp"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            value = value.strip().lower()
            if value not in ("udp", "tcp", "tls"):
                return (f"transport={value} is not supported: this engine speaks SIP over "
                        f"UDP, TCP and TLS only; got {uri!r}")
            if scheme.lower() == "sips" and value != "tls":
                return f"a sips: URI must be reached over TLS, got {uri!r}"
            transport = value
    if transports is not None and transport not in transports:
        if transport == "tls":
            return (f"needs SIP over TLS, which is not configured (set sip.tls = true with "
                    f"sip.tls_cert and sip.tls_key); got {uri!r}")
        return (f"needs SIP over TCP, which is not configured (set sip.tcp = true); "
                f"got {uri!r}")
    return None
