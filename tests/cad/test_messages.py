"""CAD message building, topics and the v1 JSON Schemas (pure, no broker)."""

from __future__ import annotations

import copy
import json

import pytest

import callevents as ev
from cad import messages, schema

from .samples import SHA, T0, one_of_each


def _msg(event: ev.DomainEvent, seq: int = 1, incident: str | None = None) -> dict:
    return messages.to_message(event, seq=seq, node="fcr1", incident_number=incident)


def test_every_cad_event_type_has_a_sample_and_a_schema_branch() -> None:
    """The samples and the schema cover exactly the CAD event types."""
    assert {e.type for e in one_of_each()} == set(ev.CAD_EVENT_TYPES)
    defs = schema.load(schema.CALL_EVENT)["$defs"]
    assert set(defs) - {"envelope"} == set(ev.CAD_EVENT_TYPES)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: e.type)
def test_every_sample_message_validates(event: ev.DomainEvent) -> None:
    """Each CAD event type builds a message that passes its schema, also after JSON."""
    msg = _msg(event, seq=3, incident="WMP-1")
    schema.validate(msg)
    schema.validate(json.loads(json.dumps(msg)))
    assert msg["type"] == event.type
    assert msg["event_id"] == event.event_id
    assert msg["call_id"] == event.call_id
    assert msg["seq"] == 3
    assert msg["schema_version"] == "1.0"
    assert msg["node"] == "fcr1"


def test_envelope_timestamp_is_iso8601_utc_ms() -> None:
    """The timestamp is the event's wall-clock time in ISO 8601 UTC with ms."""
    e = one_of_each()[0]
    assert _msg(e)["timestamp"] == "2026-11-23T16:00:00.000Z"
    assert messages.iso_utc(T0 + 1.2345) == "2026-11-23T16:00:01.234Z"


def test_arrived_carries_line_caller_identity_location() -> None:
    """call.arrived maps caller to EIDO callback and location to the location component."""
    msg = _msg(one_of_each()[0])
    assert msg["call"] == {"line": "999", "priority": 0, "dialled": "999",
                           "sip_call_id": "a84b4c76e66710"}
    assert msg["callback"] == {"number": "+447700900123", "name": "J Smith",
                               "normalised": "+447700900123"}
    assert msg["location"] == {"text": "<gml:pos>52.4862 -1.8904</gml:pos>"}
    assert msg["incident"] is None


def test_arrived_without_location_has_null_location() -> None:
    """No network location gives ``location: null`` (still valid)."""
    e = ev.CallArrived(call_id="c", at=T0, line="101", priority=1, caller="01214960000")
    msg = _msg(e)
    assert msg["location"] is None
    schema.validate(msg)


def test_queued_abandoned_ended_bodies() -> None:
    """Queue position/estimate, abandon wait/position/callback, end durations/recording."""
    events = {e.type: e for e in one_of_each()}
    q = _msg(events["call.queued"])
    assert q["queue"] == {"position": 2, "estimated_wait": 8.5, "priority": 0.0}
    a = _msg(events["call.abandoned"])
    assert a["callback"] == {"number": "+447700900999", "requested": True}
    assert (a["wait"], a["queue"]) == (5.0, {"position": 3})
    e = _msg(events["call.ended"])
    assert e["end"] == {"by": "caller", "reason": "hangup"}
    assert e["durations"] == {"wait": 21.25, "talk": 159.25, "total": 180.5}
    assert e["recording"] == {"id": "rec-1", "sha256": SHA}
    assert e["agent"] == {"id": "h2"}


def test_transcript_wrapup_incident_bodies() -> None:
    """Transcript text/language/engine/confidence, THRIVE + grade + notes, incident link."""
    events = {e.type: e for e in one_of_each()}
    t = _msg(events["call.transcript"])["transcript"]
    assert (t["text"], t["language"], t["engine"], t["confidence"]) == (
        "police please my neighbour", "en", "vosk", 0.87)
    assert t["segments"][1] == {"channel": "handler", "start": 2.1, "end": 3.0,
                                "text": "what is the address", "confidence": None}
    w = _msg(events["call.wrapup"])
    assert w["grading"]["grade"] == "1"
    assert w["grading"]["thrive"]["vulnerability"] == "elderly"
    assert w["notes"] == [{"text": "Caller reports intruder next door.", "author": "h2"}]
    i = _msg(events["call.incident"], incident=None)
    assert i["incident"] == {"number": "WMP-20261123-0042", "grade": "1"}


