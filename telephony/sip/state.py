"""The user agent core's records: :class:`Session` (one INVITE dialog) and
:class:`Registration` (one REGISTER binding).

Plain data, below the core (:mod:`.ua`, :mod:`.register`) and its events (:mod:`.events`),
which all refer to them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .dialog import Addr, Dialog
from .message import Request
from .timer import Timer
from .transaction import T1, ClientTransaction, ServerTransaction
from .uri import SipUri


def new_tag() -> str:
    return secrets.token_hex(6)


@dataclass(eq=False)
class Registration:
    """A REGISTER binding kept alive for a 'registered' line."""

    registrar: SipUri
    aor: str
    contact: str
    expires: int
    credentials: tuple[str, str] | None
    dest: Addr
    user: Any = None
    call_id: str = field(default_factory=lambda: secrets.token_hex(12))
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0
    registered: bool = False
    stopping: bool = False
    auth_attempts: int = 0
    retry_delay: float = 5.0
    refresh_at: float | None = None

    @property
    def deadline(self) -> float | None:
        return self.refresh_at


@dataclass(eq=False)
class Session:
    """One INVITE dialog, inbound (``uas``) or outbound (``uac``)."""

    role: str
    invite: Request
    user: Any = None
    """Opaque owner (the engine's call or leg)."""
    state: str = "new"
    """uas: incoming, answered, confirmed, terminated. uac: calling, early, confirmed,
    terminated."""
    dialog: Dialog | None = None
    local_tag: str = ""
    source: Addr = ("127.0.0.1", 5060)
    server_tx: ServerTransaction | None = None
    client_tx: ClientTransaction | None = None
    dest: Addr = ("127.0.0.1", 5060)
    credentials: tuple[str, str] | None = None
    auth_attempts: int = 0
    cancel_pending: bool = False
    cancelled: bool = False
    bye_pending: bool = False
    ack: Request | None = None
    reinvite_tx: ServerTransaction | None = None
    # 2xx retransmission (UAS core, RFC 3261 §13.3.1.4)
    ok_data: bytes | None = None
    ok_dest: Addr = ("127.0.0.1", 5060)
    retrans_at: float | None = None
    end_at: float | None = None
    interval: float = T1
    # session timer (RFC 4028)
    timer: Timer | None = None
    """The negotiated timer; ``refresher`` as in the last refresh transaction."""
    we_refresh: bool = False
    timer_at: float | None = None
    """Next timer action: send a refresh (we refresh) or BYE (no refresh came)."""
    expires_at: float | None = None
    """When the session ends without a successful refresh."""
    refreshing: bool = False
    """Our refresh re-INVITE is in flight."""
    local_sdp: bytes = b""
    """The SDP of our last 2xx: what a refresh re-INVITE offers again (no change)."""

    @property
    def deadline(self) -> float | None:
        times = [t for t in (self.retrans_at, self.end_at, self.timer_at) if t is not None]
        return min(times) if times else None
