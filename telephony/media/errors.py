"""Errors of the media layer, each with a message the tests assert."""

from __future__ import annotations


class MediaError(Exception):
    """A media operation could not be done (port pool exhausted, bad prompt, bad call id...)."""


class RtpError(ValueError):
    """A received datagram is not a valid RTP packet; ``reason`` says why (counted, dropped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
