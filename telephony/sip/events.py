"""Events the sans-IO user agent core (:mod:`telephony.sip.ua`) reports to its user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .message import Request, Response

if TYPE_CHECKING:
    from .state import Registration, Session

Addr = tuple[str, int]


@dataclass(frozen=True)
class UaEvent:
    """Base of the core's events."""


@dataclass(frozen=True)
class InviteReceived(UaEvent):
    """A new INVITE (100 Trying already sent). Answer with ``ua.respond(session, ...)``."""

    session: Session
    request: Request
    source: Addr


@dataclass(frozen=True)
class InviteCancelled(UaEvent):
    """CANCEL before our final response: 200 to the CANCEL and 487 to the INVITE sent."""

    session: Session


@dataclass(frozen=True)
class SessionConfirmed(UaEvent):
    """The ACK for our 2xx arrived (its body is the SDP answer after a delayed offer)."""

    session: Session
    request: Request | None = None


@dataclass(frozen=True)
class AckTimeout(UaEvent):
    """No ACK for our 2xx in 64*T1: the core sent BYE and ended the session."""

    session: Session


@dataclass(frozen=True)
class SessionExpired(UaEvent):
    """The session timer ran out (RFC 4028 §10): no refresh came in time, or ours failed.
    The core sent BYE and ended the session."""

    session: Session
    interval: int
    """The negotiated Session-Expires, seconds."""


@dataclass(frozen=True)
class ByeReceived(UaEvent):
    """The peer hung up (200 sent)."""

    session: Session


@dataclass(frozen=True)
class ReInviteReceived(UaEvent):
    """A re-INVITE in a dialog (100 sent). Answer with ``ua.respond_reinvite``."""

    session: Session
    request: Request


@dataclass(frozen=True)
class Progress(UaEvent):
    """A provisional response (100 included) to our INVITE."""

    session: Session
    response: Response


@dataclass(frozen=True)
class Answered(UaEvent):
    """A 2xx to our INVITE (ACK sent)."""

    session: Session
    response: Response


@dataclass(frozen=True)
class Failed(UaEvent):
    """Our INVITE got a final non-2xx, timed out (408) or could not be sent (503)."""

    session: Session
    status: int
    reason: str


@dataclass(frozen=True)
class RegistrationResult(UaEvent):
    """A REGISTER transaction finished: ``ok`` with the granted ``expires``, or failed."""

    registration: Registration
    ok: bool
    status: int
    expires: int


@dataclass(frozen=True)
class InfoReceived(UaEvent):
    """An in-dialog INFO (200 already sent), e.g. SIP INFO DTMF (application/dtmf-relay)."""

    session: Session
    request: Request


@dataclass(frozen=True)
class MessageRefused(UaEvent):
    """A datagram the core would not take: malformed, or a request from an untrusted
    source outside any dialog. Already answered (or not) and counted; for the log."""

    source: Addr
    """Where it came from."""
    kind: str
    """``untrusted`` or the parse fault's kind (``bad_content_length``, ``bad_bytes``...)."""
    reason: str
    """What was wrong, in words (the parser's exact message for a parse fault)."""
    status: int | None
    """The status sent back, or ``None`` when nothing was sent."""
    verdict: str
    """Why it was (not) answered: ``answered``, ``dropped`` (unroutable or not a request),
    or the :mod:`telephony.sip.guard` verdict for an untrusted source."""