def test_recording_message_omits_local_path() -> None:
    """The recording's local file path is not sent to the CAD."""
    events = {e.type: e for e in one_of_each()}
    msg = _msg(events["call.recording"])
    assert msg["recording"] == {"id": "rec-1", "sha256": SHA, "duration": 159.25}
    assert "/var/recordings" not in json.dumps(msg)


def test_incident_number_known_is_in_envelope() -> None:
    """A linked incident number rides on every later message."""
    assert _msg(one_of_each()[1], incident="WMP-7")["incident"] == {"number": "WMP-7"}


def test_transcript_segment_is_not_a_cad_message() -> None:
    """Live transcript segments are refused by to_message."""
    seg = ev.TranscriptSegment(call_id="c", at=T0, channel="caller", text="hi", start=0,
                               end=1, final=False)
    with pytest.raises(ValueError, match="call.transcript_segment.*not sent to the CAD"):
        _msg(seg)


def test_seq_must_be_positive() -> None:
    """seq starts at 1."""
    with pytest.raises(ValueError, match="seq must be >= 1, got 0"):
        _msg(one_of_each()[0], seq=0)


def test_non_finite_durations_become_null_or_zero() -> None:
    """A NaN estimate becomes null rather than invalid JSON."""
    e = ev.CallQueued(call_id="c", at=T0, line="999", position=1, estimated_wait=float("nan"))
    msg = _msg(e)
    assert msg["queue"]["estimated_wait"] is None
    json.dumps(msg, allow_nan=False)
    schema.validate(msg)


# -- negative: the schema rejects what a CAD must never see ------------------------

def _valid() -> dict:
    return _msg(one_of_each()[0])


@pytest.mark.parametrize(("mutate", "path", "problem"), [
    (lambda m: m.pop("event_id"), "$", "'event_id' is a required property"),
    (lambda m: m.update(seq=0), "$.seq", "0 is less than the minimum of 1"),
    (lambda m: m.update(seq="1"), "$.seq", "'1' is not of type 'integer'"),
    (lambda m: m.update(timestamp="2026-11-23 16:00:00"), "$.timestamp", "does not match"),
    (lambda m: m.update(schema_version="2.0"), "$.schema_version", "does not match"),
    (lambda m: m.update(type="call.bogus"), "$.type", "'call.bogus' is not one of"),
    (lambda m: m.update(extra=1), "$", "Additional properties are not allowed ('extra' was unexpected)"),
    (lambda m: m["callback"].pop("number"), "$.callback", "'number' is a required property"),
    (lambda m: m["call"].update(priority=-1), "$.call.priority", "-1 is less than the minimum of 0"),
    (lambda m: m.update(location={"text": 5}), "$.location.text", "5 is not of type 'string'"),
])
def test_invalid_messages_are_rejected(mutate, path: str, problem: str) -> None:
    """Missing fields, wrong types, bad timestamps, unknown types and extras fail."""
    m = copy.deepcopy(_valid())
    mutate(m)
    with pytest.raises(schema.SchemaError) as info:
        schema.validate(m)
    assert info.value.path == path
    assert problem in info.value.problem
    assert not schema.is_valid(m)


def test_body_of_another_type_is_rejected() -> None:
    """A queued message with an arrived body does not validate (type selects the body)."""
    m = _valid()
    m["type"] = "call.queued"
    with pytest.raises(schema.SchemaError):
        schema.validate(m)


