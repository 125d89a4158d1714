"""The G.711 payload types a stream sends and a prompt is encoded in (RFC 3551)."""

from __future__ import annotations

import enum


class Codec(enum.Enum):
    """Static payload types of ITU-T G.711."""

    PCMU = 0
    PCMA = 8
