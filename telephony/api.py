"""The engine's boundary: events it reports and the commands it takes.

The rest of the service sees telephony only through this module. The engine posts
:class:`TelephonyEvent` instances to a callback on the event loop (never from another
thread) and is driven through the :class:`EngineCommands` protocol. Identifiers:

* ``call_id``: our id of an inbound caller's call (a short opaque string we mint, not
  the SIP Call-ID).
* ``leg_id``: our id of an outbound leg to a handler phone.

Timestamps ``at`` are ``time.time()`` wall-clock seconds (UTC epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

Party = Literal["caller", "handler", "system"]


@dataclass(frozen=True)
class TelephonyEvent:
    """Base of every event the engine reports."""

    at: float
    """Wall-clock time of the event (epoch seconds)."""


@dataclass(frozen=True)
class IncomingCall:
    """What the engine knows of an INVITE before it answers, passed to ``admit``."""

    line: str
    """Line name the dialled number belongs to."""
    dialled: str
    """Request-URI user part, e.g. ``999``."""
    caller: str
    """Caller number (From / P-Asserted-Identity user part)."""
    display_name: str
    """Presented identity (display name), may be empty."""
    source: str
    """``ip:port`` the INVITE came from."""
    location: str | None = None
    """Location if the network sent it: a one-line summary of a PIDF-LO that was read,
    else the Geolocation value or body as given."""
    caller_normalised: str = ""
    """The caller number as E.164 (``+447700900123``), ``""`` if it cannot be one."""
    location_detail: dict[str, Any] | None = None
    """The location as read (:func:`telephony.sip.inbound.location_info`): ``by``,
    ``uri``, ``parsed``, ``error``, and for a PIDF-LO ``geodetic``, ``civic``,
    ``accuracy``."""


@dataclass(frozen=True)
class CallArrived(TelephonyEvent):
    """An inbound call was accepted and answered (200 OK sent); caller audio is recorded."""

    call_id: str
    line: str
    dialled: str
    caller: str
    display_name: str
    source: str
    sip_call_id: str
    codec: str
    """Negotiated codec, ``PCMA`` or ``PCMU``."""
    location: str | None = None
    invite_at: float = 0.0
    """When the INVITE arrived (for INVITE→answer time)."""
    caller_normalised: str = ""
    """``caller`` as E.164 with ``+`` (``""``: withheld, short code, not a number)."""
    location_detail: dict[str, Any] | None = None
    """Structured location (see :class:`IncomingCall`), None when none was sent."""


@dataclass(frozen=True)
class CallRejected(TelephonyEvent):
    """An INVITE was refused (unknown number 404, untrusted 403, overload 503, 488...)."""

    line: str | None
    dialled: str
    caller: str
    status: int
    reason: str


@dataclass(frozen=True)
class CallCancelled(TelephonyEvent):
    """The caller sent CANCEL before we answered (487 sent). Reported at once."""

    call_id: str
    line: str
    caller: str


@dataclass(frozen=True)
class CallEnded(TelephonyEvent):
    """An inbound call ended (BYE from either side, dead-call guard, shutdown)."""

    call_id: str
    by: Party
    """Who hung up."""
    reason: str
    """``bye``, ``dead-call: no RTP or signalling for 60 s``, ``shutdown``, ``transferred``..."""


@dataclass(frozen=True)
class Dtmf(TelephonyEvent):
    """An RFC 4733 digit from the caller (``leg_id`` None) or a handler leg."""

    call_id: str
    digit: str
    leg_id: str | None = None


@dataclass(frozen=True)
class SilentCallFlag(TelephonyEvent):
    """The caller pressed 5-5 (the Silent Solution)."""

    call_id: str


@dataclass(frozen=True)
class HoldChanged(TelephonyEvent):
    """A re-INVITE put the caller (or handler leg) on hold or resumed."""

    call_id: str
    on_hold: bool
    by: Party


@dataclass(frozen=True)
class LegRinging(TelephonyEvent):
    """The handler's phone is ringing (180/183)."""

    call_id: str
    leg_id: str


@dataclass(frozen=True)
class LegAnswered(TelephonyEvent):
    """The handler answered (200 OK, ACKed). Not yet bridged: call ``bridge``."""

    call_id: str
    leg_id: str


@dataclass(frozen=True)
class LegFailed(TelephonyEvent):
    """The leg did not connect."""

    call_id: str
    leg_id: str
    reason: Literal["no-answer", "busy", "rejected", "unreachable", "cancelled", "error"]
    status: int = 0
    """Final SIP status if any (486, 603, 408...)."""


@dataclass(frozen=True)
class LegEnded(TelephonyEvent):
    """A connected handler leg ended (handler hung up, or we did)."""

    call_id: str
    leg_id: str
    by: Party


