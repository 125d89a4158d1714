"""The desk's view of a caller's location (controlroom.desk.location_view): the text,
its uncertainty and method, and the force's map link from ``web.map_url``."""

from __future__ import annotations

from controlroom.desk import location_view
from telephony import pidf
from tests.sip.test_caller_location import PIDF_LO

MAP = "https://gis.force.example/map?lat={lat}&lon={lon}&r={radius}"


def test_pidf_point_circle_and_civic() -> None:
    """A parsed PIDF-LO: the circle's radius is the uncertainty, GPS the method, the map
    link carries the point; a civic-only template gets the address."""
    detail = {"by": "value", "uri": "cid:x", "parsed": True, "error": None,
              **pidf.parse(PIDF_LO)}
    v = location_view("52.486200, -1.890400 (±18 m)", detail, MAP)
    assert v is not None
    assert (v["uncertainty_m"], v["method"], v["shape"]) == (18.0, "GPS", "Circle")
    assert v["map_url"] == "https://gis.force.example/map?lat=52.486200&lon=-1.890400&r=18"
    assert v["address"] and "Station Road" in v["address"]
    civic = location_view("x", detail, "https://gis.force.example/find?q={address}")
    assert civic is not None and civic["map_url"] is not None
    assert civic["map_url"].startswith("https://gis.force.example/find?q=14%20Station%20Road")


def test_reference_none_and_no_template() -> None:
    """A location by reference is shown as given (no map); none gives None; no template
    gives no link."""
    ref = location_view("<https://lis.example/l/1>",
                        {"by": "reference", "uri": "https://lis.example/l/1", "parsed": False,
                         "error": None}, MAP)
    assert ref is not None and ref["by"] == "reference" and ref["map_url"] is None
    assert location_view(None, None, MAP) is None
    detail = {"parsed": True, **pidf.parse(PIDF_LO)}
    assert location_view("t", detail, "")["map_url"] is None  # type: ignore[index]
