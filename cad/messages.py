"""CAD messages: one JSON object per call lifecycle event, and the MQTT topics.

Theory of operation: :func:`to_message` turns a :class:`callevents.DomainEvent`
into the wire object (a plain dict) described by ``cad/schema/v1/call-event.json`` and
``cad/CONTRACT.md``. It is pure: the seq comes from the outbox, the node and the incident
number (if the CAD already sent one) from the caller. Every message has the same envelope
(``schema_version``, ``type``, ``event_id``, ``call_id``, ``seq``, ``timestamp``,
``node``, ``incident``) and a body whose object names follow the NENA EIDO components
(``call``, ``callback``, ``location``, ``agent``, ``notes``, ``incident``) so an
EIDO-speaking CAD maps them directly.

Retained messages (the queue summary, the node status) carry no personal data: they are
built here from an allow-list of numeric fields only.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import callevents as ev

SCHEMA_VERSION = "1.0"
"""Major.minor: additive changes bump the minor; the v1 schema accepts any ``1.x``."""

SUMMARY_TYPE = "queues.summary"
STATUS_TYPE = "node.status"
SYSTEM_TYPES = frozenset({"system.storage_fault", "system.storage_recovered",
                          "system.retention_purge"})
"""Node health events on ``<prefix>/<node>/system`` (see :func:`storage_event`)."""

SUMMARY_FIELDS: dict[str, type] = {
    "waiting": int,
    "longest_wait": float,
    "offered": int,
    "handlers_available": int,
    "handlers_busy": int,
}
"""Per-line fields a queue summary may carry (all counts or seconds, nothing personal)."""


def iso_utc(at: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds, e.g. ``2026-11-23T15:53:14.123Z``."""
    t = dt.datetime.fromtimestamp(at, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _secs(x: float | None) -> float | None:
    """Durations rounded to ms; NaN/inf (a clock bug upstream) become None, not bad JSON."""
    if x is None or not math.isfinite(x):
        return None
    return round(max(0.0, float(x)), 3)


def _agent(handler_id: str | None) -> dict[str, Any] | None:
    return {"id": handler_id} if handler_id else None


_LOCATION_KEYS = ("by", "uri", "parsed", "error", "entity", "geodetic", "civic", "accuracy",
                  "warnings")


def _location(text: str | None, detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """EIDO locationComponent: ``text`` always (a summary, or the location as given), and
    the structured location when one was read (schema v1.x, additive)."""
    if not text and not detail:
        return None
    out: dict[str, Any] = {"text": text or ""}
    for k in _LOCATION_KEYS:
        if detail and k in detail:
            out[k] = detail[k]
    return out


def _body(event: ev.DomainEvent) -> dict[str, Any]:
    """The type-specific part of the message."""
    match event:
        case ev.CallArrived():
            return {
                "call": {"line": event.line, "priority": event.priority,
                         "dialled": event.dialled, "sip_call_id": event.sip_call_id,
                         **({"linked_call_id": event.linked_call_id}
                            if event.linked_call_id else {})},
                "callback": {"number": event.caller, "name": event.display_name,
                             "normalised": event.caller_normalised},
                "location": _location(event.location, event.location_detail),
            }
        case ev.CallQueued():
            return {"call": {"line": event.line},
                    "queue": {"position": event.position,
                              "estimated_wait": _secs(event.estimated_wait),
                              "priority": float(event.priority)}}
        case ev.CallOffered():
            return {"call": {"line": event.line}, "agent": {"id": event.handler_id},
                    "wait": _secs(event.wait) or 0.0}
        case ev.CallOfferFailed():
            return {"call": {"line": event.line}, "agent": {"id": event.handler_id},
                    "reason": event.reason}
        case ev.CallAnswered():
            return {"call": {"line": event.line}, "agent": {"id": event.handler_id},
                    "wait": _secs(event.wait) or 0.0}
        case ev.CallTransferred():
            return {"agent": {"id": event.from_handler},
                    "transfer": {"to_line": event.to_line, "to_agent": event.to_handler}}
        case ev.CallAbandoned():
            return {"call": {"line": event.line},
                    "callback": {"number": event.caller, "requested": event.callback},
                    "wait": _secs(event.wait) or 0.0,
                    "queue": {"position": event.position}}
        case ev.CallFlagged():
            return {"flag": {"name": event.flag, "detail": event.detail}}
        case ev.CallEnded():
            rec: dict[str, Any] | None = None
            if event.recording_id:
                rec = {"id": event.recording_id, "sha256": event.recording_sha256}
            return {"call": {"line": event.line},
                    "agent": _agent(event.handler_id),
                    "end": {"by": event.by, "reason": event.reason},
                    "durations": {"wait": _secs(event.wait) or 0.0,
                                  "talk": _secs(event.talk) or 0.0,
                                  "total": _secs(event.total) or 0.0},
                    "recording": rec}
        case ev.RecordingReady():
            # The file path is local to this node and means nothing to the CAD.
            rec = {"id": event.recording_id, "sha256": event.sha256,
                                   "duration": _secs(event.duration) or 0.0}
            if len(event.segments) > 1 or event.gaps:  # schema v1.x, additive
                rec["segments"] = [{"id": s["id"], "sha256": s["sha256"],
                                    "start": _secs(s["start"]) or 0.0,
                                    "duration": _secs(s["duration"]) or 0.0}
                                   for s in event.segments]
                rec["gaps"] = [{"start": _secs(g["start"]) or 0.0, "end": _secs(g["end"]) or 0.0,
                                "frames_lost": int(g["frames_lost"]), "reason": g["reason"]}
                               for g in event.gaps]
            return {"recording": rec}
        case ev.TranscriptFinal():
            return {"transcript": {
                "text": event.text, "language": event.language, "engine": event.engine,
                "model": event.model, "confidence": _conf(event.confidence),
                "segments": [_segment(s) for s in event.segments]}}
        case ev.CallWrapUp():
            notes = [{"text": event.notes, "author": event.handler_id}] if event.notes else []
            return {"agent": {"id": event.handler_id},
                    "grading": {"grade": event.grade, "thrive": dict(event.thrive)},
                    "notes": notes}
        case ev.IncidentLinked():
            return {}
    raise ValueError(f"event type {event.type!r} is not sent to the CAD")


def _conf(c: float | None) -> float | None:
    if c is None or not math.isfinite(c):
        return None
    return min(1.0, max(0.0, round(float(c), 4)))


def _segment(s: Mapping[str, Any]) -> dict[str, Any]:
    return {"channel": s.get("channel"), "start": _secs(s.get("start")) or 0.0,
            "end": _secs(s.get("end")) or 0.0, "text": s.get("text", ""),
            "confidence": _conf(s.get("confidence"))}


def to_message(event: ev.DomainEvent, *, seq: int, node: str,
               incident_number: str | None) -> dict[str, Any]:
    """The CAD message for ``event`` (raises ValueError for types not sent to the CAD).

    ``seq`` is the per-call sequence number from the outbox; ``incident_number`` the CAD
    incident already linked to the call, if any (an :class:`IncidentLinked` event carries
    its own).
    """
    if event.type not in ev.CAD_EVENT_TYPES:
        raise ValueError(f"event type {event.type!r} is not sent to the CAD")
    if seq < 1:
        raise ValueError(f"seq must be >= 1, got {seq}")
    incident: dict[str, Any] | None = None
    if isinstance(event, ev.IncidentLinked):
        incident = {"number": event.incident_number, "grade": event.grade}
    elif incident_number:
        incident = {"number": incident_number}
    msg: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": event.type,
        "event_id": event.event_id,
        "call_id": event.call_id,
        "seq": seq,
        "timestamp": iso_utc(event.at),
        "node": node,
        "incident": incident,
    }
    msg.update(_body(event))
    return msg


def queue_summary(lines: Mapping[str, Mapping[str, Any]], *, node: str,
                  now: float) -> dict[str, Any]:
    """The retained queue summary: per line only the counts in :data:`SUMMARY_FIELDS`.

    Anything else in the input (caller numbers, call ids...) is dropped on purpose: a
    retained message is handed to every future subscriber and must hold no personal data.
    """
    out: dict[str, dict[str, Any]] = {}
    for line, stats in lines.items():
        entry: dict[str, Any] = {}
        for key, kind in SUMMARY_FIELDS.items():
            value = stats.get(key) if isinstance(stats, Mapping) else None
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # missing or not a number: left out rather than guessed
            if not math.isfinite(value):
                continue
            if kind is int:
                entry[key] = max(0, int(value))
            else:
                entry[key] = _secs(float(value)) or 0.0
        entry.setdefault("waiting", 0)
        entry.setdefault("longest_wait", 0.0)
        out[str(line)] = entry
    return {"schema_version": SCHEMA_VERSION, "type": SUMMARY_TYPE, "node": node,
            "timestamp": iso_utc(now), "lines": out}


def node_status(*, node: str, online: bool, now: float) -> dict[str, Any]:
    """Retained node status (also the MQTT will, sent by the broker if we vanish)."""
    return {"schema_version": SCHEMA_VERSION, "type": STATUS_TYPE, "node": node,
            "status": "online" if online else "offline", "timestamp": iso_utc(now)}


def storage_event(*, node: str, fault: bool, reason: str, since: float, spooled: int,
                  lost: int, now: float, event_id: str, flushed: int | None = None
                  ) -> dict[str, Any]:
    """``system.storage_fault`` / ``system.storage_recovered``: the node's database
    stopped (or resumed) taking writes. Calls go on either way; the CAD learns that the
    call messages it is owed are waiting (``spooled``) or were ``lost``."""
    msg: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "system.storage_fault" if fault else "system.storage_recovered",
        "event_id": event_id, "node": node, "timestamp": iso_utc(now),
        "component": "database", "reason": reason, "since": iso_utc(since),
        "spooled": max(0, int(spooled)), "lost": max(0, int(lost))}
    if flushed is not None:
        msg["flushed"] = max(0, int(flushed))
    return msg