@dataclass(frozen=True)
class RecordingSealed(TelephonyEvent):
    """A call's stereo recording is complete: caller left, handler right, 8 kHz 16-bit."""

    call_id: str
    path: Path
    sha256: str
    duration: float
    """Seconds of audio (equals the call's answered duration)."""
    bytes: int
    recovered: bool = False
    """True when sealed at start-up after a crash."""
    segments: tuple[RecordingSegment, ...] = ()
    """Every WAV file of the recording in order; more than one when the recordings disk
    failed during the call (``path``/``sha256`` are the first one's)."""
    gaps: tuple[RecordingGap, ...] = ()
    """Audio the recording lacks because the disk failed and the spool overflowed."""


@dataclass(frozen=True)
class RecordingSegment:
    """One WAV file of a recording."""

    path: Path
    start: float
    """Seconds from answer where its audio starts."""
    duration: float
    sha256: str
    bytes: int


@dataclass(frozen=True)
class RecordingGap:
    """Audio missing from a recording (recordings disk full or failing)."""

    start: float
    """Seconds from answer."""
    end: float
    frames_lost: int
    """8 kHz stereo frames lost."""
    reason: str


@dataclass(frozen=True)
class AudioFrame:
    """20 ms of decoded audio for live transcription (not an event on the bus)."""

    call_id: str
    channel: Literal["caller", "handler"]
    pcm: bytes
    """16-bit signed little-endian mono, 8 kHz."""
    offset: float
    """Seconds since the call was answered (media clock)."""


class EngineCommands(Protocol):
    """What the service may ask of the engine. All return promptly (never block on I/O)."""

    def offer(self, call_id: str, handler_uri: str, *, timeout: float,
              caller_display: str = "") -> str:
        """Start calling a handler's phone for this call; returns the ``leg_id``.

        Outcomes arrive as LegRinging / LegAnswered / LegFailed(no-answer after
        ``timeout`` s, CANCEL sent). ``caller_display`` is put in the From display name.
        """

    def cancel_offer(self, leg_id: str) -> None:
        """Stop ringing a handler (CANCEL); LegFailed(cancelled) follows."""

    def bridge(self, call_id: str, leg_id: str) -> None:
        """Connect the caller and an answered handler leg both ways; stops the queue prompt."""

    def unbridge(self, call_id: str) -> None:
        """Detach the handler leg (it is hung up); the caller hears the queue prompt again."""

    def play(self, call_id: str, prompt: str) -> None:
        """Play ``tone``, ``silence`` or a WAV path to the caller (looped) while not bridged."""

    def hold(self, call_id: str, on: bool) -> None:
        """Handler puts the caller on hold (caller hears the prompt) or resumes."""

    def hangup(self, call_id: str, reason: str = "") -> None:
        """End the call (BYE to the caller and any handler leg)."""

    def set_accepting(self, *, priority_max: int | None) -> None:
        """Overload/drain control: accept new calls only on lines with priority <= max
        (None: all). Others get 503 with Retry-After."""


@dataclass
class EngineStats:
    """Counters for /metrics."""

    calls_active: int = 0
    legs_active: int = 0
    invites: int = 0
    rejected: dict[int, int] = field(default_factory=dict)
    rtp_packets_in: int = 0
    rtp_packets_out: int = 0
    rtp_lost: int = 0
    rtp_late: int = 0
    max_send_gap_ms: float = 0.0
    recording_backlog: int = 0
    """Recording batches queued for the disk writer (a slow disk shows here, not as gaps)."""
    recording_disk_faults: int = 0
    """Recording segments closed by a disk error (full, read-only, I/O error)."""
    recordings_spooling: int = 0
    """Recordings whose audio is held in memory now because the disk fails."""
    recording_spool_bytes: int = 0
    """Bytes of audio held in those spools."""
    recording_frames_lost: int = 0
    """Audio frames (8 kHz) recordings lost: the spool was full, or the disk still failed at seal."""
    rtp_foreign: int = 0
    """RTP packets dropped because they came from another address than the SDP names
    (or the NAT-latched one): strangers, stale streams of earlier calls."""
    rtp_ssrc_dropped: int = 0
    """RTP packets from the right address dropped for carrying a second SSRC while the
    current one was still flowing."""
    rtp_nat_latched: int = 0
    """Streams (lines behind NAT) that latched to their first packet's address."""
    rtp_srtp_replayed: int = 0
    """SRTP/SRTCP packets dropped by the replay check (a captured packet sent again)."""
    rtp_srtp_forged: int = 0
    """SRTP/SRTCP packets dropped because their authentication tag did not match."""
    srtp_streams: int = 0
    """Streams (caller or handler legs) using SRTP now."""
    rtp_ports_reused_early: int = 0
    """RTP ports handed out before their rest after the previous call was over (the
    pool had no other free port)."""
