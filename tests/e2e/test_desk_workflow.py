"""Issue 17 in headless Chromium through the real service: real calls through Kamailio
(SIPp callers and a SIPp handler phone), the desk at 1280x720.

One handler works a shift in fast motion: a 999 call with a PIDF-LO location pops (tone,
title, location with its uncertainty, method and the force's map link; the card fits the
screen), 'not ready' during the call waits for the call to end, End asks first, the
wrap-up counts down; a 101 call on a grading-required line keeps the handler in wrap-up
(offered nothing) until the grading is saved; a reject asks why and says what happens; a
supervisor sets the handler available with a reason; the wrap-up is extended; abandoned
calls make one call-back per caller, owned by whoever takes it, shown with their age on
the wallboard with the service level and its definition. axe-core finds no serious or
critical violation on any page. Screenshots under tests/_artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from console import users
from controlroom.stack import Stack, StackOptions
from harness import scenarios
from harness.sipp import Sipp
from tests.sip.test_caller_location import PIDF_LO

pytestmark = [pytest.mark.realparts, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]
SHOTS = Path(__file__).resolve().parents[1] / "_artifacts" / "screenshots"
AXE = Path(__file__).resolve().parents[1] / "_node" / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "correct horse battery"
MAP = "https://gis.force.example/map?lat={lat}&lon={lon}&r={radius}"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("no /usr/bin/chromium: install Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def login(browser: Any, base: str, user: str, lands: str,
                size: tuple[int, int] = (1280, 720)) -> Any:
    ctx = await browser.new_context(viewport={"width": size[0], "height": size[1]},
                                    accept_downloads=True, bypass_csp=True)  # axe is injected
    page = await ctx.new_page()
    page.set_default_timeout(15000)
    await page.goto(base + "/login")
    await axe(page, "login")
    await page.fill("#username", user)
    await page.fill("#password", PASSWORD)
    await page.click("#signin")
    await page.wait_for_url("**" + lands)
    await page.wait_for_selector("#conn:not(.down)", timeout=15000) if lands in (
        "/desk", "/wallboard") else None
    return page


async def axe(page: Any, name: str) -> None:
    """axe-core over the page as it is now: no serious or critical violation."""
    if not AXE.exists():
        pytest.fail(f"no {AXE}: run `npm ci --prefix tests/_node` (scripts/bootstrap.sh does)")
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
          .map(v => ({id: v.id, impact: v.impact, help: v.help,
                      nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ') + ': ' + n.failureSummary)}));
    }""")
    assert not result, f"axe on {name}:\n" + json.dumps(result, indent=1)


async def poll(page: Any, fn: str, limit: float = 20.0, arg: Any = None) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if v := await page.evaluate(fn, arg):
            return v
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {fn}")


def caller(st: Stack, dialled: str, number: str, name: str, *, talk_s: float,
           hangup: str = "caller", pidf: str | None = None) -> Sipp:
    scen = scenarios.caller(dialled=dialled, caller_id=number, talk_ms=int(talk_s * 1000),
                            hangup=hangup, pidf=pidf, wait_bye_ms=int(talk_s * 1000) + 60000)
    (st.workdir / "callers" / name).mkdir(parents=True, exist_ok=True)
    return Sipp(scen, target=st.kamailio.addr, calls=1, timeout=talk_s + 90, name=name,
                workdir=st.workdir / "callers" / name).start()


async def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"issue17-{name}.png"))


def state(st: Stack, hid: str = "h1") -> tuple[str, str]:
    h = st.service.router.handler_info(hid) or {}
    return str(h.get("state")), str(h.get("reason"))


