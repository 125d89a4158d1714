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
