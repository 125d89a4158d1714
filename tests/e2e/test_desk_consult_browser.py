"""The desk in headless Chromium with a real 999 call (issue 17 item 5): moving a 999
to the 101 queue is warned about first (and not done when the handler says no); consult
and conference with the ambulance (a SIPp phone through Kamailio) from the desk's
buttons. Screenshots go to tests/_artifacts/screenshots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from console import users
from controlroom.stack import DOMAIN, Stack, StackOptions
from harness import scenarios
from harness.sipp import Sipp

from .conftest import wait_until
from .test_desk_browser import PASSWORD, SHOTS, browser, login  # noqa: F401 - fixture

pytestmark = [pytest.mark.realparts, pytest.mark.browser]


async def test_desk_warns_before_999_to_101_and_consults_the_ambulance(
        tmp_path: Path, browser: Any) -> None:  # noqa: F811 - the fixture
    """The transfer of a 999 to the 101 queue asks first (declined: still connected);
    Consult rings the ambulance with the caller held, Join all three conferences."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False, ring_ms=300,
                        consult_numbers={"ambulance": f"sip:ambulance@{DOMAIN}"})
    async with Stack(tmp_path, opts) as st:
        (tmp_path / "phone-ambulance").mkdir()
        amb = Sipp(scenarios.handler(user="ambulance", ring_ms=300, pcap=st.handler_clip.pcap,
                                     hangup="remote"),
                   calls=10, timeout=300, name="phone-ambulance", trace_msg=False,
                   workdir=tmp_path / "phone-ambulance")
        await asyncio.to_thread(lambda: st._exit.enter_context(amb))
        await asyncio.to_thread(st.kamailio.register, "ambulance", amb.contact("ambulance"))
        users.create_user(st.service.db, "h1", PASSWORD, ["handler"])
        base = f"http://127.0.0.1:{st.service.web_port}"
        desk = await login(browser, base, "h1", "/desk")
        await desk.wait_for_selector("#conn:not(.down)")
        await desk.click("#btn-available")
        await desk.wait_for_selector("#state.st-available")
        caller = st.call("999", caller="07700900999", talk_s=40)
        await desk.wait_for_selector("#pop.connected", timeout=20000)
        call_id = await desk.get_attribute("#pop", "data-call-id")

        # 999 -> 101 queue: the desk asks first; saying no leaves the call where it is.
        asked: list[str] = []

        async def decline(d: Any) -> None:
            asked.append(d.message)
            await d.dismiss()

        desk.once("dialog", lambda d: asyncio.ensure_future(decline(d)))
        await desk.select_option("#xfer-to", "line:101")
        await desk.click("#transfer")
        await wait_until(lambda: bool(asked), 5, "the warning")
        assert "999" in asked[0] and "keeps its priority" in asked[0], asked
        await asyncio.sleep(0.5)
        assert st.service.calls[call_id].state == "connected"

        # Consult the ambulance, then join all three.
        assert await desk.eval_on_selector_all("#consult-to option", "os => os.map(o => o.value)") \
            == ["ambulance"]
        await desk.click("#consult")
        await desk.wait_for_selector("#conference:not(.hidden)", timeout=15000)
        assert "Speaking to ambulance" in (await desk.text_content("#consult-state") or "")
        SHOTS.mkdir(parents=True, exist_ok=True)
        await desk.screenshot(path=str(SHOTS / "e2e-desk-consult.png"))
        await desk.click("#conference")
        await wait_until(lambda: (c := st.service.consults.of_call(call_id)) is not None
                         and c.step == "conference", 10, "conference")
        await desk.wait_for_function(
            "() => /conference/.test(document.getElementById('consult-state').textContent)")
        await desk.screenshot(path=str(SHOTS / "e2e-desk-conference.png"))
        await desk.click("#consult-return")
        await wait_until(lambda: st.service.consults.of_call(call_id) is None, 10, "back")
        await desk.wait_for_selector("#consult:not(.hidden)")
        await asyncio.to_thread(caller.stop)