def test_ended_with_bad_sha256_rejected() -> None:
    """The recording checksum must be 64 lowercase hex digits."""
    events = {e.type: e for e in one_of_each()}
    m = _msg(events["call.ended"])
    m["recording"]["sha256"] = "ABC"
    with pytest.raises(schema.SchemaError, match=r"\$\.recording"):
        schema.validate(m)


def test_non_object_rejected() -> None:
    """A list is not a message."""
    with pytest.raises(schema.SchemaError, match="is not of type 'object'"):
        schema.validate([1, 2])


# -- retained messages ---------------------------------------------------------------

def test_queue_summary_drops_everything_but_counts() -> None:
    """Only allow-listed numeric fields reach the retained summary (no personal data)."""
    s = messages.queue_summary(
        {"999": {"waiting": 3, "longest_wait": 12.3456, "caller": "+447700900123",
                 "calls": [{"call_id": "x"}], "handlers_available": 2},
         "101": {}},
        node="fcr1", now=T0)
    schema.validate(s)
    assert s == {"schema_version": "1.0", "type": "queues.summary", "node": "fcr1",
                 "timestamp": "2026-11-23T16:00:00.000Z",
                 "lines": {"999": {"waiting": 3, "longest_wait": 12.346,
                                   "handlers_available": 2},
                           "101": {"waiting": 0, "longest_wait": 0.0}}}
    assert "+4477" not in json.dumps(s)


def test_queue_summary_ignores_non_numbers() -> None:
    """Strings, NaN, booleans or a non-mapping entry are left out, never raise."""
    s = messages.queue_summary({"999": {"waiting": "3", "longest_wait": float("nan"),
                                        "offered": True, "handlers_busy": 2.0},
                                "101": None},  # type: ignore[dict-item]
                               node="n", now=T0)
    schema.validate(s)
    assert s["lines"] == {"999": {"waiting": 0, "longest_wait": 0.0, "handlers_busy": 2},
                          "101": {"waiting": 0, "longest_wait": 0.0}}


def test_queue_summary_schema_refuses_extra_fields() -> None:
    """The summary schema itself forbids any per-line field beyond the counts."""
    s = messages.queue_summary({"999": {"waiting": 1, "longest_wait": 1.0}}, node="n", now=T0)
    s["lines"]["999"]["caller"] = "+447700900123"
    with pytest.raises(schema.SchemaError, match="Additional properties"):
        schema.validate(s)


def test_node_status_validates() -> None:
    """Online/offline status messages pass their schema."""
    for online in (True, False):
        m = messages.node_status(node="fcr1", online=online, now=T0)
        schema.validate(m)
        assert m["status"] == ("online" if online else "offline")


# -- topics ------------------------------------------------------------------------

def test_topics() -> None:
    """Topic layout: <prefix>/<node>/calls/<line>/<call_id>, queues/summary, cad/incidents."""
    assert messages.call_topic("controlroom", "fcr1", "999", "abc") == "controlroom/fcr1/calls/999/abc"
    assert messages.summary_topic("a/b/", "n") == "a/b/n/queues/summary"
    assert messages.incidents_topic("controlroom", "n") == "controlroom/n/cad/incidents"
    assert messages.status_topic("controlroom", "n") == "controlroom/n/status"
    assert messages.calls_filter("controlroom", "n") == "controlroom/n/calls/#"


def test_topic_levels_never_carry_separators_or_wildcards() -> None:
    """'/', '+', '#' inside a value are percent-encoded, so one value is one level."""
    t = messages.call_topic("p", "n", "99/9", "a+b#c")
    assert t == "p/n/calls/99%2F9/a%2Bb%23c"
    assert messages.call_topic("p", "n", "", "x") == "p/n/calls/_/x"


@pytest.mark.parametrize("name", [schema.CALL_EVENT, schema.QUEUE_SUMMARY, schema.NODE_STATUS,
                                  schema.INCIDENT_LINK])
def test_shipped_schema_files_are_valid_draft_2020_12(name: str) -> None:
    """Each shipped schema is itself valid JSON Schema 2020-12 with a versioned $id."""
    import jsonschema
    doc = schema.load(name)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"].endswith(f"/cad/schema/v1/{name}")
