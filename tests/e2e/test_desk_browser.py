"""The desk in real headless Chromium against the real service and a real SIP call.

A caller rings 999 through Kamailio; the handler's page pops; the live transcript shows
the caller's words; the wrap-up grading reaches the CAD over MQTT; the auditor finds the
call by a word, opens it (checksum verified) and plays it; the access log holds the
search, the view and the playback with the justification.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from console import users
from controlroom.stack import Stack, StackOptions

pytestmark = [pytest.mark.realparts, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]
SHOTS = Path(__file__).resolve().parents[1] / "_artifacts" / "screenshots"
PASSWORD = "correct horse battery"
SENTENCE = "A car has crashed into a wall on the high street and the driver is not moving."


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("no /usr/bin/chromium: install Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def login(browser: Any, base: str, user: str, lands: str) -> Any:
    ctx = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await ctx.new_page()
    page.set_default_timeout(15000)
    await page.goto(base + "/")
    await page.wait_for_url("**/login")
    await page.fill("#username", user)
    await page.fill("#password", PASSWORD)
    await page.click("#signin")
    await page.wait_for_url("**" + lands)
    return page


async def poll(page: Any, fn: str, limit: float = 15.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if v := await page.evaluate(fn):
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {fn}")


async def confirm(page: Any, reason: str | None = None) -> None:
    await page.wait_for_selector("#just-dlg[open]")
    if reason is not None:
        await page.fill("#just-text", reason)
    await page.click("#just-ok")


async def test_real_call_on_the_desk_wrapup_to_cad_and_audit(
        tmp_path: Path, browser: Any, cad_subscriber_factory) -> None:
    """A real 999 call pops on the handler's page, shows live words, its grading reaches
    the CAD, and the auditor finds, verifies and plays it, every access logged."""
    opts = StackOptions(handlers=1, engine="whisper", handlers_available=False, ring_ms=2500)
    async with Stack(tmp_path, opts) as st:
        db = st.service.db
        for name, roles in (("h1", ["handler"]), ("aud1", ["auditor"]), ("adm1", ["admin"])):
            users.create_user(db, name, PASSWORD, roles)
        cad = await cad_subscriber_factory("127.0.0.1", st.mosquitto.port)
        base = f"http://127.0.0.1:{st.service.web_port}"

        desk = await login(browser, base, "h1", "/desk")
        await desk.wait_for_selector("#conn:not(.down)")
        await desk.click("#btn-available")
        await desk.wait_for_selector("#state.st-available")

        number = "07700900123"
        await desk.evaluate("""(n) => { window.__popAt = null;
            const o = new MutationObserver(() => {
              if (document.getElementById('pop-caller').textContent === n && !window.__popAt) {
                window.__popAt = Date.now(); o.disconnect(); } });
            o.observe(document.getElementById('pop'), {subtree: true, childList: true, characterData: true}); }""",
                            number)
        clip = await asyncio.to_thread(st.clip, SENTENCE, lead_s=1.0, voice="en-us")
        caller = st.call("999", caller=number, clip=clip, talk_s=clip.duration + 3.0)

        pop_at = await poll(desk, "() => window.__popAt", 20)
        offered = db.query_one("SELECT created_at FROM outbox WHERE type='call.offered'")
        assert offered is not None
        print(f"\nscreen-pop latency (offer committed -> caller number in the DOM): "
              f"{pop_at - offered['created_at'] * 1000:.0f} ms")
        assert await desk.text_content("#pop-line") == "999"
        assert await desk.text_content("#pop-caller") == number
        SHOTS.mkdir(parents=True, exist_ok=True)
        await desk.screenshot(path=str(SHOTS / "e2e-desk-ringing.png"))

        # The phone answers after 2.5 s; the page follows; the caller's words appear live.
        await desk.wait_for_selector("#pop.connected", timeout=20000)
        await poll(desk, """() => [...document.querySelectorAll('#transcript .tl.caller')]
                     .some(e => /crash|wall|street|car/i.test(e.textContent))""", 40)
        await desk.screenshot(path=str(SHOTS / "e2e-desk-live-transcript.png"))

        # The caller hangs up: wrap-up; the grading goes to the CAD.
        await desk.wait_for_selector("#pop.wrapup", timeout=30000)
        call_id = await desk.get_attribute("#pop", "data-call-id")
        thrive = {"threat": "Driver unconscious", "harm": "Serious injury", "risk": "High",
                  "investigation": "RTC", "vulnerability": "Driver alone",
                  "engagement": "Caller stayed on the line"}
        for k, v in thrive.items():
            await desk.fill(f"#th-{k}", v)
        await desk.select_option("#grade", "1")
        await desk.fill("#notes", "Ambulance and units dispatched.")
        await desk.click("#save-grading")
        wrap = await cad.wait_for(call_id, "call.wrapup", 20)
        assert all(v in str(wrap) for v in thrive.values())
        assert "Ambulance and units dispatched." in str(wrap)
        assert await asyncio.to_thread(caller.wait, 30) == 0, caller.diagnostics()

        # The auditor: search a word, open (checksum verified), play.
        await cad.wait_for(call_id, "call.transcript", 120)
        aud = await login(browser, base, "aud1", "/auditor")
        await aud.fill("#q", "crashed")
        await aud.click("#search-btn")
        await confirm(aud, "Quality review QR-2026-041")
        await aud.wait_for_selector(".hit")
        assert await aud.locator(".hit").count() == 1
        await aud.click(".hit")
        await confirm(aud)
        await aud.wait_for_selector(f"#call[data-call-id='{call_id}']")
        assert await aud.get_attribute("#rec-verified", "class") == "verified"
        await aud.click("#play-btn")
        await confirm(aud)
        await poll(aud, "() => { const a = document.getElementById('audio'); "
                        "return a.duration > 0 && a.currentTime > 0.5; }", 20)
        await aud.screenshot(path=str(SHOTS / "e2e-auditor.png"))
        log = users.access_log(db)
        assert [(e["action"], e["call_id"]) for e in reversed(log)] == [
            ("search", None), ("view", call_id), ("playback", call_id)]
        assert {e["justification"] for e in log} == {"Quality review QR-2026-041"}
