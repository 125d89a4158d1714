"""Session timers (RFC 4028) as the UAS sees them: what a request asks for and what we answer.

Pure: a request in, a decision out. The user agent core (:mod:`telephony.sip.ua`) applies
it: the headers go on the 2xx, the timer on the session.

* A request with ``Session-Expires`` gets it back on the 2xx (§9) with a ``refresher``:
  the one the request named, else ``uac`` when the caller supports timers (it offered
  them, it refreshes), else ``uas`` (a proxy inserted the header for a caller that
  does not know the extension: we refresh). ``refresher=uac`` puts ``Require: timer``
  on the 2xx.
* An interval below our minimum (``Min-SE``, never below 90 s, §5) is refused with 422
  and our ``Min-SE`` when the caller supports timers, so it retries at once with a
  larger one; a caller that does not (it could not understand a 422) gets our minimum.
* A request without ``Session-Expires`` runs no timer: a 999 call is never ended by a
  timer the caller did not ask for.
* The side that does not refresh ends the session with BYE when no refresh came by
  ``interval - min(32, interval / 3)`` after the last one (§10); the refresher refreshes
  at half the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from .message import Request, Response
from .uri import split_params

MIN_SE_FLOOR = 90
"""RFC 4028 §5: no Min-SE may be lower than 90 s."""


@dataclass(frozen=True)
class Timer:
    """A negotiated session timer."""

    interval: int
    """Session-Expires, seconds."""
    refresher: str
    """``uac`` (the side that sent the INVITE refreshes) or ``uas``."""

    def headers(self) -> list[tuple[str, str]]:
        """What the 2xx carries (RFC 4028 §9)."""
        out = [("Session-Expires", f"{self.interval};refresher={self.refresher}"),
               ("Supported", "timer")]
        if self.refresher == "uac":
            out.append(("Require", "timer"))
        return out

    def bye_after(self) -> float:
        """Seconds after a refresh at which the refreshee gives up (§10)."""
        return self.interval - min(32.0, self.interval / 3)


@dataclass(frozen=True)
class TooSmall:
    """Refuse with 422 Session Interval Too Small and this ``Min-SE``."""

    min_se: int

    def headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se))]


def supports_timer(msg: Request | Response) -> bool:
    tokens = msg.get_all("Supported") + msg.get_all("Require")
    return any(t.strip().lower() == "timer" for t in tokens)


def _delta(value: str | None) -> tuple[int | None, dict[str, str | None]]:
    if not value:
        return None, {}
    head, params = split_params(value)
    try:
        n = int(head)
    except ValueError:
        return None, {}
    return (n if n > 0 else None), params


def negotiate(req: Request, *, min_se: int = MIN_SE_FLOOR) -> Timer | TooSmall | None:
    """What to answer a (re-)INVITE or UPDATE with, for our minimum ``min_se``."""
    interval, params = _delta(req.get("Session-Expires"))
    if interval is None:
        return None  # no timer asked for (or a malformed value: never refuse a call for it)
    ours = max(min_se, MIN_SE_FLOOR)
    theirs, _ = _delta(req.get("Min-SE"))
    supported = supports_timer(req)
    if interval < ours:
        if supported:
            return TooSmall(ours)
        interval = ours
    interval = max(interval, theirs or 0)
    refresher = (params.get("refresher") or "").lower()
    if refresher not in ("uac", "uas"):
        refresher = "uac" if supported else "uas"
    elif refresher == "uac" and not supported:
        refresher = "uas"  # a caller without the extension cannot be asked to refresh
    return Timer(interval, refresher)


def from_response(resp: Response) -> Timer | None:
    """The timer a 2xx to our refresh settled on (None: the peer dropped timers)."""
    interval, params = _delta(resp.get("Session-Expires"))
    if interval is None:
        return None
    refresher = (params.get("refresher") or "uac").lower()
    return Timer(interval, refresher if refresher in ("uac", "uas") else "uac")
