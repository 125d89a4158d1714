"""Caller numbers: the number exactly as the caller's identity gives it, and a normalised
form to compare and to call back on.

Pure functions, no I/O. The raw number is what the network presented (``+447700900123``,
``07700900123``, ``+44-7700-900123``): it is kept as given, because it is evidence and
because a CAD operator reads it back to the caller. The normalised form is E.164 with its
``+`` (``+447700900123``) when the number can be made one, so ``+447700900123``,
``00447700900123``, ``07700900123`` and ``+44 (0)7700 900123`` are one caller for the
history; it is empty when the number cannot be (withheld, a short code such as ``999``,
a name, an extension).

Rules, for a configured country calling code ``cc`` (``44``), trunk prefix ``0`` and
international prefix ``00``:

* visual separators (``-``, ``.``, ``(``, ``)``, space; RFC 3966 §5.1.1) are dropped;
* ``+`` then 8..15 digits is E.164 as it is; a ``(0)`` after the country code (a common
  UK way of writing) is dropped;
* ``00`` then digits is international: ``+`` and the digits;
* ``0`` then 9..10 digits is national: ``+<cc>`` and the digits without the ``0``;
* ``<cc>`` then enough digits (a network that leaves out the ``+``) is ``+`` and the
  digits;
* anything else has no normalised form.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

_SEPARATORS = str.maketrans("", "", "-.() \t")
_WITHHELD_USERS = {"anonymous", "withheld", "restricted", "private", "unavailable",
                   "unknown", "anonymous.invalid"}
_WITHHELD_HOSTS = {"anonymous.invalid"}


@dataclass(frozen=True)
class CallerNumber:
    """A caller's number as presented, and normalised."""

    raw: str
    """As the identity gives it (user part of the URI, URI parameters removed)."""
    normalised: str
    """E.164 with ``+`` (``+447700900123``), or ``""`` when it cannot be made one."""
    withheld: bool = False
    """The caller's identity is anonymous (RFC 3323 ``anonymous@anonymous.invalid``)."""


def normalise(number: str, *, country_code: str = "44") -> str:
    """``number`` as E.164 with its ``+``, or ``""`` when it is not a telephone number.

    >>> normalise("07700 900123")
    '+447700900123'
    """
    text = number.strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    text = text.split(";", 1)[0]
    plus = text.startswith("+")
    if plus and "(0)" in text:
        text = text.replace("(0)", "", 1)  # "+44 (0)7700 900123": the (0) is not dialled
    digits = text.translate(_SEPARATORS).lstrip("+")
    if not digits or not digits.isascii() or not digits.isdigit():
        return ""
    cc = country_code.lstrip("+")
    if plus:
        e164 = digits
    elif digits.startswith("00"):
        e164 = digits[2:]
    elif digits.startswith("0"):
        if not 9 <= len(digits) - 1 <= 10:
            return ""
        e164 = cc + digits[1:]
    elif cc and digits.startswith(cc) and len(digits) >= len(cc) + 9:
        e164 = digits
    else:
        return ""
    if not 8 <= len(e164) <= 15 or e164.startswith("0"):
        return ""
    return "+" + e164


def from_uri_user(user: str, *, host: str = "", display: str = "",
                  country_code: str = "44") -> CallerNumber:
    """The caller number of a URI's user part (``+447700900123;isub=2`` -> raw
    ``+447700900123``); ``anonymous`` users, hosts or display names are withheld."""
    raw = urllib.parse.unquote(user.split(";", 1)[0]).strip()
    anonymous = (raw.lower() in _WITHHELD_USERS or host.lower() in _WITHHELD_HOSTS
                 or (not raw and display.strip().lower() in _WITHHELD_USERS))
    if anonymous:
        return CallerNumber(raw=raw, normalised="", withheld=True)
    return CallerNumber(raw=raw, normalised=normalise(raw, country_code=country_code))