def retention_event(*, node: str, deleted: dict[str, int], calls: list[str], held: int,
                    resumed: int, now: float, event_id: str) -> dict[str, Any]:
    """``system.retention_purge``: a retention run deleted what was past its line's policy
    (``deleted`` counts per kind: recording, transcript, call; ``calls`` their ids);
    ``held`` calls past retention were kept because of a legal hold. No personal data."""
    return {"schema_version": SCHEMA_VERSION, "type": "system.retention_purge",
            "event_id": event_id, "node": node, "timestamp": iso_utc(now),
            "component": "retention", "reason": "retention policy",
            "deleted": {k: max(0, int(v)) for k, v in deleted.items()},
            "calls": list(calls)[:1000], "held": max(0, int(held)),
            "resumed": max(0, int(resumed))}


# -- topics --------------------------------------------------------------------

def _level(s: str) -> str:
    """One topic level: MQTT's separators and wildcards are percent-encoded, never passed."""
    if not s:
        return "_"
    return (s.replace("%", "%25").replace("/", "%2F").replace("+", "%2B")
             .replace("#", "%23").replace("\x00", "%00"))


def _base(prefix: str, node: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{_level(node)}" if prefix else _level(node)


def call_topic(prefix: str, node: str, line: str, call_id: str) -> str:
    """``<prefix>/<node>/calls/<line>/<call_id>``: every message of one call."""
    return f"{_base(prefix, node)}/calls/{_level(line)}/{_level(call_id)}"


def topic(prefix: str, node: str, line: str, call_id: str) -> str:
    """Alias of :func:`call_topic`."""
    return call_topic(prefix, node, line, call_id)


def calls_filter(prefix: str, node: str) -> str:
    """Subscription filter for every call message of a node."""
    return f"{_base(prefix, node)}/calls/#"


def summary_topic(prefix: str, node: str) -> str:
    """``<prefix>/<node>/queues/summary`` (retained)."""
    return f"{_base(prefix, node)}/queues/summary"


def status_topic(prefix: str, node: str) -> str:
    """``<prefix>/<node>/status`` (retained; the will message says offline)."""
    return f"{_base(prefix, node)}/status"


def system_topic(prefix: str, node: str) -> str:
    """``<prefix>/<node>/system``: node health events (not retained)."""
    return f"{_base(prefix, node)}/system"


def incidents_topic(prefix: str, node: str) -> str:
    """``<prefix>/<node>/cad/incidents``: the CAD publishes incident numbers here."""
    return f"{_base(prefix, node)}/cad/incidents"
