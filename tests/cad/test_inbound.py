"""Incident links from the CAD: parsing, refusal of bad input, the callback contract."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from cad import inbound

GOOD = {"schema_version": "1.0", "call_id": "c1", "incident_number": "WMP-20261123-0042",
        "grade": "1", "timestamp": "2026-11-23T16:02:11.250Z", "message_id": "cad-1"}


def test_parse_good_link() -> None:
    """A valid payload gives an IncidentLink."""
    link = inbound.parse(json.dumps(GOOD).encode())
    assert link == inbound.IncidentLink(call_id="c1", incident_number="WMP-20261123-0042",
                                        grade="1", message_id="cad-1")


def test_parse_minimal_link() -> None:
    """grade, timestamp and message_id are optional."""
    link = inbound.parse('{"schema_version": "1.0", "call_id": "c1", "incident_number": "X1"}')
    assert (link.grade, link.message_id) == ("", None)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"{not json", "malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"\xff\xfe", "payload is not UTF-8"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b"null", "expected a JSON object, got NoneType"),
    (json.dumps({**GOOD, "call_id": 42}).encode(), "schema: $.call_id: 42 is not of type 'string'"),
    (json.dumps({**GOOD, "grade": 1}).encode(), "schema: $.grade: 1 is not of type 'string'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "incident_number"}).encode(),
     "schema: $: 'incident_number' is a required property"),
    (json.dumps({**GOOD, "incident_number": ""}).encode(), "schema: $.incident_number: '' should be non-empty"),
    (json.dumps({**GOOD, "schema_version": "2.0"}).encode(), "schema: $.schema_version: '2.0' does not match"),
    (json.dumps({**GOOD, "extra": True}).encode(), "schema: $: Additional properties are not allowed ('extra' was unexpected)"),
    (json.dumps({**GOOD, "incident_number": "A\nB"}).encode(), "schema: $.incident_number: 'A\\nB' does not match"),
    (b" " * (inbound.MAX_PAYLOAD + 1), f"payload too large ({inbound.MAX_PAYLOAD + 1} bytes > {inbound.MAX_PAYLOAD})"),
])
def test_parse_rejects_bad_input(payload: bytes, reason: str) -> None:
    """Each kind of bad input is refused with an exact reason."""
    with pytest.raises(inbound.InboundError) as info:
        inbound.parse(payload)
    assert info.value.reason.startswith(reason)


async def test_handle_calls_back_and_logs() -> None:
    """A good link reaches the callback once and is logged as linked."""
    calls = []
    with capture_logs() as logs:
        ok = await inbound.handle(json.dumps(GOOD).encode(),
                                  lambda *a: calls.append(a) or True)
    assert ok is True
    assert calls == [("c1", "WMP-20261123-0042", "1")]
    assert [e["event"] for e in logs] == ["cad.incident.linked"]


async def test_handle_async_callback() -> None:
    """An async callback is awaited."""
    seen = []

    async def cb(call_id: str, number: str, grade: str) -> bool:
        seen.append(call_id)
        return True
    assert await inbound.handle(json.dumps(GOOD), cb) is True
    assert seen == ["c1"]


async def test_handle_unknown_call_is_logged_and_ignored() -> None:
    """The callback returning False (unknown call) is a warning, not an error."""
    with capture_logs() as logs:
        ok = await inbound.handle(json.dumps(GOOD).encode(), lambda *a: False)
    assert ok is False
    assert logs == [{"event": "cad.incident.unknown_call", "log_level": "warning",
                     "call_id": "c1", "incident_number": "WMP-20261123-0042"}]


async def test_handle_malformed_never_calls_back() -> None:
    """Malformed input is logged with its reason and never reaches the callback."""
    calls = []
    with capture_logs() as logs:
        ok = await inbound.handle(b"{oops", lambda *a: calls.append(a), topic="t/x")
    assert ok is False and calls == []
    assert logs[0]["event"] == "cad.incident.rejected"
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["reason"].startswith("malformed JSON")
    assert logs[0]["topic"] == "t/x"


async def test_handle_survives_callback_exception() -> None:
    """A failing callback is logged as an error; handle() does not raise."""
    def boom(*a: str) -> bool:
        raise KeyError("db gone")
    with capture_logs() as logs:
        ok = await inbound.handle(json.dumps(GOOD).encode(), boom)
    assert ok is False
    assert logs[0]["event"] == "cad.incident.callback_failed"
    assert logs[0]["log_level"] == "error"
