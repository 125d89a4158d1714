"""A location from the line (issue 17 item 7) in headless Chromium through the real
service: the 101 line is configured as a dedicated line from a known site; a real call
on it with no PIDF-LO pops with the site's location, its uncertainty, method "line" and
the force's map link, is stored with the call and sent to the CAD; a call on the same
line that sends its own PIDF-LO shows that one (GPS). Screenshots under
tests/_artifacts/screenshots/."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from console import users
from controlroom.stack import Stack, StackOptions
from tests.sip.test_caller_location import PIDF_LO

from .test_desk_workflow import MAP, PASSWORD, axe, browser, caller, login, shot  # noqa: F401

pytestmark = [pytest.mark.realparts, pytest.mark.slow, pytest.mark.browser]

SITE = {"text": "Help point 3, platform 5, New Street station", "lat": 52.4778,
        "lon": -1.8989, "radius": 25, "address": "Station Street, Birmingham B2 4QA"}


async def test_a_call_on_a_sited_line_shows_the_lines_location(
        tmp_path: Path, browser: Any, cad_subscriber_factory: Any) -> None:  # noqa: F811
    """No PIDF-LO: the line's location with ±25 m, by line, and the map link, on the desk,
    in the calls table and in call.arrived; with a PIDF-LO: the caller's own (GPS)."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False, ring_ms=2500,
                        wrapup=1.0, line_101={"location": SITE}, web={"map_url": MAP})
    async with Stack(tmp_path, opts) as st:
        users.create_user(st.service.db, "h1", PASSWORD, ["handler"])
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        base = f"http://127.0.0.1:{st.service.web_port}"
        desk = await login(browser, base, "h1", "/desk")
        await desk.click("#btn-available")
        await desk.wait_for_selector("#state.st-available")

        c1 = caller(st, "101", "07700900701", "c1", talk_s=2.0)
        await desk.wait_for_selector("#pop.ringing", timeout=20000)
        call_id = await desk.get_attribute("#pop", "data-call-id")
        loc = await desk.text_content("#pop-location")
        assert loc == ("Help point 3, platform 5, New Street station · ±25 m · "
                       "by line (where this line is)"), loc
        assert await desk.get_attribute("#pop-map", "href") == \
            "https://gis.force.example/map?lat=52.477800&lon=-1.898900&r=25"
        await shot(desk, "desk-location-from-line")
        await axe(desk, "desk (location from the line)")
        row = st.service.db.query_one("SELECT location, location_detail FROM calls "
                                      "WHERE call_id=?", (call_id,))
        assert row["location"] == SITE["text"] and '"method": "line"' in row["location_detail"]
        arrived = await cad.wait_for(call_id, "call.arrived", 10)
        assert arrived["location"]["text"] == SITE["text"]
        assert arrived["location"]["geodetic"][0]["method"] == "line"
        assert arrived["location"]["accuracy"] == 25.0
        assert await asyncio.to_thread(c1.wait, 30) == 0, c1.diagnostics()
        await desk.wait_for_selector("#state.st-available", timeout=15000)

        # the same line, a caller that sends a location of its own: that one is shown
        c2 = caller(st, "101", "+447700900123", "c2", talk_s=2.0, pidf=PIDF_LO.decode())
        await desk.wait_for_selector("#pop.ringing", timeout=20000)
        loc = await desk.text_content("#pop-location")
        assert "±18 m" in loc and "GPS" in loc and "line" not in loc, loc
        assert await asyncio.to_thread(c2.wait, 30) == 0, c2.diagnostics()
