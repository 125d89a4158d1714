"""What the CAD sends back: incident numbers (and grades) for our calls.

The CAD publishes on ``<prefix>/<node>/cad/incidents`` (QoS 1) one JSON object per link,
described by ``cad/schema/v1/incident-link.json``::

    {"schema_version": "1.0", "call_id": "5f0c...", "incident_number": "WMP-20261123-0042",
     "grade": "1", "timestamp": "2026-11-23T16:02:11.250Z", "message_id": "cad-778812"}

``grade`` (``1`` immediate .. ``4`` resolved), ``timestamp`` and ``message_id`` are
optional. Re-sending the same link is harmless (the callback should be idempotent); a
later link for the same call replaces the incident number (e.g. a call merged into
another incident).

Bad input never reaches the callback and never stops the subscriber: it is logged with
the reason and dropped. :func:`parse` does the checking (pure, raises
:class:`InboundError` with an exact reason); :func:`handle` wraps parse + callback for the
publisher's receive loop.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from . import schema

log = structlog.get_logger("cad.inbound")

MAX_PAYLOAD = 16 * 1024
"""Larger payloads are refused before parsing (an incident link is ~200 bytes)."""

OnIncident = Callable[[str, str, str], "bool | None | Awaitable[bool | None]"]
"""``on_incident(call_id, incident_number, grade) -> bool``: False for an unknown call."""


class InboundError(ValueError):
    """An incident link was refused; ``reason`` says why (logged, never raised further)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IncidentLink:
    """A valid incident link from the CAD."""

    call_id: str
    incident_number: str
    grade: str = ""
    message_id: str | None = None


def parse(payload: bytes | bytearray | str) -> IncidentLink:
    """Check one incident-link payload; raise :class:`InboundError` if it is not valid."""
    if len(payload) > MAX_PAYLOAD:
        raise InboundError(f"payload too large ({len(payload)} bytes > {MAX_PAYLOAD})")
    try:
        text = payload.decode("utf-8") if isinstance(payload, (bytes, bytearray)) else payload
        data: Any = json.loads(text)
    except UnicodeDecodeError:
        raise InboundError("payload is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InboundError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise InboundError(f"expected a JSON object, got {type(data).__name__}")
    try:
        schema.validate_incident(data)
    except schema.SchemaError as exc:
        raise InboundError(f"schema: {exc}") from None
    return IncidentLink(call_id=data["call_id"], incident_number=data["incident_number"],
                        grade=data.get("grade", ""), message_id=data.get("message_id"))


async def handle(payload: bytes | bytearray | str, on_incident: OnIncident, *,
                 topic: str = "") -> bool:
    """Parse ``payload`` and call ``on_incident``; True when the link was accepted.

    Never raises (except cancellation): malformed input, an unknown call id (the callback
    returns False) or a failing callback are logged as warnings and dropped.
    """
    try:
        link = parse(payload)
    except InboundError as exc:
        log.warning("cad.incident.rejected", reason=exc.reason, topic=topic,
                    size=len(payload))
        return False
    try:
        result = on_incident(link.call_id, link.incident_number, link.grade)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # noqa: BLE001 - a callback bug must not stop the subscriber
        log.error("cad.incident.callback_failed", call_id=link.call_id,
                  incident_number=link.incident_number, error=repr(exc))
        return False
    if result is False:
        log.warning("cad.incident.unknown_call", call_id=link.call_id,
                    incident_number=link.incident_number)
        return False
    log.info("cad.incident.linked", call_id=link.call_id,
             incident_number=link.incident_number, grade=link.grade)
    return True
