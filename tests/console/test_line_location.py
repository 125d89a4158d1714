"""A line's fixed location (issue 17 item 7, config ``lines[].location``): checked at
start-up, shown on the desk like a PIDF-LO location with method ``line`` and the map
link, and sent to the CAD within the v1 schema."""

from __future__ import annotations

import pytest

import callevents as ev
from cad import schema
from cad.messages import to_message
from config import ConfigError
from config.loader import build
from config.schema import LineLocation
from controlroom.desk import location_view

MAP = "https://gis.force.example/map?lat={lat}&lon={lon}&r={radius}"
SITE = {"text": "Help point 3, platform 5, New Street station", "lat": 52.4778,
        "lon": -1.8989, "radius": 25, "address": "Station Street, Birmingham B2 4QA"}


def test_bad_line_locations_are_refused_with_the_field() -> None:
    """Half a point, a latitude off the globe, a negative radius, no text: start-up errors."""
    for bad, where in (({"text": "x", "lat": 1.0}, "lat"), ({"text": "x", "lat": 91.0, "lon": 0.0}, "lat"),
                       ({"text": "x", "radius": -1}, "radius"), ({"text": " "}, "text")):
        with pytest.raises(ConfigError, match=f"location.{where}"):
            build(LineLocation, bad, path="lines[0].location")


def test_shown_like_pidf_with_method_line_and_sent_to_the_cad() -> None:
    """The desk shows the text, ±25 m, method line, source line and the map link; the
    CAD's call.arrived carries it and validates against the v1 schema."""
    loc = build(LineLocation, SITE, path="lines[0].location")
    v = location_view(loc.text, loc.detail(), MAP)
    assert v is not None
    assert (v["method"], v["source"], v["uncertainty_m"], v["shape"]) == ("line", "line", 25.0, "Circle")
    assert v["address"] == "Station Street, Birmingham B2 4QA"
    assert v["map_url"] == "https://gis.force.example/map?lat=52.477800&lon=-1.898900&r=25"
    text_only = build(LineLocation, {"text": "Custody suite, Lloyd House"}, path="l")
    tv = location_view(text_only.text, text_only.detail(), MAP)
    assert tv is not None and tv["method"] == "line" and tv["map_url"] is None
    msg = to_message(ev.CallArrived(call_id="c1", at=1.0, line="help", priority=1,
                                    caller="", display_name="", dialled="101",
                                    location=loc.text, sip_call_id="x",
                                    location_detail=loc.detail()), seq=1, node="fcr1",
                     incident_number=None)
    schema.validate(msg)
    assert msg["location"]["geodetic"][0]["method"] == "line"
    assert msg["location"]["text"] == SITE["text"]
