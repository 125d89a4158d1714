"""Previous calls from a caller match on the E.164 form (migration 2 of ``calls``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from config.telephony import SipSettings
from controlroom.desk import ServiceDesk
from store import Database
from store import calls as calls_table


def _desk(tmp_path: Path) -> ServiceDesk:
    db = Database(tmp_path / "c.sqlite3")
    db.migrate(calls_table.COMPONENT, calls_table.MIGRATIONS)
    rows = [("a", "07700900123", "+447700900123"), ("b", "+44 7700 900123", "+447700900123"),
            ("c", "07700900999", "+447700900999"), ("d", "anonymous", ""),
            ("e", "anonymous", "")]
    with db.transaction() as conn:
        for i, (cid, raw, norm) in enumerate(rows):
            calls_table.insert(conn, call_id=cid, line="999", caller=raw, caller_normalised=norm,
                               state="completed", arrived_at=1000.0 + i,
                               location_detail={"parsed": True, "accuracy": 18.0})
    service = SimpleNamespace(db=db, settings=SimpleNamespace(sip=SipSettings()))
    return ServiceDesk(service)  # type: ignore[arg-type]


def test_previous_calls_match_the_e164_form(tmp_path: Path) -> None:
    """+447700900123, 07700900123 and '+44 7700 900123' are one caller; others are not."""
    desk = _desk(tmp_path)
    found = [p["call_id"] for p in desk._previous("+447700900123", 10)]
    assert found == ["b", "a"]
    assert [p["call_id"] for p in desk._previous("07700900123", 10, exclude="a")] == ["b"]


def test_withheld_callers_have_no_history(tmp_path: Path) -> None:
    """Every withheld caller is 'anonymous': none is another's previous call."""
    assert _desk(tmp_path)._previous("anonymous", 10, exclude="e") == []


def test_location_detail_round_trips_as_json(tmp_path: Path) -> None:
    """The structured location is stored as JSON and read back as a dict."""
    desk = _desk(tmp_path)
    row = desk.s.db.query_one("SELECT * FROM calls WHERE call_id='a'")
    assert calls_table.to_dict(row)["location_detail"] == {"parsed": True, "accuracy": 18.0}