async def test_a_shift_on_the_desk(tmp_path: Path, browser: Any) -> None:
    """Wrap-up, states, reject, supervisor, call-backs, location, alerts, keys and axe,
    all through real calls."""
    opts = StackOptions(handlers=1, engine="none", handlers_available=False, ring_ms=1200,
                        wrapup=5.0, offer_timeout=15.0,
                        line_101={"grading_required": True, "wrapup_extend_max": 60.0},
                        web={"map_url": MAP})
    async with Stack(tmp_path, opts) as st:
        db = st.service.db
        for name, roles in (("h1", ["handler"]), ("sup1", ["supervisor"]),
                            ("adm1", ["admin"]), ("aud1", ["auditor"])):
            users.create_user(db, name, PASSWORD, roles)
        base = f"http://127.0.0.1:{st.service.web_port}"
        desk = await login(browser, base, "h1", "/desk")
        await axe(desk, "desk (idle)")
        await desk.keyboard.press("Alt+y")                    # ready, from the keyboard
        await desk.wait_for_selector("#state.st-available")

        # -- a 999 call with a location pops: tone, title, location, the card fits -------
        c1 = caller(st, "999", "+447700900123", "c1", talk_s=60, hangup="remote",
                    pidf=PIDF_LO.decode())
        await desk.wait_for_selector("#pop.ringing")
        assert "999" in await desk.title() and "+447700900123" in await desk.title()
        assert await desk.evaluate("window.__tones") == ["999"]
        loc = await desk.text_content("#pop-location")
        assert "±18 m" in loc and "GPS" in loc, loc
        href = await desk.get_attribute("#pop-map", "href")
        assert href == "https://gis.force.example/map?lat=52.486200&lon=-1.890400&r=18", href
        box = await desk.evaluate("JSON.stringify(document.getElementById('pop').getBoundingClientRect())")
        assert json.loads(box)["bottom"] <= 720, box                  # no scrolling at 1280x720
        assert await desk.evaluate("document.scrollingElement.scrollTop") == 0
        await shot(desk, "desk-999-ringing-1280x720")
        await desk.wait_for_selector("#pop.connected", timeout=15000)   # the phone answers
        await axe(desk, "desk (connected call)")

        # -- not ready during the call: after it; a draft survives; End asks first ---------
        await desk.keyboard.press("Alt+n")
        await desk.wait_for_selector("#after-call:not(.hidden)")
        assert "Not ready after this call: Break" in await desk.text_content("#after-call")
        assert state(st) == ("on_call", "")
        await desk.fill("#th-threat", "Caller reports a man with a knife")
        await desk.keyboard.press("Alt+x")
        await desk.wait_for_selector("#end-dlg[open]")
        await shot(desk, "desk-end-confirm")
        await desk.click("#end-ok")
        await desk.wait_for_selector("#pop.wrapup")
        assert "Next call in 0:0" in await desk.text_content("#wrapup-timer")
        assert await desk.input_value("#th-threat") == "Caller reports a man with a knife"
        await shot(desk, "desk-wrapup-countdown")
        await desk.wait_for_selector("#state.st-not_ready", timeout=10000)   # not available
        assert state(st) == ("not_ready", "Break")
        assert await desk.is_visible(".draft-open")                  # the typing is kept

        # -- 101 on a grading-required line: wrap-up waits for the grading ---------------
        await desk.click("#btn-available")
        await desk.wait_for_selector("#state.st-available")
        c2 = caller(st, "101", "07700900202", "c2", talk_s=2.5)
        await desk.wait_for_selector("#pop.wrapup", timeout=20000)    # answered, caller left
        await desk.wait_for_selector("#grading-note:not(.hidden)")
        assert await desk.is_disabled("#ready")
        await poll(desk, "() => document.getElementById('wrapup-timer').textContent"
                         ".includes('Waiting for your grading')", 12)
        assert state(st) == ("wrap_up", "grading required")
        c3 = caller(st, "999", "07700900303", "c3", talk_s=40, hangup="remote")
        await asyncio.sleep(1.5)
        assert state(st)[0] == "wrap_up"                             # offered nothing
        await shot(desk, "desk-grading-required")
        await desk.click("#save-grading")                            # empty: refused
        assert "Nothing to save" in await desk.text_content(".toast")
        for k in ("threat", "harm", "risk", "investigation", "vulnerability", "engagement"):
            await desk.fill(f"#th-{k}", f"{k} noted")
        await desk.select_option("#grade", "3")
        await desk.click("#save-grading")

        # -- the next call pops at once; reject asks why and says what happens -----------
        await desk.wait_for_selector("#pop.ringing")
        assert await desk.text_content("#pop-caller") == "07700900303"
        await desk.keyboard.press("Alt+r")
        await desk.wait_for_selector("#reject-dlg[open]")
        assert "goes back to its place in the queue" in await desk.text_content("#reject-dlg")
        await shot(desk, "desk-reject-reason")
        await desk.select_option("#reject-why", "Phone or headset fault")
        await desk.click("#reject-ok")
        await desk.wait_for_selector("#state.st-not_ready")
        assert state(st) == ("not_ready", "rejected: Phone or headset fault")

        # -- callers hang up while queued: one call-back per caller ----------------------
        for i, n in enumerate(("07700900404", "07700900505", "07700900404")):
            q = caller(st, "999", n, f"q{i}", talk_s=1.0)   # one after the other: the order
            assert await asyncio.to_thread(q.wait, 30) == 0, q.diagnostics()
        await poll(desk, "() => document.querySelectorAll('#callbacks .cb-item').length === 2"
                         " && document.getElementById('callbacks').textContent.includes('2 calls')")
        rows = await desk.eval_on_selector_all(
            "#callbacks .cb-item", "els => els.map(e => [e.dataset.cbId, e.textContent])")
        assert "07700900404" in rows[0][1] and "2 calls" in rows[0][1], rows
        assert not await desk.locator("#callbacks button.close").count()  # nobody's yet
        second = rows[1][0]
        await desk.click(f".cb-item[data-cb-id='{second}'] button.take")
        await desk.wait_for_selector(f".cb-item[data-cb-id='{second}'].mine")
        after = await desk.eval_on_selector_all("#callbacks .cb-item", "els => els.map(e => e.dataset.cbId)")
        assert after == [r[0] for r in rows]                            # no re-sort
        assert await desk.locator("#callbacks button.close").count() == 1

        # -- the supervisor: call-backs with their age, SL defined, set h1 available -----
        wall = await login(browser, base, "sup1", "/wallboard", size=(1440, 900))
        await wall.wait_for_selector("#cbw tr[data-cb-id]")
        assert await wall.locator("#cbw tr[data-cb-id]").count() == 2
        assert "abandoned after the target" in await wall.text_content("#sl-def")
        assert "1 short abandons" not in await wall.text_content(".tile.line-999")
        await axe(wall, "wallboard")
        await wall.fill("#wl-999", "30")                             # the supervisor's limit
        await wall.click(".tile.line-999 button.wl-set")
        await poll(wall, "() => document.querySelector('.toast')?.textContent.includes('up to 30 s')", 5)
        assert st.service.router.lines["999"].wrapup_extend_max == 30.0
        await wall.click("tr[data-handler='h1'] button.available")
        await wall.fill("#state-reason", "Headset replaced")
        await wall.click("#state-save")
        await desk.wait_for_selector("#pop.ringing")                 # c3 offered again
        assert state(st)[0] == "offered"
        await shot(wall, "wallboard")
        log = db.query("SELECT data FROM queue_log WHERE event='STATE' AND handler_id='h1'")
        assert any("set by sup1: Headset replaced" in r["data"] for r in log)
        await desk.wait_for_selector("#pop.connected", timeout=15000)
        await desk.keyboard.press("Alt+x")
        await desk.click("#end-ok")
        await desk.wait_for_selector("#pop.wrapup")
        await desk.click("#extend")                                  # +30 s: the limit
        await poll(desk, "() => /Next call in 0:3/.test(document.getElementById('wrapup-timer').textContent)", 5)
        await desk.wait_for_selector("#extend:disabled")             # no more than 30 s

        # -- close the call-back I took; the other stays, in its place -------------------
        await desk.select_option(f"#cb-out-{second}", "No reply — voicemail left")
        await desk.click(f".cb-item[data-cb-id='{second}'] button.close")
        await poll(desk, "() => document.querySelectorAll('#callbacks .cb-item').length === 1")
        done = db.query_one("SELECT data FROM queue_log WHERE event='CALLBACK_DONE'")
        assert json.loads(done["data"])["by"] == "h1"
        await shot(desk, "desk-callbacks")

        # -- the other pages pass axe ------------------------------------------------------
        adm = await login(browser, base, "adm1", "/admin", size=(1440, 900))
        await adm.wait_for_selector("#users tr[data-user='h1']")
        await axe(adm, "admin")
        aud = await login(browser, base, "aud1", "/auditor", size=(1440, 900))
        await axe(aud, "auditor")
        for c in (c1, c2, c3):
            c.stop()
